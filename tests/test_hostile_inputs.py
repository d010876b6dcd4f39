"""Hostile inputs through the command line: each is one line on stderr, exit status 2, within seconds,
no warning printed before it, and no run (or sweep) directory left behind."""

import gzip
import pickle
import re
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from splitfed.cli import main

from .data.formats import idx_bytes, write_cifar10, write_fmnist

SMALL = ["--dataset", "synthetic", "--synthetic.shape", "1,8,8", "--synthetic.samples", "100"]
SMALL += ["--clients", "2", "--rounds", "1", "--local-iters", "1", "--algorithm", "fedavg", "--device", "cpu"]
GRID_BASE = 'dataset = "synthetic"\nsynthetic = {shape = [1, 8, 8], samples = 100}\nclients = 2\n'


def _toml(text: str | bytes) -> Callable[[Path], list[str]]:
    def make(d: Path) -> list[str]:
        path = d / "c.toml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return ["run", "--config", str(path), "--out", str(d / "run")]

    return make


def _run(*flags: str) -> Callable[[Path], list[str]]:
    return lambda d: ["run", *SMALL, *flags, "--out", str(d / "run")]


def _fmnist(name: str, raw: bytes, compress: bool = True) -> Callable[[Path], list[str]]:
    def make(d: Path) -> list[str]:
        write_fmnist(d / "fm")
        (d / "fm" / f"{name}.gz").write_bytes(gzip.compress(raw) if compress else raw)
        return ["run", "--dataset", "fmnist", "--data-dir", str(d / "fm"), "--out", str(d / "run")]

    return make


