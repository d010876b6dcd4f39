"""experiments/paper/epoch_tables.py on a made-up study whose every number is known: where a chosen rate
sits in its grid, how a rate's score is annotated, and the decisive table's margins and 95 % intervals."""

import importlib.util
import math
from pathlib import Path

from splitfed.analysis import Group, select_lr

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("epoch_tables", ROOT / "experiments/paper/epoch_tables.py")
et = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(et)


def cell(algorithm, p, lr, test, val=None, loss=0.5, model="cnn4", others=()):
    """A cell of three seeds (one per entry of ``test``), 5 rounds each at a constant accuracy."""
    histories = [
        [{"round": r, "test_accuracy": t, "val_accuracy": val or t, "train_loss": loss} for r in range(1, 6)]
        for t in test
    ]
    return Group(("fmnist", model, 10), algorithm, 2, p, histories, list(range(len(test))), (lr, lr), others)


def study(cells, chosen):
    s = et.Study.__new__(et.Study)
    s.tried_cells = {(et.model_label(g), g.algorithm, g.ratio, g.lr[0]): g for g in cells}
    s.cells = {key: g for key, g in s.tried_cells.items() if g.histories}
    s.chosen = {(et.model_label(g), g.algorithm, g.ratio): g for g in chosen}
    s.scores, s.compared = {}, {}
    return s


def test_a_chosen_rate_is_said_to_sit_inside_its_grid_or_at_an_edge():
    mb = [cell(et.MB, 1.0, lr, [0.6] * 3) for lr in (0.005, 0.01, 0.05)]
    v2 = [cell(et.V2, 1.0, lr, [0.6] * 3) for lr in (0.01, 0.05)]
    il = [cell(et.IL, 1.0, 0.01, [0.6] * 3)]
    fl = [cell(et.FL, 1.0, lr, [0.6] * 3) for lr in (0.01, 0.05)]
    s = study(mb + v2 + il + fl, [mb[1], v2[1], il[0], fl[0]])
    assert s.bracket(et.MB, 1.0) == ""
    assert s.bracket(et.V2, 1.0) == "top of its grid"
    assert s.bracket(et.FL, 1.0) == "bottom of its grid"
    assert s.bracket(et.IL, 1.0) == "the only rate run"


def scored(g, chosen, *others):
    """``g``'s cell in the selection table, scored as select_lr scores it beside ``others`` (its slot's
    other rates)."""
    selection = next(iter(select_lr([g, *others], et.K).values()))
    return et.score_cell(g, selection.scores[selection.candidates.index(g)], chosen, selection.seeds)


def test_a_rate_score_is_bold_where_chosen_and_says_its_seeds_and_divergences():
    assert scored(cell(et.MB, 0.95, 0.1, [0.8] * 3, val=0.853), True) == "**85.3**"
    one = cell(et.MB, 0.95, 0.05, [0.8], val=0.863)
    assert scored(one, False) == "86.3 (one seed)"
    gone = cell(et.V2, 0.95, 0.2, [0.1], val=0.092, loss=math.nan)
    assert scored(gone, False) == "9.2 (diverged, one seed)"
    mixed = cell(et.MB, 0.95, 0.2, [0.8] * 3, val=0.605)
    mixed.histories[0][-1]["train_loss"] = math.nan
    assert scored(mixed, False) == "60.5 (one of three seeds diverged)"
    # runs that stopped where they diverged: their seeds are the cell's diverged, the score the survivors'
    stopped = cell(et.V2, 1.0, 0.1, [0.7], val=0.701)
    stopped.diverged = [1, 2]
    assert scored(stopped, False) == "70.1 (two of three seeds diverged)"
    stopped.histories, stopped.seeds, stopped.diverged = [], [], [0, 1, 2]
    assert scored(stopped, False) == "diverged (three seeds)"
    # the chosen rate given two more seeds for its margins: scored on the seeds the others ran, as chosen
    five = cell(et.MB, 1.0, 0.005, [0.7, 0.7, 0.7, 0.4, 0.4])
    three = cell(et.MB, 1.0, 0.01, [0.6] * 3)
    assert scored(five, True, three) == "**70.0** (five seeds, scored on the three seeds the other rates ran)"
    assert scored(five, True) == "**58.0**"
    # one of them diverged too: both said, the score still the compared seeds'
    five.diverged, five.histories, five.seeds = [3], five.histories[:3] + five.histories[4:], [0, 1, 2, 4]
    assert (
        scored(five, False, three)
        == "70.0 (one of five seeds diverged, scored on the three seeds the other rates ran)"
    )


