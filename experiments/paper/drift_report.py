"""Issue 20's study: MiniBatch-SFL against FL that corrects its client drift, and MiniBatch-SFL with a drift
correction of its own (docs/results.md §1c). Reads the runs of two sweeps (their tables), chooses each
method's hyper-parameter on validation, and writes the tables and the figure:

    python experiments/paper/drift_report.py [--out docs/results/fmnist-epoch-drift]

Methods: FedAvg, FedProx, SCAFFOLD, FedAdam and MiniBatch-SFL (plain, with a proximal term, with control
variates), all on cnn4 at cut 2, one-epoch rounds, 20 rounds (experiments/paper/fmnist-epoch.toml and
fmnist-epoch-drift.toml). For each method and non-IID ratio p, the candidate settings (its learning rate,
μ or server rate) are scored by validation accuracy (the mean of the last 5 rounds' val_accuracy, averaged
over the seeds the setting was run with, as §1b chooses; the test set is never looked at) and the best is
reported over every seed it was run with. Margins are
MiniBatch-SFL's (at its own chosen rate) minus each method's, paired by seed.
"""

import argparse
import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

from splitfed.analysis import load_study
from splitfed.plotstyle import save_figure

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = [
    ROOT / "experiments/paper/results/fmnist-epoch",
    ROOT / "experiments/paper/results/fmnist-epoch-drift",
]
RATIOS = (0.8, 0.95, 1.0)
K = 5  # last-k rounds
METHODS = [
    "minibatch_sfl",
    "minibatch_sfl+prox",
    "minibatch_sfl+cv",
    "fedavg",
    "fedprox",
    "scaffold",
    "fedadam",
]
LABELS = {
    "minibatch_sfl": "MiniBatch-SFL",
    "minibatch_sfl+prox": "MiniBatch-SFL + prox",
    "minibatch_sfl+cv": "MiniBatch-SFL + control variates",
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
    "scaffold": "SCAFFOLD",
    "fedadam": "FedAdam",
}


def method_of(cfg: dict) -> str | None:
    """The method a run is, or None for runs outside this study."""
    if cfg.get("model") != "cnn4" or cfg.get("cut_layer") != 2 or cfg.get("local_epochs") != 1:
        return None
    if cfg.get("model_args"):  # the normalisation control's cnn4 variants are other models
        return None
    if cfg.get("sflv2_schedule", "client_sequential") != "client_sequential":
        return None
    (name,) = cfg["algorithm"]
    if name == "minibatch_sfl" and cfg.get("prox_mu") is not None:
        return "minibatch_sfl+prox"
    if name == "minibatch_sfl" and cfg.get("control_variates"):
        return "minibatch_sfl+cv"
    return name if name in METHODS else None


def knob_of(cfg: dict) -> str:
    """The hyper-parameters a method's candidates differ in, as text."""
    parts = [f"lr {cfg['lr']:g}"]
    if cfg.get("prox_mu") is not None:
        parts.append(f"μ {cfg['prox_mu']:g}")
    if cfg.get("fed_lr") is not None:
        parts.append(f"η_g {cfg['fed_lr']:g}")
    return ", ".join(parts)


def load(sweeps: list[Path]) -> dict:
    """method -> p -> knob -> seed -> history (finished runs, and diverged ones: see below)."""
    runs: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for sweep in sweeps:
        for run in load_study(sweep):  # the study's tables (or, while a sweep runs, its run folders)
            cfg, history = run.config, list(run.records)
            method = method_of(cfg)
            p = cfg.get("non_iid_ratio")
            if method is None or p not in RATIOS:
                continue
            # an unfinished run counts only where it diverged: it is a rate that was tried, and lost. A
            # run stops at its first non-finite round and says so (status diverged; one of splitfed before
            # that check trained on, and wrote NaN records): that round is appended as NaN.
            if run.status == "diverged":
                nan = float("nan")
                history.append(
                    {"round": len(history) + 1, "train_loss": nan, "val_accuracy": nan, "test_accuracy": nan}
                )
            diverged = any(not math.isfinite(r.get("train_loss") or 0.0) for r in history)
            if run.status != "finished" and not diverged:
                continue
            runs[method][p][knob_of(cfg)][cfg["seed"]] = history
    # FedProx with μ = 0 is FedAvg (an exact test of the package): FedAvg's runs at a rate FedProx ran
    # are its μ = 0 candidate, so that μ is chosen from a bracket that includes no proximal term at all.
    for p, prox in runs["fedprox"].items():
        for lr in {k.split(", ")[0] for k in prox}:
            if lr in runs["fedavg"][p]:
                prox[f"{lr}, μ 0"] = runs["fedavg"][p][lr]
    return runs


def last_k(history: list[dict], key: str = "test_accuracy") -> float:
    values = [r[key] for r in history if r.get(key) is not None]
    tail = values[-K:]
    return statistics.fmean(tail) if tail and all(math.isfinite(v) for v in tail) else float("nan")


def choose(candidates: dict) -> tuple[str | None, dict]:
    """The knob with the best validation accuracy (the last-k mean, averaged over the seeds it was run
    with, as docs/results.md §1b chooses), with every candidate's score."""
    scores = {
        knob: statistics.fmean(last_k(h, "val_accuracy") for h in seeds.values())
        for knob, seeds in candidates.items()
    }
    valid = {k: v for k, v in scores.items() if math.isfinite(v)}
    return (max(valid, key=valid.get) if valid else None), scores


