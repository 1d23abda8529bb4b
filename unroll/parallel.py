"""Recurrences in parallel over time: linear ones by associative scan (Martin & Cundy
2018), nonlinear ones by Newton's method over the whole trajectory (DEER, Lim et al.
2024; quasi-DEER, Gonzalez et al. 2024), each Newton step a linear recurrence.

``h_t = a_t * h_{t-1} + b_t`` (elementwise) composes affine maps: step ``t`` is
``h -> a_t h + b_t``, and two steps compose as

    (a_2, b_2) o (a_1, b_1) = (a_2 a_1, a_2 b_1 + b_2),

an associative operation, so every ``h_t`` follows from one
``jax.lax.associative_scan`` in ``O(log T)`` depth and ``O(T)`` work instead of ``T``
sequential steps. The backward pass is again a linear recurrence, run in reverse:
with ``g_t = dL/dh_t``, the adjoint ``lambda_t = g_t + a_{t+1} lambda_{t+1}`` gives
``dL/db_t = lambda_t``, ``dL/da_t = lambda_t h_{t-1}`` and ``dL/dh_0 = a_0 lambda_0``
(JAX's transpose convention: no conjugates, also for complex values).

``matrix_recurrence`` is the same scan with matrix coefficients ``h_t = A_t h_{t-1} + b_t``.
``solve_recurrence`` solves ``x_t = f(x_{t-1}, xs_t)`` by Newton iterations on it;
``solve_episode`` applies that to a system's episode (``episode_view``: the state's float
leaves as one real vector, its int and key leaves computed once beside it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from unroll._system import check_positive_int, from_real_parts, real_parts, split_discrete
from unroll._tree import PyTree


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


# --------------------------------------------------------------------------- matrix coefficients


def _matrix_compose(earlier, later):
    """``later o earlier`` for stacks of affine maps ``h -> A h + b`` (``A [..., n, n]``)."""
    a1, b1 = earlier
    a2, b2 = later
    return a2 @ a1, jnp.einsum("...ij,...j->...i", a2, b1) + b2


def matrix_recurrence(a: jax.Array, b: jax.Array, h0: jax.Array | None = None, reverse: bool = False) -> jax.Array:
    """Every ``h_t`` of ``h_t = A_t h_{t-1} + b_t`` (``A [T, n, n]``, ``b [T, n]``), from
    ``h_{-1} = h0`` (zeros if ``None``); with ``reverse``, ``h_t = A_t h_{t+1} + b_t`` from
    ``h_T = h0``. One associative scan over affine maps, composed as
    ``(A_2, b_2) o (A_1, b_1) = (A_2 A_1, A_2 b_1 + b_2)``: ``O(log T)`` depth, ``O(T n^3)``
    work. Differentiable by plain autodiff (no custom rule)."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    if b.ndim != 2 or a.shape != b.shape + b.shape[-1:]:
        raise ValueError(
            f"`a` of shape {a.shape} and `b` of shape {b.shape} do not make a matrix recurrence: pass b [T, n] "
            "and a [T, n, n] (for elementwise coefficients use linear_recurrence)."
        )
    if h0 is not None:
        first = -1 if reverse else 0
        b = b.at[first].add(a[first] @ jnp.asarray(h0, b.dtype))
    return jax.lax.associative_scan(_matrix_compose, (a, b), reverse=reverse)[1]


# --------------------------------------------------------------------------- nonlinear recurrences


SOLVERS = ("deer", "quasi-deer")


class Solution(NamedTuple):
    """What ``solve_recurrence`` returns: ``trajectory`` ``[T, n]``, the Newton
    ``iterations`` taken, the final ``residual`` ``max_t max_i |x_t - f_t(x_{t-1})| / (1 +
    |f_t(x_{t-1})|)`` and whether it ``converged`` (``residual <= tolerance``)."""

    trajectory: jax.Array
    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array