def test_the_decisive_table_pairs_margins_by_seed_with_students_t_intervals():
    mb = cell(et.MB, 0.95, 0.1, [0.80, 0.82, 0.84])
    v2 = cell(et.V2, 0.95, 0.1, [0.78, 0.79, 0.80])  # margins 2, 3, 4 points: mean 3, std 1
    low_v2 = cell(et.V2, 0.95, 0.05, [0.7] * 3)
    s = study([mb, v2, low_v2], [mb, v2])
    rows = et.tuned_table(s)[2:]
    assert rows[0].startswith("| cnn4 | 0.95 | MiniBatch-SFL | 0.1 (the only rate run) | 3 | 82.0 ± 2.0 |")
    # half-width 4.303 × 1 / √3 = 2.48 points
    assert rows[1] == (
        "| cnn4 | 0.95 | SFL-V2 | 0.1 (top of its grid) | 3 | 79.0 ± 1.0 | 79.0 ± 1.0 "
        "| +3.0 ± 1.0 | [+0.5, +5.5] | +3.0 ± 1.0 | [+0.5, +5.5] |"
    )


def test_the_normalisation_table_compares_the_variants_on_the_seeds_they_all_ran():
    def family(args, mb, v2, il, fl):
        others = (("model_args", args),) if args else ()
        return [
            cell(a, 0.95, 0.01, test, others=others)
            for a, test in ((et.MB, mb), (et.V2, v2), (et.IL, il), (et.FL, fl))
        ]

    plain = family((), [0.80, 0.82, 0.84], [0.78, 0.79, 0.80], [0.8] * 3, [0.8] * 3)
    batch = family((("norm", "batch"),), [0.9] * 3, [0.7] * 3, [0.7] * 3, [0.9] * 3)
    batch[1].histories.append(batch[1].histories[0])  # a fourth seed only SFL-V2 ran: left out
    batch[1].seeds.append(3)
    cells = plain + batch
    s = study(cells, [])
    none, bn = et.norm_table(s)[2:]
    # margins over SFL-V2: 2, 3, 4 points (std 1, half-width 4.303 / √3 = 2.48)
    assert none == (
        "| cnn4 | none | 0.01 | 0, 1, 2 | 82.0 ± 2.0 | 79.0 ± 1.0 | 80.0 ± 0.0 | 80.0 ± 0.0 "
        "| +3.0 ± 1.0 [+0.5, +5.5] | +2.0 ± 2.0 [−3.0, +7.0] | +2.0 ± 2.0 [−3.0, +7.0] |"
    )
    assert bn.startswith("| cnn4 | BatchNorm | 0.01 | 0, 1, 2 | 90.0 ± 0.0 | 70.0 ± 0.0 |")
    # a BatchNorm run at a second rate, seed 0: its block compares it with the plain model's seed 0 there
    more = [cell(a, 0.95, 0.05, [t] * 3) for a, t in ((et.MB, 0.5), (et.V2, 0.4), (et.FL, 0.2))]
    more.append(cell(et.MB, 0.95, 0.05, [0.6], others=(("model_args", (("norm", "batch"),)),)))
    s = study(cells + more, [])
    rows = et.norm_table(s)[2:]
    assert rows[2:] == [
        "| cnn4 | none | 0.05 | 0 | 50.0 | 40.0 | | 20.0 | +10.0 | | +30.0 |",
        "| cnn4 | BatchNorm | 0.05 | 0 | 60.0 | | | | | | |",
    ]
    # a cell that diverged there (trained on through NaN, or stopped): said so, neither averaged nor compared
    more[1].histories[0][-1]["train_loss"] = math.nan
    stopped = cell(et.IL, 0.95, 0.05, [])
    stopped.diverged = [0]
    rows = et.norm_table(study(cells + more + [stopped], []))[2:]
    assert rows[2] == "| cnn4 | none | 0.05 | 0 | 50.0 | diverged | diverged | 20.0 | | | +30.0 |"


