"""What every role shares: the experiment's setup, message expectations, gRPC servers and callers."""

import re
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc
import torch

from ..engine.side import State
from ..errors import SplitfedError
from ..setup import Setup
from .deploy import Deployment
from .security import call_metadata, channel_credentials, client_identity, server_credentials
from .wire import DTYPES, Expect, WireError

T = TypeVar("T")
FLOATS = ("float32", "float16", "bfloat16")


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


def check_client(identity: str, claimed: int, clients: int) -> None:
    """A call from ``identity`` may act only as its own client, one of the experiment's ``clients``."""
    if identity != client_identity(claimed):
        raise ProtocolError(
            grpc.StatusCode.PERMISSION_DENIED, f"{identity} may not speak for client {claimed}"
        )
    if not 0 <= claimed < clients:
        raise WireError(f"client {claimed} is not among the {clients} clients")


class Shapes:
    """What the experiment says each message holds: smashed shape, batch sizes, state sizes."""

    def __init__(self, setup: Setup) -> None:
        self.cfg = setup.cfg
        self.batch_sizes = setup.batch_sizes()
        self.num_classes = setup.data.num_classes
        with torch.no_grad():
            sample = setup.data.train_x[:2]
            self.smashed = tuple(setup.client_module.eval()(sample).shape[1:])
        self.client_state = _sizes(setup.init_c)
        self.server_state = _sizes(setup.init_s)
        self.wire_dtype = self.cfg.wire_dtype

    def smashed_message(self) -> Expect:
        b = max(self.batch_sizes)
        return Expect(
            {"smashed": ((self.wire_dtype,), (None, *self.smashed)), "labels": (("int64",), (None,))},
            max_bytes=b * (int(torch.tensor(self.smashed).prod()) * 4 + 8) + 4096,
        )

    def check_batch(self, client: int, smashed: torch.Tensor, labels: torch.Tensor) -> None:
        b = self.batch_sizes[client]
        if smashed.shape[0] != b or labels.shape != (b,):
            raise WireError(f"client {client} sends batches of {b}: got smashed {list(smashed.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise WireError(f"labels must lie in 0..{self.num_classes - 1}")

    def grad_message(self) -> Expect:
        b = max(self.batch_sizes)
        return Expect(
            {"smashed_grad": ((self.wire_dtype,), (None, *self.smashed))},
            max_bytes=b * int(torch.tensor(self.smashed).prod()) * 4 + 4096,
        )

    def state_message(self, halves: tuple[str, ...]) -> Expect:
        """A model state: for each half ("client", "server"), its params, buffers and optimizer state."""
        tensors, total = {}, 4096
        for half in halves:
            sizes = self.client_state if half == "client" else self.server_state
            for part, n in sizes.items():
                tensors[f"{half}.{part}"] = (("float32",), (n,))
                total += 4 * n
        return Expect(tensors, max_bytes=total)


def _sizes(state: State) -> dict[str, int]:
    return {k: int(v.numel()) for k, v in state.to_dict().items()}


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
    options = grpc_options(deploy) + keepalive_options(deploy, server=True)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
    add(server)
    try:
        bound = server.add_secure_port(address, server_credentials(deploy.cert, deploy.key))
    except RuntimeError as e:
        raise SplitfedError(f"cannot listen on {address}: {e}") from None
    if not bound:
        raise SplitfedError(f"cannot listen on {address} (port in use?)")
    server.start()
    return server


def dial(deploy: Deployment, address: str) -> grpc.Channel:
    options = grpc_options(deploy) + keepalive_options(deploy, server=False)
    return grpc.secure_channel(address, channel_credentials(deploy.ca), options=options)


class Caller:
    """Calls a server as one identity, retrying while it is unreachable (e.g. restarting after a crash)."""

    RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)

    def __init__(self, identity: str, token: str, retry_s: float) -> None:
        self.metadata = call_metadata(identity, token)
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


def on_wire(t: torch.Tensor, dtype: str) -> torch.Tensor:
    """``t`` as it is sent: in the wire dtype, on the CPU."""
    return t.detach().to(DTYPES[dtype]).cpu()
