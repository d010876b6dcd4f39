"""The tables and figures of docs/results.md §5 (time to accuracy on phone-class clients), from the study's
tables:

    python experiments/edge/time_tables.py [--out docs/results/phone-time]

writes tables.md (which §5 carries verbatim; tests/test_results_doc.py checks it), every time to
accuracy as a table (time_to_accuracy.csv: algorithm, cut, N, p, target, link speed, rounds, simulated
hours, and the run the accuracy comes from) and the figures time_to_80.{png,svg} and
accuracy_vs_hours.{png,svg}. Read from experiments/edge/results/phone-time
through ``splitfed.analysis``.

How a time to accuracy is made: a run's test accuracy after each round (from training) and the simulated
seconds of each of its rounds on every link speed (from the edge-time model, engine/timeline.py, recorded
by the same run), summed up to the first round that reaches the target. SFL-V1 takes FedAvg's accuracy
and SL at cuts 1 and 3 takes SL's at cut 2 (exact identities under SGD,
tests/algorithms/test_identities.py); their rounds take the mean time of a one-round run of their own at
that cut. That is close because a round is nearly the same work every round (full participation, equal
client data; only the clients' order changes, which moves a sequential round a little): tables.md
states how far a round's time strayed from its run's mean, and between p = 0 and 0.95.
"""

import itertools
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from splitfed.analysis.load import load_study
from splitfed.analysis.script import write_tables
from splitfed.analysis.text import table_row, table_rule
from splitfed.plotstyle import label, save_figure, style

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "experiments/edge/results/phone-time"
OUT = ROOT / "docs/results/phone-time"
ALGORITHMS = ("minibatch_sfl", "sfl_v2", "sfl_v1", "sl", "fedavg")
CUTS = (1, 2, 3)
CLIENTS = (10, 100)
RATIOS = (0.0, 0.95)
TARGETS = (0.7, 0.8)
OWN = "6.3 Mbit/s"  # the runs' own profile: phone-4g-mixed at 4G's median uplink


def route_key(algorithm: str, cut: int) -> tuple[str, int | None]:
    """An (algorithm, cut) as the study keys it: FedAvg has no cut."""
    return algorithm, None if algorithm == "fedavg" else cut


def trained_as(algorithm: str, cut: int) -> tuple[str, int | None]:
    """The run whose accuracy an (algorithm, cut) has: its own, or one equal to it by an identity."""
    if algorithm in ("sfl_v1", "fedavg"):
        return "fedavg", None  # SFL-V1 is FedAvg at any cut (SGD); FedAvg has no cut
    if algorithm == "sl":
        return "sl", 2  # SL is SGD over the clients' batches at any cut
    return algorithm, cut


@dataclass
class Study:
    curves: dict[tuple, list[float]]  # (algorithm, cut, N, p) -> test accuracy after rounds 1, 2, ...
    rounds: dict[tuple, list[dict[str, float]]]  # (algorithm, cut, N, p) -> per round: speed -> sim s
    speeds: list[str]  # the link speeds, slowest first
    first: dict[tuple, dict] = field(default_factory=dict)  # (algorithm, cut, N) -> a round-1 record

    def timed(self, algorithm: str, cut: int, n: int) -> list[list[dict[str, float]]]:
        """Every run's simulated round times of (algorithm, cut) at N = n, whatever its p."""
        key = (*route_key(algorithm, cut), n)
        return [v for k, v in self.rounds.items() if k[:3] == key]

    def per_round(self, algorithm: str, cut: int, n: int) -> dict[str, float] | None:
        """Mean simulated seconds of a round on each link speed, over the rounds of every run."""
        rounds = [r for run in self.timed(algorithm, cut, n) for r in run]
        return {v: statistics.fmean(r[v] for r in rounds) for v in self.speeds} if rounds else None

    def curve(self, algorithm: str, cut: int, n: int, p: float) -> list[float] | None:
        trained, trained_cut = trained_as(algorithm, cut)
        return self.curves.get((trained, trained_cut, n, p))

    def rounds_to(self, algorithm: str, cut: int, n: int, p: float, target: float) -> int | float | None:
        """The first round that reaches ``target``; inf: never in the run; None: not run."""
        curve = self.curve(algorithm, cut, n, p)
        if curve is None:
            return None
        return next((k + 1 for k, a in enumerate(curve) if a >= target), math.inf)

    def hours(self, algorithm: str, cut: int, n: int, p: float, speed: str) -> list[float] | None:
        """Simulated hours at the end of each round of the accuracy curve: the run's own rounds where it
        trained, else (an identity's accuracy) rounds of its mean round."""
        curve, mean = self.curve(algorithm, cut, n, p), self.per_round(algorithm, cut, n)
        if curve is None or mean is None:
            return None
        own = self.rounds.get((*route_key(algorithm, cut), n, p), [])
        seconds = [own[k][speed] if k < len(own) else mean[speed] for k in range(len(curve))]
        return [t / 3600 for t in itertools.accumulate(seconds)]

    def hours_to(self, algorithm: str, cut: int, n: int, p: float, target: float, speed: str) -> float | None:
        """Simulated hours to the target; inf: not within the rounds run; None: not run."""
        rounds, hours = self.rounds_to(algorithm, cut, n, p, target), self.hours(algorithm, cut, n, p, speed)
        if rounds is None or hours is None:
            return None
        return math.inf if math.isinf(rounds) else hours[rounds - 1]

    def rounds_run(self, algorithm: str, cut: int, n: int, p: float) -> int:
        return len(self.curve(algorithm, cut, n, p) or [])

    def spread(self) -> tuple[float, float]:
        """How far a round's time strays: over rounds of one run (the most any round is off its run's
        mean), and between p = 0 and 0.95 (the most one (algorithm, cut, N)'s mean differs), relative."""
        within = across = 0.0
        for run in self.rounds.values():
            for v in self.speeds:
                mean = statistics.fmean(r[v] for r in run)
                within = max(within, *(abs(r[v] / mean - 1) for r in run))
        for algorithm, cut, n, _ in self.rounds:
            means = [statistics.fmean(r[OWN] for r in run) for run in self.timed(algorithm, cut, n)]
            across = max(across, max(means) / min(means) - 1)
        return within, across