def test_the_last5_table_shows_seeds_0_to_2_of_a_cell_given_more():
    cells = [cell(a, 1.0, 0.01, [0.6] * 3) for a in (et.MB, et.V2, et.FL)]
    cells[0] = cell(et.MB, 1.0, 0.01, [0.6, 0.6, 0.6, 0.1, 0.1])
    cells[0].diverged = [5]  # a diverged sixth seed is not one of the three either
    rows = et.last5_table(study(cells, []))[2:]
    assert "| MiniBatch-SFL, lr 0.01 | | | | | 60.0 ± 0.0 |" in rows


def test_the_recalibration_table_is_the_probe_s_csv_by_algorithm(tmp_path):
    assert et.recalibration_table(tmp_path) == []  # the probe has not run: no table
    (tmp_path / "bn_recalibration.csv").write_text(
        "run,algorithm,schedule,non_iid_ratio,lr,seed,as_trained,server_bn,all_bn\n"
        "a,sfl_v2,interleaved,0.95,0.01,0,0.7000,0.7500,0.7400\n"
        "b,minibatch_sfl,,0.95,0.01,1,0.8600,0.8600,0.8700\n"
        "c,minibatch_sfl,,0.95,0.01,0,0.8400,0.8500,0.8500\n"
        "d,sfl_v2,client_sequential,0.95,0.01,0,0.6000,0.4000,0.4000\n"
    )
    assert et.recalibration_table(tmp_path)[2:] == [
        "| MiniBatch-SFL | 0.95 | 0.01 | 0, 1 | 85.0 ± 1.4 | 85.5 ± 0.7 | 86.0 ± 1.4 | +0.5 ± 0.7 |",
        "| SFL-V2 | 0.95 | 0.01 | 0 | 60.0 | 40.0 | 40.0 | −20.0 |",
        "| SFL-V2 interleaved | 0.95 | 0.01 | 0 | 70.0 | 75.0 | 74.0 | +5.0 |",
    ]


def test_the_last5_table_says_where_a_cell_diverged():
    cells = [cell(a, 0.8, 0.2, [0.88] * 3) for a in (et.MB, et.FL)]
    cells[0].histories[1][-1]["train_loss"] = math.nan  # trained on through NaN in seed 1
    stopped = cell(et.V2, 0.8, 0.2, [])
    stopped.diverged = [0, 1, 2]  # stopped where it diverged, in every seed
    rows = et.last5_table(study([*cells, stopped], []))[2:]
    assert rows == [
        "| FedAvg, lr 0.2 | | | 88.0 ± 0.0 | | |",
        "| SFL-V2, lr 0.2 | | | diverged | | |",
        "| MiniBatch-SFL, lr 0.2 | | | diverged in one of three seeds | | |",
    ]


def test_the_normalisation_control_chooses_each_variant_s_rate_on_validation_and_pairs_its_margins():
    batch = (("model_args", (("norm", "batch"),)),)
    # MiniBatch-SFL is best at 0.05 on validation, SFL-V2 at 0.01 (its grid's bottom; 0.05 scores lower)
    cells = [
        cell(et.MB, 0.95, 0.01, [0.80] * 3, val=0.81, others=batch),
        cell(et.MB, 0.95, 0.05, [0.84, 0.86, 0.88], val=0.85, others=batch),
        cell(et.V2, 0.95, 0.01, [0.70, 0.71, 0.72], val=0.71, others=batch),
        cell(et.V2, 0.95, 0.05, [0.90], val=0.60, others=batch),  # seed 0 only: 0.01 scored on it too
        cell(et.MB, 0.95, 0.1, [0.84], val=0.84, others=batch),
    ]
    s = et.Study(cells)
    assert et.norm_selection_table(s)[2:] == [
        "| cnn4 | BatchNorm | MiniBatch-SFL | 81.0 | **85.0** | 84.0 (one seed) | 0.05 |",
        "| cnn4 | BatchNorm | SFL-V2 | **71.0** (three seeds, scored on the one seed the other rates ran) "
        "| 60.0 (one seed) | | 0.01 (bottom of its grid; chosen on seed 0) |",
    ]
    # margins 14, 15, 16 points at the chosen rates: the test set (0.90 at 0.05) never chose SFL-V2's rate;
    # SFL-V2's rate was chosen on seed 0 alone, and its row says so (MiniBatch-SFL's, on all three, not)
    assert et.tuned_table(s, tuple(et.NAMES), (0.95,))[2:] == [
        "| cnn4, BatchNorm | 0.95 | MiniBatch-SFL | 0.05 | 3 | 86.0 ± 2.0 | 86.0 ± 2.0 | | | | |",
        "| cnn4, BatchNorm | 0.95 | SFL-V2 | 0.01 (bottom of its grid; chosen on seed 0) | 3 | 71.0 ± 1.0 "
        "| 71.0 ± 1.0 "
        "| +15.0 ± 1.0 | [+12.5, +17.5] | +15.0 ± 1.0 | [+12.5, +17.5] |",
    ]


