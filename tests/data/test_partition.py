import pytest
import torch

from splitfed import SplitfedError
from splitfed.data import class_histogram, format_histogram, make_partition
from splitfed.data.partition import non_iid_ratio


def balanced_labels(n: int, classes: int = 10) -> torch.Tensor:
    return torch.arange(n) % classes


def assert_disjoint(parts, n):
    flat = torch.cat(parts)
    assert len(flat) == len(set(flat.tolist())), "an index is given twice"
    assert int(flat.min()) >= 0 and int(flat.max()) < n


@pytest.mark.parametrize("p", [0.0, 0.3, 0.8, 1.0])
def test_non_iid_ratio_sizes_follow_the_spec(p):
    n, clients = 1000, 7
    parts = non_iid_ratio(balanced_labels(n), clients, seed=0, ratio=p)
    n_noniid = int(p * n)
    expected = (n - n_noniid) // clients + n_noniid // clients  # leftovers from the floors dropped
    assert [len(x) for x in parts] == [expected] * clients
    assert_disjoint(parts, n)


def test_ratio_one_with_ten_clients_gives_one_class_each():
    labels = balanced_labels(6000)
    parts = non_iid_ratio(labels, 10, seed=3, ratio=1.0)
    hist = class_histogram(labels, parts, 10)
    assert ((hist > 0).sum(1) == 1).all()
    assert sorted(hist.argmax(1).tolist()) == list(range(10))


def test_ratio_one_with_hundred_clients_gives_ten_clients_per_class():
    labels = balanced_labels(6000)
    hist = class_histogram(labels, non_iid_ratio(labels, 100, seed=0, ratio=1.0), 10)
    assert ((hist > 0).sum(1) == 1).all()
    assert torch.bincount(hist.argmax(1), minlength=10).tolist() == [10] * 10


def test_ratio_zero_is_iid():
    labels = balanced_labels(10000)
    hist = class_histogram(labels, non_iid_ratio(labels, 10, seed=0, ratio=0.0), 10).float()
    share = hist / hist.sum(1, keepdim=True)
    assert (share - 0.1).abs().max() < 0.04  # 1000 uniform draws per client: sd of a share ~0.0095


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8, 0.95])
def test_dominant_class_share_is_p_plus_rest_over_classes(p):
    labels = balanced_labels(20000)
    hist = class_histogram(labels, non_iid_ratio(labels, 10, seed=1, ratio=p), 10).float()
    share = (hist.max(1).values / hist.sum(1)).mean()
    assert abs(float(share) - (p + (1 - p) / 10)) < 0.02


def test_fixed_seed_fixes_the_partition_and_other_seeds_change_it():
    labels = balanced_labels(500)
    a = make_partition("non_iid_ratio", labels, 5, 7, 0.5)
    b = make_partition("non_iid_ratio", labels, 5, 7, 0.5)
    c = make_partition("non_iid_ratio", labels, 5, 8, 0.5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_dirichlet_covers_the_data_and_small_alpha_is_skewed():
    labels = balanced_labels(5000)
    parts = make_partition("dirichlet", labels, 10, 0, 0.1)
    assert_disjoint(parts, 5000)
    assert sum(len(p) for p in parts) == 5000 and min(len(p) for p in parts) >= 10
    skewed = class_histogram(labels, parts, 10).float()
    even = class_histogram(labels, make_partition("dirichlet", labels, 10, 0, 1000.0), 10).float()
    top = lambda h: float((h.max(1).values / h.sum(1)).mean())
    assert top(skewed) > 0.5 > 0.2 > top(even)


def test_shards_give_each_client_k_label_runs():
    labels = balanced_labels(2000)
    parts = make_partition("shards", labels, 10, 0, 2)
    assert_disjoint(parts, 2000)
    hist = class_histogram(labels, parts, 10)
    assert ((hist > 0).sum(1) <= 2).all() and [len(p) for p in parts] == [200] * 10


def test_iid_partition_has_equal_sizes():
    parts = make_partition("iid", balanced_labels(103), 10, 0)
    assert [len(p) for p in parts] == [10] * 10


def test_more_clients_than_samples_is_refused():
    with pytest.raises(SplitfedError, match="clients=20 exceeds the 10 training samples"):
        make_partition("iid", balanced_labels(10), 20, 0)
    with pytest.raises(SplitfedError, match="gives client 0 no samples"):
        make_partition("non_iid_ratio", balanced_labels(15), 10, 0, 0.5)


def test_histogram_table_is_compact():
    labels = balanced_labels(1000)
    hist = class_histogram(labels, make_partition("iid", labels, 30, 0), 10)
    text = format_histogram(hist)
    assert text.splitlines()[0].startswith("client") and "18 more clients" in text
    assert len(text.splitlines()) == 1 + 12 + 1
