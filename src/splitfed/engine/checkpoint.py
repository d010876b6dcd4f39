"""Checkpoints: one file per trained thing, written atomically, read back without running code."""

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import SplitfedError

CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a kill mid-write leaves the previous checkpoint intact."""
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file: say which, and how to go on without it
        raise SplitfedError(
            f"checkpoint {path} is unreadable ({type(e).__name__}); delete it to retrain that algorithm"
        ) from None
    if not isinstance(saved, dict) or saved.get("version") != CHECKPOINT_VERSION:
        raise SplitfedError(f"checkpoint {path} is not a splitfed v{CHECKPOINT_VERSION} checkpoint")
    return saved
