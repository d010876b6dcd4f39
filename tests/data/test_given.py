"""Federated data as researchers have them: per-client data given directly, an object with Flower
Datasets' ``load_partition(i)``, a folder of client files on the CLI; the partition "given" refused
without them; a user's data set with no partition named dealt IID, and the run says so."""

import csv
import logging

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from splitfed import Config, SplitfedError, run
from splitfed.cli import main
from splitfed.config import ALL_ALGORITHMS
from splitfed.data import ClientStreams, class_histogram, make_partition
from splitfed.setup import prepare

pytestmark = pytest.mark.usefixtures("one_thread")

D, CLASSES = 6, 3


def client_data(cid: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n rows whose feature 0 is the client's id (so a batch shows whose data it holds); labels skewed
    per client, as natural federated data are."""
    g = torch.Generator().manual_seed(100 * seed + cid)
    x = torch.randn(n, D, generator=g)
    x[:, 0] = cid
    y = torch.where(
        torch.rand(n, generator=g) < 0.7, cid % CLASSES, torch.randint(0, CLASSES, (n,), generator=g)
    )
    return x, y


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, CLASSES))


def cfg(**changes) -> Config:
    base = dict(rounds=1, local_iters=2, batch_size=8, divergence_samples=10, device="cpu", lr=0.05)
    return Config(**(base | changes))


SIZES = (30, 45, 24)


def test_given_clients_train_with_every_algorithm_and_each_client_draws_only_its_own_data(
    tmp_path, monkeypatch
):
    clients = [client_data(i, n) for i, n in enumerate(SIZES)]
    drawn: list[tuple[list[int], list[int], torch.Tensor]] = []
    batches = ClientStreams.batches

    def spy(self, streams, sizes):
        x, y = batches(self, streams, sizes)
        drawn.append((list(streams), list(sizes), x[:, 0].clone()))
        return x, y

    monkeypatch.setattr(ClientStreams, "batches", spy)
    result = run(cfg(out=str(tmp_path / "r")), model=model(), data=clients)
    assert set(result.final_accuracy) == set(ALL_ALGORITHMS)
    assert result.config.partition == "given" and result.config.clients == len(SIZES)
    own = 0
    for streams, sizes, owner in drawn:
        expected = torch.cat([torch.full((b,), float(s)) for s, b in zip(streams, sizes, strict=True)])
        stream_of_client = torch.tensor([s < len(SIZES) for s in streams]).repeat_interleave(
            torch.tensor(sizes)
        )
        # a client's stream holds only its own rows; the union stream (centralized) any client's
        assert torch.equal(owner[stream_of_client], expected[stream_of_client])
        own += int(stream_of_client.sum())
    assert own > 0
    # the partition summary counts each client's own samples (a fifth of each client's classes is its test)
    with (tmp_path / "r" / "partition.csv").open() as f:
        rows = list(csv.DictReader(f))
    setup = prepare(cfg(), model=model(), data=clients)
    hist = class_histogram(setup.data.train_y, setup.parts, CLASSES)
    assert [[int(r[f"class_{c}"]) for c in range(CLASSES)] for r in rows] == hist.tolist()
    for i, part in enumerate(setup.parts):
        assert torch.all(setup.data.train_x[part, 0] == i)
        assert len(part) + int((setup.data.test_x[:, 0] == i).sum()) == SIZES[i]  # train + held-out test


def test_per_client_data_forms_agree_and_tests_are_their_union_or_the_shared_one():
    train = [client_data(i, n) for i, n in enumerate(SIZES)]
    tests = [client_data(i, 10, seed=1) for i in range(len(SIZES))]
    as_list = prepare(cfg(), model=model(), data=[(*tr, *te) for tr, te in zip(train, tests, strict=True)])
    as_dicts = prepare(
        cfg(),
        model=model(),
        data={
            f"hospital-{i}": {"x_train": tr[0], "y_train": tr[1], "x_test": te[0], "y_test": te[1]}
            for i, (tr, te) in enumerate(zip(train, tests, strict=True))
        },
    )
    for s in (as_list, as_dicts):
        assert [p.tolist() for p in s.parts] == [list(range(0, 30)), list(range(30, 75)), list(range(75, 99))]
        assert torch.equal(s.data.train_x, torch.cat([t[0] for t in train]))
        assert torch.equal(s.data.test_x, torch.cat([t[0] for t in tests]))  # the union of the clients' tests
    shared = client_data(7, 40, seed=2)
    datasets = [TensorDataset(*t) for t in train]
    s = prepare(cfg(), model=model(), data={"clients": datasets, "test": shared})
    assert torch.equal(s.data.test_x, shared[0]) and torch.equal(s.data.test_y, shared[1])
    assert s.data.items is None  # tensors keep the gather from tensors
    # a resumed run refuses the same rows dealt to other clients: the fingerprint names the split
    regrouped = [(torch.cat([train[0][0], train[1][0][:5]]), torch.cat([train[0][1], train[1][1][:5]]))]
    regrouped += [(train[1][0][5:], train[1][1][5:]), train[2]]
    other = prepare(cfg(), model=model(), data={"clients": regrouped, "test": shared})
    same = prepare(cfg(), model=model(), data={"clients": train, "test": shared})
    assert other.cfg.dataset != same.cfg.dataset


class Partitioner:
    """Flower Datasets' partitioner interface (num_partitions, load_partition), its partitions columns as
    a Hugging Face Dataset .with_format('torch') gives them; no flwr imported."""

    def __init__(self, sizes):
        self.num_partitions = len(sizes)
        self.sizes = sizes
        self.loaded: list[int] = []

    def load_partition(self, partition_id):
        self.loaded.append(partition_id)
        x, y = client_data(partition_id, self.sizes[partition_id])
        return {"image": x, "label": y}


class FederatedDataset:
    """FederatedDataset's shape: partitioners by split, load_partition(i), load_split('test')."""

    def __init__(self, sizes):
        self.partitioners = {"train": Partitioner(sizes)}

    def load_partition(self, partition_id, split=None):
        return self.partitioners["train"].load_partition(partition_id)

    def load_split(self, split):
        if split != "test":
            raise ValueError(split)
        x, y = client_data(9, 30, seed=3)
        return {"img": x, "label": y}


def test_an_object_with_load_partition_is_taken_as_it_is(tmp_path):
    partitioner = Partitioner(SIZES)
    s = prepare(cfg(), model=model(), data=partitioner)
    assert partitioner.loaded == [0, 1, 2] and s.cfg.partition == "given" and s.cfg.clients == 3
    assert [len(p) + int((s.data.test_x[:, 0] == i).sum()) for i, p in enumerate(s.parts)] == list(SIZES)
    fds = FederatedDataset(SIZES)
    result = run(cfg(algorithm=("minibatch_sfl", "fedavg"), out=str(tmp_path / "r")), model=model(), data=fds)
    assert set(result.final_accuracy) == {"minibatch_sfl", "fedavg"}
    s = prepare(cfg(), model=model(), data=fds)
    assert [len(p) for p in s.parts] == list(SIZES)  # every sample trains: the test set is the split's
    assert torch.equal(s.data.test_x, client_data(9, 30, seed=3)[0])


def test_the_cli_reads_a_folder_of_client_files_and_a_file_with_a_clients_list(tmp_path):
    folder = tmp_path / "clients"
    folder.mkdir()
    images = []
    for i, n in enumerate(SIZES):
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
        images.append((x, y))
        torch.save({"x_train": x, "y_train": y}, folder / f"client_{i}.pt")
    x_test, y_test = torch.randn(50, 1, 8, 8), torch.arange(50) % 10
    torch.save({"x_test": x_test, "y_test": y_test}, folder / "test.pt")
    out = tmp_path / "r"
    args = ["run", "--dataset", str(folder), "--model", "digits_cnn", "--algorithm", "minibatch_sfl,fedavg"]
    args += ["--rounds", "1", "--local-iters", "2", "--batch-size", "8", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    saved = Config.from_toml(out / "config.toml")
    assert saved.partition == "given" and saved.clients == 3 and saved.dataset == str(folder)
    with (out / "partition.csv").open() as f:
        totals = [int(r["samples"]) for r in csv.DictReader(f)]
    assert totals == list(SIZES)  # the shared test.pt: every client sample trains
    one_file = tmp_path / "clients.pt"
    torch.save({"clients": [{"x_train": x, "y_train": y} for x, y in images], "num_classes": 10}, one_file)
    s = prepare(Config(dataset=str(one_file), partition="given", batch_size=8, device="cpu"))
    held_out = [sum(int(c * 0.2 + 0.5) for c in torch.bincount(y).tolist()) for _, y in images]
    assert [len(p) for p in s.parts] == [n - t for n, t in zip(SIZES, held_out, strict=True)]  # 20% per class
    assert s.data.num_classes == 10
    (folder / "client_1.pt").unlink()
    with pytest.raises(SplitfedError, match="client_1.pt is missing"):
        prepare(Config(dataset=str(folder), device="cpu"))


def test_partition_given_is_refused_without_data_given_per_client(tmp_path):
    with pytest.raises(
        SplitfedError, match="partition given takes the clients from the data, and dataset digits"
    ):
        Config(partition="given")
    one = tmp_path / "one.pt"
    x, y = client_data(0, 60)
    torch.save({"x_train": x, "y_train": y}, one)
    with pytest.raises(SplitfedError, match="is one data set; give it split into clients"):
        prepare(Config(dataset=str(one), partition="given", batch_size=8, device="cpu"), model=model())
    clients = [client_data(i, n) for i, n in enumerate(SIZES)]
    with pytest.raises(SplitfedError, match="clients = 5, but the data are given for 3 clients"):
        prepare(cfg(clients=5), model=model(), data=clients)
    with pytest.raises(
        SplitfedError, match="come split into 3 clients; partition dirichlet cannot deal them"
    ):
        prepare(cfg(partition="dirichlet"), model=model(), data=clients)


def test_a_user_data_set_without_a_partition_is_dealt_iid_and_the_run_says_so(caplog):
    x, y = client_data(0, 200)
    with caplog.at_level(logging.INFO, logger="splitfed"):
        s = prepare(cfg(clients=4), model=model(), data=(x, y))
    assert s.cfg.partition == "iid"
    assert "dealt IID to 4 clients (partition iid" in caplog.text
    expected = make_partition("iid", s.data.train_y, 4, s.cfg.seed_for("partition"))
    assert [p.tolist() for p in s.parts] == [p.tolist() for p in expected]
    named = prepare(cfg(clients=4, non_iid_ratio=0.8), model=model(), data=(x, y))
    assert named.cfg.partition == "non_iid_ratio" and named.cfg.non_iid_ratio == 0.8
    assert prepare(cfg(clients=4)).cfg.partition == "non_iid_ratio"  # built-in data keep their default
