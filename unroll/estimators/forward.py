"""Forward-mode estimators: real-time recurrent learning and the directional (forward) gradient.

RTRL (Williams & Zipser 1989) carries the influence ``J_t = d s_t / d theta``
(``N x p`` on the state's real view) through the episode:
``dl_t/dtheta = dl/dtheta + dl/ds J_t`` and ``J_{t+1} = ds'/ds J_t + ds'/dtheta``, from
``J_0 = d s_0 / d theta`` (zero unless ``init`` uses theta). Exact, online, no
truncation. Stored densely (``O(N p)``; ``N`` vjps and one matmul per step) or, where the
step is structurally sparse (``influence_pattern``), compressed into ``C`` colour groups
of columns that touch disjoint units (``O(C N)``; ``C`` jvps per step), which makes
element-wise recurrences ``O(n)`` per step. SnAp-n keeps the entries reached in ``n`` steps.

Forward gradient (Baydin et al. 2022; Silver et al. 2022): at an episode start draw
``v ~ N(0, I_p)`` and keep it for the episode; carry the tangent ``u_t = J_t v``
(``J_t = d s_t / d theta``) with one jvp per step,
``(s', l), (u', dl) = jvp(step, (theta, s), (v, u))``.
The window estimate is ``(1/K) sum_k dl_k v``; it is unbiased because
``E[v v^T] = I``, and ``E|g|^2 = (p + 2) |grad|^2`` for one direction.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from unroll.estimators.evolution import normal_like
from unroll.system import (
    check_against_theta,
    check_num_workers,
    check_positive_float,
    check_positive_int,
    check_real_state,
    check_system,
    check_truncation,
    inexact_leaves,
    real_parts,
    real_view,
    with_inexact_leaves,
)
from unroll.window import (
    Estimator,
    Rule,
    Worker,
    run_windows,
    start_workers,
    trajectory_sum,
    tree_scale,
    window_info,
    worker_shape_check,
)


class InfluenceState(NamedTuple):
    """State of ``rtrl`` and ``snap``: the workers and their influence ``d state / d theta``
    on the state's real view (complex as re, im), ``[W, 1, N, p]`` (dense layout) or
    ``[W, 1, C, N]`` (compressed: row ``k`` holds the columns of colour ``k``, see
    ``influence_pattern``)."""

    workers: Worker  # [num_workers, 1]
    influence: jax.Array


class UOROState(NamedTuple):
    workers: Worker  # [num_workers, 1]
    state_factor: list  # s~: one array per inexact state leaf
    theta_factor: object  # theta~: theta-shaped
    key: jax.Array  # per-trajectory key of the +-1 draws


class ForwardGradientState(NamedTuple):
    workers: Worker  # [num_workers, num_directions]
    direction: object  # theta-shaped v per trajectory
    tangent: list  # d state / d theta . v, for the inexact (float or complex) leaves of the state


def jvp_init(system, theta, key, direction):
    """``(s_0, d s_0 / d theta . direction)``, the tangent on the inexact leaves only."""

    def init(theta):
        state = system.init(theta, key)
        return inexact_leaves(state), state

    _, tangent, state = jax.jvp(init, (theta,), (direction,), has_aux=True)
    return state, tangent


def jvp_step(system, theta, state, t, direction, tangent):
    """One step and its tangent: ``(s', l), (u', dl) = jvp(step, (theta, s), (v, u))``."""

    def step(theta, leaves):
        new_state, loss = system.step(theta, with_inexact_leaves(state, leaves), t)
        return (inexact_leaves(new_state), loss), new_state

    (_, loss), (tangent, dloss), new_state = jax.jvp(
        step, (theta, inexact_leaves(state)), (direction, tangent), has_aux=True
    )
    return new_state, loss, tangent, dloss


def _initial_influence(system, theta, key):
    """``(s_0, d s_0 / d theta)``, the influence as ``[N, p]`` on the state's real view."""
    flat, unravel = ravel_pytree(theta)

    def init(flat):
        state = system.init(unravel(flat), key)
        return ravel_pytree(real_parts(inexact_leaves(state)))[0], state

    jacobian, state = jax.jacrev(init, has_aux=True)(flat)
    return state, jacobian


