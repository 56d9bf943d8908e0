"""The Trainer and the small helpers it calls (precision, schedules, strategies, checkpoints, logging)."""

from .loop import EVENTS, Trainer, as_task, seed_everything, to_device

__all__ = ["Trainer", "EVENTS", "as_task", "seed_everything", "to_device"]
