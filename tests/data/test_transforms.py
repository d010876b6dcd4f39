"""Transforms per draw: a user's Dataset is read at every draw (its random augmentation differs between
draws and repeats under the same seed, resumed too); a batch transform runs on every training batch;
tensor data keep the gather from tensors."""

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from splitfed import Config, run
from splitfed.setup import prepare

pytestmark = pytest.mark.usefixtures("one_thread")

N, CLASSES = 120, 3


class Jittered(Dataset):
    """A user's Dataset whose __getitem__ augments at random (torch's global RNG, as torchvision's
    transforms do). Channel 0 holds the sample's number, so a batch shows which samples it drew; the
    other channels are the sample plus fresh noise."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N, 4, generator=g)
        self.y = torch.arange(N) % CLASSES
        self.x[:, 1] += self.y  # learnable
        self.reads = 0

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        noisy = self.x[i] + 0.1 * torch.randn(4)
        return torch.cat([torch.tensor([float(i)]), noisy]), self.y[i]


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, CLASSES))


def cfg(**changes) -> Config:
    base = dict(clients=2, rounds=2, local_iters=3, batch_size=8, divergence_samples=10, device="cpu", lr=0.1)
    return Config(**(base | changes))


def draws(setup, stream: int, batches: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample numbers and inputs of ``batches`` consecutive batches of one client's stream."""
    streams = setup.context().streams
    xs = torch.cat([streams.batch(stream, size)[0] for _ in range(batches)])
    return xs[:, 0].long(), xs[:, 1:]


def test_a_datasets_augmentation_differs_per_draw_and_repeats_under_the_same_seed():
    data = Jittered()
    setup = prepare(cfg(), model=model(), data=data)
    client = len(setup.parts[0])
    ids, x = draws(setup, 0, 3, client)  # three epochs of client 0: every sample drawn three times
    first = {int(i): x[k] for k, i in enumerate(ids[:client])}
    later = {int(i): x[client + k] for k, i in enumerate(ids[client : 2 * client])}
    assert first.keys() == later.keys()
    assert all(not torch.equal(first[i], later[i]) for i in first)  # a new augmentation at each draw
    assert all((first[i] - later[i]).abs().max() < 1 for i in first)  # of the same sample
    reads = data.reads
    again = draws(prepare(cfg(), model=model(), data=data), 0, 3, client)
    assert data.reads > reads  # read at the draw, not from a copy
    assert torch.equal(again[0], ids) and torch.equal(again[1], x)  # the same seed: the same draws
    other = draws(prepare(cfg(seed=1), model=model(), data=data), 0, 3, client)
    assert not torch.equal(other[1], x)
    state = torch.get_rng_state()
    draws(setup, 1, 2, 8)
    assert torch.equal(torch.get_rng_state(), state)  # reading leaves the run's own RNG as it was


def test_a_batch_transform_runs_per_draw_and_tensor_data_keep_the_gather():
    data = Jittered()
    x, y = torch.stack([data[i][0] for i in range(N)]), data.y
    plain = prepare(cfg(), model=model(), data=TensorDataset(x, y))
    assert plain.data.items is None and plain.data.augment is None  # the fast path: a gather from tensors
    ids, drawn = draws(plain, 0, 1, 8)
    assert torch.equal(drawn, x[ids, 1:])

    def shift(batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        noise = torch.randn(batch.shape, generator=g).to(batch.device)
        noise[:, 0] = 0  # keep the sample's number readable
        return batch + noise

    moved = prepare(cfg(), model=model(), data=(x, y), transform=shift)
    ids, a = draws(moved, 0, 2, 8)
    ids2, b = draws(moved, 0, 2, 8)
    assert torch.equal(ids, ids2) and torch.equal(a, b)  # repeats
    assert not torch.equal(a, x[ids, 1:]) and (a - x[ids, 1:]).abs().max() < 10


def strip(history):
    drop = ("train_time_s", "round_time_s", "wall_time_s")
    return [{k: v for k, v in r.items() if k not in drop} for r in history]


def test_a_resumed_run_with_per_draw_transforms_equals_an_uninterrupted_one(tmp_path):
    config = cfg(algorithm=("minibatch_sfl", "fedavg"), rounds=3, divergence_every=0, out=str(tmp_path / "r"))
    data = Jittered()
    whole = run(config.replace(out=str(tmp_path / "whole")), model=model(), data=data)
    assert data.reads > 2 * N  # read once at the start, then at every draw

    def stop_at_fedavg(record):
        if record["algorithm"] == "fedavg":
            raise KeyboardInterrupt

    # Each run in a process of its own would find torch's global RNG elsewhere: nothing may depend on it
    # (the Dataset's first reading names the data in config.toml, and a resume compares that name).
    first = model()
    torch.manual_seed(1234)
    assert run(config, model=first, data=Jittered(), on_round=stop_at_fedavg).interrupted
    second = model()
    torch.manual_seed(5678)
    resumed = run(config.replace(resume=True), model=second, data=Jittered())
    assert strip(resumed.history) == strip(whole.history)
    for name in ("minibatch_sfl", "fedavg"):
        for a, b in zip(resumed.models[name].state_dict().values(), whole.models[name].state_dict().values()):
            assert torch.equal(a, b)