def _bomb(d: Path) -> bytes:
    """A gzip stream whose IDX header announces 50 labels, followed by 64 MiB of zeros."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunks = [compressor.compress(idx_bytes(0x08, (50,), bytes(50)))]
    chunks += [compressor.compress(bytes(1 << 20)) for _ in range(64)]
    return b"".join(chunks) + compressor.flush()


def _fmnist_bomb(d: Path) -> list[str]:
    argv = _fmnist("train-labels-idx1-ubyte", b"")(d)
    (d / "fm" / "train-labels-idx1-ubyte.gz").write_bytes(_bomb(d))
    return argv


def _cifar(labels: list, n: int = 2) -> Callable[[Path], list[str]]:
    def make(d: Path) -> list[str]:
        batches = write_cifar10(d / "c10", per_batch=4)
        with (batches / "test_batch").open("wb") as f:
            pickle.dump({b"data": np.zeros((n, 3072), np.uint8), b"labels": labels}, f)
        return ["run", "--dataset", "cifar10", "--data-dir", str(d / "c10"), "--out", str(d / "run")]

    return make


def _out_at(relative: str, make_file: str | None = "afile") -> Callable[[Path], list[str]]:
    def make(d: Path) -> list[str]:
        if make_file:
            (d / make_file).write_text("not a directory")
        return ["run", *SMALL, "--out", str(d / relative)]

    return make


def _sweep(grid: str, *flags: str) -> Callable[[Path], list[str]]:
    def make(d: Path) -> list[str]:
        (d / "afile").write_text("not a directory")
        (d / "g.toml").write_text(grid)
        given = [f.format(d=d) for f in flags]
        return ["sweep", str(d / "g.toml"), *(given or ["--out", str(d / "run")])]

    return make


# (what, argv from a scratch directory, the error line it must give)
HOSTILE: list[tuple[str, Callable[[Path], list[str]], str]] = [
    # 1. a TOML string where a number belongs
    (
        "toml string for int",
        _toml('rounds = "1"\n'),
        r"rounds in .*c.toml must be an integer, got '1' \(a string",
    ),
    ("toml string for float", _toml('lr = "0.1"\n'), "lr in .* must be a number, got '0.1'"),
    ("toml string for bool", _toml('resume = "true"\n'), "resume in .* must be true or false"),
    ("toml string for list", _toml('synthetic.shape = "1,8,8"\n'), "must be a list of integers or none"),
    (
        "grid string for int",
        _sweep('[[grid]]\nseed = ["1"]\n'),
        r"seed in \[\[grid\]\] .* must be an integer",
    ),
    # 2. hostile data files
    (
        "idx negative int8 label",
        _fmnist("train-labels-idx1-ubyte", idx_bytes(0x09, (50,), bytes([0xFF] * 50))),
        r"expected 50 integer labels .* got int8 \[50\] in -1..-1",
    ),
    (
        "idx fractional float labels",
        _fmnist("train-labels-idx1-ubyte", idx_bytes(0x0D, (50,), np.full(50, 3.7, ">f4").tobytes())),
        "expected 50 integer labels .* got float32",
    ),
    (
        "idx NaN labels",
        _fmnist("t10k-labels-idx1-ubyte", idx_bytes(0x0E, (20,), np.full(20, np.nan, ">f8").tobytes())),
        "expected 20 integer labels .* got float64",
    ),
    (
        "idx images not uint8",
        _fmnist("train-images-idx3-ubyte", idx_bytes(0x0B, (50, 28, 28), bytes(50 * 28 * 28 * 2))),
        r"expected uint8 images \[n, 28, 28\], got int16",
    ),
    (
        "idx empty test set",
        _fmnist("t10k-images-idx3-ubyte", idx_bytes(0x08, (0, 28, 28), b"")),
        "holds no images; the test split needs at least one",
    ),
    (
        "idx dimensions overflowing int64",
        _fmnist("train-images-idx3-ubyte", idx_bytes(0x08, (2**16,) * 4, b""), compress=False),
        r"header says shape \(65536, 65536, 65536, 65536\) \(18446744073709551616 bytes\)",
    ),
    (
        "idx gzipped header beyond memory",
        _fmnist("train-images-idx3-ubyte", idx_bytes(0x08, (2**32 - 1, 28, 28), b"")),
        r"IDX file .* \(shape \(4294967295, 28, 28\)\) needs .* of memory",
    ),
    ("idx gzip bomb", _fmnist_bomb, r"header says shape \(50,\) \(50 bytes\), its data hold more than that"),
    ("cifar float labels", _cifar([3.7, 1.0]), "labels must be 2 integers in 0..9, got float64"),
    ("cifar empty batch", _cifar([], n=0), "test_batch: it holds no images"),
    # 3. tracebacks before: unreadable files, impossible paths, sizes beyond the machine
    ("toml not utf-8", _toml(b"rounds = 3\n# \xff\xfe\n"), r"is not UTF-8 text \(byte 13 is 0xff\)"),
    (
        "toml nested deeply",
        _toml("a = " + "[" * 5000 + "]" * 5000 + "\n"),
        "nests arrays or tables too deeply",
    ),
    ("toml of 2 MiB", _toml("# " + "x" * (2 << 20) + "\n"), "is larger than 1 MiB"),
    ("nul in --config", lambda d: ["run", "--config", str(d / "a\0b")], "contains a NUL byte"),
    ("nul in --data-dir", _run("--data-dir", "a\0b"), "data_dir 'a\\\\x00b' contains a NUL byte"),
    (
        "nul in --out",
        lambda d: ["run", *SMALL, "--out", str(d / "run" / "a\0b")],
        "out .* contains a NUL byte",
    ),
    (
        "--out not utf-8",
        lambda d: ["run", *SMALL, "--out", str(d / "run" / "\udcff")],
        "not valid UTF-8 text",
    ),
    ("--out is a file", _out_at("afile"), r"--out .*afile is a file, not a directory"),
    ("--out under a file", _out_at("afile/run"), r"--out .*afile/run cannot be created: .*afile is a file"),
    ("--out name too long", _out_at("x" * 300, None), "cannot be used: File name too long"),
    ("threads 2^31", _run("--threads", str(2**31)), r"threads=2147483648 asked; at most \d+ allowed"),
    ("threads absurd", _run("--threads", "100000"), "threads=100000 asked"),
    (
        "synthetic samples",
        _run("--synthetic.samples", str(10**13)),
        r"synthetic data .* needs .* at most \d+",
    ),
    ("synthetic shape", _run("--synthetic.shape", "3,100000,100000"), "not one of its training samples fits"),
    (
        "batch beyond memory",
        lambda d: ["run", "--batch-size", str(10**13), "--out", str(d / "run")],
        r"batch_size=10000000000000 .*needs",
    ),
    ("batch beyond the data", _run("--batch-size", "101"), "batch_size=101 exceeds the 100 training samples"),
    ("clients beyond the data", _run("--clients", str(10**9)), "clients=1000000000 exceeds the 100 training"),
    (
        "model width beyond memory",
        _run("--model", "resnet18", "--model-arg", "width=100000"),
        r"model resnet18 width=100000 \(27,\d{3},\d{3},\d{3},\d{3} parameters.* fit",
    ),
    (
        "model args torch refuses",
        _run("--model", "resnet18", "--model-arg", "norm=group", "--model-arg", "width=33"),
        "model resnet18 norm=group width=33 cannot be built",
    ),
    ("device torch cannot parse", _run("--device", "cudax"), "device must be cpu, cuda, cuda:N or auto"),
    (
        "sweep workers absurd",
        _sweep("[[grid]]\nseed = [1]\n", "--workers", "1000000"),
        "--workers=1000000 asked",
    ),
    ("sweep --out under a file", _sweep("[[grid]]\nseed = [1]\n", "--out", "{d}/afile/s"), "afile is a file"),
    (
        "sweep point beyond memory",
        _sweep(GRID_BASE + '[[grid]]\n"synthetic.samples" = [100, 10000000000000]\n'),
        "synthetic data .* needs",
    ),
    # 5. numbers beyond what the run can hold (issue 22)
    ("lr beyond float32", _run("--lr", "1e308"), r"lr must be a positive number up to 3.4e\+38"),
    ("server_lr beyond float32", _run("--server-lr", "1e39"), "server_lr must be a positive number up to"),
    ("weight decay beyond float32", _run("--weight-decay", "1e300"), "weight_decay must be >= 0 .*float32"),
    ("processes beyond the cores", _run("--processes", "1000"), "processes = 1000 ranks on this machine"),
    ("processes 2**31", _run("--processes", str(2**31)), "ranks on this machine"),
    # 4. torch warned before the error
    ("input too small for the model", _run("--synthetic.shape", "1,2,2", "--model", "cnn4"), "cannot take"),
    ("zero-element shape", _run("--synthetic.shape", "0,28,28"), "synthetic.shape must be three positive"),
]


@pytest.mark.parametrize(("make", "message"), [pytest.param(m, e, id=w) for w, m, e in HOSTILE])
def test_hostile_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, capsys, make, message):
    argv = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit) as exit_info:  # argparse exits; the rest return
            raise SystemExit(main(argv))
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("splitfed: error: "), err
    assert re.search(message, err), err
    assert not seen, [str(w.message) for w in seen]  # no warning reached the user before the line
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a run or sweep directory was left"
    assert elapsed < 30, f"took {elapsed:.0f} s"


def test_a_builder_that_calls_sys_exit_is_one_line_not_an_exit_status(tmp_path):
    import sys

    from splitfed import Config, SplitfedError, run

    def build(num_classes, in_shape):
        sys.exit(0)  # a script's habit: exiting with 0 would pass for a run that trained

    config = Config(dataset="synthetic", synthetic={"shape": (1, 8, 8), "samples": 100}, clients=2)
    with pytest.raises(
        SplitfedError, match=r"builder called sys.exit\(0\); a builder returns the model"
    ) as e:
        run(config.replace(out=str(tmp_path / "r")), model=build)
    assert "\n" not in str(e.value) and not (tmp_path / "r").exists()


def _finished_run(tmp_path):
    from splitfed import Config, run

    config = Config(
        dataset="synthetic", synthetic={"shape": (1, 8, 8), "samples": 100}, clients=2, rounds=1,
        local_iters=1, algorithm=("fedavg",), device="cpu", divergence={"every": 0}, out=str(tmp_path / "r"),
    )  # fmt: skip
    run(config)
    return config.replace(resume=True), tmp_path / "r"


@pytest.mark.parametrize("plant", ["metrics.jsonl a directory", "checkpoint a pipe", "checkpoint /dev/zero"])
def test_what_is_not_a_file_in_a_run_directory_is_refused_in_one_line(tmp_path, plant):
    import os

    from splitfed import SplitfedError, run

    config, out = _finished_run(tmp_path)
    if plant == "metrics.jsonl a directory":
        (out / "metrics.jsonl").unlink()
        (out / "metrics.jsonl").mkdir()
        message = "metrics.jsonl is a directory, not a file"
    else:
        checkpoint = out / "checkpoints" / "fedavg.pt"
        checkpoint.unlink()
        os.mkfifo(checkpoint) if plant == "checkpoint a pipe" else checkpoint.symlink_to("/dev/zero")
        message = "fedavg.pt is a pipe, socket or device, not a file"
    started = time.perf_counter()
    with pytest.raises(SplitfedError, match=message) as e:
        run(config)
    assert "\n" not in str(e.value) and time.perf_counter() - started < 30


def test_a_link_planted_in_a_run_directory_is_replaced_not_written_through(tmp_path):
    from splitfed import run

    config, out = _finished_run(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    for name in ("partition.csv", "partition.csv.tmp", "metrics.jsonl.tmp"):
        (out / name).unlink(missing_ok=True)
        (out / name).symlink_to(victim)
    run(config)
    assert victim.read_text() == "untouched\n"
    assert not (out / "partition.csv").is_symlink() and (out / "partition.csv").read_text().startswith(
        "client"
    )


def test_a_full_disk_is_one_line_and_the_run_resumes_to_the_uninterrupted_result(tmp_path):
    """A write that fails for the disk's sake (here EFBIG: a file-size limit, which hits like ENOSPC) is
    one line, not a traceback; files are replaced whole, so --resume finishes the run as if nothing
    happened."""
    import json
    import resource
    import signal
    import subprocess
    import sys

    from splitfed import Config, run

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG, the process lives
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))  # a checkpoint is ~600 kB

    flags = [*SMALL, "--clients", "2", "--rounds", "2", "--local-iters", "1", "--device", "cpu"]
    flags += ["--algorithm", "fedavg,minibatch_sfl", "--divergence-every", "0", "--no-figures"]
    cmd = [sys.executable, "-m", "splitfed", "run", *flags, "--out", str(tmp_path / "r")]
    cut = subprocess.run(cmd, preexec_fn=small_disk, capture_output=True, text=True, timeout=300)
    assert cut.returncode == 1 and cut.stderr.count("\n") == 1, cut.stderr
    assert cut.stderr.startswith("splitfed: error: cannot write a file: File too large; what was written")
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    whole = run(
        Config.from_toml(tmp_path / "r" / "config.toml").replace(out=str(tmp_path / "w"), resume=False)
    )

    def numbers(lines):
        return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in lines]

    got = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert numbers(got) == numbers(whole.history)
