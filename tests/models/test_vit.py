"""The vision transformer: exact at every cut, the numbers of docs/models.md, training with the engine."""

import math

import pytest
import torch

from splitfed import SplitfedError, split
from splitfed.engine.metrics import train_flops_per_sample
from splitfed.models import build_model, num_params

from ..algorithms.helpers import assert_same_model, final_model, train_one
from ..conftest import small_config

FMNIST = (1, 28, 28)

# docs/models.md, vit on 1x28x28 with 10 classes: cut -> (client params, server params,
# client training FLOPs per sample, server training FLOPs per sample); tokens x width per patch.
DOC_TABLE = {
    7: {
        1: (4_224, 134_666, 200_704, 13_373_184),
        2: (37_696, 101_194, 3_543_040, 10_030_848),
        3: (71_168, 67_722, 6_885_376, 6_688_512),
        4: (104_640, 34_250, 10_227_712, 3_346_176),
    },
    4: {
        1: (4_224, 134_666, 200_704, 45_914_880),
        2: (37_696, 101_194, 11_678_464, 34_437_120),
        3: (71_168, 67_722, 23_156_224, 22_959_360),
        4: (104_640, 34_250, 34_633_984, 11_481_600),
    },
}
DOC_SMASHED = {7: (16, 64), 4: (49, 64)}
DOC_TOTAL = 138_890


@pytest.mark.parametrize("patch", [7, 4])
def test_client_then_server_equals_the_full_vit_at_every_cut(patch):
    torch.manual_seed(0)
    model = build_model("vit", 10, FMNIST, {"patch": patch}).eval()
    assert list(model.cut_points) == [1, 2, 3, 4]
    x = torch.randn(3, *FMNIST)
    with torch.no_grad():
        full = model(x)
        for cut in model.cut_points:
            client, server = split(model, cut)
            smashed = client(x)
            assert tuple(smashed.shape) == (3, *DOC_SMASHED[patch])
            assert torch.equal(server(smashed), full)


def test_the_cut_points_are_after_the_patch_embedding_then_after_each_block_but_the_last():
    model = build_model("vit", 10, FMNIST, {"depth": 3})
    assert list(model._modules) == ["patch_embed", "block1", "block2", "block3", "head"]
    assert model.cut_points == {1: "patch_embed", 2: "block1", 3: "block2"}


def test_hand_written_attention_equals_torch_multihead_attention_with_the_same_weights():
    torch.manual_seed(0)
    ours = build_model("vit", 10, FMNIST, {"width": 32, "heads": 4}).block1.attn
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
        x = torch.randn(3, 16, 32)
        torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("patch", [7, 4])
def test_vit_parameters_and_flops_per_cut_match_the_docs_table(patch):
    model = build_model("vit", 10, FMNIST, {"patch": patch})
    assert num_params(model) == DOC_TOTAL
    computed = {}
    for cut in model.cut_points:
        client, server = split(model, cut)
        flops = train_flops_per_sample(client, server, FMNIST)
        computed[cut] = (num_params(client), num_params(server), *flops)
    assert computed == DOC_TABLE[patch]


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_minibatch_sfl_on_the_vit_is_finite_and_reproducible_at_every_cut(cut):
    cfg = small_config(
        model="vit",
        synthetic_shape=FMNIST,
        synthetic_samples=160,
        cut_layer=cut,
        lr=0.05,
        divergence_every=0,
    )
    keys = ("test_accuracy", "test_loss", "train_loss", "client_flops", "server_flops", "client_bytes_up")
    runs = [[{k: r[k] for k in keys} for r in train_one(cfg, "minibatch_sfl")[2]] for _ in range(2)]
    assert len(runs[0]) == 2
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["test_loss"]) for r in runs[0])
    assert runs[0] == runs[1]


def test_minibatch_sfl_on_the_vit_runs_the_same_batched():
    cfg = small_config(
        model="vit", synthetic_shape=FMNIST, synthetic_samples=160, lr=0.05, divergence_every=0
    )
    setup, loop, loop_history, _ = train_one(cfg, "minibatch_sfl")
    _, vmap, vmap_history, _ = train_one(cfg.replace(execution="batched"), "minibatch_sfl")
    assert_same_model(final_model(setup, vmap), final_model(setup, loop), atol=1e-5)
    for a, b in zip(loop_history, vmap_history, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"patch": 5}, "vit patch 5 must divide the image size 28x28"),
        ({"width": 30}, "vit width 30 must be divisible by heads 4"),
        ({"depth": 0}, "vit depth must be a positive integer, got 0"),
        ({"heads": 2.5}, "vit heads must be a positive integer, got 2.5"),
        ({"mlp_ratio": 0}, "vit mlp_ratio must be a positive number, got 0"),
        ({"mlp_ratio": 1.01}, "vit width x mlp_ratio must be a whole number, got 64 x 1.01"),
        ({"dropout": 0.1}, "no argument 'dropout'; it accepts: patch, width, depth, heads, mlp_ratio"),
    ],
)
def test_bad_vit_arguments_are_refused_with_a_clear_message(args, message):
    with pytest.raises(SplitfedError, match=message):
        build_model("vit", 10, FMNIST, args)


def test_a_vit_of_depth_one_can_only_be_cut_after_the_patch_embedding():
    model = build_model("vit", 10, FMNIST, {"depth": 1})
    assert model.cut_points == {1: "patch_embed"}
    with pytest.raises(SplitfedError, match="cut_layer 2 is outside this model's range 1..1"):
        split(model, 2)