def test_the_resnet_table_lists_each_algorithm_at_lr_0_01_with_the_seeds_it_has():
    mb = cell(et.MB, 0.95, 0.01, [0.8, 0.82, 0.84], model=et.RESNET)
    il = cell(et.IL, 0.95, 0.01, [0.7, 0.74], model=et.RESNET)  # a schedule that has run two seeds so far
    fl = cell(et.FL, 1.0, 0.01, [0.5] * 3, model=et.RESNET)
    off = cell(et.V2, 0.95, 0.05, [0.9] * 3, model=et.RESNET)  # another rate: not this table's
    lines = et.resnet_table(study([mb, il, fl, off], []))
    assert lines[0] == "| p | algorithm | seeds | final | last-5 | best |"
    assert lines[2:] == [
        "| 0.95 | MiniBatch-SFL | 0, 1, 2 | 82.0 ± 2.0 | 82.0 ± 2.0 | 82.0 ± 2.0 |",
        "| 0.95 | SFL-V2 interleaved | 0, 1 | 72.0 ± 2.8 | 72.0 ± 2.8 | 72.0 ± 2.8 |",
        "| 1.0 | FedAvg (FL) | 0, 1, 2 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 |",
    ]


def test_the_plateau_table_spans_the_margin_over_the_rates_validation_cannot_tell_apart():
    # MiniBatch-SFL: 0.05 and 0.1 score 88.0 and 88.05 on validation (0.1 chosen, 0.05 within 0.1 points),
    # 0.2 scores 85.0 (off the plateau); SFL-V2: 0.1 chosen alone (0.05 is 0.5 points below)
    mb = [
        cell(et.MB, 0.95, 0.05, [0.80, 0.82, 0.84], val=0.88),
        cell(et.MB, 0.95, 0.1, [0.81, 0.83, 0.85], val=0.8805),
        cell(et.MB, 0.95, 0.2, [0.90] * 3, val=0.85),
    ]
    v2 = [cell(et.V2, 0.95, 0.05, [0.9] * 3, val=0.755), cell(et.V2, 0.95, 0.1, [0.70, 0.71, 0.72], val=0.76)]
    s = et.Study([*mb, *v2])
    assert et.near_rates(s, et.MB, 0.95, et.CNN) == [0.05, 0.1]
    assert et.near_rates(s, et.V2, 0.95, et.CNN) == [0.1]
    # at the chosen rates +11, +12, +13 points by seed, mean +12.0; with MiniBatch-SFL at 0.05 one less
    (row,) = et.plateau_table(s, ((et.CNN, 0.95),))[2:]
    assert row == "| cnn4 | 0.95 | SFL-V2 | 0.05, 0.1 | 0.1 | +12.0 | +11.0 to +12.0 |"


def test_the_resnet_rates_figure_is_drawn_once_sfl_v2_ran_a_second_rate(tmp_path):
    one = cell(et.V2, 0.95, 0.01, [0.7] * 3, model=et.RESNET)
    mb = cell(et.MB, 0.95, 0.01, [0.8] * 3, model=et.RESNET)
    assert not et.resnet_rates_figure(study([one, mb], []), tmp_path)
    assert not list(tmp_path.iterdir())
    two = cell(et.V2, 0.95, 0.02, [0.75], model=et.RESNET)  # seed 0 only, as the probe ran it
    assert et.resnet_rates_figure(study([one, two, mb], []), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"resnet_rates.png", "resnet_rates.svg"}