def _step_jacobians(system, theta, state, t):
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

    def jacobians(point):
        state, init_key = _random_state(system, point, key)
        times = jnp.linspace(0, system.horizon - 1, num_times).astype(jnp.int32)
        d_state, d_theta = jax.vmap(lambda t: _step_jacobians(system, point, state, t)[2:4])(times)
        return state, d_state, d_theta, _initial_influence(system, point, init_key)[1]

    try:
        with jax.ensure_compile_time_eval():
            point = _random_theta(theta)
        traced = jax.jit(jacobians).trace(point)
        if len(traced.jaxpr.in_avals) != len(jax.tree_util.tree_leaves(point)):
            return None  # values traced by an outer transformation were hoisted into inputs
        # compiled once and called on concrete values, also inside an outer trace (a
        # compiled executable binds nothing); op-by-op evaluation would cost seconds
        state, d_state, d_theta, init_jacobian = traced.lower().compile()(point)
        d_state, d_theta, init_jacobian = (np.asarray(x) for x in (d_state, d_theta, init_jacobian))
    except (
        jax.errors.ConcretizationTypeError,
        jax.errors.UnexpectedTracerError,
        jax.errors.TracerArrayConversionError,
    ):
        return None  # the system closes over traced values: no concrete pattern
    unit = _coordinate_units(inexact_leaves(state))
    num_units, p = int(unit.max(initial=-1)) + 1, d_theta.shape[-1]
    group = np.zeros((unit.size, num_units), bool)
    group[np.arange(unit.size), unit] = True
    to_units = lambda a: (group.T.astype(int) @ a.astype(int)) > 0  # [N, x] -> [U, x]
    transition = to_units(to_units(np.any(d_state != 0, axis=0)).T).T  # [U, U]
    direct = to_units(np.any(d_theta != 0, axis=0))  # [U, p]
    initial = to_units(init_jacobian != 0)
    expand = lambda reach: reach | ((transition.astype(int) @ reach.astype(int)) > 0)
    if order is None:  # everything theta can ever reach: the closure of (direct | initial)
        reach = direct | initial
        while not np.array_equal(grown := expand(reach), reach):
            reach = grown
        conflict = reach
    else:
        reach = direct
        for _ in range(order - 1):
            reach = expand(reach)
        conflict = direct | initial | ((transition.astype(int) @ reach.astype(int)) > 0)
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


def _dense_influence_rule(system, mask):
    """RTRL on the dense ``[N, p]`` influence: ``J' = ds'/ds J + ds'/dtheta`` from ``N``
    vjps and one matmul per step (times ``mask`` for SnAp)."""
    masked = (lambda x: x) if mask is None else (lambda x: x * jnp.asarray(mask, x.dtype))

    def start(theta, key, noise_key, _):
        state, influence = _initial_influence(system, theta, key)
        return state, masked(influence)

    def step(theta, state, t, influence, _):
        new_state, loss, d_state, d_theta, dl_dstate, dl_dtheta = _step_jacobians(system, theta, state, t)
        gradient = ravel_pytree(theta)[1](dl_dtheta + dl_dstate @ influence)  # the influence before the update
        return new_state, masked(d_state @ influence + d_theta), loss, gradient

    return Rule(start, step)


def _compressed_influence_rule(system, pattern: InfluencePattern):
    """RTRL on the compressed influence ``[C, N]``: row ``k`` is ``J E_k``, ``E_k`` the sum of
    the basis directions of colour ``k``. Since the columns of a colour touch disjoint
    units, ``J' E_k = ds'/ds (J E_k) + ds'/dtheta E_k`` is one jvp (``C`` jvps per step,
    vmapped), masked to the kept entries. The gradient ``dl/dtheta + dl/ds J`` is one vjp
    and a segment sum of ``dl/ds * J E_k`` by owner."""
    p = pattern.color.size
    owner = pattern.owner.ravel()  # numpy: the rule is cached across traces, so it holds no jax arrays
    kept = pattern.owner < p  # [C, N]

    def directions(flat):
        return jnp.asarray(pattern.color[None, :] == np.arange(pattern.num_colors)[:, None], flat.dtype)

    def start(theta, key, noise_key, _):
        flat, unravel = ravel_pytree(theta)

        def init(flat):
            state = system.init(unravel(flat), key)
            return ravel_pytree(real_parts(inexact_leaves(state)))[0], state

        vector, linear, state = jax.linearize(init, flat, has_aux=True)
        influence = jax.vmap(linear)(directions(flat))
        return state, influence * jnp.asarray(kept, vector.dtype)

    def step(theta, state, t, influence, _):
        flat, unravel = ravel_pytree(theta)
        vector, f = real_view(system, state)

        def h(p, v):
            new_vector, loss, new_state = f(unravel(p), v, t)
            return (new_vector, loss), new_state

        (_, loss), linear, new_state = jax.linearize(h, flat, vector, has_aux=True)
        tangent, _ = jax.vmap(linear)(directions(flat), influence)
        # dl/dtheta and dl/ds: the loss row of the same linearization, transposed
        zeros = jnp.zeros_like(vector)
        dl_dtheta, dl_dstate = jax.linear_transpose(linear, flat, vector)((zeros, jnp.ones_like(loss)))
        through_state = jax.ops.segment_sum((influence * dl_dstate).ravel(), owner, num_segments=p + 1)[:p]
        gradient = unravel(dl_dtheta + through_state.astype(dl_dtheta.dtype))
        return new_state, tangent * jnp.asarray(kept, tangent.dtype), loss, gradient

    return Rule(start, step)


