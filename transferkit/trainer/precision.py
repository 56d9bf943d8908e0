"""Mixed precision: autocast for the forward pass and, for fp16, loss scaling (Micikevicius et al. 2018).

``fp32`` runs as is. ``bf16`` autocasts matrix products to bfloat16 on CUDA or CPU; bfloat16 has fp32's
exponent range, so it needs no loss scaling. ``fp16`` (CUDA only) autocasts to float16 and scales the loss
with a ``GradScaler`` so small gradients do not underflow; steps whose gradients overflow are skipped and
the scale is lowered. ``auto`` picks bf16 on a CUDA device that supports it and on a CPU with bfloat16
units (AMX or AVX512-BF16), where it is faster; else fp32 (without them bf16 is emulated and slower).
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")


class Precision:
    """Autocast context and optional loss scaler for one precision on one device."""

    def __init__(self, name: str, device: torch.device):
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
        if name == "auto":
            name = "bf16" if _bf16_is_fast(device) else "fp32"
        if name == "fp16" and device.type != "cuda":
            raise ValueError("precision='fp16' needs a CUDA device (loss scaling is a GPU technique); "
                             "use 'bf16' or 'fp32' on CPU.")
        self.name = name
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        self.scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true scale before clipping or rescaling them."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)  # skipped when a gradient is inf/nan
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def _bf16_is_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
        except AttributeError:  # private helpers of torch.cpu; absent in some versions
            return False
    return False
