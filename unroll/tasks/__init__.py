"""Ready systems with known facts."""

from unroll.tasks.influence import THETA_INIT, influence_balancing, influence_gap_fn, influence_loss, influence_loss_fn, influence_optimum

__all__ = ["THETA_INIT", "influence_balancing", "influence_gap_fn", "influence_loss", "influence_loss_fn", "influence_optimum"]
