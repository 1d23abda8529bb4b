r"""Recurrences in parallel over time: linear ones by associative scan (Martin & Cundy
2018), nonlinear ones by Newton's method over the whole trajectory (DEER, Lim et al.
2024; quasi-DEER, Gonzalez et al. 2024), each Newton step a linear recurrence.

$h_t = a_t h_{t-1} + b_t$ (elementwise) composes affine maps: step $t$ is
$h \mapsto a_t h + b_t$, and two steps compose as

$$
(a_2, b_2) \circ (a_1, b_1) = (a_2 a_1,\ a_2 b_1 + b_2),
$$

an associative operation, so every $h_t$ follows from one
``jax.lax.associative_scan`` in $O(\log T)$ depth and $O(T)$ work instead of $T$
sequential steps. The backward pass is again a linear recurrence, run in reverse:
with $g_t = \partial L / \partial h_t$, the adjoint $\lambda_t = g_t + a_{t+1} \lambda_{t+1}$ gives
$\partial L / \partial b_t = \lambda_t$, $\partial L / \partial a_t = \lambda_t h_{t-1}$ and
$\partial L / \partial h_0 = a_0 \lambda_0$
(JAX's transpose convention: no conjugates, also for complex values).

``matrix_recurrence`` is the same scan with matrix coefficients $h_t = A_t h_{t-1} + b_t$.
``solve_recurrence`` solves $x_t = f(x_{t-1}, xs_t)$ by Newton iterations on it;
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

from unroll._errors import BadType, BadValue
from unroll._kalman import smoother
from unroll._system import check_positive_int, from_real_parts, real_parts, split_discrete
from unroll._tree import PyTree
from unroll.jacobians import DIAGONAL_SOLVERS, episode_jacobian

__all__ = [
    "EpisodeSolution",
    "EpisodeView",
    "DAMPED_SOLVERS",
    "SOLVERS",
    "Solution",
    "default_tolerance",
    "discrete_inputs",
    "episode_view",
    "full_step_overflows",
    "linear_recurrence",
    "matrix_recurrence",
    "sequential_recurrence",
    "solve_episode",
    "solve_recurrence",
]


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
        raise BadValue(f"`b` must have a leading time axis, got a scalar of shape {b.shape}; pass b of shape [T, ...].")
    if a.shape[:1] != b.shape[:1] or jnp.broadcast_shapes(a.shape, b.shape) != b.shape:
        raise BadValue(
            f"`a` of shape {a.shape} does not match `b` of shape {b.shape}: both need the time axis first, "
            "and a must broadcast to b (e.g. a [T, n] with b [T, n], or a [T, 1])."
        )
    h0 = jnp.zeros(b.shape[1:], dtype) if h0 is None else jnp.broadcast_to(jnp.asarray(h0, dtype), b.shape[1:])
    return _recurrence(a.astype(dtype), b.astype(dtype), h0, reverse)


def linear_recurrence(a: PyTree, b: PyTree, h0: PyTree | None = None, reverse: bool = False) -> PyTree:
    r"""Every $h_t$ of $h_t = a_t h_{t-1} + b_t$ (elementwise), $t = 0, \dots, T-1$, by associative scan.

    The recurrence starts from $h_{-1}$ = `h0` (zeros if `None`); with `reverse`, it is
    $h_t = a_t h_{t+1} + b_t$ from $h_T$ = `h0`.

    Differentiable: the backward pass is the reverse linear recurrence (a
    `custom_vjp`; the module docstring has the math), which stores only `a` and the
    outputs `h`. Reverse mode only: `jax.jvp` through it is not defined.

    Args:
      a: the coefficients $a_t$: an array (real or complex) or a pytree of them with the time axis first; each
        leaf broadcasts to its leaf of `b` (e.g. `a [T, 1]`).
      b: the inputs $b_t$, arrays or a pytree of them with the time axis first (`[T, ...]`).
      h0: the initial value, optional: per leaf, `b`'s shape without the time axis. Default: zeros.
      reverse: run from the end ($h_t = a_t h_{t+1} + b_t$), a bool.

    Returns:
      Every $h_t$: `b`'s structure, shapes and (promoted) dtype.
    """
    if not isinstance(reverse, bool):
        raise BadType(f"`reverse` must be True or False, got {reverse!r}.")
    b_leaves, treedef = jax.tree_util.tree_flatten(b)
    try:
        a_leaves = treedef.flatten_up_to(a)
        h0_leaves = [None] * len(b_leaves) if h0 is None else treedef.flatten_up_to(h0)
    except (ValueError, TypeError) as err:
        raise BadValue(f"`a` and `h0` must have the pytree structure of `b` ({treedef}); JAX said: {err}") from err
    return treedef.unflatten([_one(x, y, z, reverse) for x, y, z in zip(a_leaves, b_leaves, h0_leaves)])


# --------------------------------------------------------------------------- matrix coefficients


def _matrix_compose(earlier, later):
    """``later o earlier`` for stacks of affine maps ``h -> A h + b`` (``A [..., n, n]``)."""
    a1, b1 = earlier
    a2, b2 = later
    return a2 @ a1, jnp.einsum("...ij,...j->...i", a2, b1) + b2


def matrix_recurrence(a: jax.Array, b: jax.Array, h0: jax.Array | None = None, reverse: bool = False) -> jax.Array:
    r"""Every $h_t$ of $h_t = A_t h_{t-1} + b_t$ with matrix coefficients, by associative scan.

    The recurrence starts from $h_{-1}$ = `h0` (zeros if `None`); with `reverse`, it is
    $h_t = A_t h_{t+1} + b_t$ from $h_T$ = `h0`. One associative scan over affine maps, composed as

    $$
    (A_2, b_2) \circ (A_1, b_1) = (A_2 A_1,\ A_2 b_1 + b_2):
    $$

    $O(\log T)$ depth, $O(T n^3)$ work. Differentiable by plain autodiff (no custom rule).

    Args:
      a: the matrices $A_t$, `[T, n, n]`.
      b: the inputs $b_t$, `[T, n]`.
      h0: the initial value `[n]`, optional. Default: zeros.
      reverse: run from the end ($h_t = A_t h_{t+1} + b_t$).

    Returns:
      Every $h_t$, `[T, n]`.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if b.ndim != 2 or a.shape != b.shape + b.shape[-1:]:
        raise BadValue(
            f"`a` of shape {a.shape} and `b` of shape {b.shape} do not make a matrix recurrence: pass b [T, n] "
            "and a [T, n, n] (for elementwise coefficients use linear_recurrence)."
        )
    if h0 is not None:
        first = -1 if reverse else 0
        b = b.at[first].add(a[first] @ jnp.asarray(h0, b.dtype))
    return jax.lax.associative_scan(_matrix_compose, (a, b), reverse=reverse)[1]


