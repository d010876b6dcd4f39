"""The ``splitfed`` command: ``run`` an experiment, ``export`` its models, ``list`` what is registered."""

import argparse
import dataclasses
import errno
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from . import __version__
from ._log import HeldWarnings, logging_only_to, message_handler
from .config import CHOICES, FIELDS, REGISTRY_FIELDS, Config, coerce, field_of, read_toml
from .errors import SplitfedError
from .sections import LEGACY, SECTIONS, SETTINGS, flag
from .typed import base_type


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (exit 2), like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"splitfed: error: {message} (see '{self.prog} --help')\n")


def _flag(name: str) -> str:
    if name in SETTINGS:
        return "--" + flag(name)
    meta = FIELDS[name].metadata if name in FIELDS else {}
    return "--" + meta.get("flag", name.replace("_", "-"))


def _metavar(f: dataclasses.Field) -> str:
    """How a flag's value is written: the field's own (P, DIR, C,H,W) or its type's."""
    tp, _ = base_type(f.type)
    return f.metadata.get("metavar") or {int: "INT", float: "FLOAT", str: "NAME"}.get(tp, "LIST")


def _choices(name: str) -> list[str]:
    """The values a field accepts, where they form a list: config's CHOICES or a registry's names."""
    if name in CHOICES:
        return list(CHOICES[name])
    if name not in REGISTRY_FIELDS:
        return []
    from .registry import builtin_entries  # the names, read from the source: no torch for --help

    return [entry for entry, _ in builtin_entries()[name]]