def default_tolerance(dtype) -> float:
    """The residual a solve stops at by default: ``max(100 eps, 1e-10)`` for the dtype
    (about ``1.2e-5`` in float32, ``1e-10`` in float64)."""
    return max(100 * float(jnp.finfo(dtype).eps), 1e-10)


def _jacobian(fn: Callable, diagonal: bool) -> Callable:
    """``(x, xs) -> (fn(x, xs), J)``: ``J = d fn / d x`` dense ``[n, n]``, or its diagonal
    ``[n]`` (``n`` jvps either way; the diagonal is what the scan stores)."""

    def value_and_jacobian(x, xs):
        jacobian = jax.jacfwd(fn)(x, xs)
        return fn(x, xs), jnp.diagonal(jacobian) if diagonal else jacobian

    return value_and_jacobian


def solve_recurrence(
    fn: Callable,
    x0: jax.Array,
    xs: PyTree,
    *,
    solver: str = "deer",
    guess: jax.Array | None = None,
    tolerance: float | None = None,
    max_iterations: int = 100,
    jacobian: Callable | None = None,
) -> Solution:
    """All ``x_t = fn(x_{t-1}, xs_t)``, ``t = 0..T-1``, from ``x_{-1} = x0`` (``[n]``), by
    Newton's method over the whole trajectory at once (DEER, Lim et al. 2024):

        x^{(i+1)}_t = f_t(x^{(i)}_{t-1}) + J_t (x^{(i+1)}_{t-1} - x^{(i)}_{t-1}),
        J_t = d f_t / d x at x^{(i)}_{t-1},

    a linear recurrence in ``x^{(i+1)}``, solved by one associative scan
    (``matrix_recurrence``; with ``solver="quasi-deer"``, ``diag(J_t)`` only and
    ``linear_recurrence``, Gonzalez et al. 2024). Any ``J`` keeps the chain property: after
    ``k`` iterations the first ``k`` states are exact, so ``T`` iterations solve it from
    any ``guess`` (default zeros ``[T, n]``). It stops when the residual is at most
    ``tolerance`` (default ``default_tolerance``), when it is not finite, or after
    ``max_iterations``. ``jacobian(x, xs) -> (fn(x, xs), J)`` overrides how ``J`` (dense or
    diagonal, to match ``solver``) is formed. Not differentiable: for gradients take the
    implicit one at the solution (``parallel_bptt`` does).
    """
    if solver not in SOLVERS:
        raise ValueError(f"`solver` must be one of {', '.join(map(repr, SOLVERS))}, got {solver!r}.")
    diagonal = solver == "quasi-deer"
    num_steps = jax.tree_util.tree_leaves(xs)[0].shape[0]
    guess = jnp.zeros((num_steps,) + x0.shape, x0.dtype) if guess is None else jnp.asarray(guess, x0.dtype)
    tolerance = default_tolerance(x0.dtype) if tolerance is None else tolerance
    linearize = jax.vmap(jacobian or _jacobian(fn, diagonal))

    def evaluate(x):
        previous = jnp.concatenate([x0[None], x[:-1]])
        value, jac = linearize(previous, xs)
        error = jnp.abs(x - value) / (1 + jnp.abs(value))
        # a NaN (an overflowed iterate) counts as infinite: reductions may drop NaNs
        residual = jnp.max(jnp.where(jnp.isnan(error), jnp.inf, error))
        return previous, value, jac, residual

    def newton(carry):
        x, i, (previous, value, jac, _) = carry
        if diagonal:
            x = linear_recurrence(jac, value - jac * previous, x0)
        else:
            x = matrix_recurrence(jac, value - jnp.einsum("tij,tj->ti", jac, previous), x0)
        return x, i + 1, evaluate(x)

    def going(carry):
        _, i, (*_, residual) = carry
        return ~(residual <= tolerance) & jnp.isfinite(residual) & (i < max_iterations)

    x, iterations, (*_, residual) = jax.lax.while_loop(
        going, newton, (guess, jnp.zeros((), jnp.int32), evaluate(guess))
    )
    return Solution(x, iterations, residual, residual <= tolerance)


