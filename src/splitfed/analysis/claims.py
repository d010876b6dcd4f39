"""A claims file (``experiments/paper/claims.toml``): the algorithm of interest, its baselines, the targets
and the paper's figures a report checks a study against."""

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SplitfedError
from .text import same

if TYPE_CHECKING:
    from .cells import Group

DEFAULT_CLAIMS = Path("experiments/paper/claims.toml")  # relative to the current directory
DEFAULT_LAST_K = 5


@dataclass(frozen=True)
class PaperFigure:
    """One number the paper reports: ``algorithm``'s margin over ``baseline`` in the setting ``where``."""

    baseline: str
    margin: float  # as the paper prints it (percent; points or relative unspecified)
    where: dict[str, Any] = field(default_factory=dict)
    text: str = ""


@dataclass(frozen=True)
class Claims:
    """What a report checks a sweep against; ``Claims()`` is none: the generic tables only."""

    algorithm: str | None = None  # the algorithm of interest
    baselines: tuple[str, ...] = ()  # margins of `algorithm` over each
    last_k: int = DEFAULT_LAST_K  # the last-k mean is over a run's last k rounds
    targets: tuple[float, ...] = ()  # rounds to reach these test accuracies
    reference_lr: float | None = None  # where lr varies: the "at lr X" view
    paper: tuple[PaperFigure, ...] = ()
    source: str | None = None  # the file read

    def figures(self, baseline: str, group: "Group") -> list[PaperFigure]:
        """The paper's figures about ``baseline`` whose setting matches ``group``."""
        return [
            f
            for f in self.paper
            if f.baseline == baseline and all(same(group.value_of(k), v) for k, v in f.where.items())
        ]


def load_claims(path: str | Path) -> Claims:
    path = Path(path)
    if not path.is_file():
        raise SplitfedError(f"claims file {path} not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SplitfedError(f"{path}: {e}") from None
    known = {f.name for f in dataclasses.fields(Claims)} - {"source"}
    if unknown := sorted(set(raw) - known):
        raise SplitfedError(
            f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    try:
        paper = tuple(PaperFigure(**entry) for entry in raw.pop("paper", []))
    except TypeError as e:
        raise SplitfedError(f"{path}: [[paper]]: {e}") from None
    claims = Claims(
        algorithm=raw.get("algorithm"),
        baselines=tuple(raw.get("baselines", ())),
        last_k=int(raw.get("last_k", DEFAULT_LAST_K)),
        targets=tuple(float(t) for t in raw.get("targets", ())),
        reference_lr=raw.get("reference_lr"),
        paper=paper,
        source=str(path),
    )
    if claims.last_k < 1:
        raise SplitfedError(f"{path}: last_k must be at least 1, got {claims.last_k}")
    return claims


def resolve_claims(claims: "str | Path | Claims | None") -> Claims:
    if isinstance(claims, Claims):
        return claims
    if claims is not None:
        return load_claims(claims)
    return load_claims(DEFAULT_CLAIMS) if DEFAULT_CLAIMS.is_file() else Claims()