class _HelpFormatter(argparse.HelpFormatter):
    """Each config flag's help ends with its choices and its default, both taken from config.py."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        f = field_of(action.dest)
        if f is None or f.type is bool:
            return text
        extras = []
        choices = _choices(action.dest)
        if choices:
            extras.append("choices: " + ", ".join(choices))
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if default not in (None, {}):
            extras.append(
                "default: " + (",".join(map(str, default)) if isinstance(default, tuple) else str(default))
            )
        extra = f" ({'; '.join(extras)})" if extras else ""
        return text + extra.replace("%", "%%")  # argparse %-formats help strings


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML file of config fields; flags override it")
    for name, f in FIELDS.items():
        if name not in SECTIONS:
            _add_flag(p, name, f, f.metadata["help"])
    # A section's keys as --section.key, under the section's own heading, as the file writes them
    # ([sfl_v2] schedule = ...: --sfl-v2.schedule); the flat old flags still work, unlisted.
    for name, cls in SECTIONS.items():
        group = p.add_argument_group(f"[{name}]", cls.__doc__)
        for key in dataclasses.fields(cls):
            _add_flag(group, f"{name}.{key.name}", key, key.metadata["help"])
    for old, path in LEGACY.items():
        _add_flag(p, old, SETTINGS[path], argparse.SUPPRESS)


def _add_flag(p: Any, name: str, f: dataclasses.Field, help_text: str) -> None:
    """The flag of a field (or a section key, by its path): --x VALUE, or a switch for a bool."""
    if f.type is bool:
        p.add_argument(  # --x, and --no-x for a switch that is on by default
            _flag(name),
            dest=name,
            action=argparse.BooleanOptionalAction if f.default else "store_true",
            default=argparse.SUPPRESS,
            help=help_text,
        )
    elif name == "model_args":
        p.add_argument(
            _flag(name),
            dest=name,
            action="append",
            metavar="KEY=VALUE",
            default=argparse.SUPPRESS,
            help=help_text,
        )
    else:
        p.add_argument(_flag(name), dest=name, metavar=_metavar(f), default=argparse.SUPPRESS, help=help_text)


def _parse_model_args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SplitfedError(f"--model-arg takes KEY=VALUE, got {item!r}")
        value: Any = text
        for convert in (int, float):
            try:
                value = convert(text)
                break
            except ValueError:
                pass
        out[key] = {"true": True, "false": False}.get(text, value)
    return out


def _flag_value(name: str, value: Any) -> Any:
    if name == "model_args":
        return _parse_model_args(value)
    f = field_of(name)
    assert f is not None
    return value if isinstance(value, bool) else coerce(f, value, _flag(name), from_cli=True)


def config_from_args(args: argparse.Namespace) -> Config:
    """TOML file (or, with --resume, the run's own config.toml), then the flags given, in that order."""
    overrides = {name: _flag_value(name, v) for name, v in vars(args).items() if field_of(name) is not None}
    base = Config.from_toml(args.config) if args.config else Config()
    if overrides.get("resume"):
        out = overrides.get("out") or base.out
        if not out:
            raise SplitfedError("--resume needs --out DIR naming the run to continue")
        saved_file = Path(out) / "config.toml"
        if not saved_file.is_file():
            raise SplitfedError(f"nothing to resume in {out}: it has no config.toml")
        # The run's own config, with what this command line changes on top (checked in run()).
        file_values = read_toml(args.config) if args.config else {}
        given = {k: base.get(LEGACY.get(k, k)) for k in file_values}
        base = Config.from_toml(saved_file).replace(**given)
    return base.replace(**overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    from .preflight import preflight

    config = config_from_args(args)
    preflight(config)  # what this machine can hold, checked before anything is loaded or written
    if config.processes > 1 and "WORLD_SIZE" not in os.environ:
        from .spawn import spawn_ranks

        return spawn_ranks(config, sys.argv[1:] if args.argv is None else args.argv)
    from .runner import run

    result = run(config, progress=False)  # main() has pointed the "splitfed" logger at stdout already
    if result.interrupted:  # what was trained is written; say how to go on, as for any Ctrl-C
        raise KeyboardInterrupt
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    export_model(args.run_dir, args.out, args.algorithm, round=args.round)
    return 0


def _cmd_role(args: argparse.Namespace) -> int:
    from .roles import start_role

    start_role(args.role, args.config, getattr(args, "id", None), args.threads)
    return 0


def _cmd_launch(args: argparse.Namespace) -> int:
    from .preflight import preflight
    from .roles import launch_run
    from .services import check_generated

    check_generated()
    given = {k for k in vars(args) if k in FIELDS}
    config = config_from_args(args)
    if "algorithm" not in given and not (args.config and "algorithm" in read_toml(args.config)):
        config = config.replace(algorithm=("minibatch_sfl",))  # centralized has nothing to deploy
    preflight(config, check_out=False)  # the deployment places its run directory in its workdir
    if args.restarts < 0:
        raise SplitfedError(f"--restarts must be 0 or more, got {args.restarts}")
    launch_run(config, args.workdir, args.restarts)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep

    sweep(args.grid, args.out, args.workers)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .sweep_report import report

    path = report(args.sweep_dir, args.out, claims=args.claims)
    logging.getLogger("splitfed").info(f"wrote {path} and its figures")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .registry import builtin_entries  # read from the source: no torch, an answer in milliseconds

    entries = builtin_entries()
    for kind in ("dataset", "partition"):
        print(f"{kind}s: {', '.join(name for name, _ in entries[kind])}")
    for kind in ("algorithm", "model"):
        print(f"{kind}s:")
        for name, doc in entries[kind]:
            print(f"  {name:<15} {doc.replace('``', '')}")
    print("your own algorithm: --algorithm pkg.module:Class (docs/algorithms.md)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="splitfed", description="Split federated learning: MiniBatch-SFL and its baselines."
    )
    parser.add_argument("--version", action="version", version=f"splitfed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p_run = sub.add_parser(
        "run",
        help="train and compare algorithms (default: all six on digits)",
        formatter_class=_HelpFormatter,
    )
    _add_config_flags(p_run)
    p_run.set_defaults(func=_cmd_run)
    _add_sweep(sub)
    _add_export(sub)
    _add_report(sub)
    _add_roles(sub)
    _add_launch(sub)
    # `splitfed bench ...` goes to the benchmark's own parser (see main); listed here for --help.
    sub.add_parser("bench", help="time every algorithm against centralized training (see bench --help)")
    p_list = sub.add_parser("list", help="list algorithms, models, datasets and partitions")
    p_list.set_defaults(func=_cmd_list)
    return parser


Commands = Any  # argparse's _SubParsersAction, private


def _add_sweep(sub: Commands) -> None:
    p = sub.add_parser("sweep", help="run the cross product of config fields in a grid file (resumable)")
    p.add_argument("grid", help="TOML: a base config plus [[grid]] tables of value lists")
    p.add_argument("--out", help="sweep directory (default: runs/<grid file name>)")
    p.add_argument("--workers", type=int, default=1, metavar="INT", help="runs side by side (processes)")
    p.set_defaults(func=_cmd_sweep)


def _add_export(sub: Commands) -> None:
    p = sub.add_parser(
        "export",
        help="save a run's model as a plain PyTorch state_dict (for a model built the same way)",
    )
    p.add_argument("run_dir", metavar="RUN", help="the run directory")
    p.add_argument("--algorithm", metavar="NAME", help="whose model (default: the run's only algorithm)")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the state_dict")
    p.add_argument(
        "--round",
        type=int,
        metavar="INT",
        help="the model after this round, saved by model_every (default: the last round checkpointed)",
    )
    p.set_defaults(func=_cmd_export)


def _add_report(sub: Commands) -> None:
    p = sub.add_parser("report", help="figures and tables of a run, or of a sweep against the paper's claims")
    p.add_argument("sweep_dir", metavar="DIR", help="a run directory or a sweep directory")
    p.add_argument("--out", help="where report.md, aggregate.csv and figures go (default: DIR/report)")
    p.add_argument(
        "--claims",
        metavar="FILE",
        help="claims file (default: experiments/paper/claims.toml if it exists here; none: generic tables)",
    )
    p.set_defaults(func=_cmd_report)


def _add_roles(sub: Commands) -> None:
    for role, text in (
        ("main-server", "the main server"),
        ("fed-server", "the fed server"),
        ("client", "one client"),
    ):
        p = sub.add_parser(role, help=f"run {text} of a deployment (see docs/deploy.md)")
        p.add_argument("--config", required=True, help="deployment file: config fields and a [deploy] table")
        if role == "client":
            p.add_argument("--id", type=int, required=True, help="this client's id K (0..N-1)")
        p.add_argument(
            "--threads",
            type=int,
            metavar="INT",
            help="CPU threads of this process (default: the config's threads)",
        )
        p.set_defaults(func=_cmd_role, role=role.replace("-", "_"))


def _add_launch(sub: Commands) -> None:
    p = sub.add_parser(
        "launch",
        help="a whole deployment on loopback: servers and N clients, TLS",
        formatter_class=_HelpFormatter,
    )
    _add_config_flags(p)
    p.add_argument("--workdir", help="where certificates, tokens, state and logs go (default: a temp dir)")
    p.add_argument(
        "--restarts",
        type=int,
        default=0,
        metavar="N",
        help="start a role that dies again, at most N times per role (default 0: report it, let the "
        "others go on)",
    )
    p.set_defaults(func=_cmd_launch)


# The disk, not splitfed: full, over a size or quota limit, read-only, failing.
STORAGE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv
    # Progress and tables go to stdout through the "splitfed" logger; a library user configures it.
    # In a torch.distributed job rank 0 speaks for every rank: the others say nothing, errors included.
    quiet = os.environ.get("RANK", "0") != "0"
    handler = message_handler()
    held = HeldWarnings()
    handler.addFilter(held.release_on_first_record)
    level = logging.WARNING if quiet else logging.INFO
    # warnings.catch_warnings restores showwarning however the command ends
    with logging_only_to(handler, level), warnings.catch_warnings():
        warnings.showwarning = held.show
        try:
            result = args.func(args)
        except SplitfedError as e:
            held.discard()
            if not quiet:
                print(f"splitfed: error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            held.release()
            print("splitfed: interrupted; continue the run with --out DIR --resume", file=sys.stderr)
            return 130
        except OSError as e:
            if e.errno not in STORAGE_ERRORS:
                held.release()
                raise
            held.discard()
            if not quiet:
                where = f" {e.filename}" if e.filename else " a file"
                print(
                    f"splitfed: error: cannot write{where}: {e.strerror}; what was written before is kept "
                    "(files are replaced whole, checkpoints each round): make room and continue with "
                    "--out DIR --resume",
                    file=sys.stderr,
                )
            return 1
        except BaseException:
            held.release()  # a bug: everything that led to it helps
            raise
        held.release()
        return result


if __name__ == "__main__":
    sys.exit(main())