# --------------------------------------------------------------------------- nonlinear recurrences


SOLVERS = ("deer", "quasi-deer", "elk", "quasi-elk")
r"""The Newton solvers over time: DEER (dense $J_t$), quasi-DEER ($\mathrm{diag}(J_t)$), and their damped forms
ELK and quasi-ELK (Gonzalez et al. 2024)."""

DAMPED_SOLVERS = ("elk", "quasi-elk")
"""The Newton solvers whose steps are damped (ELK's trust region); the others take the full step."""

# ELK's trust region: sigma^2 starts at _INITIAL_VARIANCE; it is multiplied by _GROW after an accepted step (toward
# DEER's step) and divided by _SHRINK after a refused one (toward the current iterate), within [_MIN_VARIANCE,
# _MAX_VARIANCE]. A step is accepted unless it is not finite or multiplies the squared residual by more than _BLOWUP
# (Newton's residual need not fall every step; a blow-up is what damping is for); an iteration whose _MAX_TRIALS
# steps are all refused stops the solve.
_INITIAL_VARIANCE = 1e6
_GROW, _SHRINK = 4.0, 8.0
_MIN_VARIANCE, _MAX_VARIANCE = 1e-12, 1e12
_BLOWUP = 100.0
_MAX_TRIALS = 12


