"""The Trainer and the small helpers it calls (precision, schedules, strategies, checkpoints, logging)."""

from .loop import EVENTS, Trainer, as_task, seed_everything, to_device
from .search import SearchResult, search
from .seeds import Comparison, SeedsResult, Spread, compare
from .strategies import Strategy, get_strategy, list_strategies, register_strategy

__all__ = ["Trainer", "EVENTS", "as_task", "seed_everything", "to_device", "search", "SearchResult",
           "Strategy", "get_strategy", "list_strategies", "register_strategy", "compare", "Comparison",
           "SeedsResult", "Spread"]
