"""The builder: one way to make a windowed estimator from a `Rule` and a `WindowGradient`.

An estimator states two things and `windowed` supplies the rest (`init`, `estimate`,
the state and shape checks, `info`, one generic `WindowState`):

* its accumulator, a `Rule`: what it carries along one trajectory, how that starts
  with an episode (`start`), its per-step update and contribution (`step`), and
  optionally how a window begins (`begin`, e.g. PES adds the window's noise);
* how a window's contributions become the gradient, a `WindowGradient`: `summed`
  (the mean contribution, forward-mode and ES estimators), `backprop` (reverse mode
  through the window), or the estimator's own.

`docs/adding-an-estimator.md` walks through one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from unroll._engine import (
    episode_keys,
    episode_start,
    flatten_trajectories,
    run_windows,
    start_workers,
    trajectory_sum,
    unflatten_trajectories,
    window_info,
)
from unroll._errors import BadValue
from unroll._system import check_against_theta, with_inexact_leaves
from unroll._tree import PyTree
from unroll.contract import (
    EpisodeStart,
    Estimate,
    Estimator,
    Gradient,
    Rule,
    Step,
    Window,
    WindowGradient,
    WindowResult,
    WindowState,
    Worker,
)

__all__ = ["backprop", "plain_rule", "summed", "windowed"]


def plain_rule(system) -> Rule:
    """The rule with no accumulator: just the system's own dynamics.

    Args:
        system: the unrolled system.

    Returns:
        A `Rule` whose accumulator and contributions are `()`.
    """

    def start(theta, key, noise_key, noise):
        return EpisodeStart(system.init(theta, key), ())

    def step(theta, state, t, acc, noise):
        state, loss = system.step(theta, state, t)
        return Step(state, acc, loss, ())

    return Rule(start, step)


def summed(scale: float = 1.0) -> WindowGradient:
    r"""The mean step contribution, times `scale`:
    $g = \frac{\text{scale}}{W P K} \sum_{w,p} \text{total}_{w,p}$.

    Args:
        scale: a constant factor ($1 / \sigma^2$ for ES).

    Returns:
        A `WindowGradient` (forward-mode and ES estimators use it).
    """

    def gradient(window: Window, theta: PyTree, shared: PyTree) -> Gradient:
        result = window.run(theta)
        return Gradient(trajectory_sum(result.total, scale / window.num_steps), result, shared)

    return gradient


def backprop(window: Window, theta: PyTree, shared: PyTree) -> Gradient:
    r"""Reverse mode through the window, the incoming states held fixed:
    $g = \nabla_\theta \frac{1}{W P K} \sum_{w,p,k} \ell_{w,p,k}$.

    Args:
        window: the window to run.
        theta: the outer parameters.
        shared: the estimator's shared state, passed through.

    Returns:
        The `Gradient`.
    """

    def mean_loss(theta):
        result = window.run(theta)
        return jnp.mean(result.losses), result

    (_, result), grad = jax.value_and_grad(mean_loss, has_aux=True)(theta)
    return Gradient(grad, result, shared)


def _check_workers(workers: Worker, shape: tuple[int, int]) -> None:
    """Trace-time check that an estimator state belongs to this estimator."""
    if tuple(workers.t.shape) != shape:
        raise BadValue(
            f"`state` holds workers of shape {tuple(workers.t.shape)}, expected {shape} (num_workers, "
            "num_particles); pass the state returned by this estimator's own init."
        )


def _checked_acc(state: WindowState, rule: Rule, theta: PyTree, noise: PyTree) -> PyTree:
    """``state.acc``, after a trace-time check that it has the structure and shapes of the
    rule's fresh accumulator (one trajectory's) with the state's leading ``[W, P]`` axes."""
    one = jax.tree_util.tree_map(lambda x: x[0, 0], (state.workers.key, noise))
    expected = jax.eval_shape(rule.start, theta, one[0], one[0], one[1])[1]
    shape = tuple(state.workers.t.shape)
    got = [tuple(x.shape) for x in jax.tree_util.tree_leaves(state.acc)]
    want = [shape + tuple(x.shape) for x in jax.tree_util.tree_leaves(expected)]
    if jax.tree_util.tree_structure(state.acc) != jax.tree_util.tree_structure(expected) or got != want:
        raise BadValue(
            f"`state.acc` has leaves of shapes {got}, expected {want} for this estimator and theta; pass the "
            "state returned by this estimator's own init."
        )
    return state.acc


