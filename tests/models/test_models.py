from collections import OrderedDict

import pytest
import torch
from torch import nn

from splitfed import MODELS, SplitfedError, register_model, split
from splitfed.models import CutModel, build_model, num_params

# Every registered model with inputs it is meant for; ResNet-18 at a small width keeps the forward fast
# (the full width is checked by parameter count below).
INPUTS = {"cnn4": (1, 28, 28), "digits_cnn": (1, 8, 8), "resnet18": (3, 32, 32)}
ARGS = {
    "resnet18": [{"width": 8, "norm": "batch"}, {"width": 8, "norm": "group"}],
    "cnn4": [{}, {"norm": "batch"}, {"norm": "group"}],
}


def model_cases():
    for name in MODELS:
        for args in ARGS.get(name, [{}]):
            model = build_model(name, 10, INPUTS.get(name, (1, 28, 28)), args)
            for cut in model.cut_points:
                yield pytest.param(name, args, cut, id=f"{name}-{args}-cut{cut}")


@pytest.mark.parametrize(("name", "args", "cut"), list(model_cases()))
def test_client_then_server_equals_the_full_model(name, args, cut):
    torch.manual_seed(0)
    model = build_model(name, 10, INPUTS.get(name, (1, 28, 28)), args).eval()
    client, server = split(model, cut)
    x = torch.randn(3, *INPUTS.get(name, (1, 28, 28)))
    with torch.no_grad():
        assert torch.equal(server(client(x)), model(x))
    assert num_params(client) + num_params(server) == num_params(model)
    # the halves share the model's modules: nothing is copied
    assert {id(p) for p in client.parameters()} | {id(p) for p in server.parameters()} == {
        id(p) for p in model.parameters()
    }


def test_cnn4_parameter_count_and_smashed_shapes():
    model = build_model("cnn4", 10, (1, 28, 28))
    assert num_params(model) == 1_592_258
    x = torch.zeros(2, 1, 28, 28)
    shapes = {cut: tuple(split(model, cut)[0](x).shape[1:]) for cut in model.cut_points}
    assert shapes == {1: (16, 14, 14), 2: (32, 7, 7), 3: (1000,)}


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_resnet18_split_table_of_the_spec(norm):
    model = build_model("resnet18", 10, (3, 32, 32), {"norm": norm})
    assert num_params(model) == 11_173_962
    table = {
        1: (149_824, 11_024_138),
        2: (675_392, 10_498_570),
        3: (2_775_104, 8_398_858),
        4: (11_168_832, 5_130),
    }
    smashed = {1: (64, 32, 32), 2: (128, 16, 16), 3: (256, 8, 8), 4: (512, 4, 4)}
    for cut, (n_client, n_server) in table.items():
        client, server = split(model, cut)
        assert (num_params(client), num_params(server)) == (n_client, n_server)
        with torch.no_grad():
            assert tuple(client.eval()(torch.zeros(1, 3, 32, 32)).shape[1:]) == smashed[cut]


def test_cut_outside_the_range_names_the_range():
    model = build_model("resnet18", 10, (3, 32, 32), {"width": 4})
    with pytest.raises(SplitfedError, match="cut_layer 5 is outside this model's range 1..4"):
        split(model, 5)


def test_model_arguments_are_checked():
    with pytest.raises(SplitfedError, match="has no argument 'depth'; it accepts: norm, width"):
        build_model("resnet18", 10, (3, 32, 32), {"depth": 34})
    with pytest.raises(SplitfedError, match="norm must be 'batch' or 'group'"):
        build_model("resnet18", 10, (3, 32, 32), {"norm": "layer"})
    with pytest.raises(SplitfedError, match="width must be a positive integer"):
        build_model("resnet18", 10, (3, 32, 32), {"width": "wide"})


def test_a_user_sequential_is_cut_between_its_children():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model = CutModel.from_sequential(net)
    assert list(model.cut_points) == [1, 2, 3] and model.middle_cut == 2
    client, server = split(net, 2)
    assert len(client) == 2 and len(server) == 2
    x = torch.randn(5, 1, 2, 2)
    assert torch.equal(server(client(x)), net(x))


def test_register_model_makes_it_available_by_name():
    name = "test_tiny_mlp"
    if name not in MODELS:

        @register_model(name)
        def tiny(num_classes, in_shape):
            c, h, w = in_shape
            return nn.Sequential(
                OrderedDict(
                    flat=nn.Flatten(),
                    fc1=nn.Linear(c * h * w, 16),
                    act=nn.ReLU(),
                    fc2=nn.Linear(16, num_classes),
                )
            )

    model = build_model(name, 3, (1, 4, 4))
    assert isinstance(model, CutModel) and list(model.cut_points) == [1, 2, 3]


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_cnn4_with_a_norm_adds_one_layer_after_each_conv(norm):
    plain, normed = build_model("cnn4", 10, (1, 28, 28)), build_model("cnn4", 10, (1, 28, 28), {"norm": norm})
    assert num_params(normed) == 1_592_258 + 2 * (16 + 32 + 1000)  # a weight and a bias per channel
    kinds = [nn.BatchNorm2d, nn.BatchNorm2d, nn.BatchNorm1d] if norm == "batch" else [nn.GroupNorm] * 3
    assert [
        type(m) for m in normed.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm))
    ] == kinds
    # at cut 2 (the studies' cut) the server side holds fc1's normalisation: the control of issue 25
    client, server = split(normed, 2)
    assert (num_params(client), num_params(server)) == (13_248 + 2 * (16 + 32), 1_579_010 + 2 * 1000)
    x = torch.randn(4, 1, 28, 28)
    assert normed(x).shape == plain(x).shape == (4, 10)


def test_cnn4_without_a_norm_is_the_spec_net_module_for_module():
    # checkpoints of the spec's net must load: the default's state keys are the ones they were
    torch.manual_seed(0)
    default = build_model("cnn4", 10, (1, 28, 28))
    torch.manual_seed(0)
    explicit = build_model("cnn4", 10, (1, 28, 28), {"norm": "none"})
    assert list(default.state_dict()) == [
        "conv1.0.weight", "conv1.0.bias", "conv2.0.weight", "conv2.0.bias",
        "fc1.1.weight", "fc1.1.bias", "fc2.weight", "fc2.bias",
    ]  # fmt: skip
    assert all(
        torch.equal(a, b) for a, b in zip(default.state_dict().values(), explicit.state_dict().values())
    )


def test_cnn4_refuses_an_unknown_norm_in_one_line():
    with pytest.raises(SplitfedError, match=r"cnn4 norm must be 'none', 'batch' or 'group', got 'layer'"):
        build_model("cnn4", 10, (1, 28, 28), {"norm": "layer"})
