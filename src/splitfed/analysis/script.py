"""The command line of a study's table script (experiments/*/..._tables.py): compose tables.md from the
study's committed tables and write it where docs/results.md's tables are checked against it."""

import argparse
from collections.abc import Callable
from pathlib import Path


def write_tables(
    description: str, compose: Callable[[Path], str], out: Path, study: Path
) -> tuple[Path, Path]:
    """``--out`` (default ``out``) gets tables.md, composed from ``--study`` (default ``study``); returns
    both, for a script that writes more there (figures)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument(
        "--study", type=Path, default=study, help="the study's tables (default: the repository's)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tables.md").write_text(compose(args.study))
    print(f"wrote {args.out / 'tables.md'}")
    return args.out, args.study
