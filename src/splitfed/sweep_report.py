"""The names ``splitfed report`` had here before the study analysis became a package: see
``splitfed.analysis`` (cli.py, docs/api.md and older notebooks import ``report`` and ``load_claims``
from here).
"""

from .analysis import Claims, Group, PaperFigure, Setting, load_claims, load_groups, report, select_lr

__all__ = ["Claims", "Group", "PaperFigure", "Setting", "load_claims", "load_groups", "report", "select_lr"]