class Solution(NamedTuple):
    r"""What `solve_recurrence` returns: its best trajectory, and how the Newton solve ended.

    Attributes:
      trajectory: `[T, n]`, every $x_t$ of the best iterate (the one of least residual, the guess included).
      iterations: the Newton iterations taken (linearizations; ELK's rejected trial steps reuse theirs).
      residual: that iterate's residual $\max_t \max_i |x_t - f_t(x_{t-1})| / (1 + |f_t(x_{t-1})|)$.
      converged: whether it converged (`residual <= tolerance`).
    """

    trajectory: jax.Array
    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array


def default_tolerance(dtype) -> float:
    r"""The residual a solve stops at by default: $\max(100 \epsilon, 10^{-10})$ for the dtype.

    Args:
      dtype: a float dtype, whose machine epsilon is $\epsilon$.

    Returns:
      The tolerance, a float (about $1.2 \cdot 10^{-5}$ in float32, $10^{-10}$ in float64).
    """
    return max(100 * float(jnp.finfo(dtype).eps), 1e-10)


def _jacobian(fn: Callable, diagonal: bool) -> Callable:
    """``(x, xs) -> (fn(x, xs), J)``: ``J = d fn / d x`` dense ``[n, n]``, or its diagonal
    ``[n]`` (``n`` jvps either way; the diagonal is what the scan stores)."""

    def value_and_jacobian(x, xs):
        jacobian = jax.jacfwd(fn)(x, xs)
        return fn(x, xs), jnp.diagonal(jacobian) if diagonal else jacobian

    return value_and_jacobian


def _affine(a: jax.Array, b: jax.Array, h0: jax.Array | None, diagonal: bool, reverse: bool = False) -> jax.Array:
    """$h_t = a_t h_{t-1} + b_t$ with diagonal (`linear_recurrence`) or dense (`matrix_recurrence`) $a_t$."""
    return (linear_recurrence if diagonal else matrix_recurrence)(a, b, h0, reverse=reverse)


class _Iterate(NamedTuple):
    """One iterate of the solve: its trajectory, residual (max relative) and squared residual (ELK's merit)."""

    x: jax.Array
    residual: jax.Array
    merit: jax.Array


class _Loop(NamedTuple):
    current: _Iterate
    best: _Iterate
    iterations: jax.Array
    variance: jax.Array  # ELK's sigma^2
    stalled: jax.Array


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
    r"""All $x_t = f(x_{t-1}, xs_t)$, $t = 0, \dots, T-1$, by Newton's method over the whole trajectory at once.

    From $x_{-1}$ = `x0`, each iteration (DEER, Lim et al. 2024) linearizes at the current iterate
    $\bar x$ and solves

    $$
    x_t = f_t(\bar x_{t-1}) + J_t \left(x_{t-1} - \bar x_{t-1}\right),
    \qquad J_t = \frac{\partial f_t}{\partial x}\Big|_{\bar x_{t-1}},
    $$

    a linear recurrence in $x$, by one associative scan (`matrix_recurrence`; with
    `solver="quasi-deer"`, $\mathrm{diag}(J_t)$ only and `linear_recurrence`, Gonzalez et al.
    2024). Any $J$ keeps the chain property: after $k$ iterations the first $k$ states are
    exact, so $T$ iterations solve it from any `guess`.

    `solver="elk"` (and `"quasi-elk"`, with $\mathrm{diag}(J_t)$) damps each step
    (Levenberg-Marquardt; ELK, Gonzalez et al. 2024): it minimizes
    $\sum_t \lVert x_t - f_t(\bar x_{t-1}) - J_t (x_{t-1} - \bar x_{t-1}) \rVert^2
    + \sigma^{-2} \sum_t \lVert x_t - \bar x_t \rVert^2$, a linear-Gaussian smoothing problem
    solved by a parallel Kalman filter and smoother. A step is taken only if it lowers
    $\sum_t \lVert x_t - f_t(x_{t-1}) \rVert^2$; then $\sigma^2$ grows (toward DEER's step),
    else it shrinks and the step is tried again from the same linearization (a trust region).
    The fixed point, and so the gradient at it, is DEER's.

    Each iteration linearizes once (at its start); the residual of its result comes from one
    plain evaluation of $f$ over the trajectory. The solve stops when the residual is at most
    `tolerance`, when it is not finite, when ELK finds no step that lowers it, or after
    `max_iterations`, and returns the best iterate seen. Not differentiable: for gradients
    take the implicit one at the solution (`parallel_bptt` does).

    Args:
      fn: $f$, `fn(x, xs_t) -> x_t` with `x` of shape `[n]`.
      x0: $x_{-1}$, `[n]`.
      xs: the per-step inputs, a pytree with the time axis first (`T` from its first leaf).
      solver: one of `SOLVERS`: `"deer"` (dense $J_t$), `"quasi-deer"` (its diagonal), `"elk"` or `"quasi-elk"`
        (their damped steps).
      guess: the initial trajectory `[T, n]`. Default: zeros.
      tolerance: the residual to stop at. Default: `default_tolerance(x0.dtype)`.
      max_iterations: the most Newton iterations (linearizations).
      jacobian: `jacobian(x, xs) -> (fn(x, xs), J)`, overrides how $J$ (dense or diagonal, to match `solver`) is
        formed. Default: `jax.jacfwd` ($n$ jvps).

    Returns:
      A `Solution`.
    """
    tolerance = default_tolerance(x0.dtype) if tolerance is None else tolerance
    loop = _newton_loop(fn, x0, xs, solver, guess, tolerance, max_iterations, jacobian)
    return Solution(loop.best.x, loop.iterations, loop.best.residual, loop.best.residual <= tolerance)


