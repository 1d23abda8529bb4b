"""Ready systems with known facts."""

from unroll.tasks.influence import THETA_INIT, influence_balancing, influence_loss, influence_optimum

__all__ = ["THETA_INIT", "influence_balancing", "influence_loss", "influence_optimum"]
