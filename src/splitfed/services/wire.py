"""Tensors on the wire: raw bytes + dtype + shape, streamed in frames, checked on arrival.

``encode`` turns a header and named tensors into a stream of Frames of at most ``frame_bytes`` of data;
``decode`` reassembles them and checks everything before anyone uses the result: the header is present
and only in the first frame, every tensor's dtype is allowed and its shape is the expected one, the byte
count adds up, the total stays under the limit, and floating-point values are finite. Any failure is a
WireError naming what was wrong; the servers turn it into INVALID_ARGUMENT.
"""

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from ..choices import WIRE_DTYPES
from . import splitfed_pb2 as pb

# what travels: the wire dtypes a config may choose (torch's names) and the labels' int64
DTYPES = {name: getattr(torch, name) for name in (*WIRE_DTYPES, "int64")}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
FRAME_BYTES = 1 << 20  # data per frame; the gRPC message limit is set above this


class WireError(ValueError):
    """A message that is malformed or not what the protocol expects here."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.code = code


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: ship its 16-bit patterns
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def encode(
    header: "pb.Header", tensors: dict[str, torch.Tensor], frame_bytes: int = FRAME_BYTES
) -> Iterator["pb.Frame"]:
    """Frames of one message: the header (with the tensors' names, dtypes and shapes) and their bytes."""
    payload = []
    del header.tensors[:]
    for name, t in tensors.items():
        if t.dtype not in DTYPE_NAMES:
            raise ValueError(f"cannot send {name} of dtype {t.dtype}")
        header.tensors.add(name=name, dtype=DTYPE_NAMES[t.dtype], shape=list(t.shape))
        payload.append(tensor_bytes(t))
    data = b"".join(payload)
    yield pb.Frame(header=header, data=data[:frame_bytes])
    for start in range(frame_bytes, len(data), frame_bytes):
        yield pb.Frame(data=data[start : start + frame_bytes])


class Expect:
    """What a message must hold: tensor name -> (allowed dtypes, shape; None in a shape matches any size)."""

    def __init__(
        self, tensors: dict[str, tuple[tuple[str, ...], tuple[int | None, ...]]], max_bytes: int
    ) -> None:
        self.tensors = tensors
        self.max_bytes = max_bytes


def decode(
    frames: Iterable["pb.Frame"], expect: "Expect | Callable[[pb.Header], Expect] | None"
) -> tuple["pb.Header", dict[str, torch.Tensor]]:
    """Reassemble and check one message; ``expect`` None accepts a header-only message; a function of the
    header gives the expectations of a message whose header says what it is (an exchange's phase)."""
    header, chunks, size = None, [], 0
    for i, frame in enumerate(frames):
        if i == 0:
            if not frame.HasField("header"):
                raise WireError("the first frame carries no header")
            header = frame.header
            if callable(expect):
                expect = expect(header)
        elif frame.HasField("header"):
            raise WireError("a header in a frame other than the first")
        size += len(frame.data)
        limit = expect.max_bytes if expect else 0
        if size > limit:
            raise WireError(f"message larger than the {limit} bytes expected here", "RESOURCE_EXHAUSTED")
        chunks.append(frame.data)
    if header is None:
        raise WireError("empty message: no frames")
    if expect is None:
        if header.tensors:
            raise WireError("this message carries no tensors")
        return header, {}
    names = [t.name for t in header.tensors]
    if sorted(names) != sorted(expect.tensors) or len(set(names)) != len(names):
        raise WireError(f"tensors {names} where {sorted(expect.tensors)} are expected")
    data = b"".join(chunks)
    view, out, offset = memoryview(data), {}, 0
    for th in header.tensors:
        out[th.name] = _tensor(th, *expect.tensors[th.name], view[offset:])  # a view: no copy
        offset += out[th.name].numel() * out[th.name].element_size()
    if offset != len(data):
        raise WireError(f"{len(data) - offset} bytes beyond the announced tensors")
    return header, out


def _tensor(
    th: "pb.TensorHeader", allowed: tuple[str, ...], shape: tuple[int | None, ...], data: memoryview
) -> torch.Tensor:
    """The tensor ``th`` announces, from the start of ``data``, once its dtype, shape and values are
    checked (``allowed`` dtypes, ``shape`` with None for any size, finite floats)."""
    if th.dtype not in allowed:
        raise WireError(f"{th.name}: dtype {th.dtype!r}, expected one of {', '.join(allowed)}")
    got = tuple(th.shape)
    if len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape, strict=False)):
        raise WireError(
            f"{th.name}: shape {list(got)}, expected {[s if s is not None else 'n' for s in shape]}"
        )
    if any(g < 0 for g in got):
        raise WireError(f"{th.name}: negative size in shape {list(got)}")
    dtype = DTYPES[th.dtype]
    count = 1
    for g in got:
        count *= g
    nbytes = count * dtype.itemsize
    if nbytes > len(data):
        raise WireError(f"{th.name}: {nbytes} bytes announced, {len(data)} present")
    raw = bytearray(data[:nbytes])
    if not count:
        t = torch.zeros(0, dtype=dtype)
    elif dtype == torch.bfloat16:
        t = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16)
    else:
        t = torch.frombuffer(raw, dtype=dtype)
    t = t.reshape(got)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise WireError(f"{th.name}: non-finite values")
    return t


class Counting:
    """Frames passed through, their serialized bytes counted: what crosses the wire, before gRPC's framing."""

    def __init__(self, frames: Iterable["pb.Frame"]) -> None:
        self.frames, self.bytes = frames, 0

    def __iter__(self) -> Iterator["pb.Frame"]:
        for frame in self.frames:
            self.bytes += frame.ByteSize()
            yield frame


def header(**fields: Any) -> "pb.Header":
    dropped = fields.pop("dropped", [])
    info = fields.pop("info", {})
    h = pb.Header(**fields)
    h.dropped.extend(dropped)
    for k, v in info.items():
        h.info[k] = float(v)
    return h