def speed_of(name: str) -> float:
    return float(name.split()[0])


def load(study: Path = STUDY) -> Study:
    curves: dict[tuple, list[float]] = {}
    rounds: dict[tuple, list[dict[str, float]]] = {}
    first: dict[tuple, dict] = {}
    for run in load_study(study):
        if run.status != "finished":
            continue
        c = run.config
        (algorithm,) = c["algorithm"]
        key = (*route_key(algorithm, c["cut_layer"]), c["clients"], c["non_iid_ratio"])
        (history,) = run.histories().values()
        accuracy = [r["test_accuracy"] for r in history]
        if key in rounds:  # a point run twice for different lengths (the grid's later tables)
            shorter, longer = sorted((curves.get(key, []), accuracy), key=len)
            if longer[: len(shorter)] != shorter:  # the same seed repeats the shorter run's rounds
                raise SystemExit(f"run {run.run}: the longer run of its point does not repeat the other's")
            if len(rounds[key]) > len(history):
                continue  # the longer run is read
        if c["rounds"] > 1:  # a timing-only run (one round) trains nothing §5 reads
            curves[key] = accuracy
        rounds[key] = [r["sim_round_s_by_profile"] for r in history]
        first[key[:3]] = history[0]
    speeds = sorted({v for run in rounds.values() for v in run[0]}, key=speed_of)
    return Study(curves, rounds, speeds, first)


def routes() -> list[tuple[str, int]]:
    """(algorithm, cut) of every row: the split algorithms at each cut, FedAvg once."""
    return [(a, c) for a in ALGORITHMS if a != "fedavg" for c in CUTS] + [("fedavg", 2)]


def route_name(algorithm: str, cut: int) -> str:
    return label(algorithm) if algorithm == "fedavg" else f"{label(algorithm)}, cut {cut}"


def fmt_hours(hours: float | None, rounds_run: int) -> str:
    if hours is None:
        return ""
    if math.isinf(hours):
        return f"> {rounds_run} rd"
    return f"{hours:.2g}" if hours < 1 else f"{hours:.1f}" if hours < 10 else f"{hours:.0f}"


def round_table(s: Study, n: int) -> list[str]:
    """Simulated minutes per round at every link speed, N = n."""
    head = ["algorithm", *(f"{v}" for v in s.speeds)]
    lines = [table_row(head), table_rule(len(head))]
    for algorithm, cut in routes():
        seconds = s.per_round(algorithm, cut, n)
        cells = [f"{seconds[v] / 60:.1f}" if seconds else "" for v in s.speeds]
        lines.append(table_row([route_name(algorithm, cut), *cells]))
    return lines


