"""experiments/paper/drift_report.py reads §1b's study too: which of its runs are a method of §1c."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("drift_report", ROOT / "experiments/paper/drift_report.py")
dr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dr)

PLAIN = {"model": "cnn4", "cut_layer": 2, "local_epochs": 1, "algorithm": ["fedavg"], "model_args": {}}


def test_only_the_plain_cnn4_at_cut_2_is_a_method_of_the_study():
    assert dr.method_of(PLAIN) == "fedavg"
    assert dr.method_of({**PLAIN, "algorithm": ["minibatch_sfl"], "prox_mu": 0.01}) == "minibatch_sfl+prox"
    # the normalisation control's cnn4 shares every other field: were it read, its seeds would overwrite
    # the plain model's at the same rate
    assert dr.method_of({**PLAIN, "model_args": {"norm": "group"}}) is None
    assert dr.method_of({**PLAIN, "sflv2_schedule": "interleaved", "algorithm": ["sfl_v2"]}) is None
    assert dr.method_of({**PLAIN, "cut_layer": 3}) is None
