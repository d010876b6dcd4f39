"""Drift corrections (a proximal term, control variates): client-side terms any algorithm may take,
one config field each (``Correction.knob``), with what the fed server keeps for them."""

from typing import ClassVar

import torch

from ..config import Config
from ..registry import Registry
from .parts import Model, Payload
from .views import ClientRound


class Correction:
    """A client-side drift correction and what the fed server keeps for it. Every hook is optional."""

    knob: ClassVar[str] = ""  # the config setting that adds it to any algorithm (correction.prox_mu)

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    # client
    def begin(self, client: ClientRound) -> None:
        """Round start, after the client loaded what it starts from."""

    def correct(self, part: str, grad: torch.Tensor, params: torch.Tensor, scratch: dict) -> torch.Tensor:
        """The gradient the optimizer steps with; tensors are one copy's [P] or every copy's [K, P]."""
        return grad

    def end(self, client: ClientRound) -> dict[str, torch.Tensor]:
        """Round end: extras to upload beside the model."""
        return {}

    # fed server
    def download(self, model: Model) -> dict[str, torch.Tensor]:
        """Extras every client gets with the round-start model."""
        return {}

    def update(self, model: Model, mean: Payload, participants: int, num_clients: int) -> None:
        """Round end, with the weighted mean of the uploads: the fed server's own state."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


CORRECTIONS: Registry[type[Correction]] = Registry("correction")


def register_correction(cls: type[Correction]) -> type[Correction]:
    """Make ``cls`` available to every algorithm through its config field ``cls.knob``."""
    return CORRECTIONS.register(cls.knob)(cls)


def knob_set(cfg: Config, knob: str) -> bool:
    value = cfg.get(knob)
    return value is not None and value is not False
