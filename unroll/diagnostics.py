"""Diagnostics of an unrolled system: why an estimator fails on it.

``lyapunov_spectrum``: the ``k`` leading Lyapunov exponents of the state dynamics
``s_{t+1} = f_theta(s_t, t)`` by the QR (Benettin) method: carry an orthonormal
``Q_t`` (``[N, k]``, on the state's real view), push it through the step with ``k``
Jacobian-vector products, re-orthonormalize ``J_t Q_t = Q_{t+1} R_t`` and average
``log |diag R_t|``. No dense Jacobian is formed (unless ``k = N``, when the ``N`` jvps
are the Jacobian). Positive exponents mean chaos: gradients through ``T`` steps grow
like ``exp(lambda_1 T)`` (Metz et al. 2021).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from unroll.system import check_positive_int, check_system, real_view

__all__ = ["JacobianSpectrum", "LyapunovSpectrum", "jacobian_spectrum", "lyapunov_spectrum"]


class LyapunovSpectrum(NamedTuple):
    """``exponents``: ``[k]``, per step, largest first (divide by the time step for per unit
    time); ``running``: ``[num_steps, k]``, the estimate after each measured step (for a
    convergence plot); ``final_state``: the state after warm-up and measurement."""

    exponents: jax.Array
    running: jax.Array
    final_state: object


def lyapunov_spectrum(system, theta, key, num_steps: int, k: int | None = None, warmup: int = 100,
                      state=None) -> LyapunovSpectrum:
    """The ``k`` leading Lyapunov exponents (per step) of ``system``'s state dynamics at
    ``theta``, from ``state`` (default ``system.init(theta, key)``) after ``warmup`` steps
    that bring the state onto its attractor and align ``Q`` (started at a random
    orthonormal frame drawn from ``key``) with the leading directions.

    The state runs on without episode resets; the step's time index is ``t mod horizon``.
    A pytree state is flattened to its real view (complex leaves as real and imaginary
    parts; int and key leaves carried along, not differentiated). ``k`` defaults to the
    full dimension ``N``. Everything is one ``lax.scan``: jit-able."""
    check_system(system)
    num_steps = check_positive_int(num_steps, "num_steps", "the number of measured steps, e.g. 10_000.")
    warmup = int(warmup)
    if warmup < 0:
        raise ValueError(f"`warmup` must be >= 0, got {warmup}.")
    state = system.init(theta, key) if state is None else state
    vector, _ = real_view(system, state)
    dim = vector.shape[0]
    k = dim if k is None else check_positive_int(k, "k", f"the number of exponents, at most the state size {dim}.")
    if k > dim:
        raise ValueError(f"`k`={k} exceeds the state's real dimension N={dim}; pass k <= {dim} (or None for all).")
    frame, _ = jnp.linalg.qr(jax.random.normal(jax.random.fold_in(key, 1), (dim, k), vector.dtype))

    def advance(carry, t):
        state, frame = carry
        vector, f = real_view(system, state)
        step = lambda v: f(theta, v, t % system.horizon)[0]
        _, pushed = jax.vmap(lambda q: jax.jvp(step, (vector,), (q,)), in_axes=1, out_axes=(None, 1))(frame)
        new_state = f(theta, vector, t % system.horizon)[2]
        frame, r = jnp.linalg.qr(pushed)
        return (new_state, frame), jnp.log(jnp.abs(jnp.diagonal(r)))

    (state, frame), _ = jax.lax.scan(advance, (state, frame), jnp.arange(warmup))
    (state, _), logs = jax.lax.scan(advance, (state, frame), warmup + jnp.arange(num_steps))
    running = jnp.cumsum(logs, axis=0) / jnp.arange(1, num_steps + 1)[:, None]
    order = jnp.argsort(-running[-1])
    return LyapunovSpectrum(running[-1][order], running[:, order], state)


class JacobianSpectrum(NamedTuple):
    """Along one trajectory of ``num_steps`` steps: ``step``, ``[num_steps, N]``, the singular
    values of each one-step Jacobian ``d s_{t+1} / d s_t`` (largest first); ``log_product``,
    ``[num_steps, N]``, the logs of the singular values of the products
    ``d s_{t+1} / d s_0 = J_t ... J_0`` (logs, so exploding products stay finite)."""

    step: jax.Array
    log_product: jax.Array


def jacobian_spectrum(system, theta, key, num_steps: int, state=None) -> JacobianSpectrum:
    """Singular values of the one-step state Jacobians and of their products along the
    trajectory from ``state`` (default ``system.init(theta, key)``), on the state's real
    view, time index ``t mod horizon``. Dense: ``N`` jvps and an ``N x N`` SVD per step
    (use ``lyapunov_spectrum`` for large ``N``). The product is carried rescaled by its
    largest entry, the log scale kept apart, so it neither overflows nor underflows."""
    check_system(system)
    num_steps = check_positive_int(num_steps, "num_steps", "the number of steps, e.g. 100.")
    state = system.init(theta, key) if state is None else state
    vector, _ = real_view(system, state)
    dim = vector.shape[0]

    def advance(carry, t):
        state, product, log_scale = carry
        vector, f = real_view(system, state)
        jacobian = jax.jacfwd(lambda v: f(theta, v, t % system.horizon)[0])(vector)
        product = jacobian @ product
        scale = jnp.max(jnp.abs(product))
        scale = jnp.where(scale > 0, scale, 1.0)
        product, log_scale = product / scale, log_scale + jnp.log(scale)
        step_values = jnp.linalg.svd(jacobian, compute_uv=False)
        product_values = jnp.log(jnp.linalg.svd(product, compute_uv=False)) + log_scale
        return (f(theta, vector, t % system.horizon)[2], product, log_scale), (step_values, product_values)

    carry = (state, jnp.eye(dim, dtype=vector.dtype), jnp.zeros((), vector.dtype))
    _, (step_values, log_product) = jax.lax.scan(advance, carry, jnp.arange(num_steps))
    return JacobianSpectrum(step_values, log_product)
