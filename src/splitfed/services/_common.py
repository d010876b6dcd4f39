"""What every role shares: the experiment's setup, message expectations, gRPC servers and callers."""

import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from pathlib import Path
from typing import IO, Any, TypeVar

import grpc
import torch

from ..choices import WIRE_DTYPES
from ..config import Config
from ..engine.side import State
from ..errors import SplitfedError
from ..executors.trace import Schema, state_schema, trace
from ..setup import Setup
from .deploy import Deployment
from .security import (
    RUN_KEY,
    Tokens,
    call_metadata,
    channel_credentials,
    client_identity,
    server_credentials,
)
from .wire import DTYPE_NAMES, DTYPES, Expect, WireError

log = logging.getLogger("splitfed")
T = TypeVar("T")
FLOATS = WIRE_DTYPES


class GaveUp(SplitfedError):
    """A role stopped because a wait outlasted its deadline; its state is saved, a restart continues."""

    exit_code = 3


class ProtocolError(Exception):
    """A well-formed message that the protocol does not allow now; becomes the gRPC status ``code``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def abort(context: grpc.ServicerContext, error: Exception) -> None:
    """End the call with the status that names what was wrong with the message."""
    if isinstance(error, ProtocolError):
        context.abort(error.code, str(error))
    code = getattr(grpc.StatusCode, getattr(error, "code", "INVALID_ARGUMENT"))
    context.abort(code, str(error))


def run_identity(cfg: Config) -> str:
    """The run identity a party's calls carry: its config's fields that decide the numbers, as JSON
    (ASCII, one line: a gRPC metadata value; HTTP/2 header compression sends it whole only once)."""
    return json.dumps(cfg.run_identity(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def admit(tokens: Tokens, context: grpc.ServicerContext, ours: str, server: str) -> str:
    """The caller's identity, once its token is checked and its run is this server's own (``ours``: its
    ``run_identity``, computed once: this runs on every call, each iteration's included): a party
    started with another config (another lr, seed, clients, ...) would train on and mix its numbers into
    this run's, so it is refused (PERMISSION_DENIED) before any of its message is read, with the fields
    that differ; the server says so in its log too."""
    identity = tokens.identify(context)
    theirs = dict(context.invocation_metadata()).get(RUN_KEY, "")
    if theirs == ours:
        return identity
    try:
        given = json.loads(theirs)
    except ValueError:
        given = None
    if not isinstance(given, dict):
        why = f"{identity} did not say which run it belongs to (a splitfed of another version?)"
    else:
        mine = json.loads(ours)  # as sent: tuples become lists
        differ = [k for k in dict.fromkeys([*mine, *given]) if mine.get(k) != given.get(k)]
        shown = ", ".join(f"{k} = {given.get(k)!r} against {mine.get(k)!r}" for k in differ[:4])
        more = ", ..." if len(differ) > 4 else ""
        why = f"{identity} was started with another config than the {server} ({shown}{more})"
    log.warning(f"{server}: refused {why}")
    context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{why}: start every party with the same config")
    return identity  # not reached: abort raises


def hold_lock(path: Path, who: str) -> IO[str]:
    """An exclusive lock on ``path``, held while the returned file stays open (so for the process's life):
    a second process of ``who`` with the same state directory is refused at once, while a restart after a
    crash is not (the kernel lets go of a dead process's lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise SplitfedError(
            f"{who} is running already (process {holder} holds {path}): one process per id; stop that "
            "one first, or give this one another id"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def check_client(identity: str, claimed: int, clients: int) -> None:
    """A call from ``identity`` may act only as its own client, one of the experiment's ``clients``."""
    if identity != client_identity(claimed):
        raise ProtocolError(
            grpc.StatusCode.PERMISSION_DENIED, f"{identity} may not speak for client {claimed}"
        )
    if not 0 <= claimed < clients:
        raise WireError(f"client {claimed} is not among the {clients} clients")


class Messages:
    """What the experiment says each message of its algorithm holds (learnt by running the definition
    once: executors/trace.py), as the wire's expectations: names, dtypes, shapes, sizes."""

    def __init__(self, setup: Setup, algorithm: str) -> None:
        self.cfg = setup.cfg
        self.trace = trace(algorithm, setup)
        self.batch_sizes = setup.batch_sizes()
        self.num_classes = setup.data.num_classes
        self.wire_dtype = self.cfg.wire_dtype

    @property
    def phases(self) -> int:
        """How many exchanges with the main server one iteration has."""
        return len(self.trace.phases)

    def _expect(self, schema: Schema, rows: bool) -> Expect:
        tensors, total = {}, 4096
        b = max(self.batch_sizes)
        for name, (dtype, shape) in schema.items():
            floating = dtype.is_floating_point
            allowed = (self.wire_dtype,) if floating and rows else (DTYPE_NAMES.get(dtype, str(dtype)),)
            tensors[name] = (allowed, ((None, *shape) if rows else shape))
            count = int(torch.tensor(shape, dtype=torch.int64).prod()) * (b if rows else 1)
            total += count * (4 if floating else dtype.itemsize)
        return Expect(tensors, max_bytes=total)

    def start_message(self) -> Expect:
        """A round's start: the client parts' states and the fed server's extras."""
        return self._expect(self.trace.download, rows=False)

    def upload_message(self) -> Expect:
        return self._expect(self.trace.upload, rows=False)

    def server_message(self) -> Expect:
        """The main server's parts at a round's end."""
        schema: Schema = {}
        for part, state in self.trace.server_parts.items():
            schema |= state_schema(part, state)
        return self._expect(schema, rows=False)

    def step_message(self, phase: int) -> Expect:
        if not 0 <= phase < self.phases:
            raise WireError(f"phase {phase} is not an exchange of this algorithm (0..{self.phases - 1})")
        return self._expect(self.trace.phases[phase][0], rows=True)

    def reply_message(self, phase: int) -> Expect:
        return self._expect(self.trace.phases[phase][1], rows=True)

    def check_batch(self, client: int, tensors: dict[str, torch.Tensor]) -> None:
        """Every tensor has client's b_n rows; labels are classes of the data set."""
        b = self.batch_sizes[client]
        for name, t in tensors.items():
            if t.shape[0] != b:
                raise WireError(f"client {client} sends batches of {b}: got {name} {list(t.shape)}")
        labels = tensors.get("labels")
        if (
            labels is not None
            and labels.numel()
            and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes
        ):
            raise WireError(f"labels must lie in 0..{self.num_classes - 1}")


def model_tensors(model: dict[str, State]) -> dict[str, torch.Tensor]:
    """Model parts as named tensors: ``<part>.params``, ``<part>.buffers``, ``<part>.opt``."""
    out: dict[str, torch.Tensor] = {}
    for part, state in model.items():
        out |= state_tensors(part, state)
    return out


def model_from(
    parts: Iterable[str], tensors: dict[str, torch.Tensor], device: torch.device
) -> dict[str, State]:
    return {part: state_from(part, tensors, device) for part in parts}


def extras_tensors(extras: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"x.{k}": v.detach().cpu() for k, v in extras.items()}


def extras_from(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k[2:]: v.to(device) for k, v in tensors.items() if k.startswith("x.")}


def state_tensors(prefix: str, state: State) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu() for k, v in state.to_dict().items()}


def state_from(prefix: str, tensors: dict[str, torch.Tensor], device: torch.device) -> State:
    return State(*(tensors[f"{prefix}.{k}"].float().to(device) for k in State.KEYS))


def grpc_options(deploy: Deployment) -> list[tuple[str, int]]:
    limit = int(deploy.max_frame_mb * 2**20)
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]


def keepalive_options(deploy: Deployment, server: bool) -> list[tuple[str, int]]:
    """Keepalive pings, so that a connection whose peer vanished without a word (a host down, a NAT or
    firewall dropping it) fails its calls with UNAVAILABLE, which Caller retries for retry_s and then
    reports, instead of a call at a barrier timing out and being asked again for ever. Servers accept
    the clients' pings at that rate (by default gRPC servers refuse pings more often than every 5 min)."""
    every = max(1, int(deploy.keepalive_s * 1000))
    if server:
        return [
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", every // 2),
            ("grpc.http2.max_ping_strikes", 0),
        ]
    return [
        ("grpc.keepalive_time_ms", every),
        ("grpc.keepalive_timeout_ms", every),
        ("grpc.http2.ping_timeout_ms", every),  # gRPC ≥ 1.6x waits 60 s for an ack unless told
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def serve(deploy: Deployment, address: str, workers: int, add: Callable[[grpc.Server], None]) -> grpc.Server:
    """A TLS-only gRPC server on ``address`` (host:port)."""
    # no SO_REUSEPORT: a second server on a port in use must fail, not silently share its calls
    options = [*grpc_options(deploy), *keepalive_options(deploy, server=True), ("grpc.so_reuseport", 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
    add(server)
    try:
        bound = server.add_secure_port(address, server_credentials(deploy.cert, deploy.key))
    except RuntimeError as e:
        why = str(e).split(";")[0]
        raise SplitfedError(
            f"cannot listen on {address} (port in use, or an address not of this machine): {why}"
        ) from None
    if not bound:
        raise SplitfedError(f"cannot listen on {address} (port in use?)")
    server.start()
    return server


def serve_until_finished(
    service: Any, server: grpc.Server, who: str, linger: Callable[[], object] = lambda: None
) -> None:
    """Let ``service``'s deadlines pass (its ``tick``, every second) until it is ``finished``; raise GaveUp
    if it gave up waiting, else ``linger`` (a moment for its callers); then stop ``server``. The stop's
    grace lets the last calls finish, and is waited for: a process that exits while gRPC's threads still
    shut down can abort ("terminate called without an active exception") and lose its exit status."""
    try:
        while not service.finished.wait(timeout=1.0):
            service.tick()
        if service.failure is not None:
            raise GaveUp(f"{who}: {service.failure}")
        linger()
    finally:
        server.stop(grace=2.0).wait(timeout=10)


def dial(deploy: Deployment, address: str) -> grpc.Channel:
    options = grpc_options(deploy) + keepalive_options(deploy, server=False)
    return grpc.secure_channel(address, channel_credentials(deploy.ca), options=options)


class Caller:
    """Calls a server as one identity, retrying while it is unreachable (e.g. restarting after a crash)."""

    RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)

    def __init__(self, identity: str, token: str, retry_s: float, run: str = "") -> None:
        self.metadata = call_metadata(identity, token, run)
        self.retry_s = retry_s

    def __call__(self, fn: Callable[..., T], *args: Any, timeout: float = 60.0) -> T:
        first_failure = None
        delay = 0.1
        while True:
            try:
                return fn(*args, metadata=self.metadata, timeout=timeout)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue  # a long wait at a barrier, not a failure: ask again
                if e.code() not in self.RETRYABLE:
                    raise
                first_failure = first_failure or time.monotonic()
                if time.monotonic() - first_failure > self.retry_s:
                    raise SplitfedError(
                        f"server unreachable for {self.retry_s:.0f} s: {e.details()}"
                    ) from None
                time.sleep(delay)
                delay = min(2.0, delay * 2)


def restart_round(error: grpc.RpcError) -> int | None:
    """The round a server asks the client to restart (status ABORTED), if that is what it says."""
    if error.code() != grpc.StatusCode.ABORTED:
        return None
    match = re.search(r"restart round (\d+)", error.details() or "")
    return int(match.group(1)) if match else None


def on_wire(message: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """A per-iteration message as it is sent: its floats in the wire dtype, everything on the CPU."""
    return {
        k: (t.detach().to(DTYPES[dtype]) if t.is_floating_point() else t).cpu() for k, t in message.items()
    }


def off_wire(message: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A per-iteration message as received, for computing: floats back to float32, on ``device``."""
    return {k: (t.float() if t.is_floating_point() else t).to(device) for k, t in message.items()}