def windowed(
    system,
    rule: Rule | Callable[[PyTree, jax.Array], Rule],
    *,
    truncation: int,
    num_workers: int,
    num_particles: int = 1,
    gradient: WindowGradient | None = None,
    noise: Callable[[PyTree, jax.Array], PyTree] | PyTree = None,
    stagger: bool = True,
    branch: bool = False,
    shared_state: Callable[[PyTree, jax.Array], PyTree] | None = None,
) -> Estimator:
    r"""A windowed estimator: $W \times P$ trajectories advanced by windows of $K$ steps.

    Each call of `estimate` runs every trajectory $K$ = `truncation` steps under `rule`
    (resetting any that ends its episode, also mid-window) and returns `gradient`'s
    estimate; `info["steps"]` is $W P K$ (plus $W K$ unperturbed steps when branched).
    Windows of whole episodes ($K = T$, unstaggered: every trajectory starts each window
    at an episode's end) run each trajectory's episode as a plain `lax.scan` of the rule's
    step, with no reset logic inside it. Arguments are checked by the caller (the
    estimator's constructor).

    Args:
        system: the unrolled system (`init`, `step`, `horizon`).
        rule: a `Rule`, or `rule(theta, key) -> Rule` for a rule that depends on
            theta's structure (found at trace time, e.g. RTRL's sparsity).
        truncation: $K$, the steps of one window, $1 \\le K \\le T$.
        num_workers: $W$, independent trajectories, staggered over the horizon.
        num_particles: $P$, trajectories per worker that share its episode keys.
        gradient: how a window becomes the estimate; default `summed()`.
        noise: per-trajectory data the rule sees (leading $[W, P]$): a fixed pytree
            (e.g. NRES's antithetic pairing), or `noise(theta, key)`, drawn from
            `estimate`'s key every window (and at `init` from a split of its key).
        stagger: start worker $w$ at step $\\lfloor w T / W \rfloor$ of its episode,
            advanced there under the rule, so windows cover the whole horizon.
        branch: the state holds $[W, 1]$ unperturbed trajectories; every window the
            particles branch from them (accumulators from `rule.begin(None, noise)`),
            and the unperturbed ones advance with the system's own dynamics
            (truncated ES).
        shared_state: `shared_state(theta, key) -> state`, the estimator's state that
            is not per trajectory (`WindowState.shared`, e.g. DNI's synthesizer).

    Returns:
        The `Estimator`; its state is a `WindowState`.
    """
    gradient = gradient or summed()
    shape = (num_workers, num_particles)
    stored = (num_workers, 1) if branch else shape
    num_steps = num_workers * num_particles * truncation
    info_steps = num_steps + (num_workers * truncation if branch else 0)  # + the unperturbed trajectories
    unperturbed = plain_rule(system)
    # windows of whole episodes, every trajectory at an episode's end when one begins
    aligned = truncation == system.horizon and not (stagger and num_workers > 1)
    rule_for = rule if callable(rule) else (lambda theta, key: rule)
    draws = callable(noise)

    def init(theta, key):
        check_against_theta(system, theta, key)
        worker_key, start_noise = key, None if branch else noise
        if draws and not branch:
            worker_key, noise_key = jax.random.split(key)
            start_noise = noise(theta, noise_key)
        start_rule = unperturbed if branch else rule_for(theta, key)
        workers, acc = start_workers(system, start_rule, theta, worker_key, *stored, start_noise, stagger)
        return WindowState(workers, acc, () if shared_state is None else shared_state(theta, key))

    def estimate(theta, state, key):
        _check_workers(state.workers, stored)
        window_rule = rule_for(theta, state.workers.key)
        window_noise = noise(theta, key) if draws else noise
        acc = None if branch else _checked_acc(state, window_rule, theta, window_noise)
        if window_rule.begin is not None:
            acc = window_rule.begin(acc, window_noise)
        run = functools.partial(
            _run, system, window_rule, unperturbed, state.workers, acc, window_noise, truncation, branch, aligned
        )
        restart = functools.partial(_restart, system, window_rule, state.workers, window_noise)
        data_keys = jax.vmap(jax.vmap(lambda k: episode_keys(k)[1]))(state.workers.key)
        window = Window(run, state.workers.state, state.workers.t, num_steps, restart, data_keys)
        grad, result, new_shared, info = gradient(window, theta, state.shared)
        grad = jax.tree_util.tree_map(lambda g, th: g.astype(jnp.result_type(th)), grad, theta)  # theta's dtypes
        new_state = WindowState(result.workers, result.acc, new_shared)
        return Estimate(grad, new_state, window_info(result.losses, info_steps, **info))

    return Estimator(init, estimate)


def _run(
    system, rule, unperturbed, workers, acc, noise, truncation, branch, aligned, theta, start_floats=None
) -> WindowResult:
    """``Window.run``: the window at ``theta`` from ``workers`` (their float leaves
    replaced by ``start_floats`` if given); branched, the particles run from copies of
    the unperturbed trajectories, which then advance by themselves. ``aligned``: the
    windows are whole episodes (``run_windows`` then needs no resets inside the scan)."""
    if start_floats is not None:
        workers = workers._replace(state=with_inexact_leaves(workers.state, start_floats))
    run = functools.partial(run_windows, system, num_steps=truncation, aligned=aligned)
    if not branch:
        return run(rule, theta, workers, acc, noise)
    shape = jax.tree_util.tree_leaves(noise)[0].shape[:2]
    branches = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, shape + x.shape[2:]), workers)
    _, _, total, losses = run(rule, theta, branches, acc, noise)
    advanced = run(unperturbed, theta, workers, (), None)
    return WindowResult(advanced.workers, (), total, losses)


def _restart(system, rule, workers, noise, theta):
    """``Window.restart``: every trajectory (all between episodes) starts its next episode
    now; ``finish`` records the states those episodes end in, ``t = horizon``."""
    shape = workers.t.shape
    next_key, states, acc = unflatten_trajectories(
        jax.vmap(lambda w, n: episode_start(rule, theta, w, n))(
            flatten_trajectories(workers), flatten_trajectories(noise)
        ),
        shape,
    )

    def finish(final_states, losses):
        done = Worker(final_states, jnp.full(shape, system.horizon, jnp.int32), next_key)
        return WindowResult(done, acc, (), losses)

    return states, finish
