"""One slot's conversation between the clients and the main server, as a definition states it.

A definition's ``client`` is a generator: each ``yield`` is a message to the main server and evaluates to
the reply. Its ``main_server`` answers with a list of replies, or is itself a generator that yields
replies and receives the clients' next messages. ``run_exchange`` keeps the two in step for any executor:
the executor only says how a message reaches the main server (``to_server``: routing, byte accounting,
a network call or a gather across processes) and how replies come back (``to_clients``).
"""

import inspect
from collections.abc import Callable, Generator
from typing import Any

from ..algorithms.base import Message, Smashed
from ..errors import SplitfedError


def run_exchange(
    clients: Generator[Message, Message, None] | None,
    serve: Callable[[list[Smashed]], Any],
    to_server: Callable[[Message], list[Smashed]],
    to_clients: Callable[[list[Message]], Message],
    who: str,
) -> None:
    """Drive one slot's conversation between the clients' generator and the main server (see
    ``Algorithm.client`` and ``main_server``): each message the clients yield goes to the main server
    (``to_server`` routes it), each reply back (``to_clients`` joins the per-client replies), until both
    sides end. A side that ends while the other still talks is a SplitfedError naming ``who``."""
    if clients is None:
        return
    try:
        message = next(clients)
    except StopIteration:
        return  # nothing for the main server (the whole model trained on the client)
    server_side: Generator | None = None
    while True:
        batch = to_server(message)
        if server_side is None:
            answer = serve(batch)
            if inspect.isgenerator(answer):
                server_side = answer
                try:
                    replies = next(server_side)
                except StopIteration as stop:
                    replies, server_side = stop.value, None
                    server_done = True
                else:
                    server_done = False
            else:
                replies, server_done = answer, True
        else:
            try:
                replies = server_side.send(batch)
                server_done = False
            except StopIteration as stop:
                replies, server_done = stop.value, True
        if replies is None or len(replies) != len(batch):
            got = "nothing" if replies is None else f"{len(replies)} replies"
            raise SplitfedError(f"{who}: the main server answered {len(batch)} clients with {got}")
        try:
            message = clients.send(to_clients(list(replies)))
        except StopIteration:
            if not server_done:
                raise SplitfedError(
                    f"{who}: the clients ended their iteration while the main server waited for them"
                ) from None
            return
        if server_done:
            raise SplitfedError(f"{who}: the clients sent again after the main server's last reply")


def server_step(step: Callable[[], Any]) -> tuple[Any, bool]:
    """One step of a main server that talks more than once (a generator): its replies, and whether they
    are its last (the generator returned them)."""
    try:
        return step(), False
    except StopIteration as stop:
        return stop.value, True
