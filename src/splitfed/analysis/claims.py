"""A claims file (``experiments/paper/claims.toml``): the algorithm of interest, its baselines, the targets
and the paper's figures a report checks a study against."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SplitfedError
from ..typed import from_table, read_toml
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
    """A claims file, read by the one loader of settings files (``typed.from_table``): an unknown key, a
    value of the wrong type or a [[paper]] entry without its baseline is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise SplitfedError(f"claims file {path} not found")
    claims = from_table(Claims, read_toml(path), str(path), kind="claims")
    if claims.last_k < 1:
        raise SplitfedError(f"{path}: last_k must be at least 1, got {claims.last_k}")
    return dataclasses.replace(claims, source=str(path))


def resolve_claims(claims: "str | Path | Claims | None") -> Claims:
    if isinstance(claims, Claims):
        return claims
    if claims is not None:
        return load_claims(claims)
    return load_claims(DEFAULT_CLAIMS) if DEFAULT_CLAIMS.is_file() else Claims()
