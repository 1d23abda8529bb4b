"""Synthetic gradients: decoupled neural interfaces (Jaderberg et al. 2016).

Truncated BPTT whose window objective adds the synthesizer's prediction of the
future: for a window of ``K`` steps from ``s_0`` to ``s_K``,

    J(theta, s_0) = sum_k l_k + <stop_gradient(S(s_K, t_K; phi)), s_K>,

``S`` predicting ``d (sum of the episode's remaining losses) / d s_K`` (zero when
the window ends its episode: there is no future). The theta estimate is
``grad_theta J / K``, on the same scale as truncated BPTT (the mean over an
episode's windows is the episode gradient when ``S`` is exact). Backpropagating
``J`` also gives ``delta_0 = dJ/ds_0``, the bootstrapped target of the previous
boundary: ``phi`` takes one optax step on ``mean |S(s_0) - stop_gradient(delta_0)|^2``
per window (over trajectories whose incoming episode is not over).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from unroll._constructor import check_window, keyword_only
from unroll._system import (
    check_positive_int,
    check_real_state,
    inexact_leaves,
    with_inexact_leaves,
)
from unroll.builder import plain_rule, windowed
from unroll.contract import Estimator, Gradient


class Synthesizer(NamedTuple):
    """``init(key, state_size, dtype) -> phi`` and ``apply(phi, s, t) -> dL_future/ds`` on the
    flattened (float) state ``s`` of size ``state_size`` at episode time ``t``."""

    init: Callable[[jax.Array, int, Any], Any]
    apply: Callable[[Any, jax.Array, jax.Array], jax.Array]


def linear_synthesizer() -> Synthesizer:
    """``S(s) = A s + c``, starting at zero (so the first windows are truncated BPTT)."""

    def init(key, size, dtype):
        return {"A": jnp.zeros((size, size), dtype), "c": jnp.zeros(size, dtype)}

    return Synthesizer(init, lambda phi, s, t: phi["A"] @ s + phi["c"])


def mlp_synthesizer(hidden: int = 64) -> Synthesizer:
    """``S(s) = W2 tanh(W1 s + b1) + b2``, output layer starting at zero."""
    hidden = check_positive_int(hidden, "hidden", "It is the width of the synthesizer's hidden layer, e.g. hidden=64.")

    def init(key, size, dtype):
        w1 = jax.random.normal(key, (hidden, size), dtype) / jnp.sqrt(size)
        return {
            "W1": w1,
            "b1": jnp.zeros(hidden, dtype),
            "W2": jnp.zeros((size, hidden), dtype),
            "b2": jnp.zeros(size, dtype),
        }

    def apply(phi, s, t):
        return phi["W2"] @ jnp.tanh(phi["W1"] @ s + phi["b1"]) + phi["b2"]

    return Synthesizer(init, apply)


class Synthesis(NamedTuple):
    """DNI's shared state (`state.shared`): the synthesizer's parameters and its
    optimizer's state (replicated, not per trajectory)."""

    params: Any
    opt_state: Any


def _flat_states(states) -> jax.Array:
    """``[W, P, n]``: each trajectory's float state leaves as one vector."""
    return jax.vmap(jax.vmap(lambda s: ravel_pytree(inexact_leaves(s))[0]))(states)


def _synthetic_gradient(synthesizer: Synthesizer, optimizer, horizon: int):
    """DNI's ``WindowGradient``: ``grad_theta J / (W K)`` and ``delta_0 = dJ/ds_0`` by one
    backward pass through the window, then one optax step of the synthesizer towards
    ``delta_0`` at the window's start."""
    predict = lambda params, flat, t: jax.vmap(jax.vmap(lambda s, t: synthesizer.apply(params, s, t)))(flat, t)

    def gradient(window, theta, synthesis):
        params = synthesis.params

        def objective(theta, floats):
            result = window.run(theta, floats)
            end = _flat_states(result.end_states)
            has_future = (result.end_times < horizon)[..., None]  # an episode's last window has no future
            synthetic = jax.lax.stop_gradient(jnp.where(has_future, predict(params, end, result.end_times), 0.0))
            return jnp.sum(result.losses) + jnp.sum(synthetic * end), result

        floats = inexact_leaves(window.start_states)
        (grad, delta), result = jax.grad(objective, argnums=(0, 1), has_aux=True)(theta, floats)
        grad = jax.tree_util.tree_map(lambda g: g / window.num_steps, grad)

        # bootstrapped targets at the window start: delta_0 = dJ/ds_0 per trajectory
        starts = _flat_states(window.start_states)
        targets = jax.lax.stop_gradient(_flat_states(with_inexact_leaves(window.start_states, delta)))
        live = (window.start_times < horizon).astype(starts.dtype)  # a finished episode has no future

        def synthesizer_loss(params):
            errors = jnp.sum((predict(params, starts, window.start_times) - targets) ** 2, axis=-1)
            return jnp.sum(live * errors) / jnp.maximum(jnp.sum(live), 1.0)

        loss_s, grad_phi = jax.value_and_grad(synthesizer_loss)(params)
        updates, opt_state = optimizer.update(grad_phi, synthesis.opt_state, params)
        synthesis = Synthesis(optax.apply_updates(params, updates), opt_state)
        return Gradient(grad, result, synthesis, {"synthesizer_loss": loss_s})

    return gradient


@keyword_only
def dni(
    system,
    *,
    truncation: int,
    num_workers: int = 1,
    synthesizer: Synthesizer | None = None,
    synthesizer_optimizer: optax.GradientTransformation | None = None,
) -> Estimator:
    """Truncated BPTT plus a learned synthetic gradient at the window end (see the module).

    Args:
      synthesizer: ``linear_synthesizer()`` (default) or ``mlp_synthesizer(hidden)``, or any
        ``Synthesizer(init, apply)`` (an oracle, in tests).
      synthesizer_optimizer: optax transformation for the synthesizer (default adam(1e-3)).
    """
    truncation, num_workers = check_window(system, truncation, num_workers)
    synthesizer = synthesizer or linear_synthesizer()
    optimizer = synthesizer_optimizer or optax.adam(1e-3)

    def synthesis(theta, key):
        leaves = inexact_leaves(jax.eval_shape(system.init, theta, key))
        check_real_state("dni", leaves)
        size = sum(x.size for x in leaves)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        params = synthesizer.init(jax.random.fold_in(key, 0x444E49), size, dtype)
        return Synthesis(params, optimizer.init(params))

    return windowed(
        system,
        plain_rule(system),
        truncation=truncation,
        num_workers=num_workers,
        gradient=_synthetic_gradient(synthesizer, optimizer, system.horizon),
        shared_state=synthesis,
    )
