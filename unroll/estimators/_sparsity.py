"""The structural sparsity of the RTRL influence ``d state / d theta`` and the dense
one-step Jacobians ``rtrl`` and ``snap`` use (private to ``unroll.estimators.rtrl``).

``influence_pattern`` finds, once at trace time, which entries of the influence can be
nonzero (the closure of the step's sparsity for RTRL, the reach within ``n`` steps for
SnAp-n) and colours the parameters so that one jvp carries every column of a colour
(Curtis-Powell-Reid column compression).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from unroll._system import inexact_leaves, real_parts, real_view, with_inexact_leaves


def initial_influence(system, theta, key):
    """``(s_0, d s_0 / d theta)``, the influence as ``[N, p]`` on the state's real view."""
    flat, unravel = ravel_pytree(theta)

    def init(flat):
        state = system.init(unravel(flat), key)
        return ravel_pytree(real_parts(inexact_leaves(state)))[0], state

    jacobian, state = jax.jacrev(init, has_aux=True)(flat)
    return state, jacobian


def step_jacobians(system, theta, state, t):
    """One step on the real view ``[N]`` of the state: the next state, the loss, the
    Jacobians ``ds'/ds`` ``[N, N]`` and ``ds'/dtheta`` ``[N, p]`` (``N`` vjps), and the
    loss's partial derivatives ``dl/ds`` ``[N]`` and ``dl/dtheta`` ``[p]``."""
    flat, unravel = ravel_pytree(theta)
    vector, f = real_view(system, state)
    new_vector, loss, new_state = f(theta, vector, t)
    d_state = jax.jacrev(lambda v: f(theta, v, t)[0])(vector)
    d_theta = jax.jacrev(lambda p: f(unravel(p), vector, t)[0])(flat)
    dl_dtheta, dl_dstate = jax.grad(lambda p, v: f(unravel(p), v, t)[1], argnums=(0, 1))(flat, vector)
    return new_state, loss, d_state, d_theta, dl_dstate, dl_dtheta


class InfluencePattern(NamedTuple):
    """Where the influence ``d state / d theta`` (``[N, p]`` on the state's real view) can
    be nonzero, and its compressed layout.

    * ``mask``: ``[N, p]`` bool, the entries kept: for ``rtrl`` every entry that can ever
      be nonzero (the closure of the step's sparsity), for SnAp-n those reached within
      ``n`` steps;
    * ``color``: ``[p]`` int, parameters sharing a colour never touch the same state unit
      (within one step of the kept pattern), so one jvp with the sum of their basis
      directions carries all their columns at once (Curtis-Powell-Reid column
      compression); ``-1`` for parameters that never move the state;
    * ``owner``: ``[C, N]`` int, the parameter whose column the compressed row ``k``
      holds at coordinate ``i`` (``p`` where none);
    * ``num_colors``: ``C``, the jvps per step of the compressed layout;
    * ``compressed``: whether ``rtrl``/``snap`` pick the compressed layout by default
      (``C <= N``: fewer jvps per step than the dense layout's ``N`` vjps, and ``C N``
      instead of ``N p`` numbers stored). Element-wise (diagonal, also complex)
      recurrences give a ``C`` independent of the width, hence ``O(n)`` per step.
    """

    mask: np.ndarray
    color: np.ndarray
    owner: np.ndarray
    num_colors: int
    compressed: bool


def _random_theta(theta):
    """A concrete random point with the shapes of ``theta`` (only shapes are read, so
    ``theta`` may be traced), seeded so the pattern does not depend on the call."""
    rng = np.random.default_rng(0x534E4150)
    return jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), theta)


def _random_state(system, point, key):
    """``(state, init key)``: ``system.init(point, key0)`` plus unit Gaussian noise on its
    inexact leaves (so a zero state cannot hide a dependence); ``key0`` of ``key``'s kind."""
    rng = np.random.default_rng(0x53544154)
    typed = jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key) if hasattr(key, "dtype") else False
    key = jax.random.key(0) if typed else jax.random.PRNGKey(0)
    state = system.init(point, key)
    leaves = inexact_leaves(state)
    noise = [jnp.asarray(rng.normal(size=x.shape), jnp.real(x).dtype) for x in leaves]
    noise = [n * (1 + 1j) if jnp.iscomplexobj(x) else n for n, x in zip(noise, leaves)]
    return with_inexact_leaves(state, [x + n.astype(x.dtype) for x, n in zip(leaves, noise)]), key


def _coordinate_units(leaves: list) -> np.ndarray:
    """``[N]``: the unit of each coordinate of the real view (a complex element is one unit)."""
    sizes = [int(np.size(x)) for x in leaves]
    offsets = np.cumsum([0] + sizes[:-1])
    units = [np.arange(n).reshape(np.shape(x)) + o for n, x, o in zip(sizes, leaves, offsets)]
    return np.concatenate(
        [(np.stack([u, u]) if jnp.iscomplexobj(x) else u).ravel() for u, x in zip(units, leaves)] or [np.zeros(0, int)]
    ).astype(int)


def _greedy_colors(conflict: np.ndarray) -> np.ndarray:
    """A colouring of the columns of ``conflict`` (``[U, p]`` bool) such that no two columns
    of one colour share a row (greedy, first fit); ``-1`` for empty columns."""
    num_rows, p = conflict.shape
    color = np.full(p, -1, int)
    used = np.zeros((num_rows, 0), bool)
    for j in range(p):
        rows = np.flatnonzero(conflict[:, j])
        if rows.size == 0:
            continue
        free = np.flatnonzero(~used[rows].any(axis=0))
        k = int(free[0]) if free.size else used.shape[1]
        if k == used.shape[1]:
            used = np.concatenate([used, np.zeros((num_rows, max(1, k)), bool)], axis=1)
        used[rows, k] = True
        color[j] = k
    return color


