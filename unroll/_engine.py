"""The trajectory engine: workers, episode resets and windows, run as one `lax.scan`.

Internal: estimators reach it through `unroll.builder.windowed`. The types it runs on
(`Worker`, `Rule`, `WindowResult`) are in `unroll.contract`, which states the layout
($[W, P]$ trajectories) and the episode rule (lazy resets at `t == horizon`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from unroll._errors import BadValue
from unroll._tree import PyTree
from unroll.contract import Rule, WindowResult, Worker


def episode_keys(worker_key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A worker's key split for its next episode: ``(key after it, data key, noise key)``."""
    next_key, key, noise_key = jax.random.split(worker_key, 3)
    return next_key, key, noise_key


def episode_start(rule: Rule, theta: PyTree, worker: Worker, noise: PyTree) -> tuple[jax.Array, PyTree, PyTree]:
    """The worker's next episode: ``(key after it, its initial state, fresh accumulator)``."""
    next_key, key, noise_key = episode_keys(worker.key)
    state, acc = rule.start(theta, key, noise_key, noise)
    return next_key, state, acc


def batched_select(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """`where(pred, on_true, on_false)` per trajectory: `pred` has the leaves' leading axes
    (`[N]` flattened, or `[W, P]`, as a `Rule.begin` sees them), broadcast over the rest."""
    return jax.tree_util.tree_map(
        lambda a, b: jnp.where(pred.reshape(pred.shape + (1,) * (a.ndim - pred.ndim)), a, b), on_true, on_false
    )


def flatten_trajectories(tree: PyTree) -> PyTree:
    """Merges the leading $[W, P]$ axes of every leaf into one (the engine vmaps over one axis)."""
    return jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def unflatten_trajectories(tree: PyTree, shape: tuple[int, int]) -> PyTree:
    """Splits the leading axis of every leaf back into `shape` $= (W, P)$."""
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
    aligned: bool = False,
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

    ``aligned`` says that the window is aligned to episodes: every trajectory sits at
    its episode's end (``t == horizon``, as the states of an estimator whose windows are
    whole episodes always do). None can then end inside the window, so each runs as one
    plain episode (``aligned_trajectory``): no reset, no schedule, no time or key carried
    (the same numbers; less work per step, which shows where a step is cheap).
    """
    horizon = system.horizon
    if num_steps > horizon:
        raise BadValue(f"a window of {num_steps} steps is longer than the horizon {horizon}.")
    shape = workers.t.shape
    workers, acc, noise = flatten_trajectories(workers), flatten_trajectories(acc), flatten_trajectories(noise)
    if aligned:
        run = functools.partial(aligned_trajectory, rule, theta, num_steps=num_steps)
        return WindowResult(*unflatten_trajectories(over_trajectories(run, workers, acc, noise), shape))
    if num_active is not None:
        num_active = jnp.repeat(num_active, shape[1])
    carry, xs, reset = _scheduled_start(rule, theta, workers, acc, noise, horizon, num_steps, num_active)
    body = _window_step(rule, theta, noise, reset, num_active)
    workers, acc = carry
    contribution = jax.eval_shape(
        lambda w, a: jax.vmap(rule.step, in_axes=(None, 0, 0, 0, 0))(theta, w.state, w.t, a, noise)[3], workers, acc
    )
    total = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), contribution)
    (workers, acc, total), losses = jax.lax.scan(body, (workers, acc, total), xs)
    return WindowResult(*unflatten_trajectories((workers, acc, total, jnp.moveaxis(losses, 0, -1)), shape))


def over_trajectories(fn: Callable[..., PyTree], *trees: PyTree) -> PyTree:
    """``fn`` over the flattened trajectories (the leading axis of every leaf of ``trees``):
    vmapped, or, for a single trajectory, called on it alone, its axis dropped and restored
    (a batch axis of size 1 costs XLA a layout copy in every step). By reshapes: restored
    by a broadcast, the axis would be summed over in reverse mode, and XLA would then pass
    the loss's cotangent into the backward loop as an array, not a constant."""
    if jax.tree_util.tree_leaves(trees)[0].shape[0] > 1:
        return jax.vmap(fn)(*trees)
    alone = fn(*jax.tree_util.tree_map(lambda x: x.reshape(x.shape[1:]), trees))
    return jax.tree_util.tree_map(lambda x: x.reshape((1,) + x.shape), alone)


def aligned_trajectory(
    rule: Rule, theta: PyTree, worker: Worker, acc: PyTree, noise: PyTree, *, num_steps: int
) -> tuple[Worker, PyTree, PyTree, jax.Array]:
    """One trajectory's aligned window, ``(worker, acc, total, losses)``: it sits at an
    episode's end, so it starts the next episode (fresh key, the rule's fresh accumulator,
    in the dtypes of ``acc``, as the scheduled reset keeps them) and runs its first
    ``num_steps`` steps, ``t = 0, 1, ...``, as one ``lax.scan`` of the rule's step."""
    next_key, state, fresh = episode_start(rule, theta, worker, noise)
    fresh = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), fresh, acc)
    times = jnp.arange(num_steps, dtype=worker.t.dtype)
    contribution = jax.eval_shape(rule.step, theta, state, times[0], fresh, noise)[3]
    total = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), contribution)

    def body(carry, t):
        state, acc, total = carry
        state, new_acc, loss, contribution = rule.step(theta, state, t, acc, noise)
        # an accumulator keeps its dtype (theta's and the state's may differ: float32 flax params, x64 states)
        new_acc = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), new_acc, acc)
        return (state, new_acc, jax.tree_util.tree_map(jnp.add, total, contribution)), loss

    (state, acc, total), losses = jax.lax.scan(body, (state, fresh, total), times)
    return Worker(state, jnp.asarray(num_steps, worker.t.dtype), next_key), acc, total, losses


def _scheduled_start(rule: Rule, theta, workers: Worker, acc, noise, horizon: int, num_steps: int, num_active):
    """The general window's ``(carry, xs, reset)``: the incoming trajectories, the scan's
    ``(k, reset schedule)`` and the reset from the next episodes, built before the scan
    in windows where some trajectory starts one."""
    steps = num_steps if num_active is None else num_active
    fresh = jax.lax.cond(
        jnp.any(workers.t + steps > horizon),
        lambda: jax.vmap(lambda w, n: episode_start(rule, theta, w, n))(workers, noise),
        lambda: (workers.key, workers.state, acc),
    )
    next_key, fresh_state, fresh_acc = fresh

    def reset(carry):
        workers, acc = carry
        new = workers.t >= horizon
        state, key, acc = batched_select(new, (fresh_state, next_key, fresh_acc), (workers.state, workers.key, acc))
        return Worker(state, jnp.where(new, 0, workers.t), key), acc

    resets = reset_schedule(workers.t, horizon, num_steps, num_active)
    return (workers, acc), (jnp.arange(num_steps), resets), reset


def _window_step(rule: Rule, theta, noise, reset, num_active):
    """The scan body of ``run_windows`` over flattened trajectories: ``reset`` where the
    schedule says some trajectory needs it, then one vmapped step; inactive trajectories
    (``k >= num_active``) keep their carry."""
    step = jax.vmap(rule.step, in_axes=(None, 0, 0, 0, 0))

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
            new_workers, new_acc = batched_select(active, (new_workers, new_acc), (before, acc_before))
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