def _newton_loop(fn, x0, xs, solver, guess, tolerance, max_iterations, jacobian) -> _Loop:
    """`solve_recurrence`'s iterations: the final `_Loop`, whose `current` is the last iterate."""
    if solver not in SOLVERS:
        raise BadValue(f"`solver` must be one of {', '.join(map(repr, SOLVERS))}, got {solver!r}.")
    diagonal, damped = solver in DIAGONAL_SOLVERS, solver in DAMPED_SOLVERS
    num_steps = jax.tree_util.tree_leaves(xs)[0].shape[0]
    guess = jnp.zeros((num_steps,) + x0.shape, x0.dtype) if guess is None else jnp.asarray(guess, x0.dtype)
    tolerance = default_tolerance(x0.dtype) if tolerance is None else tolerance
    linearize = jax.vmap(jacobian or _jacobian(fn, diagonal))
    advance = jax.vmap(fn)
    shifted = lambda x: jnp.concatenate([x0[None], x[:-1]])

    def measure(x) -> _Iterate:
        value = advance(shifted(x), xs)
        gap = x - value
        error = jnp.abs(gap) / (1 + jnp.abs(value))
        # a NaN (an overflowed iterate) counts as infinite: reductions may drop NaNs
        residual = jnp.max(jnp.where(jnp.isnan(error), jnp.inf, error))
        merit = jnp.sum(gap * gap)
        return _Iterate(x, residual, jnp.where(jnp.isnan(merit), jnp.inf, merit))

    def newton(loop: _Loop) -> _Loop:
        previous = shifted(loop.current.x)
        value, jac = linearize(previous, xs)
        bias = value - (jac * previous if diagonal else jnp.einsum("tij,tj->ti", jac, previous))
        if damped:
            new, variance, stalled = _damped(measure, jac, bias, x0, loop, diagonal)
        else:
            new, variance, stalled = measure(_affine(jac, bias, x0, diagonal)), loop.variance, loop.stalled
        better = new.residual < loop.best.residual
        best = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), new, loop.best)
        return _Loop(new, best, loop.iterations + 1, variance, stalled)

    def going(loop: _Loop):
        residual = loop.current.residual
        return ~(residual <= tolerance) & jnp.isfinite(residual) & (loop.iterations < max_iterations) & ~loop.stalled

    start = measure(guess)
    variance = jnp.asarray(_INITIAL_VARIANCE, x0.dtype)
    first = _Loop(start, start, jnp.zeros((), jnp.int32), variance, jnp.asarray(False))
    return jax.lax.while_loop(going, newton, first)


