"""The outer step, pure and jit-able: estimate, update with optax, guard non-finite steps.

`unroll.train` runs it on the host; `make_train_step` is for users who write their own
loop (a step per call, or a `lax.scan` of steps).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from unroll._errors import BadValue
from unroll.contract import Estimator

__all__ = ["ON_NONFINITE", "TrainState", "make_train_step"]

ON_NONFINITE = ("stop", "skip")


class TrainState(NamedTuple):
    """The state of a run between outer steps: what `make_train_step`'s step takes and returns.

    With `unroll.train(..., num_seeds=S)` every field gains a leading seed axis `[S]`.

    Attributes:
      theta: the outer parameters (the last finite ones once a step was discarded).
      opt_state: the optax optimizer's state.
      estimator_state: the estimator's state (its workers' inner states, keys, ...).
      step: outer steps taken (int32 scalar), discarded ones included.
      first_nonfinite: outer step of the first non-finite loss/gradient, -1 if none (int32 scalar).
      num_rejected: outer steps not applied (non-finite, or after a stop) (int32 scalar).
    """

    theta: Any
    opt_state: Any
    estimator_state: Any
    step: jax.Array  # outer steps taken
    first_nonfinite: jax.Array  # outer step of the first non-finite loss/gradient, -1 if none
    num_rejected: jax.Array  # outer steps not applied (non-finite, or after a stop)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.abs(x) ** 2) for x in jax.tree_util.tree_leaves(tree)))


def make_train_step(estimator: Estimator, optimizer: optax.GradientTransformation, on_nonfinite: str = "stop"):
    """One outer step `(TrainState, key) -> (TrainState, metrics)`, pure and jit-able.

    The step estimates the gradient with `estimator.estimate`, updates theta with `optimizer`, and
    checks the result. A step whose loss, gradient or new theta is not finite is discarded; with
    `on_nonfinite="stop"` every later step is discarded too (the state stays at the
    last finite one), with `"skip"` training goes on with the next key.

    Args:
      estimator: an `unroll` estimator; its `estimate(theta, state, key)` gives the gradient.
      optimizer: an optax `GradientTransformation` applied to the estimated gradient.
      on_nonfinite: `"stop"` (the default) or `"skip"`, what follows a non-finite step (see above).

    Returns:
      The function `step(state, key) -> (state, metrics)`, with `state` a `TrainState` and `metrics` a dict of
      scalars: the estimator's `info` entries (at least `loss` and `steps`), `grad_norm` (the global norm of the
      estimated gradient) and `accepted` (whether the step was applied).

    Raises:
      BadValue: `on_nonfinite` is not one of `ON_NONFINITE`.
    """
    if on_nonfinite not in ON_NONFINITE:
        raise BadValue(
            f"`on_nonfinite`={on_nonfinite!r} must be one of {ON_NONFINITE}; pass on_nonfinite='stop' "
            "(end the run at its last finite theta) or 'skip' (drop that step and go on)."
        )

    def step(state: TrainState, key: jax.Array):
        grad, estimator_state, info = estimator.estimate(state.theta, state.estimator_state, key)
        updates, opt_state = optimizer.update(grad, state.opt_state, state.theta)
        theta = optax.apply_updates(state.theta, updates)
        finite = _all_finite((grad, info["loss"], theta))
        stopped = (state.first_nonfinite >= 0) & (on_nonfinite == "stop")
        accept = finite & ~stopped
        kept = jax.tree_util.tree_map(
            lambda new, old: jnp.where(accept, new, old),
            (theta, opt_state, estimator_state),
            (state.theta, state.opt_state, state.estimator_state),
        )
        first = jnp.where((state.first_nonfinite < 0) & ~finite, state.step, state.first_nonfinite)
        metrics = dict(info, grad_norm=_global_norm(grad), accepted=accept)
        new_state = TrainState(*kept, state.step + 1, first, state.num_rejected + (~accept).astype(jnp.int32))
        return new_state, metrics

    return step
