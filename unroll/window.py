"""The one worker / window / reset machinery every estimator runs on, and the builder
that makes every windowed estimator from it.

Layout. The estimator state holds ``workers x particles`` trajectories as leading
vmap axes ``[W, P]``. Particles of one worker share its episode keys (so
antithetic pairs see the same data) but each keeps its own system state.

Episodes. A ``Worker`` records ``t``, the number of steps taken in its current
episode. ``t == horizon`` means the episode is over: the *next* step first starts
a new episode (fresh key, fresh accumulator) and then runs step 0 of it. So the
step that ends an episode is always credited with the old episode's accumulator,
and the reset happens lazily, with the theta of the window that runs the new
episode. Fresh workers are created in that "episode over" state.

Estimators. An estimator states two things and ``windowed`` supplies the rest (``init``,
``estimate``, the state and shape checks, ``info``, one generic ``WindowState``):

* its accumulator, a ``Rule``: what it carries along one trajectory, how that starts
  with an episode (``start``), its per-step update and contribution (``step``), and
  optionally how a window begins (``begin``, e.g. PES adds the window's noise);
* how a window's contributions become the gradient, a ``WindowGradient``: ``summed``
  (``g = c / (W P K) sum`` of the contributions, forward-mode and ES estimators),
  ``backprop`` (reverse mode through the window), or the estimator's own.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from unroll._tree import PyTree
from unroll.system import check_against_theta, check_num_workers, check_system, check_truncation, with_inexact_leaves

# --------------------------------------------------------------------------- contracts


class Estimate(NamedTuple):
    """What ``estimate`` returns: ``grad`` (theta's structure), the next ``state`` and
    ``info`` (scalars, at least ``loss`` and ``steps``)."""

    grad: PyTree
    state: PyTree
    info: dict


class Estimator(NamedTuple):
    """A gradient estimator: a pair of pure functions, in the style of optax.

    * ``init(theta, key) -> state``: estimator and worker state;
    * ``estimate(theta, state, key) -> Estimate(grad, state, info)``: advances every
      worker by one window and returns an estimate of ``dL/dtheta`` with the structure
      of ``theta``; ``info`` holds scalars, at least ``loss`` and ``steps``.
    """

    init: Callable[[PyTree, jax.Array], PyTree]
    estimate: Callable[[PyTree, PyTree, jax.Array], Estimate]


class GradientEstimator(Protocol):
    """Anything with ``init`` and ``estimate`` as ``Estimator`` has them (``unroll.shard``,
    ``unroll.train`` and the diagnostics take any such pair)."""

    @property
    def init(self) -> Callable[[PyTree, jax.Array], PyTree]: ...

    @property
    def estimate(self) -> Callable[[PyTree, PyTree, jax.Array], Estimate]: ...


class Worker(NamedTuple):
    """One trajectory's place in its episode stream.

    ``t`` counts steps taken in the current episode; ``t == horizon`` means the
    episode is over and the next step starts a new one from ``key``.
    """

    state: PyTree
    t: jax.Array
    key: jax.Array


class EpisodeStart(NamedTuple):
    """A rule's new episode: the system's initial ``state`` and the fresh accumulator."""

    state: PyTree
    acc: PyTree


class Step(NamedTuple):
    """A rule's step: the next ``state`` and accumulator, the step's ``loss`` and its
    ``contribution`` (any pytree, summed over the window per trajectory)."""

    state: PyTree
    acc: PyTree
    loss: jax.Array
    contribution: PyTree


class Rule(NamedTuple):
    """What an estimator carries along one trajectory (its accumulator).

    * ``start(theta, key, noise_key, noise) -> EpisodeStart`` begins an episode:
      ``key`` is the episode's data key (passed to ``system.init``), ``noise_key`` an
      independent key for per-episode noise (NRES, forward gradients), ``noise`` this
      window's per-trajectory data (PES's eps);
    * ``step(theta, state, t, acc, noise) -> Step`` advances one step;
    * ``begin(acc, noise) -> acc`` (optional) updates the accumulator as a window begins,
      before any step of it (PES: ``xi + eps``); ``acc`` is ``None`` for branched windows.
    """

    start: Callable[..., EpisodeStart]
    step: Callable[..., Step]
    begin: Callable[[PyTree, PyTree], PyTree] | None = None


class AccumulatorRule(Protocol):
    """The shape of ``Rule`` (any object with these three attributes is one)."""

    @property
    def start(self) -> Callable[..., EpisodeStart]: ...

    @property
    def step(self) -> Callable[..., Step]: ...

    @property
    def begin(self) -> Callable[[PyTree, PyTree], PyTree] | None: ...


class WindowState(NamedTuple):
    """The state of every windowed estimator: the ``[W, P]`` trajectories, their
    accumulators (leading ``[W, P]`` axes) and the estimator's own ``extra`` state that is
    not per trajectory (DNI's synthesizer; ``()`` for most)."""

    workers: Worker
    acc: PyTree = ()
    extra: PyTree = ()


class WindowResult(NamedTuple):
    """One run of a window: the advanced ``workers`` and accumulators, the per-trajectory
    sums of the step contributions ``total`` (``[W, P, ...]``) and the ``losses``
    ``[W, P, K]``."""

    workers: Worker
    acc: PyTree
    total: PyTree
    losses: jax.Array

    @property
    def end_states(self) -> PyTree:
        """The trajectories' system states after the window (``[W, P, ...]``)."""
        return self.workers.state

    @property
    def end_times(self) -> jax.Array:
        """``[W, P]``: steps taken in each trajectory's episode after the window."""
        return self.workers.t


class Window(NamedTuple):
    """One window, as a ``WindowGradient`` sees it.

    * ``run(theta, start_floats=None) -> WindowResult``: runs the window at ``theta``
      (differentiable in theta), optionally with the float leaves of the incoming states
      replaced by ``start_floats`` (to differentiate through them, as DNI does);
    * ``start_states``, ``start_times``: the incoming trajectories (``[W, P, ...]``);
    * ``num_steps``: the trajectory steps the window runs, ``W P K``;
    * ``restart(theta) -> (states, finish)``: for full-episode estimators, whose
      trajectories sit between episodes: the next episodes' initial states (``[W, P,
      ...]``, differentiable in theta) and ``finish(final_states, losses) ->
      WindowResult``, the trajectories after such an episode run by other means;
    * ``episode_keys``: ``[W, P]``, the data keys ``restart`` passes to ``system.init``
      (for estimators that run the episode from its key, e.g. through ``system.episode``).
    """

    run: Callable[..., WindowResult]
    start_states: PyTree
    start_times: jax.Array
    num_steps: int
    restart: Callable[[PyTree], tuple[PyTree, Callable[[PyTree, jax.Array], WindowResult]]]
    episode_keys: jax.Array


class Gradient(NamedTuple):
    """What a ``WindowGradient`` returns: the estimate, the window it ran, the updated
    ``extra`` state and extra ``info`` scalars."""

    grad: PyTree
    window: WindowResult
    extra: PyTree = ()
    info: dict = {}


class WindowGradient(Protocol):
    """How a window's contributions become the gradient: ``(window, theta, extra) ->
    Gradient``."""

    def __call__(self, window: Window, theta: PyTree, extra: PyTree) -> Gradient: ...


# --------------------------------------------------------------------------- constructors


def keyword_only(constructor: Callable) -> Callable:
    """``constructor(system, *, ...)`` whose positional call fails at once with a
    TypeError that names the arguments to write (interface.md, section 2)."""
    names = [p.name for p in inspect.signature(constructor).parameters.values() if p.kind is p.KEYWORD_ONLY]

    @functools.wraps(constructor)
    def build(*args, **kwargs):
        if len(args) > 1:
            extra = args[1:]
            named = ", ".join(f"{name}={_short(value)}" for name, value in zip(names, extra))
            raise TypeError(
                f"`{constructor.__name__}` takes `system` and then keyword arguments only, got {len(extra)} more "
                f"positional argument(s); name the argument(s): {constructor.__name__}(system, {named})."
            )
        return constructor(*args, **kwargs)

    return build


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else "..."


def check_window(system: Any, truncation: Any, num_workers: Any) -> tuple[int, int]:
    """The construction-time checks every windowed estimator shares: the system, and the
    checked ``(truncation, num_workers)``."""
    check_system(system)
    return check_truncation(truncation, system.horizon), check_num_workers(num_workers)


# --------------------------------------------------------------------------- rules


def plain_rule(system) -> Rule:
    """The rule with no accumulator: just the system's own dynamics."""

    def start(theta, key, noise_key, noise):
        return EpisodeStart(system.init(theta, key), ())

    def step(theta, state, t, acc, noise):
        state, loss = system.step(theta, state, t)
        return Step(state, acc, loss, ())

    return Rule(start, step)


def episode_keys(worker_key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A worker's key split for its next episode: ``(key after it, data key, noise key)``."""
    next_key, key, noise_key = jax.random.split(worker_key, 3)
    return next_key, key, noise_key


def episode_start(rule: Rule, theta: PyTree, worker: Worker, noise: PyTree) -> tuple[jax.Array, PyTree, PyTree]:
    """The worker's next episode: ``(key after it, its initial state, fresh accumulator)``."""
    next_key, key, noise_key = episode_keys(worker.key)
    state, acc = rule.start(theta, key, noise_key, noise)
    return next_key, state, acc


# --------------------------------------------------------------------------- running windows


def _batched_select(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """``where(pred[i], on_true[i], on_false[i])`` along the leading axis of every leaf."""
    return jax.tree_util.tree_map(
        lambda a, b: jnp.where(pred.reshape(pred.shape + (1,) * (a.ndim - 1)), a, b), on_true, on_false
    )


def _flat(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def _unflat(tree: PyTree, shape: tuple[int, int]) -> PyTree:
    return jax.tree_util.tree_map(lambda x: x.reshape(shape + x.shape[1:]), tree)


def run_windows(
    system,
    rule: Rule,
    theta: PyTree,
    workers: Worker,
    acc: PyTree,
    noise: PyTree,
    num_steps: int,
    num_active: jax.Array | None = None,
) -> WindowResult:
    """Runs ``num_steps`` steps of every ``[W, P]`` trajectory as one ``lax.scan``.

    Theta is shared; workers, accumulators and noise carry leading ``[W, P]`` axes
    (flattened into one vmap axis inside: nested vmaps make XLA transpose the state
    every step). A trajectory whose episode is over starts a new one (fresh key, the
    rule's fresh accumulator) before its next step, also mid-window. Since
    ``num_steps <= horizon`` that happens at most once per trajectory and window, so
    the next episodes are built once, before the scan, and only in windows where some
    trajectory starts one; inside the scan the reset is a ``lax.cond`` on "does any
    trajectory start an episode at this step" (unbatched, so most steps skip it), read
    from a schedule computed before the scan (``reset_schedule``), so that the steps need
    no reduction over trajectories (on a device mesh, no collective per step).
    With ``num_active`` (``[W]``), steps ``k >= num_active[w]`` leave worker ``w``
    unchanged and contribute nothing (used to stagger workers).
    """
    horizon = system.horizon
    if num_steps > horizon:
        raise ValueError(f"a window of {num_steps} steps is longer than the horizon {horizon}.")
    shape = workers.t.shape
    workers, acc, noise = _flat(workers), _flat(acc), _flat(noise)
    if num_active is not None:
        num_active = jnp.repeat(num_active, shape[1])
    steps = num_steps if num_active is None else num_active
    fresh = jax.lax.cond(
        jnp.any(workers.t + steps > horizon),
        lambda: jax.vmap(lambda w, n: episode_start(rule, theta, w, n))(workers, noise),
        lambda: (workers.key, workers.state, acc),
    )
    body = _window_step(rule, theta, noise, fresh, horizon, num_active)
    contribution = jax.eval_shape(
        lambda w, a: jax.vmap(rule.step, in_axes=(None, 0, 0, 0, 0))(theta, w.state, w.t, a, noise)[3], workers, acc
    )
    total = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), contribution)
    resets = reset_schedule(workers.t, horizon, num_steps, num_active)
    (workers, acc, total), losses = jax.lax.scan(body, (workers, acc, total), (jnp.arange(num_steps), resets))
    return WindowResult(*_unflat((workers, acc, total, jnp.moveaxis(losses, 0, -1)), shape))


def _window_step(rule: Rule, theta, noise, fresh, horizon: int, num_active):
    """The scan body of ``run_windows`` over flattened trajectories: the reset (from the
    prebuilt ``fresh`` episodes) where the schedule says some trajectory needs it, then
    one vmapped step; inactive trajectories (``k >= num_active``) keep their carry."""
    next_key, fresh_state, fresh_acc = fresh
    step = jax.vmap(rule.step, in_axes=(None, 0, 0, 0, 0))

    def reset(carry):
        workers, acc = carry
        new = workers.t >= horizon
        state, key, acc = _batched_select(new, (fresh_state, next_key, fresh_acc), (workers.state, workers.key, acc))
        return Worker(state, jnp.where(new, 0, workers.t), key), acc

    def body(carry, xs):
        k, any_reset = xs
        before, acc_before, total = carry
        workers, acc = jax.lax.cond(any_reset, reset, lambda c: c, (before, acc_before))
        state, new_acc, loss, contribution = step(theta, workers.state, workers.t, acc, noise)
        # an accumulator keeps its dtype (theta's and the state's may differ: float32 flax params, x64 states)
        new_acc = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), new_acc, acc)
        new_workers = Worker(state, workers.t + 1, workers.key)
        if num_active is not None:  # an inactive trajectory keeps its state from before any reset
            active = k < num_active
            new_workers, new_acc = _batched_select(active, (new_workers, new_acc), (before, acc_before))
            contribution = jax.tree_util.tree_map(
                lambda c: c * active.reshape(active.shape + (1,) * (c.ndim - 1)).astype(c.dtype), contribution
            )
            loss = jnp.where(active, loss, 0.0)
        total = jax.tree_util.tree_map(jnp.add, total, contribution)
        return (new_workers, new_acc, total), loss

    return body


