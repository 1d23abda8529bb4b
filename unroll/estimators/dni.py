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

from unroll.system import (
    check_against_theta,
    check_num_workers,
    check_positive_int,
    check_real_state,
    check_system,
    check_truncation,
    inexact_leaves,
    with_inexact_leaves,
)
from unroll.window import Estimator, Worker, plain_rule, run_windows, start_workers, window_info, worker_shape_check


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


class DNIState(NamedTuple):
    workers: Worker  # [num_workers, 1]
    synthesizer_params: Any
    synthesizer_opt_state: Any


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
    check_system(system)
    truncation = check_truncation(truncation, system.horizon)
    num_workers = check_num_workers(num_workers)
    synthesizer = synthesizer or linear_synthesizer()
    optimizer = synthesizer_optimizer or optax.adam(1e-3)
    rule = plain_rule(system)
    horizon = system.horizon

    def flat_state(state):
        return ravel_pytree(inexact_leaves(state))[0]

    def init(theta, key):
        check_against_theta(system, theta, key)
        state = jax.eval_shape(system.init, theta, key)
        leaves = inexact_leaves(state)
        check_real_state("dni", leaves)
        size = sum(x.size for x in leaves)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        params = synthesizer.init(jax.random.fold_in(key, 0x444E49), size, dtype)
        workers, _ = start_workers(system, rule, theta, key, num_workers, 1, None, stagger=True)
        return DNIState(workers, params, optimizer.init(params))

    def estimate(theta, state, key):
        del key
        worker_shape_check(state.workers, num_workers, 1)
        params = state.synthesizer_params

        def objective(theta, leaves):
            workers = state.workers._replace(state=with_inexact_leaves(state.workers.state, leaves))
            workers, _, _, losses = run_windows(system, rule, theta, workers, (), None, truncation)
            end_states = jax.vmap(jax.vmap(flat_state))(workers.state)  # [W, 1, n]
            synthetic = jax.vmap(jax.vmap(lambda s, t: synthesizer.apply(params, s, t)))(end_states, workers.t)
            has_future = (workers.t < horizon)[..., None]
            future = jnp.sum(jax.lax.stop_gradient(jnp.where(has_future, synthetic, 0.0)) * end_states)
            return jnp.sum(losses) + future, (workers, losses)

        leaves = inexact_leaves(state.workers.state)
        (grad_theta, delta), (workers, losses) = jax.grad(objective, argnums=(0, 1), has_aux=True)(theta, leaves)
        grad = jax.tree_util.tree_map(lambda g: g / (num_workers * truncation), grad_theta)

        # bootstrapped targets at the window start: delta_0 = dJ/ds_0 per trajectory
        starts = jax.vmap(jax.vmap(flat_state))(state.workers.state)
        targets = jax.vmap(jax.vmap(flat_state))(with_inexact_leaves(state.workers.state, delta))
        live = (state.workers.t < horizon).astype(starts.dtype)  # a finished episode has no future

        def synthesizer_loss(params):
            predicted = jax.vmap(jax.vmap(lambda s, t: synthesizer.apply(params, s, t)))(starts, state.workers.t)
            errors = jnp.sum((predicted - jax.lax.stop_gradient(targets)) ** 2, axis=-1)
            return jnp.sum(live * errors) / jnp.maximum(jnp.sum(live), 1.0)

        loss_s, grad_phi = jax.value_and_grad(synthesizer_loss)(params)
        updates, opt_state = optimizer.update(grad_phi, state.synthesizer_opt_state, params)
        params = optax.apply_updates(params, updates)
        info = window_info(losses, num_workers * truncation, synthesizer_loss=loss_s)
        return grad, DNIState(workers, params, opt_state), info

    return Estimator(init, estimate)
