"""The algorithm interface: what one round does. The engine owns everything else."""

from ..engine.context import Context
from ..registry import Registry


class Algorithm:
    """One training algorithm over the shared engine.

    ``w_c`` and ``w_s`` are the global client-side and server-side models between rounds: what the engine
    evaluates, measures divergence on and checkpoints. A subclass only says what a round does to them.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.w_c = ctx.init_c.clone()
        self.w_s = ctx.init_s.clone()

    def run_round(self, rnd: int, clients: list[int]) -> None:
        """Train one round with the participating ``clients`` (sorted ids)."""
        raise NotImplementedError


ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm")