def _influence_estimator(
    system, truncation: int, num_workers: int, order: int | None, sparse: bool | None
) -> Estimator:
    """RTRL, or SnAp-``order`` when ``order`` is given, on the dense or the compressed
    influence (``sparse``: ``None`` picks by ``influence_pattern(...).compressed``). The
    pattern and the rule are found once per theta structure, at trace time."""
    name = "rtrl" if order is None else "snap"
    rules = {}

    def rule_for(theta, key):
        spec = (
            jax.tree_util.tree_structure(theta),
            tuple((np.shape(x), jnp.result_type(x)) for x in jax.tree_util.tree_leaves(theta)),
            getattr(jnp.asarray(key), "dtype", None) if key is not None else None,
        )
        if spec not in rules:
            pattern = influence_pattern(system, theta, key, order)
            if pattern is None and (order is not None or sparse):
                raise ValueError(
                    f"`{name}`{' with sparse=True' if sparse else ''} needs the sparsity pattern of the step "
                    "Jacobians at trace time, and this system's init/step could not run on concrete values "
                    "(do they close over traced arrays?). Build the system from concrete arrays"
                    + (", or use rtrl(..., sparse=False)." if order is None else ".")
                )
            compress = pattern is not None and (pattern.compressed if sparse is None else sparse)
            if compress:
                rules[spec] = (
                    _compressed_influence_rule(system, pattern),
                    (pattern.num_colors, pattern.owner.shape[1]),
                )
            else:
                mask = None if order is None else pattern.mask
                rules[spec] = (_dense_influence_rule(system, mask), None)
        return rules[spec]

    def init(theta, key):
        check_against_theta(system, theta, key)
        rule, _ = rule_for(theta, key)
        workers, influence = start_workers(system, rule, theta, key, num_workers, 1, None, stagger=True)
        return InfluenceState(workers, influence)

    def estimate(theta, state, key):
        del key  # deterministic given the workers' episodes
        worker_shape_check(state.workers, num_workers, 1)
        rule, compressed_shape = rule_for(theta, state.workers.key)
        expected = compressed_shape or (state.influence.shape[2], ravel_pytree(theta)[0].size)
        if tuple(state.influence.shape[2:]) != tuple(expected):
            raise ValueError(
                f"`state.influence` has shape {state.influence.shape}, expected [{num_workers}, 1, "
                f"{', '.join(map(str, expected))}] for this {name} and theta; pass the state this "
                "estimator's init returned."
            )
        workers, influence, total, losses = run_windows(
            system, rule, theta, state.workers, state.influence, None, truncation
        )
        steps = num_workers * truncation
        return trajectory_sum(total, 1.0 / steps), InfluenceState(workers, influence), window_info(losses, steps)

    return Estimator(init, estimate)


