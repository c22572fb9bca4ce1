"""Where torch code runs: one device choice for every stage (segmentation, encoders, MIL).

Imports torch: import this module only from code that needs torch anyway.
"""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None``: CUDA when available, else the CPU; otherwise ``torch.device(device)``."""
    if device is None or device == "auto":
        return default_device()
    return torch.device(device)