def reset_schedule(t: jax.Array, horizon: int, num_steps: int, num_active: jax.Array | None = None) -> jax.Array:
    """``[num_steps]`` bool: does some trajectory sit at its episode's end (``t >= horizon``)
    before step ``k`` of the window, given the times ``t`` (``[N]``) it starts with?

    A trajectory's ``t`` grows by one per active step and drops to 0 when it resets, which
    happens at most once per window (``num_steps <= horizon``), at step
    ``r = max(horizon - t, 0)``; one inactive from step ``n = num_active`` on keeps its ``t``
    from then. So it is at an episode's end at step ``k`` iff ``min(k, n) == r``: at ``k = r``
    when ``r < n``, at every ``k >= n`` when ``r == n``. One reduction over trajectories per
    window, instead of one per step.
    """
    reset_at = jnp.maximum(horizon - t, 0)
    active = jnp.full_like(t, num_steps) if num_active is None else num_active
    at = jnp.where(reset_at < active, reset_at, num_steps)  # num_steps: no such step, dropped
    hits = jnp.zeros(num_steps, jnp.int32).at[at].add(1, mode="drop") > 0
    frozen_from = jnp.min(jnp.where(reset_at == active, active, num_steps), initial=num_steps)
    return hits | (jnp.arange(num_steps) >= frozen_from)


