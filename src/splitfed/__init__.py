"""splitfed: split federated learning in PyTorch. MiniBatch-SFL and its baselines on one engine.

from splitfed import Config, run
result = run(Config(dataset="digits", algorithm=("minibatch_sfl", "fedavg"), rounds=5))
result.history[-1]["test_accuracy"]; result.models["minibatch_sfl"]
"""

from .algorithms import ALGORITHMS, Algorithm
from .config import Config
from .data import DATASETS, PARTITIONS
from .errors import SplitfedError
from .models import MODELS, CutModel, register_model, split
from .runner import RunResult, run

__version__ = "0.1.0"

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
    "register_model",
    "run",
    "split",
]
