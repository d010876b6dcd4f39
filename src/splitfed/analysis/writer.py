"""report.md, aggregate.csv, margins.csv and the figures of a study (or of one run)."""

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import SplitfedError
from ..plotstyle import label, run_title
from ..report import format_table, plot_run, summarize
from .aggregate import Selection, aggregate_row, select_lr
from .cells import Group, cut_order, rank
from .claims import Claims, resolve_claims
from .clients import clients_sections
from .figures import sections
from .load import devices, load_groups, load_study
from .rundir import is_run, read_config, read_history
from .setting import Setting
from .text import fmt, fmt_lr, fmt_rounds, fmt_seconds, safe, same


def cell_table(groups: list[Group], claims: Claims, lr_varies: bool) -> list[str]:
    k = claims.last_k
    with_val = any(g.has("val_accuracy") for g in groups)
    head = ["algorithm", "cut", "p", *(["lr"] if lr_varies else []), "seeds", "final", f"last-{k}", "best"]
    head += [f"val last-{k}"] if with_val else []
    head += [f"rounds to {100 * t:g} %" for t in claims.targets]
    timed = any(g.has("sim_time_s") for g in groups)  # a device profile: time to each target too
    head += [f"sim s to {100 * t:g} %" for t in claims.targets] if timed else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = [g.algorithm, str(g.cut_layer), "–" if g.ratio is None else str(g.ratio)]
        cells += [fmt_lr(g.lr)] if lr_varies else []
        cells += [str(len(g.histories)), fmt(g.final()), fmt(g.last_k(k)), fmt(g.best())]
        cells += [fmt(g.last_k(k, "val_accuracy"))] if with_val else []
        cells += [fmt_rounds(g.rounds_to(t)) for t in claims.targets]
        cells += [fmt_seconds(g.sim_time_to(t)) for t in claims.targets] if timed else []
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _order(g: Group) -> tuple:
    """Cells in table order: by ratio, cut, algorithm, learning rate."""
    return (
        -1.0 if g.ratio is None else g.ratio,
        cut_order(g.cut_layer),
        rank(g.algorithm),
        g.lr or (0.0, 0.0),
    )


def _claims_lines(claims: Claims) -> list[str]:
    if claims.source is None and claims.algorithm is None:
        return [
            "No claims file: the generic tables only (no margins, no rounds to a target, no reference "
            "learning rate). `splitfed report SWEEP --claims FILE` adds them.",
        ]
    lines = [f"Claims from `{claims.source or 'the caller'}`:"]
    if claims.algorithm:
        bases = ", ".join(label(b) for b in claims.baselines) or "none"
        lines.append(f"{label(claims.algorithm)} against {bases}.")
    for f in claims.paper:
        where = ", ".join(f"{k} = {v}" for k, v in f.where.items()) or "any setting"
        lines.append(f"The paper: {f.text or f'+{f.margin:g} over {label(f.baseline)}'} ({where}).")
    return [" ".join(lines)]


def _report_setting(
    cells: list[Group], out: Path, claims: Claims, plt: Any
) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """One setting's section of report.md, its rows of aggregate.csv and of margins.csv. Where the
    learning rate varies, the figures and tables are drawn once per view: at the reference lr (at each lr
    without one) and, when validation accuracy allows, with each algorithm at its best lr."""
    k = claims.last_k
    lrs = sorted({g.lr for g in cells if g.lr is not None})
    lr_varies = len(lrs) > 1
    selection = select_lr(cells, k) if lr_varies else {}
    chosen = {id(s.chosen) for s in selection.values() if s.chosen is not None}
    aggregate = [aggregate_row(g, claims, (id(g) in chosen) if lr_varies else None) for g in cells]
    first = Setting(cells, out, claims)
    md = ["", f"## {first.title} (algorithms compared at cut layer {first.cut})", ""]
    md += ["**Every cell**", "", *cell_table(cells, claims, lr_varies), ""]
    if not lr_varies:
        lines, margins = sections(first, plt)
        return md + lines, aggregate, margins
    ref = claims.reference_lr
    views: list[tuple[str, str, list[Group]]] = []
    for lr in [(ref, ref)] if ref is not None else lrs:  # no reference lr: none is preferred, a view at each
        at = [g for g in cells if g.lr is not None and all(map(same, g.lr, lr))]
        if at:
            views.append((f"at lr {fmt_lr(lr)}", safe(f"_lr{fmt_lr(lr)}"), at))
        else:
            md += [f"No run of this setting used the reference lr {fmt_lr(lr)}.", ""]
    md += _selection_lines(selection, k)
    if all(s.chosen is not None for s in selection.values()):  # a partial view would mix tuned and untuned
        best = [s.chosen for s in selection.values() if s.chosen is not None]
        views.append(("each algorithm at its best lr (on validation accuracy)", "_best-lr", best))
    margins = []
    for view, tag, view_groups in views:
        lines, rows = sections(Setting(view_groups, out, claims, view, tag), plt)
        md += ["", f"### {view}", "", *lines]
        margins += rows
    return md, aggregate, margins


