"""Forward-mode estimators: real-time recurrent learning and the directional (forward) gradient.

RTRL (Williams & Zipser 1989) carries the influence ``J_t = d s_t / d theta``
(``n x p``) through the episode: ``dl_t/dtheta = dl/dtheta + dl/ds J_t`` and
``J_{t+1} = ds'/ds J_t + ds'/dtheta``, as one jvp of ``step`` per parameter
direction ``(e_j, J[:, j])``, vmapped over ``j``. ``J`` starts at ``d s_0 / d theta``
(zero unless ``init`` uses theta). Exact, online, no truncation; ``O(n p)`` memory.

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
from jax.flatten_util import ravel_pytree

from unroll.estimators.evolution import normal_like
from unroll.system import (
    check_against_theta, check_positive_int, check_system, check_truncation, inexact_leaves, with_inexact_leaves,
)
from unroll.window import (
    Estimator, Rule, Worker, run_windows, start_workers, trajectory_sum, tree_scale, window_info, worker_shape_check,
)


class InfluenceState(NamedTuple):
    """State of ``rtrl`` and ``snap``."""

    workers: Worker  # [num_workers, 1]
    influence: list  # d state / d theta for the inexact state leaves, each [W, 1, p, *leaf.shape]
    mask: list | None  # snap: 0/1 per influence entry, [p, *leaf.shape] per leaf; rtrl: None


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


def _basis(theta):
    """The ``p`` unit directions ``e_j`` as a theta-shaped pytree with a leading ``p`` axis,
    and the map from a flat ``[p]`` vector back to theta's structure."""
    flat, unravel = ravel_pytree(theta)
    return jax.vmap(unravel)(jnp.eye(flat.size, dtype=flat.dtype)), unravel


def _influence_estimator(system, truncation: int, num_workers: int, order: int | None) -> Estimator:
    """RTRL, or SnAp-``order`` when ``order`` is given: the influence is multiplied by the
    reachability mask (passed to the rule as its per-trajectory data) after every update."""

    def masked(influence, mask):
        return influence if mask is None else [j * m for j, m in zip(influence, mask)]

    def start(theta, key, noise_key, mask):
        directions, _ = _basis(theta)
        state, influence = jax.vmap(lambda v: jvp_init(system, theta, key, v))(directions)
        return jax.tree_util.tree_map(lambda x: x[0], state), masked(influence, mask)

    def step(theta, state, t, influence, mask):
        directions, unravel = _basis(theta)
        new_state, loss, influence, dloss = jax.vmap(
            lambda v, j: jvp_step(system, theta, state, t, v, j), out_axes=(None, None, 0, 0)
        )(directions, influence)
        return new_state, masked(influence, mask), loss, unravel(jnp.real(dloss))

    rule = Rule(start, step)

    def per_trajectory(mask):
        return None if mask is None else [jnp.broadcast_to(m, (num_workers, 1) + m.shape) for m in mask]

    def init(theta, key):
        check_against_theta(system, theta, key)
        # the mask's random point uses a key of its own: episodes come from `key` as in every estimator
        mask = None if order is None else reachability_mask(system, theta, jax.random.fold_in(key, 0x534E4150), order)
        workers, influence = start_workers(system, rule, theta, key, num_workers, 1, per_trajectory(mask), stagger=True)
        return InfluenceState(workers, influence, mask)

    def estimate(theta, state, key):
        del key  # deterministic given the workers' episodes
        worker_shape_check(state.workers, num_workers, 1)
        workers, influence, total, losses = run_windows(
            system, rule, theta, state.workers, state.influence, per_trajectory(state.mask), truncation
        )
        steps = num_workers * truncation
        new_state = InfluenceState(workers, influence, state.mask)
        return trajectory_sum(total, 1.0 / steps), new_state, window_info(losses, steps)

    return Estimator(init, estimate)


def rtrl(system, truncation: int, num_workers: int = 1) -> Estimator:
    """Real-time recurrent learning: ``g = (1/K) sum_k dl_{t+k}/dtheta``, each step's total
    derivative through the whole episode so far, from the influence ``J = d s / d theta``
    carried across windows and reset with episodes. At a fixed theta, the mean of the
    windows of an episode is the exact episode gradient (no truncation bias)."""
    check_system(system)
    truncation = check_truncation(truncation, system.horizon)
    num_workers = check_positive_int(num_workers, "num_workers")
    return _influence_estimator(system, truncation, num_workers, order=None)


