"""The look of every figure splitfed draws (a run's and a study's), defined once: ``STYLES`` gives each
algorithm a colour, a line style and a marker, ``label`` its readable name, ``save_figure`` the files
written; the names a reader understands for what config.toml records; the accuracy and cost axes.
"""

import functools
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import PARTITION_OPTIONS

# Readable names in legends; a name not listed here is shown as given.
ALGORITHM_LABELS = {
    "minibatch_sfl": "MiniBatch-SFL",
    "sfl_v1": "SFL-V1",
    "sfl_v2": "SFL-V2",
    "sl": "SL",
    "fedavg": "FedAvg (FL)",
    "centralized": "Centralized",
}


@dataclass(frozen=True)
class LineStyle:
    """How one algorithm is drawn in every figure: colour, line style and marker all differ per algorithm,
    so two algorithms with identical numbers (SFL-V1 and FedAvg under plain SGD) both stay visible."""

    color: str
    linestyle: str | tuple[int, tuple[int, ...]]  # a name or matplotlib's (offset, on-off sequence)
    marker: str

    def kwargs(self) -> dict[str, Any]:
        return {"color": self.color, "linestyle": self.linestyle, "marker": self.marker}


# The one mapping of algorithm to look, used by the run's figures and the sweep report's alike.
STYLES: dict[str, LineStyle] = {
    "minibatch_sfl": LineStyle("C3", "-", "o"),
    "sfl_v1": LineStyle("C1", "--", "s"),
    "sfl_v2": LineStyle("C2", "-.", "^"),
    "sl": LineStyle("C4", (0, (1, 1)), "D"),  # densely dotted
    "fedavg": LineStyle("C0", (0, (5, 1, 1, 1, 1, 1)), "v"),  # dash-dot-dot
    "centralized": LineStyle("k", ":", "x"),
}
_SPARE = [
    LineStyle("C5", "-", "P"),
    LineStyle("C6", "--", "*"),
    LineStyle("C7", "-.", "h"),
    LineStyle("C8", ":", "<"),
    LineStyle("C9", "-", ">"),
]


def style(algorithm: str) -> LineStyle:
    """The look of ``algorithm``; one not in STYLES (a registered extra) gets a fixed spare look."""
    if algorithm in STYLES:
        return STYLES[algorithm]
    return _SPARE[zlib.crc32(algorithm.encode()) % len(_SPARE)]  # stable across processes, unlike hash()


# opens the tail of a variant's name: ``sfl_v2 (sflv2_schedule=interleaved)`` is SFL-V2 run at a setting that
# no other algorithm of its sweep varies (the sweep report makes it a row of its own)
VARIANT = " ("


def split_variant(algorithm: str) -> tuple[str, str]:
    """The algorithm's own name and its variant's tail ('' for none)."""
    base, opening, tail = algorithm.partition(VARIANT)
    return base, opening + tail


def label(algorithm: str) -> str:
    """The readable name; a variant keeps its tail."""
    base, tail = split_variant(algorithm)
    return ALGORITHM_LABELS.get(base, base) + tail


def line_kwargs(algorithm: str, points: int) -> dict[str, Any]:
    """plot() arguments for one algorithm's line of ``points`` points: its style, its readable name, and
    about a dozen markers, placed at different rounds for different algorithms so that markers of
    identical curves do not cover each other."""
    every = max(1, math.ceil(points / 12))
    order = [*STYLES, algorithm].index(algorithm)
    return {
        **style(algorithm).kwargs(),
        "markersize": 5,
        "markevery": (order % every, every),
        "label": label(algorithm),
    }


# PNG for a quick look and for README/report.md; SVG beside it because it scales without blur, opens in
# any browser, and is text (a regenerated figure diffs); PDF would need a viewer and suits LaTeX only.
FIGURE_FORMATS = ("png", "svg")


def save_figure(fig: Any, path_stem: Path, dpi: int = 120) -> list[Path]:
    """Write ``fig`` as PNG and SVG (path_stem + .png/.svg), close it; returns the paths written.

    The SVG carries no date and fixed element ids, so the same figure gives the same file."""
    import matplotlib.pyplot as plt

    paths = []
    with plt.rc_context({"svg.hashsalt": "splitfed"}):
        for fmt in FIGURE_FORMATS:
            path = path_stem.with_name(f"{path_stem.name}.{fmt}")
            metadata = {"Date": None} if fmt == "svg" else None
            fig.savefig(path, dpi=dpi, metadata=metadata)
            paths.append(path)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------------------
# names a reader understands: what config.toml records is made for resuming, not for reading

# config.model / config.dataset of an object given to run(): models.PYTHON_MODEL and data.PYTHON_DATA (not
# imported: both modules import torch, and the CLI's report must not)
_PYTHON = "python:"
DEFAULT_LOSS = "cross-entropy"  # what setup trains on when run() is given no loss