def rtrl(system, *, truncation: int, num_workers: int = 1, sparse: bool | None = None) -> Estimator:
    """Real-time recurrent learning: ``g = (1/K) sum_k dl_{t+k}/dtheta``, each step's total
    derivative through the whole episode so far, from the influence ``J = d s / d theta``
    carried across windows and reset with episodes. At a fixed theta, the mean of the
    windows of an episode is the exact episode gradient (no truncation bias).

    ``sparse`` picks how ``J`` is stored and updated (the results are the same):
    ``False``, dense ``[N, p]`` (``N`` vjps and an ``[N, N] @ [N, p]`` product per step);
    ``True``, compressed by the structural sparsity of the step (``influence_pattern``:
    ``C`` jvps per step, ``[C, N]`` stored), which for element-wise (diagonal, possibly
    complex) recurrences such as LRU layers costs ``O(n)`` per parameter vector instead of
    ``O(n^2 p)`` (Zucchet et al. 2023); ``None`` (default) picks the compressed layout
    when it needs no more jvps than the dense one needs vjps (``C <= N``)."""
    check_system(system)
    truncation = check_truncation(truncation, system.horizon)
    num_workers = check_num_workers(num_workers)
    sparse = _check_sparse(sparse)
    return _influence_estimator(system, truncation, num_workers, None, sparse)


def snap(system, *, truncation: int, num_workers: int = 1, order: int = 1, sparse: bool | None = None) -> Estimator:
    """SnAp-``order`` (Menick et al. 2020): RTRL keeping only the influence entries
    ``(i, j)`` that parameter ``j`` can reach within ``order`` steps
    (``influence_pattern(..., order=order).mask``), ``J' = mask * (ds'/ds J + ds'/dtheta)``.
    SnAp-1 is exact for element-wise (diagonal) recurrences; on a dense RNN SnAp-2 already
    keeps every entry (= RTRL). ``sparse`` as in ``rtrl``: the compressed layout applies
    when the columns one step beyond the kept pattern colour with ``C <= N`` colours
    (diagonal recurrences); otherwise (e.g. SnAp-1 of a dense RNN, whose next step
    touches every unit) the influence is stored densely and masked."""
    check_system(system)
    order = check_positive_int(
        order,
        "order",
        "It is the number of steps of reach SnAp keeps: use an int >= 1, e.g. order=1 (order=2 on a "
        "dense RNN keeps every entry, = rtrl).",
    )
    truncation = check_truncation(truncation, system.horizon)
    num_workers = check_num_workers(num_workers)
    sparse = _check_sparse(sparse)
    return _influence_estimator(system, truncation, num_workers, order, sparse)


def _check_sparse(sparse):
    if sparse is not None and not isinstance(sparse, (bool, np.bool_)):
        raise ValueError(
            f"`sparse` must be True, False or None, got {sparse!r}; pass sparse=None to pick the layout "
            "automatically, True for the compressed one, False for the dense one."
        )
    return None if sparse is None else bool(sparse)


def _norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(tree)))


def _rademacher_like(key, leaves: list) -> list:
    keys = jax.random.split(key, len(leaves))
    return [jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]


