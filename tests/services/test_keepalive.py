"""A connection whose peer vanishes without a word is found dead by keepalive pings, and the caller
reports the server unreachable after retry_s instead of waiting at a barrier for ever."""

import socket
import threading
import time

import grpc
import pytest

from splitfed import SplitfedError
from splitfed.services._common import Caller, dial, serve

from .harness import deployment, tiny_config


class FreezingProxy:
    """Forwards TCP both ways until ``freeze()``; then forwards nothing and closes nothing (a black hole,
    like a host that lost power) and refuses new connections."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.frozen = target_port, threading.Event()
        self.listener = socket.create_server(("localhost", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.frozen.is_set():
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("localhost", self.target_port))
            self.held += [downstream, upstream]
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self.frozen.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data or self.frozen.is_set():
                return  # frozen: what arrives is dropped, and the socket stays open
            dst.sendall(data)

    def freeze(self) -> None:
        self.frozen.set()
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept; new connections are refused
        self.listener.close()


def test_a_silent_peer_is_reported_unreachable_not_waited_on_for_ever(tmp_path):
    _, _, deploy = deployment(tmp_path, tiny_config(tmp_path), keepalive_s=1.0, retry_s=2.0)
    release = threading.Event()

    def barrier(request: bytes, context) -> bytes:  # a server holding a call, as at a round barrier
        release.wait(60)
        return b"done"

    handler = grpc.method_handlers_generic_handler(
        "t.Barrier", {"Wait": grpc.unary_unary_rpc_method_handler(barrier)}
    )
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    server = serve(deploy, f"localhost:{port}", 4, lambda srv: srv.add_generic_rpc_handlers((handler,)))
    proxy = FreezingProxy(port)
    try:
        channel = dial(deploy, f"localhost:{proxy.port}")
        wait = channel.unary_unary("/t.Barrier/Wait")
        call = Caller("client:0", "token", retry_s=deploy.retry_s)
        threading.Timer(1.0, proxy.freeze).start()
        t0 = time.monotonic()
        with pytest.raises(SplitfedError, match="server unreachable for 2 s"):
            call(wait, b"", timeout=30.0)  # without keepalive: a 30 s timeout, asked again for ever
        assert time.monotonic() - t0 < 20
    finally:
        release.set()
        server.stop(0)