def _concrete_jacobians(system, theta, key, num_times: int, with_theta: bool = True):
    """``(state, ds'/ds [times, N, N], ds'/dtheta [times, N, p], ds_0/dtheta [N, p])`` at a
    concrete random point (numpy), or ``None`` when the system closes over traced values;
    ``(state, ds'/ds)`` alone without ``with_theta``."""

    def jacobians(point):
        state, init_key = _random_state(system, point, key)
        times = jnp.linspace(0, system.horizon - 1, num_times).astype(jnp.int32)
        d_state, d_theta = jax.vmap(lambda t: step_jacobians(system, point, state, t)[2:4])(times)
        if not with_theta:  # (XLA drops what only ds'/dtheta needed)
            return state, d_state
        return state, d_state, d_theta, initial_influence(system, point, init_key)[1]

    try:
        with jax.ensure_compile_time_eval():
            point = _random_theta(theta)
        traced = jax.jit(jacobians).trace(point)
        if len(traced.jaxpr.in_avals) != len(jax.tree_util.tree_leaves(point)):
            return None  # values traced by an outer transformation were hoisted into inputs
        # compiled once and called on concrete values, also inside an outer trace (a
        # compiled executable binds nothing); op-by-op evaluation would cost seconds
        state, *arrays = traced.lower().compile()(point)
    except (
        jax.errors.ConcretizationTypeError,
        jax.errors.UnexpectedTracerError,
        jax.errors.TracerArrayConversionError,
    ):
        return None  # the system closes over traced values: no concrete pattern
    return (state, *(np.asarray(x) for x in arrays))


def _reach(transition: np.ndarray, direct: np.ndarray, initial: np.ndarray, order: int | None):
    """``(reach, conflict)`` ``[U, p]`` per unit: the entries kept (all theta can ever reach
    for RTRL, within ``order`` steps for SnAp) and the units each column touches within
    one step of them (what the colouring must keep apart)."""
    expand = lambda reach: reach | ((transition.astype(int) @ reach.astype(int)) > 0)
    if order is None:  # everything theta can ever reach: the closure of (direct | initial)
        reach = direct | initial
        while not np.array_equal(grown := expand(reach), reach):
            reach = grown
        return reach, reach
    reach = direct
    for _ in range(order - 1):
        reach = expand(reach)
    return reach, direct | initial | ((transition.astype(int) @ reach.astype(int)) > 0)


def influence_pattern(system, theta, key=None, order: int | None = None, num_times: int = 3):
    """The sparsity of the influence of ``system`` (``InfluencePattern``), found once,
    structurally, at trace time: the nonzeros of the one-step Jacobians ``ds'/ds``,
    ``ds'/dtheta`` and of ``d s_0 / d theta``, evaluated at a concrete random point (theta
    and state plus unit Gaussian noise, so a zero state cannot hide a dependence) and
    united over ``num_times`` time indices, are counted per unit (the real and imaginary
    parts of a complex element are one unit). ``order=None`` gives RTRL's exact pattern
    (the closure under the step); ``order=n`` SnAp-n's (reach within ``n`` steps).

    Only shapes of ``theta`` are used, so it works under ``jit``; it returns ``None`` when
    ``step`` or ``init`` cannot run on concrete values (e.g. they close over traced arrays).
    """
    found = _concrete_jacobians(system, theta, key, num_times)
    if found is None:
        return None
    state, d_state, d_theta, init_jacobian = found
    unit = _coordinate_units(inexact_leaves(state))
    num_units, p = int(unit.max(initial=-1)) + 1, d_theta.shape[-1]
    group = np.zeros((unit.size, num_units), bool)
    group[np.arange(unit.size), unit] = True
    to_units = lambda a: (group.T.astype(int) @ a.astype(int)) > 0  # [N, x] -> [U, x]
    transition = to_units(to_units(np.any(d_state != 0, axis=0)).T).T  # [U, U]
    direct = to_units(np.any(d_theta != 0, axis=0))  # [U, p]
    reach, conflict = _reach(transition, direct, to_units(init_jacobian != 0), order)
    mask = group @ reach  # [N, p] (bool matmul: any)
    used = conflict.any(axis=0)
    if conflict.sum(axis=1).max(initial=0) == used.sum():  # a unit every column touches: one colour each
        color = np.where(used, np.cumsum(used) - 1, -1)
    else:
        color = _greedy_colors(conflict)
    num_colors = int(color.max(initial=-1)) + 1
    owner = np.full((num_colors, unit.size), p, int)
    for j in np.flatnonzero(color >= 0):
        owner[color[j], mask[:, j]] = j
    return InfluencePattern(mask, color, owner, num_colors, num_colors <= unit.size)


def state_coloring(system, theta, key=None, num_times: int = 3) -> np.ndarray | None:
    """``[N]``: a Curtis-Powell-Reid colouring of the columns of the step's state Jacobian
    ``ds'/ds`` on the real view (no two columns of one colour share a nonzero row, the
    diagonal counted), from its structural pattern found as in ``influence_pattern``; one
    jvp per colour then gives every entry, the diagonal too (one colour for an elementwise
    step, two for an elementwise complex one; each column its own where a row has more than
    ``N / 2`` nonzeros). ``None`` where the pattern cannot be found."""
    found = _concrete_jacobians(system, theta, key, num_times, with_theta=False)
    if found is None:
        return None
    d_state = found[1]
    pattern = np.any(d_state != 0, axis=0) | np.eye(d_state.shape[-1], dtype=bool)
    if 2 * pattern.sum(axis=1).max(initial=0) > pattern.shape[0]:  # a row this full leaves little to gain
        return np.arange(pattern.shape[0])
    return _greedy_colors(pattern)