def uoro(system, *, truncation: int, num_workers: int = 1, epsilon: float = 1e-7) -> Estimator:
    """Unbiased online recurrent optimization (Tallec & Ollivier 2017).

    The influence is kept as a rank-one ``J ~ s~ theta~^T``. Each step, with
    ``nu`` uniform in ``{-1, +1}^n``, ``A = ds'/ds s~`` (a jvp) and
    ``B = nu^T ds'/dtheta`` (a vjp), the step's gradient is
    ``dl/dtheta + (dl/ds s~) theta~`` (the influence before the update), then
    ``s~ <- rho0 A + rho1 nu`` and ``theta~ <- theta~ / rho0 + B / rho1`` with the
    variance-minimizing ``rho0 = sqrt(|theta~| / |A|)``, ``rho1 = sqrt(|B| / |nu|)``
    (``epsilon`` keeps them finite). An episode starts at ``s~ = nu``,
    ``theta~ = nu^T d s_0 / d theta``. Unbiased; high variance. Real states only.
    """
    check_system(system)
    truncation = check_truncation(truncation, system.horizon)
    num_workers = check_num_workers(num_workers)
    epsilon = check_positive_float(
        epsilon, "epsilon", "it keeps UORO's rescaling rho0, rho1 finite when a factor is zero: try epsilon=1e-7."
    )

    def start(theta, key, noise_key, _):
        def init(theta):
            state = system.init(theta, key)
            return inexact_leaves(state), state

        leaves, pullback, state = jax.vjp(init, theta, has_aux=True)
        check_real_state("uoro", leaves)
        noise_key, sub = jax.random.split(noise_key)
        nu = _rademacher_like(sub, leaves)
        (theta_factor,) = pullback(nu)
        return state, (nu, theta_factor, noise_key)

    def step(theta, state, t, acc, _):
        state_factor, theta_factor, key = acc

        def step_of(theta, leaves):
            new_state, loss = system.step(theta, with_inexact_leaves(state, leaves), t)
            return (inexact_leaves(new_state), loss), new_state

        leaves = inexact_leaves(state)
        (new_leaves, loss), (a, dloss_along), new_state = jax.jvp(
            lambda lv: step_of(theta, lv), (leaves,), (state_factor,), has_aux=True
        )
        _, pullback, _ = jax.vjp(lambda th: step_of(th, leaves), theta, has_aux=True)
        key, sub = jax.random.split(key)
        nu = _rademacher_like(sub, new_leaves)
        (b,) = pullback((nu, jnp.zeros_like(loss)))
        (dloss_dtheta,) = pullback(([jnp.zeros_like(x) for x in new_leaves], jnp.ones_like(loss)))
        gradient = jax.tree_util.tree_map(lambda d, f: d + dloss_along * f, dloss_dtheta, theta_factor)
        rho0 = jnp.sqrt((_norm(theta_factor) + epsilon) / (_norm(a) + epsilon))
        rho1 = jnp.sqrt((_norm(b) + epsilon) / (_norm(nu) + epsilon))
        state_factor = [rho0 * x + rho1 * n for x, n in zip(a, nu)]
        theta_factor = jax.tree_util.tree_map(lambda f, g: f / rho0 + g / rho1, theta_factor, b)
        return new_state, (state_factor, theta_factor, key), loss, gradient

    rule = Rule(start, step)

    def init(theta, key):
        check_against_theta(system, theta, key)
        workers, acc = start_workers(system, rule, theta, key, num_workers, 1, None, stagger=True)
        return UOROState(workers, *acc)

    def estimate(theta, state, key):
        del key  # the +-1 draws come from each episode's own key
        worker_shape_check(state.workers, num_workers, 1)
        acc = (state.state_factor, state.theta_factor, state.key)
        workers, acc, total, losses = run_windows(system, rule, theta, state.workers, acc, None, truncation)
        steps = num_workers * truncation
        return trajectory_sum(total, 1.0 / steps), UOROState(workers, *acc), window_info(losses, steps)

    return Estimator(init, estimate)


def forward_gradient(system, *, truncation: int, num_workers: int = 1, num_directions: int = 1) -> Estimator:
    """Directional gradient ``g = (1/(N K)) sum_i sum_k (dl_{i,k}/dtheta . v_i) v_i`` with the
    directional derivative carried online through the whole episode (no truncation bias)."""
    check_system(system)
    truncation = check_truncation(truncation, system.horizon)
    num_directions = check_positive_int(
        num_directions,
        "num_directions",
        "It counts the random directions v drawn per worker: use an int >= 1 (more directions, lower variance).",
    )
    num_workers = check_num_workers(num_workers)
    shape = (num_workers, num_directions)

    def start(theta, key, noise_key, _):
        direction = normal_like(noise_key, theta)
        state, tangent = jvp_init(system, theta, key, direction)
        return state, (direction, tangent)

    def step(theta, state, t, acc, _):
        direction, tangent = acc
        state, loss, tangent, dloss = jvp_step(system, theta, state, t, direction, tangent)
        return state, (direction, tangent), loss, tree_scale(jnp.real(dloss), direction)

    rule = Rule(start, step)

    def init(theta, key):
        check_against_theta(system, theta, key)
        workers, (direction, tangent) = start_workers(system, rule, theta, key, *shape, None, stagger=True)
        return ForwardGradientState(workers, direction, tangent)

    def estimate(theta, state, key):
        del key  # directions are drawn per episode from each worker's key chain
        worker_shape_check(state.workers, *shape)
        acc = (state.direction, state.tangent)
        workers, (direction, tangent), total, losses = run_windows(
            system, rule, theta, state.workers, acc, None, truncation
        )
        steps = num_workers * num_directions * truncation
        grad = trajectory_sum(total, 1.0 / steps)
        return grad, ForwardGradientState(workers, direction, tangent), window_info(losses, steps)

    return Estimator(init, estimate)
