"""splitfed: split federated learning in PyTorch. MiniBatch-SFL and its baselines on one engine.

from splitfed import Config, run
result = run(Config(dataset="digits", algorithm=("minibatch_sfl", "fedavg"), rounds=5))
result.final_accuracy["minibatch_sfl"], result.models["minibatch_sfl"]
# your own model and data: run(config, model=nn.Sequential(...), data=(x, y)); see docs/api.md

The public names are imported on first use (PEP 562), so ``import splitfed`` (and ``splitfed --help``)
does not import torch.
"""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "ALGORITHMS": ".algorithms",
    "Algorithm": ".algorithms",
    "Config": ".config",
    "DATASETS": ".data",
    "PARTITIONS": ".data",
    "SplitfedError": ".errors",
    "MODELS": ".models",
    "CutModel": ".models",
    "register_model": ".models",
    "split": ".models",
    "RunResult": ".results",
    "load_run": ".results",
    "StopAlgorithm": ".errors",
    "run": ".runner",
    "export_model": ".export",
    "load_model": ".export",
}

__all__ = [
    "ALGORITHMS",
    "DATASETS",
    "MODELS",
    "PARTITIONS",
    "Algorithm",
    "Config",
    "CutModel",
    "RunResult",
    "SplitfedError",
    "StopAlgorithm",
    "export_model",
    "load_model",
    "load_run",
    "register_model",
    "run",
    "split",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first access
    from .algorithms import ALGORITHMS, Algorithm
    from .config import Config
    from .data import DATASETS, PARTITIONS
    from .errors import SplitfedError, StopAlgorithm
    from .export import export_model, load_model
    from .models import MODELS, CutModel, register_model, split
    from .results import RunResult, load_run
    from .runner import run


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
