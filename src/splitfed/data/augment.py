"""Augmentation of training batches: a function (x_batch, generator) -> x_batch run on every training
batch, on its device, drawing its randomness from the generator it is given (seeded per draw)."""

from collections.abc import Callable

import torch
import torch.nn.functional as F

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def cifar_augment(mean: tuple[float, ...], std: tuple[float, ...]) -> Augment:
    """Random crop 32 with padding 4 and horizontal flip (spec §7), on normalised batches.

    The padding value is what a black pixel becomes after normalisation, as if padding came first.
    """
    pad_value = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(1, -1, 1, 1)

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        offsets = torch.randint(0, 9, (2, b), generator=g).to(x.device)
        flip = (torch.rand(b, generator=g) < 0.5).to(x.device)
        fill = pad_value.to(x.device, x.dtype)
        padded = F.pad(x - fill, (4, 4, 4, 4)) + fill
        rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        out = padded[batch, chans, rows, cols]
        return torch.where(flip[:, None, None, None], out.flip(3), out)

    return augment
