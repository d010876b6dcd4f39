"""Limits from the machine: memory, CPUs and the file system, checked before the work they guard."""

import os

import pytest

from splitfed import Config, SplitfedError, _limits
from splitfed._limits import available_memory, check_output_dir, check_threads, max_threads
from splitfed.preflight import check_batches, check_model, preflight


def test_available_memory_is_read_from_this_machine():
    available = available_memory()
    assert available is not None and 0 < available < 1 << 50


@pytest.fixture
def small_machine(monkeypatch):
    """A machine with 64 MiB available, whatever this one has."""
    monkeypatch.setattr(_limits, "available_memory", lambda: 64 << 20)


def test_threads_are_capped_by_the_cpu_count():
    check_threads(max_threads())
    for asked in (max_threads() + 1, 2**31, 2**64):
        with pytest.raises(SplitfedError, match=rf"threads={asked} asked; at most {max_threads()} allowed"):
            Config(threads=asked)
    assert max_threads() >= 4 * (os.cpu_count() or 1)


def test_output_dir_that_is_a_file_or_under_one_is_refused(tmp_path):
    check_output_dir(tmp_path / "new" / "deeper")  # creatable: fine, and nothing is created
    assert not (tmp_path / "new").exists()
    check_output_dir(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(SplitfedError, match=r"^--out .*/f is a file, not a directory$"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(SplitfedError, match=r"--out .*/f/run cannot be created: .*/f is a file"):
        check_output_dir(tmp_path / "f" / "run")
    with pytest.raises(SplitfedError, match="contains a NUL byte"):
        check_output_dir(str(tmp_path / "a\0b"))
    with pytest.raises(SplitfedError, match="cannot be used: File name too long"):
        check_output_dir(tmp_path / ("x" * 300))
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(SplitfedError, match="is a symbolic link to nothing"):
        check_output_dir(tmp_path / "dangling")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits: nothing to refuse")
def test_output_dir_in_an_unwritable_directory_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(SplitfedError, match="cannot be created: .*locked is not writable"):
        check_output_dir(locked / "run")
    with pytest.raises(SplitfedError, match="locked is not writable"):
        check_output_dir(locked)


def test_model_is_sized_on_the_meta_device_without_allocating(small_machine):
    assert check_model("cnn4", 10, (1, 28, 28)) == 1_592_258  # 25 MiB while training: fits in 64
    with pytest.raises(
        SplitfedError, match=r"model resnet18 width=64 \(11,173,962 parameters.*at most 4194304"
    ):
        check_model("resnet18", 10, (3, 32, 32), {"width": 64})
    with pytest.raises(SplitfedError, match="model cnn4 .*needs .* of memory"):
        check_model("cnn4", 10, (1, 4096, 4096))


def test_model_that_cannot_be_built_from_its_arguments_is_one_line():
    # GroupNorm(32, 33): torch's ValueError, raised while building, becomes the one line
    with pytest.raises(
        SplitfedError,
        match=r"model resnet18 norm=group width=33 cannot be built for inputs \[3, 32, 32\]: num_",
    ):
        check_model("resnet18", 10, (3, 32, 32), {"norm": "group", "width": 33})


def test_synthetic_data_too_large_is_refused_before_generating(small_machine):
    from splitfed.data import DATASETS

    DATASETS.get("synthetic")(None, shape=(1, 8, 8), samples=1000)
    with pytest.raises(
        SplitfedError, match=r"synthetic data \(100000 training \+ 20000 test samples of \[3, 32, 32\]\)"
    ):
        DATASETS.get("synthetic")(None, shape=(3, 32, 32), samples=100_000)


@pytest.mark.parametrize(
    ("batch", "alloc", "sizes", "message"),
    [
        (101, "equal", [100, 40], "exceeds the largest client's 100 training samples"),
        (71, "proportional", [100, 40], "exceeds the mean client's 70 training samples"),
    ],
)
def test_a_batch_no_client_can_fill_is_refused(batch, alloc, sizes, message):
    check_batches(batch - 1, alloc, sizes)  # a client smaller than b (40) is fine: batches cross epochs
    with pytest.raises(SplitfedError, match=message):
        check_batches(batch, alloc, sizes)


def test_preflight_checks_what_the_config_alone_fixes(tmp_path):
    base = dict(
        dataset="synthetic", synthetic_shape=(1, 8, 8), synthetic_samples=100, out=str(tmp_path / "r")
    )
    preflight(Config(**base))
    for changes, message in [
        ({"clients": 101}, "clients=101 exceeds the 100 training samples"),
        ({"batch_size": 101}, "batch_size=101 exceeds the 100 training samples"),
        ({"synthetic_samples": 10**13}, "synthetic data .* needs .* of memory"),
        ({"model": "resnet18", "model_args": {"width": 10**5}}, "model resnet18 width=100000"),
        ({"out": str(tmp_path / "r" / "\0")}, "NUL byte"),
    ]:
        with pytest.raises(SplitfedError, match=message):
            preflight(Config(**(base | changes)))
    with pytest.raises(SplitfedError, match=r"batch_size=10000000000000 \(samples of \[1, 8, 8\]\) needs"):
        preflight(Config(batch_size=10**13, out=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()
