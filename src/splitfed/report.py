"""Run outputs a person reads: the comparison table, summary rows and plots."""

import csv
import math
from pathlib import Path
from typing import Any

SUMMARY_COLUMNS = [
    ("algorithm", "algorithm", "{}"),
    ("rounds", "rounds", "{}"),
    ("final_accuracy", "final acc", "{:.4f}"),
    ("best_accuracy", "best acc", "{:.4f}"),
    ("final_test_loss", "test loss", "{:.4f}"),
    ("final_train_loss", "train loss", "{:.4f}"),
    ("divergence_client_relative", "div c (rel)", "{:.3f}"),
    ("train_s_per_round", "s/round", "{:.3f}"),
    ("mb_up_per_client_round", "MB up/cl/rd", "{:.3f}"),
    ("mb_down_per_client_round", "MB dn/cl/rd", "{:.3f}"),
    ("client_gflop_per_round", "client GFLOP/rd", "{:.3f}"),
    ("server_gflop_per_round", "server GFLOP/rd", "{:.3f}"),
]


def summarize(history: list[dict[str, Any]], algorithms: list[str]) -> list[dict[str, Any]]:
    """One row per algorithm: final and best accuracy, costs per round averaged over the run."""
    rows = []
    for name in algorithms:
        recs = [r for r in history if r["algorithm"] == name]
        if not recs:
            continue
        last = recs[-1]
        divs = [r["divergence_client_relative"] for r in recs if "divergence_client_relative" in r]

        def mean(key: str, scale: float = 1.0, recs: list = recs) -> float:
            return sum(r[key] for r in recs) / len(recs) / scale

        rows.append(
            {
                "algorithm": name,
                "rounds": last["round"],
                "final_accuracy": last["test_accuracy"],
                "best_accuracy": max(r["test_accuracy"] for r in recs),
                "final_test_loss": last["test_loss"],
                "final_train_loss": last["train_loss"],
                "divergence_client_relative": divs[-1] if divs else math.nan,
                "train_s_per_round": mean("train_time_s"),
                "mb_up_per_client_round": mean("bytes_up_per_client", 1e6),
                "mb_down_per_client_round": mean("bytes_down_per_client", 1e6),
                "client_gflop_per_round": mean("client_flops", 1e9),
                "server_gflop_per_round": mean("server_flops", 1e9),
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    cells = [[title for _, title, _ in SUMMARY_COLUMNS]]
    for row in rows:
        cells.append(["–" if _missing(row[key]) else fmt.format(row[key]) for key, _, fmt in SUMMARY_COLUMNS])
    widths = [max(len(r[i]) for r in cells) for i in range(len(SUMMARY_COLUMNS))]
    lines = [  # first column left-aligned, numbers right-aligned
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))
        )
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _missing(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)  # e.g. divergence, never measured in a deployment


def write_summary_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[key for key, _, _ in SUMMARY_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)


def plot_run(history: list[dict[str, Any]], algorithms: list[str], out_dir: Path, title: str) -> list[Path]:
    """accuracy.png (test accuracy and train loss vs round) and divergence.png (client/server side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(name: str, key: str) -> tuple[list[int], list[float]]:
        recs = [r for r in history if r["algorithm"] == name and r.get(key) is not None]
        return [r["round"] for r in recs], [r[key] for r in recs]

    # Distinct line styles keep algorithms with identical curves (SFL-V1 and FedAvg) both visible.
    styles = {name: ("-", "--", "-.", ":")[i % 4] for i, name in enumerate(algorithms)}

    def figure(filename: str, panels: list[tuple[str, str, str, str]]) -> Path:
        """One figure, a panel per (metric key, y label, panel title, y scale), a line per algorithm."""
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5))
        for ax, (key, ylabel, panel_title, yscale) in zip(axes, panels, strict=True):
            for name in algorithms:
                ax.plot(*series(name, key), styles[name], marker=".", label=name)
            ax.set(xlabel="round", ylabel=ylabel, title=panel_title, yscale=yscale)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out_dir / filename, dpi=120)
        plt.close(fig)
        return out_dir / filename

    paths = [
        figure(
            "accuracy.png",
            [
                ("test_accuracy", "test accuracy", "Test accuracy of the aggregated model", "linear"),
                ("train_loss", "train loss", "Training loss", "log"),
            ],
        )
    ]
    if any("divergence_client" in r for r in history):
        panels = [
            (
                f"divergence_{side}_relative",
                f"δ_{side[0]} / ‖∇F‖",
                f"{side.title()}-side gradient divergence (relative), at round start",
                "linear",
            )
            for side in ("client", "server")
        ]
        paths.append(figure("divergence.png", panels))
    return paths
