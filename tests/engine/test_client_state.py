"""Per-client state: bounded in memory, on disk beyond, and what a checkpoint names comes back exactly."""

import torch

from splitfed.engine.client_state import ClientStates


def state(n: int) -> dict[str, torch.Tensor]:
    return {"c": torch.full((1000,), float(n)), "step": torch.tensor([n])}  # 4,008 bytes


def test_states_beyond_the_bound_go_to_files_and_come_back_whole(tmp_path):
    store = ClientStates(memory_bytes=10_000, spill_dir=tmp_path)
    for n in range(5):
        store.put(n, state(n))
    assert store.held <= 10_000 and len(store.memory) == 2 and len(store) == 5
    for n in range(5):
        assert torch.equal(store.get(n)["c"], state(n)["c"])
    assert store.get(99) == {}  # a client that never trained has none


def test_a_checkpoint_names_files_and_a_resume_forgets_what_came_after(tmp_path):
    store = ClientStates(memory_bytes=1 << 20, spill_dir=tmp_path)
    for n in range(3):
        store.put(n, state(n))
    saved = store.state_dict()  # every changed state to its file: the checkpoint names them
    store.saved()
    assert saved["memory"] == {} and sorted(saved["files"]) == [0, 1, 2]
    store.put(1, state(11))  # after the checkpoint: a newer state (the run is then killed)
    store.state_dict()  # ... even written to a file of its own
    resumed = ClientStates(memory_bytes=1 << 20, spill_dir=tmp_path)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed.get(1)["c"], state(1)["c"])  # what the checkpoint saw, not the newer one
    assert len(list(tmp_path.glob("*.pt"))) == 3  # the unnamed newer file is gone


def test_a_file_no_checkpoint_names_is_deleted_only_after_the_next_checkpoint(tmp_path):
    store = ClientStates(memory_bytes=1 << 20, spill_dir=tmp_path)
    store.put(0, state(0))
    store.state_dict()
    store.saved()
    (old,) = tmp_path.glob("*.pt")
    store.put(0, state(5))
    store.state_dict()
    assert old.exists()  # the checkpoint on disk still names it until the new one is written
    store.saved()
    assert not old.exists() and len(list(tmp_path.glob("*.pt"))) == 1
