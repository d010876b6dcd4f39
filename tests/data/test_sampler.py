import torch

from splitfed.data import ClientStreams
from splitfed.data.datasets import Dataset


def tiny_dataset(n=20):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    return Dataset("t", x, torch.arange(n) % 3, x[:2], torch.zeros(2, dtype=torch.long), 3)


def test_batches_are_full_and_an_epoch_visits_every_sample_once():
    data = tiny_dataset()
    idx = [torch.tensor([0, 3, 5, 7, 11, 13, 17]), torch.tensor([1, 2])]
    streams = ClientStreams(data, idx, seed=0)
    drawn = torch.cat([streams.next_indices(0, 3) for _ in range(7)])  # 21 = three epochs of 7
    assert len(drawn) == 21
    for epoch in range(3):
        assert sorted(drawn[7 * epoch : 7 * epoch + 7].tolist()) == idx[0].tolist()
    x, _y = streams.batch(1, 5)  # a batch larger than the client's data wraps into new epochs
    assert x.shape == (5, 1, 1, 1) and set(x.flatten().long().tolist()) <= {1, 2}


def test_stream_state_resumes_the_same_sequence():
    data = tiny_dataset()
    idx = [torch.arange(0, 10), torch.arange(10, 20)]
    a = ClientStreams(data, idx, seed=4)
    for _ in range(3):
        a.next_indices(0, 4)
        a.next_indices(1, 3)
    state = a.state_dict()
    expected = [a.next_indices(0, 4).tolist() for _ in range(5)]
    b = ClientStreams(data, idx, seed=4)
    b.load_state_dict(state)
    assert [b.next_indices(0, 4).tolist() for _ in range(5)] == expected


def test_streams_differ_per_client_and_seed():
    data = tiny_dataset()
    idx = [torch.arange(10), torch.arange(10)]
    s = ClientStreams(data, idx, seed=0)
    assert s.next_indices(0, 10).tolist() != s.next_indices(1, 10).tolist()
    assert (
        ClientStreams(data, idx, 0).next_indices(0, 10).tolist()
        != ClientStreams(data, idx, 1).next_indices(0, 10).tolist()
    )


def test_skip_to_lands_where_drawing_would():
    data = tiny_dataset()
    idx = [torch.arange(0, 7)]
    a = ClientStreams(data, idx, seed=2)
    for _ in range(5):
        a.next_indices(0, 3)  # 15 samples: two epochs of 7 and one sample
    b = ClientStreams(data, idx, seed=2)
    b.skip_to(0, 15)
    assert b.state_dict() == a.state_dict()
    assert b.next_indices(0, 6).tolist() == a.next_indices(0, 6).tolist()