def _no_choice(s: Selection) -> str:
    """Why a slot with several rates has none chosen."""
    if any(v is None for c, v in zip(s.candidates, s.scores, strict=True) if not c.diverged):
        return "no val_accuracy"
    return "every rate diverged in some seed"


def _unsettled_text(chosen: Group, g: Group) -> str:
    """What a rate that beats the chosen one on fewer seeds must run before the choice stands."""
    mine, theirs = chosen.seed_ids(), set(g.seed_ids())
    shared = [seed for seed in mine if seed in theirs]
    missing = [seed for seed in mine if seed not in theirs]
    return f"{fmt_lr(g.lr)} beats it on {_seeds(shared)} (run it in {_seeds(missing)})"


def _seeds(seeds: list[Any]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def _selection_lines(selection: dict[tuple, Selection], k: int) -> list[str]:
    """The learning rate chosen per cell, on validation accuracy, with every candidate's score."""
    multi = {key: s for key, s in selection.items() if len(s.candidates) > 1}
    if not multi:
        return []
    if all(s.chosen is None for s in multi.values()):
        return [
            "The learning rate varies, but no run recorded `val_accuracy` (configure a validation split): "
            "no learning rate is selected. Selecting on test accuracy would overstate every algorithm, so "
            "the report does not.",
            "",
        ]
    lines = [
        f"Learning rate chosen per cell on validation accuracy (mean over seeds of the last-{k} mean of "
        "`val_accuracy`; test accuracy is never used); each candidate's score in % (a rate that diverged in "
        "some seed is scored on the others and never chosen)",
        "",
        "| algorithm | cut | p | chosen lr | candidates |",
        "|---|---|---|---|---|",
    ]
    for s in multi.values():
        g = s.candidates[0]
        cands = ", ".join(
            f"{fmt_lr(c.lr)}: {'–' if v is None else f'{100 * v:.1f}'}"
            + (
                f" ({len(c.diverged)} of {len(c.diverged) + len(c.histories)} seeds diverged)"
                if c.diverged
                else ""
            )
            for c, v in zip(s.candidates, s.scores, strict=True)
        )
        if s.seeds is not None:
            cands += f"; compared on {_seeds(s.seeds)} (a seed only one rate ran does not count)"
        if s.chosen and s.unsettled:
            cands += "; not settled: " + "; ".join(_unsettled_text(s.chosen, g) for g in s.unsettled)
        chosen = fmt_lr(s.chosen.lr) if s.chosen else f"none ({_no_choice(s)})"
        lines.append(
            f"| {g.algorithm} | {g.cut_layer} | {'–' if g.ratio is None else g.ratio} | {chosen} | {cands} |"
        )
    if any(s.chosen is None for s in multi.values()):
        lines += [
            "",
            "Some cells have no chosen rate (no `val_accuracy`, or every rate diverged in some seed), so "
            "there is no best-lr view (it would mix tuned and untuned cells).",
        ]
    if uneven := _uneven_searches(selection):
        lines += [
            "",
            "Not every algorithm tried the same rates, so where they differ the best-lr view compares "
            "searches of unequal reach: " + "; ".join(uneven) + ".",
        ]
    return [*lines, ""]


def _uneven_searches(selection: dict[tuple, Selection]) -> list[str]:
    """Each place (cut, p) where the algorithms' candidate rates differ, with every algorithm's rates."""
    tried: dict[tuple, dict[str, str]] = defaultdict(dict)
    for (_, _, algorithm, cut, ratio), s in selection.items():
        if algorithm != "centralized":  # one run at its own rate, not a comparison at a p
            tried[cut, ratio][algorithm] = "/".join(fmt_lr(c.lr) for c in s.candidates)
    return [
        f"cut {cut}, p = {'–' if ratio is None else ratio}: "
        + ", ".join(f"{a} {by_algorithm[a]}" for a in sorted(by_algorithm, key=rank))
        for (cut, ratio), by_algorithm in tried.items()
        if len(set(by_algorithm.values())) > 1
    ]


def _run_lines(run_dir: Path, out: Path) -> list[str]:
    """One run's table and figures, as ``splitfed run`` wrote them (drawn again into ``out``)."""
    config = read_config(run_dir / "config.toml")
    history = read_history(run_dir, config)
    present = dict.fromkeys(r["algorithm"] for r in history)
    algorithms = [a for a in config.get("algorithm") or () if a in present]
    algorithms += [a for a in present if a not in algorithms]
    loss = None  # a run older than the loss's record: its axis names no loss
    if (run_dir / "data.json").is_file():
        loss = json.loads((run_dir / "data.json").read_text()).get("loss")
    paths = plot_run(history, algorithms, out, run_title(config), loss)
    stems = list(dict.fromkeys(p.stem for p in paths))
    md = ["", f"## {run_title(config)}", "", "```", format_table(summarize(history, algorithms)), "```", ""]
    return md + [f"![{stem.replace('_', ' ')}]({stem}.png) ([SVG]({stem}.svg))" for stem in stems] + [""]


def report(
    sweep_dir: str | Path, out: str | Path | None = None, claims: "str | Path | Claims | None" = None
) -> Path:
    """Write report.md, aggregate.csv, margins.csv and the figures to ``out`` (default SWEEP_DIR/report/);
    returns the path of report.md. ``sweep_dir`` may be one run's directory. ``claims``: a claims file or
    Claims; None reads experiments/paper/claims.toml when the current directory has it, else reports
    without claims."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SplitfedError(f"{sweep_dir} is not a directory")
    claims = resolve_claims(claims)
    runs = load_study(sweep_dir)
    groups = load_groups(sweep_dir, runs)
    out = Path(out) if out is not None else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    single = is_run(sweep_dir)
    md = _preamble(sweep_dir.name, single, claims, sorted({name for g in groups for name, _ in g.others}))
    md += _devices_lines(devices(runs))
    if single:
        md += _run_lines(sweep_dir, out)
    aggregate: list[dict[str, Any]] = []
    margin_rows: list[dict[str, Any]] = []
    for key in sorted({(g.setting, g.others) for g in groups}, key=str):
        cells = sorted((g for g in groups if (g.setting, g.others) == key), key=_order)
        lines, rows, margins = _report_setting(cells, out, claims, plt)
        md += lines
        aggregate += rows
        margin_rows += margins
    md += clients_sections(groups, out, claims, plt)
    write_csv(aggregate, out / "aggregate.csv")
    if margin_rows:
        write_csv(margin_rows, out / "margins.csv")
    else:
        (out / "margins.csv").unlink(missing_ok=True)  # not left over from a report with claims
    (out / "report.md").write_text("\n".join(md) + "\n")
    return out / "report.md"


def _devices_lines(count: dict[str, int]) -> list[str]:
    """Where the runs ran, when their provenance says (a study pooled across machines says so)."""
    if not count:
        return []
    listed = ", ".join(f"{name} ({n} run{'s' if n > 1 else ''})" for name, n in sorted(count.items()))
    if len(count) == 1:
        return ["", f"Every run with a recorded provenance ran on one device: {listed}."]
    return [
        "",
        f"**Runs of {len(count)} devices are pooled here**: {listed}. Their float results differ in the last "
        "bits, and more over many steps; runs.csv says which run ran where (prov_device_name).",
    ]


def _preamble(name: str, single: bool, claims: Claims, varying: list[str]) -> list[str]:
    """The head of report.md: what each statistic means, the claims read, the fields that vary."""
    k = claims.last_k
    md = [
        f"# {'Run' if single else 'Sweep'} report: {name}",
        "",
        f"Per cell (runs that differ only in their seed), over seeds: **final** = test accuracy at the last "
        f"round, **last-{k}** = mean test accuracy of the last {k} rounds (all of a shorter run), "
        "**best** = the best round"
        + (
            ", **rounds to X %** = the first round whose test accuracy reaches X % "
            "(never: not within the run)"
            if claims.targets
            else ""
        )
        + ". Every number is the mean ± std over seeds (one seed's is marked n = 1); accuracies in %, "
        "divergences averaged over the rounds where they were measured. Algorithms are compared at one cut "
        "layer per setting (the one most of them ran at); curves are shaded ± 1 std over seeds. Accuracy "
        "axes span 0–100 %; cost axes (bytes, client GFLOP) are cumulative and logarithmic.",
        "",
        *_claims_lines(claims),
    ]
    if varying:
        md += [
            "",
            "Other config fields that vary across the sweep (each value its own setting): "
            + ", ".join(varying)
            + ".",
        ]
    return md