def anatomy_table(s: Study) -> list[str]:
    """Where a round's time goes at the runs' own link speed: the bytes all clients move, how much of the
    round a client waits (mean over clients), and the critical path's shares."""
    head = ["algorithm"]
    for n in CLIENTS:
        head += [f"N = {n}: MB/round", "client idle", "critical: uplink", "downlink", "client compute"]
    lines = [table_row(head), table_rule(len(head))]
    for algorithm, cut in routes():
        cells = []
        for n in CLIENTS:
            r = s.first.get((*route_key(algorithm, cut), n))
            if r is None:
                cells += [""] * 5
                continue
            idle = statistics.fmean(r["sim_client_idle_s"]) / r["sim_round_s"]
            path = {k: v / r["sim_round_s"] for k, v in r["sim_critical_s"].items()}
            cells += [f"{sum(r['bytes'].values()) / 1e6:,.0f}", f"{idle:.0%}"]
            cells += [f"{path.get(k, 0.0):.0%}" for k in ("up", "down", "client compute")]
        lines.append(table_row([route_name(algorithm, cut), *cells]))
    return lines


def target_table(s: Study, speed: str) -> list[str]:
    """Rounds and hours to each target at one link speed, every (N, p)."""
    head = ["algorithm"] + [f"N = {n}, p = {p:g}: {t:.0%}" for n in CLIENTS for p in RATIOS for t in TARGETS]
    lines = [table_row(head), table_rule(len(head))]
    for algorithm, cut in routes():
        cells = []
        for n in CLIENTS:
            for p in RATIOS:
                for t in TARGETS:
                    rounds = s.rounds_to(algorithm, cut, n, p, t)
                    hours = s.hours_to(algorithm, cut, n, p, t, speed)
                    ran = s.rounds_run(algorithm, cut, n, p)
                    text = fmt_hours(hours, ran)
                    cells.append(f"{text} ({rounds})" if hours is not None and math.isfinite(hours) else text)
        lines.append(table_row([route_name(algorithm, cut), *cells]))
    return lines


def best_cut(s: Study, algorithm: str, n: int, p: float, target: float, speed: str):
    """(hours, cut) of the algorithm's fastest cut to the target; None where none reached it."""
    found = [(h, c) for c in CUTS if (h := s.hours_to(algorithm, c, n, p, target, speed)) is not None]
    found = [x for x in found if math.isfinite(x[0])]
    return min(found) if found else None


def fastest_table(s: Study, n: int, p: float, target: float) -> list[str]:
    """Per link speed: each algorithm's hours to the target at its best cut (the cut in brackets), the
    fastest in bold, and MiniBatch-SFL's time over the fastest; "> h": no cut reached the target within
    the rounds run, which took at least h hours at every cut run."""
    head = ["uplink", *(label(a) for a in ALGORITHMS), "MiniBatch-SFL / fastest"]
    lines = [table_row(head), table_rule(len(head))]
    for speed in s.speeds:
        best = {a: best_cut(s, a, n, p, target, speed) for a in ALGORITHMS}
        reached = [b[0] for b in best.values() if b]
        fastest = min(reached) if reached else None
        cells = []
        for a in ALGORITHMS:
            b = best[a]
            if b is None:  # not within the rounds run at any cut timed (a lower bound), or not run
                ran = [h for c in CUTS if (h := s.hours(a, c, n, p, speed))]
                cells.append(f"> {fmt_hours(min(h[-1] for h in ran), 0)}" if ran else "")
                continue
            text = fmt_hours(b[0], 0) + ("" if a == "fedavg" else f" (cut {b[1]})")
            cells.append(f"**{text}**" if b[0] == fastest else text)
        ratio = f"{best['minibatch_sfl'][0] / fastest:.2f}" if best["minibatch_sfl"] and fastest else ""
        lines.append(table_row([speed, *cells, ratio]))
    return lines


def tables(study: Path = STUDY) -> str:
    """tables.md: §5's tables."""
    s = load(study)
    within, across = s.spread()
    out = [
        f"A round's simulated time strayed at most {within:.2%} from its run's mean (the clients' order of a "
        f"sequential round), and a route's mean at most {across:.2%} between p = 0 and 0.95.",
        "",
    ]
    for n in CLIENTS:
        out += [f"Simulated minutes per round (mean over rounds), N = {n}:", "", *round_table(s, n), ""]
    out += [f"Where a round's time goes at {OWN} (round 1):", "", *anatomy_table(s), ""]
    out += [f"Hours to 70 % and 80 % test accuracy at {OWN} (rounds in brackets):", ""]
    out += [*target_table(s, OWN), ""]
    for n in CLIENTS:
        for p in RATIOS:
            out += [
                f"Hours to 80 % at each link speed, each algorithm at its fastest cut: N = {n}, p = {p:g}:"
            ]
            out += ["", *fastest_table(s, n, p, 0.8), ""]
    return "\n".join(out)