def stagger_offsets(horizon: int, num_workers: int) -> jax.Array:
    """Worker ``w`` starts ``floor(w * horizon / num_workers)`` steps into its episode."""
    return (jnp.arange(num_workers) * horizon) // num_workers


def start_workers(
    system,
    rule: Rule,
    theta: PyTree,
    key: jax.Array,
    num_workers: int,
    num_particles: int,
    noise: PyTree = None,
    stagger: bool = True,
) -> tuple[Worker, PyTree]:
    """Creates ``[W, P]`` trajectories whose episodes are over (the first step of the
    first window starts one with the theta it is given), then, with ``stagger``,
    advances worker ``w`` by ``stagger_offsets(horizon, W)[w]`` steps with the
    estimator's own rule at ``theta``, so the workers' windows cover the whole
    horizon and their accumulators hold the whole history of their episodes.

    ``noise`` is the per-trajectory data the rule sees while staggering
    (leading axes ``[W, P]``), e.g. the perturbations of a first, longer window.
    """
    worker_keys = jax.random.split(key, num_workers)

    def fresh(worker_key, noise):
        _, episode_key, noise_key = episode_keys(worker_key)
        state, acc = rule.start(theta, episode_key, noise_key, noise)
        return Worker(state, jnp.asarray(system.horizon, jnp.int32), worker_key), acc

    per_worker = jax.vmap(fresh, in_axes=(None, 0), axis_size=num_particles)  # particles share the key
    workers, acc = jax.vmap(per_worker, in_axes=(0, 0), axis_size=num_workers)(worker_keys, noise)
    if stagger and num_workers > 1:
        offsets = stagger_offsets(system.horizon, num_workers)
        max_offset = int((num_workers - 1) * system.horizon // num_workers)
        workers, acc, _, _ = run_windows(system, rule, theta, workers, acc, noise, max_offset, offsets)
    return workers, acc


def trajectory_sum(total: PyTree, scale: float) -> PyTree:
    """``scale * sum`` over the ``[W, P]`` axes of per-trajectory contributions."""
    return jax.tree_util.tree_map(lambda s: scale * jnp.sum(s, axis=(0, 1)), total)


def window_info(losses: jax.Array, steps: int, **extra) -> dict:
    """The ``info`` dict: mean loss of the steps unrolled and the number of steps."""
    info = {"loss": jnp.mean(losses), "steps": jnp.asarray(steps, jnp.int32)}
    info.update(extra)
    return info


# --------------------------------------------------------------------------- window gradients


def summed(scale: float = 1.0) -> WindowGradient:
    """``g = scale / (W P K) sum_{w,p} total_{w,p}``: the mean step contribution, times
    ``scale`` (``1 / sigma^2`` for ES)."""

    def gradient(window: Window, theta: PyTree, extra: PyTree) -> Gradient:
        result = window.run(theta)
        return Gradient(trajectory_sum(result.total, scale / window.num_steps), result, extra)

    return gradient


def backprop(window: Window, theta: PyTree, extra: PyTree) -> Gradient:
    """``g = grad_theta (1/(W P K)) sum_{w,p,k} l_{w,p,k}``, reverse mode through the
    window, the incoming states held fixed."""

    def mean_loss(theta):
        result = window.run(theta)
        return jnp.mean(result.losses), result

    (_, result), grad = jax.value_and_grad(mean_loss, has_aux=True)(theta)
    return Gradient(grad, result, extra)


# --------------------------------------------------------------------------- the builder


def _check_workers(workers: Worker, shape: tuple[int, int]) -> None:
    """Trace-time check that an estimator state belongs to this estimator."""
    if tuple(workers.t.shape) != shape:
        raise ValueError(
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
        raise ValueError(
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
    extra: Callable[[PyTree, jax.Array], PyTree] | None = None,
) -> Estimator:
    """A windowed estimator: ``num_workers x num_particles`` trajectories advanced by
    windows of ``truncation`` steps under ``rule``, the gradient from ``gradient``
    (default ``summed()``). Arguments are checked by the caller.

    * ``rule``: a ``Rule``, or ``rule(theta, key) -> Rule`` for rules that depend on
      theta's structure (found at trace time, e.g. RTRL's sparsity);
    * ``noise``: per-trajectory data (leading ``[W, P]``) the rule sees: a pytree (fixed,
      e.g. NRES's antithetic pairing) or ``noise(theta, key)``, drawn from ``estimate``'s
      key every window (and at ``init`` from a split of its key, for the stagger);
    * ``stagger``: workers start spread over the horizon (``start_workers``);
    * ``branch``: the state holds ``[W, 1]`` unperturbed trajectories; every window the
      particles branch from them (accumulators from ``rule.begin(None, noise)``) and the
      unperturbed trajectories advance with the system's own dynamics (truncated ES);
    * ``extra(theta, key) -> extra``: estimator state besides the trajectories.
    """
    gradient = gradient or summed()
    shape = (num_workers, num_particles)
    stored = (num_workers, 1) if branch else shape
    num_steps = num_workers * num_particles * truncation
    info_steps = num_steps + (num_workers * truncation if branch else 0)  # + the unperturbed trajectories
    central = plain_rule(system)
    rule_for = rule if callable(rule) else (lambda theta, key: rule)
    draws = callable(noise)

    def init(theta, key):
        check_against_theta(system, theta, key)
        worker_key, start_noise = key, None if branch else noise
        if draws and not branch:
            worker_key, noise_key = jax.random.split(key)
            start_noise = noise(theta, noise_key)
        start_rule = central if branch else rule_for(theta, key)
        workers, acc = start_workers(system, start_rule, theta, worker_key, *stored, start_noise, stagger)
        return WindowState(workers, acc, () if extra is None else extra(theta, key))

    def estimate(theta, state, key):
        _check_workers(state.workers, stored)
        active = rule_for(theta, state.workers.key)
        window_noise = noise(theta, key) if draws else noise
        acc = None if branch else _checked_acc(state, active, theta, window_noise)
        if active.begin is not None:
            acc = active.begin(acc, window_noise)
        run = functools.partial(_run, system, active, central, state.workers, acc, window_noise, truncation, branch)
        restart = functools.partial(_restart, system, active, state.workers, window_noise)
        data_keys = jax.vmap(jax.vmap(lambda k: episode_keys(k)[1]))(state.workers.key)
        window = Window(run, state.workers.state, state.workers.t, num_steps, restart, data_keys)
        grad, result, new_extra, info = gradient(window, theta, state.extra)
        grad = jax.tree_util.tree_map(lambda g, th: g.astype(jnp.result_type(th)), grad, theta)  # theta's dtypes
        new_state = WindowState(result.workers, result.acc, new_extra)
        return Estimate(grad, new_state, window_info(result.losses, info_steps, **info))

    return Estimator(init, estimate)


def _run(system, rule, central, workers, acc, noise, truncation, branch, theta, start_floats=None) -> WindowResult:
    """``Window.run``: the window at ``theta`` from ``workers`` (their float leaves
    replaced by ``start_floats`` if given); branched, the particles run from copies of
    the unperturbed trajectories, which then advance by themselves."""
    if start_floats is not None:
        workers = workers._replace(state=with_inexact_leaves(workers.state, start_floats))
    if not branch:
        return run_windows(system, rule, theta, workers, acc, noise, truncation)
    shape = jax.tree_util.tree_leaves(noise)[0].shape[:2]
    branches = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, shape + x.shape[2:]), workers)
    _, _, total, losses = run_windows(system, rule, theta, branches, acc, noise, truncation)
    advanced = run_windows(system, central, theta, workers, (), None, truncation)
    return WindowResult(advanced.workers, (), total, losses)


def _restart(system, rule, workers, noise, theta):
    """``Window.restart``: every trajectory (all between episodes) starts its next episode
    now; ``finish`` records the states those episodes end in, ``t = horizon``."""
    shape = workers.t.shape
    next_key, states, acc = _unflat(
        jax.vmap(lambda w, n: episode_start(rule, theta, w, n))(_flat(workers), _flat(noise)), shape
    )

    def finish(final_states, losses):
        done = Worker(final_states, jnp.full(shape, system.horizon, jnp.int32), next_key)
        return WindowResult(done, acc, (), losses)

    return states, finish
