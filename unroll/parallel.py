"""Linear recurrences in parallel over time (Martin & Cundy 2018).

``h_t = a_t * h_{t-1} + b_t`` (elementwise) composes affine maps: step ``t`` is
``h -> a_t h + b_t``, and two steps compose as

    (a_2, b_2) o (a_1, b_1) = (a_2 a_1, a_2 b_1 + b_2),

an associative operation, so every ``h_t`` follows from one
``jax.lax.associative_scan`` in ``O(log T)`` depth and ``O(T)`` work instead of ``T``
sequential steps. The backward pass is again a linear recurrence, run in reverse:
with ``g_t = dL/dh_t``, the adjoint ``lambda_t = g_t + a_{t+1} lambda_{t+1}`` gives
``dL/db_t = lambda_t``, ``dL/da_t = lambda_t h_{t-1}`` and ``dL/dh_0 = a_0 lambda_0``
(JAX's transpose convention: no conjugates, also for complex values).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def _compose(earlier, later):
    """``later o earlier`` for stacks of affine maps ``h -> a h + b``."""
    a1, b1 = earlier
    a2, b2 = later
    return a2 * a1, a2 * b1 + b2


def _scan(a: jax.Array, b: jax.Array, reverse: bool) -> jax.Array:
    """All ``h_t`` of one array recurrence started from zero."""
    a = jnp.broadcast_to(a, b.shape).astype(b.dtype)
    # reversed, the scan runs from the end, so "earlier" is t + 1: h_t = a_t h_{t+1} + b_t
    return jax.lax.associative_scan(_compose, (a, b), reverse=reverse)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _recurrence(a, b, h0, reverse):
    return _forward(a, b, h0, reverse)[0]


def _forward(a, b, h0, reverse):
    first = -1 if reverse else 0
    b = b.at[first].add(a[first] * h0)  # h0 enters as the step before the first
    h = _scan(a, b, reverse)
    return h, (a, h, h0)


def _backward(reverse, residuals, g):
    a, h, h0 = residuals
    # lambda_t = g_t + a_{t+1} lambda_{t+1}: the recurrence of the other direction
    shifted = jnp.roll(a, 1 if reverse else -1, axis=0)
    last = 0 if reverse else -1
    adjoint = _scan(shifted.at[last].set(0), g, not reverse)
    previous = jnp.roll(h, -1 if reverse else 1, axis=0)  # h_{t-1} (h_{t+1} reversed)
    first = -1 if reverse else 0
    previous = previous.at[first].set(jnp.broadcast_to(h0, h.shape[1:]))
    da = adjoint * previous
    dh0 = a[first] * adjoint[first]
    return _sum_to(da, a.shape), adjoint, _sum_to(dh0, h0.shape)


def _sum_to(x: jax.Array, shape: tuple) -> jax.Array:
    """``x`` summed over the axes that were broadcast from ``shape``."""
    if x.shape == tuple(shape):
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and x.shape[i + lead] != 1)
    return jnp.sum(x, axis=axes, keepdims=True).reshape(shape)


_recurrence.defvjp(_forward, _backward)


def _one(a: jax.Array, b: jax.Array, h0: jax.Array | None, reverse: bool) -> jax.Array:
    b = jnp.asarray(b)
    a = jnp.asarray(a)
    dtype = jnp.result_type(a, b) if h0 is None else jnp.result_type(a, b, h0)
    if b.ndim < 1:
        raise ValueError(
            f"`b` must have a leading time axis, got a scalar of shape {b.shape}; pass b of shape [T, ...]."
        )
    if a.shape[:1] != b.shape[:1] or jnp.broadcast_shapes(a.shape, b.shape) != b.shape:
        raise ValueError(
            f"`a` of shape {a.shape} does not match `b` of shape {b.shape}: both need the time axis first, "
            "and a must broadcast to b (e.g. a [T, n] with b [T, n], or a [T, 1])."
        )
    h0 = jnp.zeros(b.shape[1:], dtype) if h0 is None else jnp.broadcast_to(jnp.asarray(h0, dtype), b.shape[1:])
    return _recurrence(a.astype(dtype), b.astype(dtype), h0, reverse)


def linear_recurrence(a: PyTree, b: PyTree, h0: PyTree | None = None, reverse: bool = False) -> PyTree:
    """Every ``h_t`` of ``h_t = a_t * h_{t-1} + b_t``, ``t = 0..T-1``, ``h_{-1} = h0``
    (zeros if ``None``), by associative scan; with ``reverse``,
    ``h_t = a_t * h_{t+1} + b_t`` from ``h_T = h0``.

    ``a`` and ``b`` are arrays (real or complex) or pytrees of them with the time axis
    first; each leaf of ``a`` broadcasts to its leaf of ``b`` (e.g. ``a [T, 1]``), and
    ``h0`` (a leaf of ``b``'s shape without the time axis) is optional. Returns ``b``'s
    structure, shapes and (promoted) dtype.

    Differentiable: the backward pass is the reverse linear recurrence (a
    ``custom_vjp``; the module docstring has the math), which stores only ``a`` and the
    outputs ``h``. Reverse mode only: ``jax.jvp`` through it is not defined.
    """
    if not isinstance(reverse, bool):
        raise TypeError(f"`reverse` must be True or False, got {reverse!r}.")
    b_leaves, treedef = jax.tree_util.tree_flatten(b)
    try:
        a_leaves = treedef.flatten_up_to(a)
        h0_leaves = [None] * len(b_leaves) if h0 is None else treedef.flatten_up_to(h0)
    except (ValueError, TypeError) as err:
        raise ValueError(f"`a` and `h0` must have the pytree structure of `b` ({treedef}); JAX said: {err}") from err
    return treedef.unflatten([_one(x, y, z, reverse) for x, y, z in zip(a_leaves, b_leaves, h0_leaves)])