def figures(s: Study, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(CLIENTS), len(RATIOS), figsize=(9.5, 7), sharex=True, squeeze=False)
    for (i, n), (j, p) in ((a, b) for a in enumerate(CLIENTS) for b in enumerate(RATIOS)):
        ax = axes[i][j]
        for a in ALGORITHMS:
            points = [(speed_of(v), b[0], b[1]) for v in s.speeds if (b := best_cut(s, a, n, p, 0.8, v))]
            if not points:
                continue
            x, y, _ = zip(*points, strict=True)
            ax.plot(x, y, **style(a).kwargs(), markersize=5, label=label(a))
            if a != "fedavg":
                for xi, yi, c in points:
                    ax.annotate(str(c), (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set(xscale="log", yscale="log", title=f"N = {n}, p = {p:g}")
        ax.grid(True, which="both", alpha=0.3)
        if i == len(CLIENTS) - 1:
            ax.set_xlabel("client uplink, Mbit/s (downlink 3.4×)")
        if j == 0:
            ax.set_ylabel("simulated hours to 80 %")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Time to 80 % on heterogeneous phones (FMNIST, cnn4); numbers: the fastest cut", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out / "time_to_80", dpi=130)
    accuracy_figure(s, out, plt)


def accuracy_figure(s: Study, out: Path, plt) -> None:
    """Test accuracy against simulated hours at the runs' own link speed, each algorithm at its fastest
    cut to 80 % (cut 2 where none reaches it)."""
    fig, axes = plt.subplots(len(CLIENTS), len(RATIOS), figsize=(9.5, 7), squeeze=False)
    for (i, n), (j, p) in ((a, b) for a in enumerate(CLIENTS) for b in enumerate(RATIOS)):
        ax = axes[i][j]
        for a in ALGORITHMS:
            cut = (best_cut(s, a, n, p, 0.8, OWN) or (None, 2))[1]
            curve, hours = s.curve(a, cut, n, p), s.hours(a, cut, n, p, OWN)
            if not curve or not hours:
                continue
            name = label(a) if a == "fedavg" else f"{label(a)} (cut {cut})"
            ax.plot(hours, [100 * v for v in curve], **style(a).kwargs(), markersize=4, label=name)
        ax.set(xscale="log", title=f"N = {n}, p = {p:g}", ylim=(30, 92))
        ax.axhline(80, color="0.6", linewidth=0.8)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines[:-1]:  # a curve besides the 80 % line
            ax.legend(fontsize=7)
        if i == len(CLIENTS) - 1:
            ax.set_xlabel(f"simulated hours at {OWN} uplink")
        if j == 0:
            ax.set_ylabel("test accuracy, %")
    fig.suptitle("Accuracy against simulated time on heterogeneous phones (FMNIST, cnn4)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out / "accuracy_vs_hours", dpi=130)


def write_csv(s: Study, path: Path) -> None:
    """Every (algorithm, cut, N, p, target, link speed): rounds and simulated hours ("inf": not within
    the rounds run), and the run whose accuracy it uses (an identity's, for SFL-V1 and SL off cut 2)."""
    head = "algorithm,cut,clients,non_iid_ratio,target,uplink,rounds,hours,rounds_run,accuracy_of\n"
    rows = []
    for algorithm, cut in routes():
        for n in CLIENTS:
            for p in RATIOS:
                trained, trained_cut = trained_as(algorithm, cut)
                for t in TARGETS:
                    for speed in s.speeds:
                        hours = s.hours_to(algorithm, cut, n, p, t, speed)
                        if hours is None:
                            continue
                        rounds = s.rounds_to(algorithm, cut, n, p, t)
                        of = trained if trained_cut is None else f"{trained} cut {trained_cut}"
                        ran = s.rounds_run(algorithm, cut, n, p)
                        rows.append(
                            f"{algorithm},{'' if algorithm == 'fedavg' else cut},{n},{p:g},{t:g},"
                            f"{speed_of(speed):g},{rounds},{hours:.4f},{ran},{of}"
                        )
    path.write_text(head + "\n".join(rows) + "\n")


def main() -> None:
    out, study = write_tables(__doc__.splitlines()[0], tables, OUT, STUDY)
    s = load(study)
    write_csv(s, out / "time_to_accuracy.csv")
    figures(s, out)
    print(f"wrote {out / 'time_to_accuracy.csv'}")
    print(f"wrote {out / 'time_to_80'}.{{png,svg}}, {out / 'accuracy_vs_hours'}.{{png,svg}}")


if __name__ == "__main__":
    main()
