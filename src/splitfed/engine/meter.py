"""What a round did, for its metrics: the training loss, samples and optimizer steps counted as they go."""

from collections.abc import Sequence

import torch


class Meter:
    """What a round did, for its metrics: training loss, samples trained, optimizer steps.

    The loss sum is one tensor updated in place (no device sync per step, and a fixed address that a
    captured CUDA graph can keep adding to).
    """

    def __init__(self) -> None:
        self.loss_sum: torch.Tensor | None = None
        self.loss_count = 0

    def reset(self) -> None:
        if self.loss_sum is not None:
            self.loss_sum.zero_()
        self.loss_count = 0

    def add_loss(self, loss: torch.Tensor, n: int) -> None:
        """Add a batch's mean loss over its n samples."""
        if self.loss_sum is None:
            self.loss_sum = torch.zeros((), dtype=torch.float64, device=loss.device)
        self.loss_sum.add_(loss.detach() * n)
        self.loss_count += n

    def counters(self, clients: Sequence[int] = ()) -> dict[str, int]:
        return {"loss_count": self.loss_count}

    def add_counters(self, clients: Sequence[int], delta: dict[str, int]) -> None:
        self.loss_count += delta["loss_count"]

    @property
    def train_loss(self) -> float:
        if not self.loss_count or self.loss_sum is None:
            return float("nan")
        return float(self.loss_sum) / self.loss_count
