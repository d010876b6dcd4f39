"""The fed server of a definition (``FedServer``) and its default rule, the weighted average of the
uploads (``Average``), whose sums executors may take in pieces."""

from typing import TYPE_CHECKING

import torch

from ..engine.state import State, WeightedSum
from .parts import Model, Payload

if TYPE_CHECKING:
    from .base import Algorithm


class FedServer:
    """The fed server of a definition, one per run: each round it sees the round-start model of the
    client parts (``begin``), says what each participant starts from (``download``; None: not yet, e.g.
    while the client before it in a relay still trains), takes each upload as it arrives (``upload``), and
    makes the next global model (``end``). ``skip(n)``: participant n will not upload this round. What it
    keeps across rounds is ``state_dict()``, checkpointed and restored by name."""

    def begin(self, rnd: int, model: Model, turns: list[int], weights: dict[int, float]) -> None:
        raise NotImplementedError

    def download(self, n: int) -> Payload | None:
        raise NotImplementedError

    def upload(self, n: int, payload: Payload) -> None:
        raise NotImplementedError

    def skip(self, n: int) -> None:
        pass

    def end(self) -> Model:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


class Average(FedServer):
    """Every participant starts from the global model; the uploads are averaged with weights p_n
    (renormalised over those that uploaded), then ``update(model, mean)`` makes the next global model
    (FedAvg: the mean itself). The sum is linear in the uploads, so executors may take it in pieces
    (``partial``/``merge``: torch.distributed all-reduces it) without knowing what the rule does after."""

    def __init__(self, algo: "Algorithm") -> None:
        self.algo = algo
        self.corrections = algo.corrections

    def begin(self, rnd: int, model: Model, turns: list[int], weights: dict[int, float]) -> None:
        self.round, self.model, self.weights = rnd, model, weights
        self.extras = {k: v for c in self.corrections for k, v in c.download(model).items()}
        self.sums: dict[str, WeightedSum] = {}
        self.uploaded: list[int] = []

    def download(self, n: int) -> Payload:
        return Payload(self.model, self.extras)

    def upload(self, n: int, payload: Payload) -> None:
        w = self.weights[n]
        for name, state in payload.model.items():
            self.sums.setdefault(name, WeightedSum()).add(state, w)
        for name, t in payload.extras.items():
            self.sums.setdefault("+" + name, WeightedSum()).add(State(t, t[:0], t[:0]), w)
        self.uploaded.append(n)

    def partial(self) -> dict[str, WeightedSum]:
        """The weighted sums so far, by name (parts; extras under "+name")."""
        return self.sums

    def end(self) -> Model:
        total = sum(self.weights[n] for n in self.uploaded)
        everyone = sorted(self.uploaded) == sorted(self.weights)
        scale = 1.0 if everyone else 1.0 / total  # exact Σ p_n = 1 when all uploaded: no rescaling
        mean = {name: acc.result for name, acc in self.sums.items()}
        if scale != 1.0:
            mean = {name: State(*(t * scale for t in s.to_dict().values())) for name, s in mean.items()}
        averaged = Payload(
            {k: v for k, v in mean.items() if not k.startswith("+")},
            {k[1:]: v.params for k, v in mean.items() if k.startswith("+")},
        )
        for c in self.corrections:
            c.update(self.model, averaged, len(self.uploaded), self.algo.num_clients)
        self.mean = averaged  # what ``update`` may read beside the model: the mean of the extras too
        return self.update(self.model, averaged.model)

    def update(self, model: Model, mean: Model) -> Model:
        """The next global model from the round-start one and the participants' mean (FedAvg: the mean)."""
        return mean

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{i}.{k}": v for i, c in enumerate(self.corrections) for k, v in c.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, c in enumerate(self.corrections):
            prefix = f"{i}."
            c.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