def sequential_recurrence(fn: Callable, x0: jax.Array, xs: PyTree) -> jax.Array:
    """All ``x_t = fn(x_{t-1}, xs_t)`` by one ``lax.scan``: the exact answer
    ``solve_recurrence`` converges to, in ``T`` sequential steps."""
    return jax.lax.scan(lambda x, a: (fn(x, a),) * 2, x0, xs)[1]


# --------------------------------------------------------------------------- systems


class EpisodeView(NamedTuple):
    """One episode on its real float view: ``x0`` ``[N]`` from ``init``, its other leaves
    ``discrete`` and ``step(x, (discrete, t)) -> (x', loss, discrete')``; ``advance`` and
    ``loss`` are the first two of those alone."""

    x0: jax.Array
    discrete: list
    step: Any

    def advance(self, x: jax.Array, xs: tuple) -> jax.Array:
        return self.step(x, xs)[0]

    def loss(self, x: jax.Array, xs: tuple) -> jax.Array:
        return self.step(x, xs)[1]


def episode_view(system, theta: PyTree, key: jax.Array) -> EpisodeView:
    """The episode ``init(theta, key)`` starts, as a recurrence on the real vector of the
    state's float and complex leaves (complex as real and imaginary parts); the int and
    key leaves are carried beside it, as inputs of each step."""
    start = split_discrete(system.init(theta, key))
    x0, unravel = ravel_pytree(real_parts(start.floats))

    def step(x, xs):
        discrete, t = xs
        new, loss = system.step(theta, start.merge(from_real_parts(unravel(x), start.floats), discrete), t)
        new = split_discrete(new)
        return ravel_pytree(real_parts(new.floats))[0], loss, new.discrete

    return EpisodeView(x0, start.discrete, step)


def discrete_inputs(view: EpisodeView, horizon: int) -> tuple[list, jax.Array]:
    """``(d_{t-1}, t)`` for ``t < T``: the discrete leaves each step reads, by one scan of the
    step that keeps only them (they do not depend on the floats; XLA drops the rest)."""
    times = jnp.arange(horizon, dtype=jnp.int32)
    if not view.discrete:
        return [], times
    advance = lambda discrete, t: (view.step(view.x0, (discrete, t))[2], discrete)
    return jax.lax.scan(advance, view.discrete, times)[1], times


class EpisodeSolution(NamedTuple):
    """One episode solved by ``solve_episode``: ``states`` ``[T, N]``, the real view of the
    float state after each step; the per-step ``losses`` ``[T]`` at that trajectory; and
    the ``Solution``'s ``iterations``, ``residual`` and ``converged``."""

    states: jax.Array
    losses: jax.Array
    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array


def solve_episode(
    system,
    theta: PyTree,
    key: jax.Array,
    *,
    solver: str = "deer",
    guess: jax.Array | None = None,
    tolerance: float | None = None,
    max_iterations: int | None = None,
) -> EpisodeSolution:
    """The episode ``init(theta, key)`` starts, evaluated in parallel over time by
    ``solve_recurrence`` on ``step`` (``max_iterations`` defaults to the horizon, which
    always suffices in exact arithmetic). No fallback here: read ``converged``
    (``parallel_bptt`` recomputes unconverged episodes sequentially)."""
    max_iterations = check_positive_int(
        system.horizon if max_iterations is None else max_iterations, "max_iterations", "e.g. max_iterations=100."
    )
    view = episode_view(system, theta, key)
    xs = discrete_inputs(view, system.horizon)
    solution = solve_recurrence(
        view.advance, view.x0, xs, solver=solver, guess=guess, tolerance=tolerance,
        max_iterations=max_iterations,
    )  # fmt: skip
    previous = jnp.concatenate([view.x0[None], solution.trajectory[:-1]])
    losses = jax.vmap(view.loss)(previous, xs)
    return EpisodeSolution(solution.trajectory, losses, *solution[1:])