def _damped(measure, jac, bias, x0, loop: _Loop, diagonal: bool):
    """ELK's iteration from one linearization: smoother steps, $\\sigma^2$ divided by `_SHRINK` after each refused
    one (not finite, or the squared residual times more than `_BLOWUP`), until one is accepted (then $\\sigma^2$ is
    multiplied by `_GROW`) or `_MAX_TRIALS` are refused (stalled: the iterate stays)."""
    # x_{-1} is fixed: its term moves into bias_0, which becomes f_0(x_{-1})
    bias = bias.at[0].add(jac[0] * x0 if diagonal else jac[0] @ x0)
    jac = jac.at[0].set(0)
    current = loop.current

    def attempt(trial):
        variance, _, _, count = trial
        gains, offsets = smoother(jac, bias, current.x, variance, diagonal)
        new = measure(_affine(gains, offsets, None, diagonal, reverse=True))
        accepted = new.merit <= current.merit * _BLOWUP  # False for a non-finite step
        variance = jnp.where(accepted, variance * _GROW, variance / _SHRINK)
        return jnp.clip(variance, _MIN_VARIANCE, _MAX_VARIANCE), new, accepted, count + 1

    def trying(trial):
        _, _, accepted, count = trial
        return ~accepted & (count < _MAX_TRIALS)

    variance, new, accepted, _ = jax.lax.while_loop(
        trying, attempt, (loop.variance, current, jnp.asarray(False), jnp.zeros((), jnp.int32))
    )
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(accepted, a, b), new, current)
    return new, variance, ~accepted


def full_step_overflows(fn: Callable, x0: jax.Array, xs: PyTree, *, solver: str = "deer", jacobian=None) -> jax.Array:
    r"""Whether one full (undamped) Newton step over time from the zeros guess overflows.

    The step is DEER's, or quasi-DEER's for the diagonal solvers (`solver` names the family):
    where its iterate is not finite, DEER and quasi-DEER give up at once, and damping
    (`"elk"`, `"quasi-elk"`) is what keeps the solve going (`unroll.diagnostics.parallel_outlook`
    reports it).

    Args:
      fn: $f$, `fn(x, xs_t) -> x_t`.
      x0: $x_{-1}$, `[n]`.
      xs: the per-step inputs, a pytree with the time axis first.
      solver: one of `SOLVERS`; only whether it is diagonal matters.
      jacobian: as in `solve_recurrence` (dense or diagonal to match `solver`). Default: `jax.jacfwd`.

    Returns:
      A boolean scalar.
    """
    undamped = "quasi-deer" if solver in DIAGONAL_SOLVERS else "deer"
    loop = _newton_loop(fn, x0, xs, undamped, None, 0.0, 1, jacobian)
    return ~jnp.isfinite(loop.current.residual)


def sequential_recurrence(fn: Callable, x0: jax.Array, xs: PyTree) -> jax.Array:
    """All $x_t = f(x_{t-1}, xs_t)$ by one `lax.scan`: the exact answer `solve_recurrence` converges to.

    It takes $T$ sequential steps.

    Args:
      fn: $f$, `fn(x, xs_t) -> x_t`.
      x0: $x_{-1}$.
      xs: the per-step inputs, a pytree with the time axis first.

    Returns:
      Every $x_t$, stacked along a leading time axis `[T, ...]`.
    """
    return jax.lax.scan(lambda x, a: (fn(x, a),) * 2, x0, xs)[1]


# --------------------------------------------------------------------------- systems


class EpisodeView(NamedTuple):
    """One episode on its real float view (`episode_view`); `advance` and `loss` are the first two outputs of `step`.

    Attributes:
      x0: `[N]`, the real view of the float state from `init`.
      discrete: its other leaves (int and key), a list.
      step: `step(x, (discrete, t)) -> (x', loss, discrete')`.
    """

    x0: jax.Array
    discrete: list
    step: Any

    def advance(self, x: jax.Array, xs: tuple) -> jax.Array:
        """The next state's real view, `step(x, xs)[0]`.

        Args:
          x: the state's real view `[N]`.
          xs: `(discrete, t)`.

        Returns:
          The next state's real view `[N]`.
        """
        return self.step(x, xs)[0]

    def loss(self, x: jax.Array, xs: tuple) -> jax.Array:
        """The step's loss, `step(x, xs)[1]`.

        Args:
          x: the state's real view `[N]`.
          xs: `(discrete, t)`.

        Returns:
          The loss of the step.
        """
        return self.step(x, xs)[1]


