"""The pieces of what an algorithm trains (``Part``) and who trains each, and what travels: a model's
parts by name (``Model``), one exchange's tensors (``Message``), a round end's ``Payload``."""

from dataclasses import dataclass, field

import torch

from ..engine.state import State
from ..errors import SplitfedError

# who trains a part
CLIENT = "client"  # every participant trains its own copy, from what the fed server hands it
MAIN_SERVER = "main_server"  # the main server: one model for every client (shared) or a copy per client

Model = dict[str, State]  # a model's parts by name ("client", "server", ...)
Message = dict[str, torch.Tensor]  # what travels in one exchange, by name: smashed, labels, smashed_grad, ...


@dataclass(frozen=True)
class Part:
    """A piece of what an algorithm trains.

    ``at``: who trains it (CLIENT or MAIN_SERVER). ``shared`` (main server only): one model that every
    client's batches step in turn, kept from round to round; otherwise a copy per client from the
    round-start model, combined at round end by ``combine_server_copies``. ``optimizer``: whose
    optimizer settings it trains with ("client": η_c and client_optimizer, "server": η_s and
    server_optimizer; default: by ``at``). ``in_model``: a segment of the model (in model order), or a
    module the algorithm builds itself (``build_part``), which evaluation and export leave out.
    """

    name: str
    at: str = CLIENT
    shared: bool = False
    optimizer: str | None = None
    in_model: bool = True

    def __post_init__(self) -> None:
        if self.at not in (CLIENT, MAIN_SERVER):
            raise SplitfedError(f"part {self.name}: at must be {CLIENT} or {MAIN_SERVER}, got {self.at!r}")
        if self.shared and self.at != MAIN_SERVER:
            raise SplitfedError(
                f"part {self.name}: only the main server holds one model for every client; a client part "
                "handed from client to client is a fed-server rule (see algorithms/sl.py)"
            )

    @property
    def trains_with(self) -> str:
        """ "client" or "server": the optimizer settings of this part."""
        return self.optimizer or ("server" if self.at == MAIN_SERVER else "client")


SPLIT = (Part("client", CLIENT), Part("server", MAIN_SERVER, shared=True))  # cut once, one server model
WHOLE = (Part("client", CLIENT), Part("server", CLIENT, optimizer="server"))  # no main server: FL


@dataclass
class Payload:
    """What travels between a client and the fed server at a round's ends: model parts and named extras
    (e.g. SCAFFOLD's control variate)."""

    model: Model
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