def model_name(recorded: str) -> str:
    """A model's readable name from config.model: a registered name as is; ``python:MLP@<fingerprint>``
    (an object given to run()) is ``MLP``; ``pkg.module:build_mlp`` (an importable builder) ``build_mlp``."""
    if recorded.startswith(_PYTHON):
        return recorded.removeprefix(_PYTHON).partition("@")[0] or "user model"
    return recorded.rpartition(":")[2].rpartition(".")[2] or recorded


def dataset_name(recorded: str) -> str:
    """A data set's readable name from config.dataset: a registered name as is; ``python:<fingerprint>``
    (tensors given to run()) is "user data", ``python:<name>@<fingerprint>`` (data given with a name) the
    name; a data file its file name."""
    if recorded.startswith(_PYTHON):
        name, at, _ = recorded.removeprefix(_PYTHON).partition("@")
        return name if at and name else "user data"
    return Path(recorded).name if "/" in recorded or "\\" in recorded else recorded


# a partition's option as a caption says it (PARTITION_OPTIONS: which config field holds it, its default)
_PARTITION_TEXT = {
    "non_iid_ratio": "non-IID ratio p = {}",
    "dirichlet": "Dirichlet α = {}",
    "shards": "{} label shards per client",
}


def partition_text(config: Mapping[str, Any]) -> str:
    """How the clients' data were dealt, from a run's config; an option left unset is its default."""
    partition = config.get("partition") or "non_iid_ratio"
    if partition not in PARTITION_OPTIONS:
        return "IID" if partition == "iid" else partition
    option, default = PARTITION_OPTIONS[partition]
    value = default if config.get(option) is None else config[option]
    return _PARTITION_TEXT.get(partition, partition + " {}").format(value)


def run_title(config: Mapping[str, Any]) -> str:
    """A run's figure title from its config (a Config's to_dict() or its config.toml): the model's and the
    data set's names, never their fingerprints."""
    return (
        f"{model_name(str(config.get('model')))} on {dataset_name(str(config.get('dataset')))}, "
        f"cut {config.get('cut_layer')}, N = {config.get('clients')} clients, {partition_text(config)}"
    )


def loss_name(loss: Callable[..., Any] | None) -> str:
    """The loss a run trains on, as an axis label names it: cross-entropy (the default), with the options a
    ``functools.partial`` or an ``nn.CrossEntropyLoss`` gives it (``label_smoothing=0.1``), or the user
    function's own name. Read by attribute only: no torch import."""
    if loss is None:
        return DEFAULT_LOSS
    if isinstance(loss, functools.partial):
        options = ", ".join(f"{k}={v}" for k, v in loss.keywords.items())
        return f"{loss_name(loss.func)}, {options}" if options else loss_name(loss.func)
    name = getattr(loss, "__name__", None) or type(loss).__name__
    if name == "cross_entropy" and getattr(loss, "__module__", "") == "torch.nn.functional":
        return DEFAULT_LOSS
    if name == "CrossEntropyLoss":  # an nn.Module loss: its smoothing changes what its values mean
        smoothing = getattr(loss, "label_smoothing", 0.0)
        return DEFAULT_LOSS + (f", label_smoothing={smoothing}" if smoothing else "")
    return "user loss" if name == "<lambda>" else name


def loss_label(loss: str | None) -> str:
    """The training-loss axis: in nats only for the default cross-entropy; a run that did not record its
    loss (older than the record) names none."""
    if loss is None:
        return "training loss"
    return "training loss (cross-entropy, nats)" if loss == DEFAULT_LOSS else f"training loss ({loss})"


# ---------------------------------------------------------------------------------------------------------
# axes

# Accuracy axes span the whole range: a range zoomed to the data makes a 0.6-point gap fill the plot.
ACCURACY_RANGE = (0.0, 100.0)  # percent


def accuracy_axis(ax: Any) -> None:
    """An accuracy axis in percent, from 0 to 100 whatever the data."""
    ax.set_ylim(*ACCURACY_RANGE)


def integer_rounds(ax: Any) -> None:
    """Round axes show whole rounds only."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# ---------------------------------------------------------------------------------------------------------
# what a round cost the clients: the cost axes of the accuracy-against-cost figures


def bytes_per_client(record: dict[str, Any]) -> float:
    """MB (10⁶ B) each client sent and received in the round (mean over the round's clients)."""
    return 1e-6 * ((record.get("bytes_up_per_client") or 0.0) + (record.get("bytes_down_per_client") or 0.0))


def client_gflop(record: dict[str, Any]) -> float:
    """10⁹ training FLOPs of the round's client sides, all clients together."""
    return 1e-9 * (record.get("client_flops") or 0.0)


# file stem -> (a round's cost, its cumulative axis' label, what a line without cost did not spend)
COSTS: dict[str, tuple[Callable[[dict[str, Any]], float], str, str]] = {
    "accuracy_vs_bytes": (
        bytes_per_client,
        "MB sent + received per client, cumulative (log scale)",
        "no bytes sent",
    ),
    "accuracy_vs_client_flops": (
        client_gflop,
        "client-side training GFLOP, all clients, cumulative (log scale)",
        "no client compute",
    ),
}