def episode_view(system, theta: PyTree, key: jax.Array) -> EpisodeView:
    """The episode `init(theta, key)` starts, as a recurrence on the real vector of the state's float leaves.

    Float and complex leaves make the vector (complex as real and imaginary parts); the int and
    key leaves are carried beside it, as inputs of each step.

    Args:
      system: the system.
      theta: the outer parameters.
      key: the episode's key (`system.init(theta, key)`).

    Returns:
      An `EpisodeView`.
    """
    start = split_discrete(system.init(theta, key))
    x0, unravel = ravel_pytree(real_parts(start.floats))

    def step(x, xs):
        discrete, t = xs
        new, loss = system.step(theta, start.merge(from_real_parts(unravel(x), start.floats), discrete), t)
        new = split_discrete(new)
        return ravel_pytree(real_parts(new.floats))[0], loss, new.discrete

    return EpisodeView(x0, start.discrete, step)


def discrete_inputs(view: EpisodeView, horizon: int) -> tuple[list, jax.Array]:
    r"""$(d_{t-1}, t)$ for $t < T$: the discrete leaves each step reads.

    They come from one scan of the step that keeps only them (they do not depend on the floats;
    XLA drops the rest).

    Args:
      view: the episode (`episode_view`).
      horizon: $T$.

    Returns:
      `(discrete, times)`: the discrete leaves each step reads, stacked along a leading axis `[T]` (an empty
      list where there are none), and `times`, `arange(T)` as int32.
    """
    times = jnp.arange(horizon, dtype=jnp.int32)
    if not view.discrete:
        return [], times
    advance = lambda discrete, t: (view.step(view.x0, (discrete, t))[2], discrete)
    return jax.lax.scan(advance, view.discrete, times)[1], times


class EpisodeSolution(NamedTuple):
    """One episode solved by `solve_episode`.

    Attributes:
      states: `[T, N]`, the real view of the float state after each step.
      losses: `[T]`, the per-step losses at that trajectory.
      iterations: the `Solution`'s Newton iterations taken.
      residual: the `Solution`'s final residual.
      converged: the `Solution`'s `converged`.
    """

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
    """The episode `init(theta, key)` starts, evaluated in parallel over time by `solve_recurrence` on `step`.

    Its Jacobians come from `unroll.jacobians.episode_jacobian`: the system's declared
    `StepJacobian` where it has one, else the cheapest exact rule. No fallback here: read
    `converged` (`parallel_bptt` recomputes unconverged episodes sequentially).

    Args:
      system: the system.
      theta: the outer parameters.
      key: the episode's key.
      solver: `"deer"` or `"quasi-deer"` (`solve_recurrence`).
      guess: the initial trajectory `[T, N]`. Default: zeros.
      tolerance: the residual to stop at. Default: `default_tolerance`.
      max_iterations: the most Newton iterations. Default: the horizon, which always suffices in exact arithmetic.

    Returns:
      An `EpisodeSolution`.
    """
    max_iterations = check_positive_int(
        system.horizon if max_iterations is None else max_iterations, "max_iterations", "e.g. max_iterations=100."
    )
    view = episode_view(system, theta, key)
    xs = discrete_inputs(view, system.horizon)
    solution = solve_recurrence(
        view.advance, view.x0, xs, solver=solver, guess=guess, tolerance=tolerance,
        max_iterations=max_iterations, jacobian=episode_jacobian(system, theta, key, solver=solver),
    )  # fmt: skip
    previous = jnp.concatenate([view.x0[None], solution.trajectory[:-1]])
    losses = jax.vmap(view.loss)(previous, xs)
    return EpisodeSolution(solution.trajectory, losses, *solution[1:])