def edges(knob: str, candidates: dict) -> str:
    """Where the chosen setting sits at the end of what was tried, per hyper-parameter with two values or
    more among the candidates that share its other values: "lr top" means no higher rate was run, so the
    search along lr is not bracketed."""

    def parse(k: str) -> dict[str, float]:
        return {name: float(v) for name, v in (part.split(" ") for part in k.split(", "))}

    chosen, out, searched = parse(knob), [], False
    for axis, value in chosen.items():
        tried = {
            c[axis]
            for c in map(parse, candidates)
            if axis in c and all(c.get(a) == v for a, v in chosen.items() if a != axis)
        }
        searched |= len(tried) > 1
        if len(tried) > 1 and value in (min(tried), max(tried)):
            out.append(f"{axis} {'top' if value == max(tried) else 'bottom'}")
    return ", ".join(out) or ("bracketed" if searched else "one setting run")


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    m = statistics.fmean(values) * 100
    s = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f} ({len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs/results/fmnist-epoch-drift"))
    parser.add_argument(
        "--studies", nargs=2, type=Path, default=SWEEPS, help="the two studies (default: the repository's)"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines, selection_rows, margin_rows, chosen = compose(args.studies)
    (out / "tables.md").write_text("\n".join(lines) + "\n")
    for name, rows in (("selection.csv", selection_rows), ("margins.csv", margin_rows)):
        with (out / name).open("w", newline="") as f:
            if rows:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    figure(chosen, out)
    print("\n".join(lines))
    print(f"wrote {out}/tables.md, selection.csv, margins.csv, accuracy.png/.svg")


def compose(studies: list[Path]) -> tuple[list[str], list[dict], list[dict], dict]:
    """The two tables' lines (tables.md), the rows of selection.csv and margins.csv, and each method's
    chosen setting with its runs (for the figure)."""
    runs = load(studies)
    chosen: dict = {}
    selection_rows, lines = [], []
    for method in METHODS:
        for p in RATIOS:
            knob, scores = choose(runs[method][p])
            chosen[method, p] = (knob, runs[method][p].get(knob, {}))
            for k, score in sorted(scores.items()):
                seeds = sorted(runs[method][p][k])
                selection_rows.append(
                    {
                        "method": method,
                        "p": p,
                        "setting": k,
                        "val_last5_mean_over_seeds": score,
                        "chosen": k == knob,
                        "seeds": " ".join(map(str, seeds)),
                    }
                )
    lines += [
        "| method | p | chosen on validation | at the grid's edge | last-5 test acc., % (seeds) | final, % |",
        "|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        for p in RATIOS:
            knob, seeds = chosen[method, p]
            lines.append(
                f"| {LABELS[method]} | {p:g} | {knob or '–'} | "
                f"{edges(knob, runs[method][p]) if knob else '–'} | "
                f"{mean_std([last_k(h) for h in seeds.values()])} | "
                f"{mean_std([h[-1]['test_accuracy'] for h in seeds.values()])} |"
            )
    lines += [
        "",
        "| MiniBatch-SFL over | p | last-5, points (seeds) | final, points | per seed (last-5) |",
        "|---|---|---|---|---|",
    ]
    margin_rows = []
    for other in METHODS[1:]:
        for p in RATIOS:
            _, mb = chosen["minibatch_sfl", p]
            _, them = chosen[other, p]
            seeds = sorted(set(mb) & set(them))
            last5 = [last_k(mb[s]) - last_k(them[s]) for s in seeds]
            final = [mb[s][-1]["test_accuracy"] - them[s][-1]["test_accuracy"] for s in seeds]
            for s, a, b in zip(seeds, last5, final, strict=True):
                margin_rows.append(
                    {"over": other, "p": p, "seed": s, "last5_points": a * 100, "final_points": b * 100}
                )
            per_seed = ", ".join(f"{v * 100:+.1f}" for v in last5)
            lines.append(
                f"| {LABELS[other]} | {p:g} | {mean_std(last5).replace(' (', ' ( ').replace('( ', '(')} | "
                f"{mean_std(final)} | {per_seed} |"
            )
    return lines, selection_rows, margin_rows, chosen


def figure(chosen: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RATIOS), figsize=(4.2 * len(RATIOS), 3.6), sharey=True)
    styles = {
        m: (c, ls)
        for m, c, ls in zip(
            METHODS,
            ["C0", "C0", "C0", "C1", "C2", "C3", "C4"],
            ["-", "--", ":", "-", "-", "-", "-"],
            strict=True,
        )
    }
    for ax, p in zip(axes, RATIOS, strict=True):
        for method in METHODS:
            knob, seeds = chosen[method, p]
            if not seeds:
                continue
            rounds = [r["round"] for r in next(iter(seeds.values()))]
            curves = [[r["test_accuracy"] * 100 for r in h] for h in seeds.values()]
            mean = [statistics.fmean(v) for v in zip(*curves, strict=True)]
            color, ls = styles[method]
            ax.plot(
                rounds,
                mean,
                color=color,
                ls=ls,
                label=f"{LABELS[method]} ({knob})" if p == RATIOS[0] else LABELS[method],
            )
        ax.set_title(f"p = {p:g}")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy, % (mean over seeds)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        "FMNIST, cnn4 cut 2, N = 10, one-epoch rounds; each method at its setting chosen on validation",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, out / "accuracy", dpi=130)  # the SVG without a date and with fixed ids: it diffs


if __name__ == "__main__":
    main()
