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
    influence: jax.Array  # d state / d theta on the state's real view (complex as re, im): [W, 1, N, p]
    mask: jax.Array | None  # snap: 0/1 per influence entry, [N, p]; rtrl: None


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


def _real_parts(leaves: list) -> list:
    """Complex leaves as stacked (real, imaginary) parts: the influence lives on the real
    view of the state, so non-holomorphic steps are differentiated correctly."""
    return [jnp.stack([jnp.real(x), jnp.imag(x)]) if jnp.iscomplexobj(x) else x for x in leaves]


def _from_real_parts(parts: list, template: list) -> list:
    return [p[0] + 1j * p[1] if jnp.iscomplexobj(x) else p for p, x in zip(parts, template)]


def _real_view(system, state):
    """``(vector, f)``: the state's inexact leaves as one real vector ``[N]``, and
    ``f(theta, vector, t) -> (next vector, loss, next state)``, the step on that view."""
    template = inexact_leaves(state)
    vector, unravel = ravel_pytree(_real_parts(template))

    def f(theta, vector, t):
        new_state, loss = system.step(theta, with_inexact_leaves(state, _from_real_parts(unravel(vector), template)), t)
        return ravel_pytree(_real_parts(inexact_leaves(new_state)))[0], loss, new_state

    return vector, f


def _initial_influence(system, theta, key):
    """``(s_0, d s_0 / d theta)``, the influence as ``[N, p]`` on the state's real view."""
    flat, unravel = ravel_pytree(theta)

    def init(flat):
        state = system.init(unravel(flat), key)
        return ravel_pytree(_real_parts(inexact_leaves(state)))[0], state

    jacobian, state = jax.jacrev(init, has_aux=True)(flat)
    return state, jacobian


def _step_jacobians(system, theta, state, t):
    """One step on the real view ``[N]`` of the state: the next state, the loss, the
    Jacobians ``ds'/ds`` ``[N, N]`` and ``ds'/dtheta`` ``[N, p]`` (``N`` vjps), and the
    loss's partial derivatives ``dl/ds`` ``[N]`` and ``dl/dtheta`` ``[p]``."""
    flat, unravel = ravel_pytree(theta)
    vector, f = _real_view(system, state)
    new_vector, loss, new_state = f(theta, vector, t)
    d_state = jax.jacrev(lambda v: f(theta, v, t)[0])(vector)
    d_theta = jax.jacrev(lambda p: f(unravel(p), vector, t)[0])(flat)
    dl_dtheta, dl_dstate = jax.grad(lambda p, v: f(unravel(p), v, t)[1], argnums=(0, 1))(flat, vector)
    return new_state, loss, d_state, d_theta, dl_dstate, dl_dtheta


def _influence_estimator(system, truncation: int, num_workers: int, order: int | None) -> Estimator:
    """RTRL, or SnAp-``order`` when ``order`` is given: the influence ``J`` ``[N, p]`` (on
    the state's real view) is multiplied by the reachability mask (passed to the rule as
    its per-trajectory data) after every update. Per step: ``N`` vjps for the Jacobians,
    one ``[N, N] @ [N, p]`` product; memory ``O(N p)``."""

    def masked(influence, mask):
        return influence if mask is None else influence * mask

    def start(theta, key, noise_key, mask):
        state, influence = _initial_influence(system, theta, key)
        return state, masked(influence, mask)

    def step(theta, state, t, influence, mask):
        new_state, loss, d_state, d_theta, dl_dstate, dl_dtheta = _step_jacobians(system, theta, state, t)
        gradient = ravel_pytree(theta)[1](dl_dtheta + dl_dstate @ influence)  # the influence before the update
        return new_state, masked(d_state @ influence + d_theta, mask), loss, gradient

    rule = Rule(start, step)

    def per_trajectory(mask):
        return None if mask is None else jnp.broadcast_to(mask, (num_workers, 1) + mask.shape)

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


def reachability_mask(system, theta, key, order: int, num_times: int = 3) -> jax.Array:
    """SnAp's pattern ``[N, p]`` on the state's real view: entry ``(i, j)`` is kept iff
    parameter ``j`` reaches state coordinate ``i`` within ``order`` steps, i.e. it is
    nonzero in ``sum_{k < order} (ds'/ds)^k ds'/dtheta``. The structural nonzeros of the
    one-step Jacobians are read off at a random perturbed point (state and theta plus
    unit Gaussian noise, so a zero state cannot hide a dependence), united over
    ``num_times`` time indices."""
    state_key, theta_key = jax.random.split(key)
    state = system.init(theta, jax.random.fold_in(key, 1))
    leaves = inexact_leaves(state)
    state = with_inexact_leaves(state, [x + n for x, n in zip(leaves, normal_like(state_key, leaves))])
    theta = jax.tree_util.tree_map(jnp.add, theta, normal_like(theta_key, theta))
    times = jnp.linspace(0, system.horizon - 1, num_times).astype(jnp.int32)
    d_state, d_theta = jax.vmap(lambda t: _step_jacobians(system, theta, state, t)[2:4])(times)
    # reach is counted in units: the real and imaginary parts of a complex element are one
    # unit (`group` maps coordinates to units), so SnAp-1 is exact for complex diagonals
    sizes = [x.size for x in leaves]
    ids = [jnp.arange(n).reshape(x.shape) + sum(sizes[:i]) for i, (n, x) in enumerate(zip(sizes, leaves))]
    coordinate_unit = jnp.concatenate(
        [(jnp.stack([i, i]) if jnp.iscomplexobj(x) else i).ravel() for i, x in zip(ids, leaves)]
    )  # the layout of ravel_pytree(_real_parts(leaves))
    group = jax.nn.one_hot(coordinate_unit, sum(sizes), dtype=d_theta.dtype)  # [N, U]
    transition = (group.T @ jnp.any(d_state != 0, axis=0).astype(group.dtype) @ group > 0).astype(group.dtype)
    reach = (group.T @ jnp.any(d_theta != 0, axis=0).astype(group.dtype) > 0).astype(group.dtype)  # [U, p]
    for _ in range(order - 1):
        reach = jnp.minimum(reach + transition @ reach, 1.0)
    return group @ reach  # [N, p]


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