def reachability_mask(system, theta, key, order: int, num_times: int = 3) -> list:
    """SnAp's pattern: entry ``(i, j)`` of the influence is kept iff parameter ``j`` reaches
    state unit ``i`` within ``order`` steps, i.e. it is nonzero in
    ``sum_{k < order} (ds'/ds)^k ds'/dtheta``. The structural nonzeros of the one-step
    Jacobians are read off at a random perturbed point (state and theta plus unit
    Gaussian noise, so a zero state cannot hide a dependence), united over
    ``num_times`` time indices. Returns one 0/1 array ``[p, *leaf.shape]`` per inexact
    state leaf, in the influence's layout."""
    state_key, theta_key, *_ = jax.random.split(key, 3)
    state = system.init(theta, jax.random.fold_in(key, 1))
    leaves = inexact_leaves(state)
    flat_leaves, unravel_leaves = ravel_pytree([jnp.abs(x) for x in leaves])  # real layout of the units
    num_units = flat_leaves.size
    noise = normal_like(state_key, leaves)
    leaves = [x + n for x, n in zip(leaves, noise)]
    theta = jax.tree_util.tree_map(lambda x, n: x + n, theta, normal_like(theta_key, theta))
    directions, _ = _basis(theta)
    unit_directions = jax.vmap(lambda e: [u.astype(x.dtype) for u, x in zip(unravel_leaves(e), leaves)])(
        jnp.eye(num_units, dtype=flat_leaves.dtype)
    )

    def tangent_pattern(t, theta_tangent, state_tangent):
        def step_of(theta, leaves):
            new_state, _ = system.step(theta, with_inexact_leaves(state, leaves), t)
            return inexact_leaves(new_state)

        _, out = jax.jvp(step_of, (theta, leaves), (theta_tangent, state_tangent))
        return ravel_pytree([jnp.abs(x) for x in out])[0] > 0

    zero_state = [jnp.zeros_like(x) for x in leaves]
    zero_theta = jax.tree_util.tree_map(jnp.zeros_like, theta)
    times = jnp.linspace(0, system.horizon - 1, num_times).astype(jnp.int32)
    by_parameter = jax.vmap(lambda t: jax.vmap(lambda v: tangent_pattern(t, v, zero_state))(directions))(times)
    by_unit = jax.vmap(lambda t: jax.vmap(lambda u: tangent_pattern(t, zero_theta, u))(unit_directions))(times)
    reach = jnp.any(by_parameter, axis=0).astype(flat_leaves.dtype)  # [p, n]: ds'/dtheta, transposed
    transition = jnp.any(by_unit, axis=0).astype(flat_leaves.dtype)  # [n_in, n_out]: ds'/ds, transposed
    mask = reach
    for _ in range(order - 1):
        mask = jnp.minimum(mask + mask @ transition, 1.0)
    return jax.vmap(lambda row: [m.astype(jnp.real(x).dtype) for m, x in zip(unravel_leaves(row), leaves)])(mask)


def snap(system, order: int, truncation: int, num_workers: int = 1) -> Estimator:
    """SnAp-``order`` (Menick et al. 2020): RTRL keeping only the influence entries
    ``(i, j)`` that parameter ``j`` can reach within ``order`` steps (``reachability_mask``),
    the mask applied after every update. SnAp-1 is exact for element-wise (diagonal)
    recurrences; on a dense RNN SnAp-2 already keeps every entry (= RTRL). The influence
    is stored densely and masked: the results of SnAp, at RTRL's cost."""
    check_system(system)
    order = check_positive_int(order, "order", "SnAp's order is the number of steps of reach kept, >= 1.")
    truncation = check_truncation(truncation, system.horizon)
    num_workers = check_positive_int(num_workers, "num_workers")
    return _influence_estimator(system, truncation, num_workers, order=order)


def _norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(tree)))


def _rademacher_like(key, leaves: list) -> list:
    keys = jax.random.split(key, len(leaves))
    return [jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]


def uoro(system, truncation: int, num_workers: int = 1, epsilon: float = 1e-7) -> Estimator:
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
    num_workers = check_positive_int(num_workers, "num_workers")

    def start(theta, key, noise_key, _):
        def init(theta):
            state = system.init(theta, key)
            return inexact_leaves(state), state

        leaves, pullback, state = jax.vjp(init, theta, has_aux=True)
        if any(jnp.iscomplexobj(x) for x in leaves):
            raise TypeError("`uoro` needs a real state; this system's state has complex leaves: use rtrl instead.")
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


def forward_gradient(system, truncation: int, num_directions: int = 1, num_workers: int = 1) -> Estimator:
    """Directional gradient ``g = (1/(N K)) sum_i sum_k (dl_{i,k}/dtheta . v_i) v_i`` with the
    directional derivative carried online through the whole episode (no truncation bias)."""
    check_system(system)
    truncation = check_truncation(truncation, system.horizon)
    num_directions = check_positive_int(num_directions, "num_directions")
    num_workers = check_positive_int(num_workers, "num_workers")
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
