"""experiments/paper/bn_recalibration.py: recomputing a BatchNorm's running statistics over the clients'
data gives exactly their mean and variance at that layer, touches nothing else, and knows the sides."""

import importlib.util
from pathlib import Path

import torch

from splitfed.models import MODELS

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bn_recal", ROOT / "experiments/paper/bn_recalibration.py")
bn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bn)


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    model = MODELS.get("cnn4")(10, (1, 8, 8), norm="batch")
    for m in model.modules():  # statistics far from the data's, as a last one-class batch leaves them
        if isinstance(m, bn.BATCH_NORMS):
            m.running_mean.fill_(5.0)
            m.running_var.fill_(0.01)
    return model


def test_the_server_side_is_what_follows_the_cut():
    assert bn.server_side(_model(), 2) == ["fc1", "fc2"]
    assert bn.server_side(_model(), 1) == ["conv2", "fc1", "fc2"]


def test_recalibrating_the_server_side_gives_the_exact_statistics_of_its_inputs_and_nothing_else():
    model, x = _model(), torch.randn(64, 1, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momentum = model.fc1[2].momentum
    bn.recalibrate(model, ["fc1"], x, batch=64)
    with torch.no_grad():  # fc1's BatchNorm sees the linear layer's output, the client side in eval mode
        h = model.fc1[1](model.fc1[0](model.conv2(model.conv1(x))))
    assert torch.allclose(model.fc1[2].running_mean, h.mean(0), atol=1e-5)
    assert torch.allclose(model.fc1[2].running_var, h.var(0, unbiased=True), rtol=1e-4, atol=1e-5)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"fc1.2.running_mean", "fc1.2.running_var", "fc1.2.num_batches_tracked"}
    assert model.fc1[2].momentum == momentum and not model.training


def test_in_equal_batches_the_recomputed_mean_is_the_whole_data_s():
    model, x = _model(), torch.randn(60, 1, 8, 8)
    bn.recalibrate(model, [""], x, batch=20)
    with torch.no_grad():
        h = model.conv1[0](x)
    assert torch.allclose(model.conv1[1].running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert not torch.equal(model.fc1[2].running_mean, torch.full_like(model.fc1[2].running_mean, 5.0))


def test_a_sweep_folder_that_is_not_there_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["bn_recalibration.py", str(tmp_path / "nowhere")])
    try:
        bn.main()
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("main() accepted a missing folder")
    assert "is not a folder" in capsys.readouterr().err
