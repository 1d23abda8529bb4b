"""Property-based tests (hypothesis): exact identities between estimators on random small systems.

Hypothesis draws the *structure* of a problem, not only its numbers: the pytree of
theta and the pytree of the system state (a bare array, a tuple, a list, a dict or a
nested mix of 1-3 float64 leaves of shape ``()``, ``[d]`` or ``[d1, d2]``, ``d <= 3``,
sometimes with empty subtrees), the horizon, the truncation, the worker count, the
PRNG key (raw ``PRNGKey`` or typed ``key``) and switches for how ``init`` depends on
theta and on its key and for a noise key kept in the state. ``make_problem`` turns the
drawn spec into a system: the step flattens every state and theta leaf into vectors
``s [N]`` and ``p [P]``, mixes them with fixed random matrices drawn from a numpy seed
(optionally with a random sparsity mask, which changes RTRL's compressed layout),

    s_0 = s0 (+ tanh(E p) if init uses theta) (+ 0.5 * normal(key) if it uses its key),
    s' = tanh(A s + B p + (C p) * s + x_t)  (+ 0.1 * noise from the state's key),
    loss_t = 0.5 (r . s' - y_t)^2 + 0.5 (q . p)^2 (1 + t / T),

and splits ``s'`` back into the state's leaves. Each drawn system is checked at two
points ``(theta, init key)``: the compiled code is reused, so the second costs nothing.

Every identity below holds in exact arithmetic, so it is checked in float64 with
``rtol=1e-9, atol=1e-11``: the two sides only differ by rounding of the same quantities
computed in another order (forward vs reverse accumulation, another summation order),
~1e-15 relative here. (Beware float32 leaks: in JAX ``int32 t / T`` is float32 even with
x64, which alone gave 2e-8 relative differences between a compiled and an eager unroll;
the system keeps its per-step weights in a float64 table.)

Workers and keys, as ``unroll.builder`` makes them: ``init(theta, key)`` gives worker
``w`` the key ``wk = split(key, W)[w]``; each episode of that worker starts from
``next, data, noise = split(wk, 3)``, runs ``system.init(theta, data)`` and continues the
chain from ``next``. Worker ``w`` is staggered ``floor(w T / W)`` steps into its first
episode (steps taken by ``init``, out of any window).

Cost and reproducibility. Every example is a new system, hence one XLA compile of all
its estimators and references together (~1.5-4 s on a shared 2-core machine at the opt
level 0 conftest sets); that, not the arithmetic, bounds the example count:
``UNROLL_PROPERTY_EXAMPLES`` examples per property (default 6, the file then takes about
a minute and a half; raise it for a deeper run). ``derandomize=True`` and no example
database, so every run (CI included) checks the same examples. The first example of each
property is hypothesis' simplest: ``T = 1``, scalar leaves.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import unroll

RTOL, ATOL = 1e-9, 1e-11

# one profile for every property: fixed examples, no database, no deadline (compiles
# dominate and vary with the machine's load); see "Cost and reproducibility" above
EXAMPLES = int(os.environ.get("UNROLL_PROPERTY_EXAMPLES", "6"))
PROPERTY = {"deadline": None, "derandomize": True, "database": None, "print_blob": True}


# --------------------------------------------------------------------------- random structures


class Leaf:
    """A placeholder for one array leaf of a drawn pytree (not itself a pytree node)."""

    __slots__ = ("shape",)

    def __init__(self, shape):
        self.shape = tuple(shape)

    def __repr__(self):
        return f"Leaf({self.shape})"


SHAPES = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


@st.composite
def tree_specs(draw, max_leaves: int = 3):
    """A pytree of 1..max_leaves ``Leaf``s in one of several container forms."""
    leaves = [Leaf(s) for s in draw(st.lists(SHAPES, min_size=1, max_size=max_leaves))]
    form = draw(st.sampled_from(["array", "tuple", "list", "dict", "nested"]))
    if form == "array" and len(leaves) == 1:
        return leaves[0]
    if form in ("array", "tuple"):
        return tuple(leaves)
    if form == "list":
        return list(leaves)
    if form == "dict":
        return {f"k{i}": leaf for i, leaf in enumerate(leaves)}
    # nested: a dict holding a leaf, a tuple of the rest (maybe empty) and an empty dict
    return {"head": leaves[0], "rest": (list(leaves[1:]), {}), "z": {}}


class Spec(NamedTuple):
    theta: object  # pytree of Leaf
    state: object  # pytree of Leaf
    horizon: int
    seed: int
    init_uses_theta: bool
    init_uses_key: bool
    noisy: bool  # a PRNG key in the state drives per-step noise
    density: float  # fraction of nonzero entries of the mixing matrices
    typed_key: bool  # jax.random.key (typed) or jax.random.PRNGKey (raw uint32)
    key_seed: int


@st.composite
def specs(draw, min_horizon: int = 1, max_horizon: int = 8, key_free: bool = False):
    """A random problem; ``key_free`` draws only systems whose episodes are all the same
    (``init`` ignores its key, no noise key in the state)."""
    return Spec(
        theta=draw(tree_specs()),
        state=draw(tree_specs()),
        horizon=draw(st.integers(min_horizon, max_horizon)),
        seed=draw(st.integers(0, 2**32 - 1)),
        init_uses_theta=draw(st.booleans()),
        init_uses_key=False if key_free else draw(st.booleans()),
        noisy=False if key_free else draw(st.booleans()),
        density=draw(st.sampled_from([1.0, 0.5])),
        typed_key=draw(st.booleans()),
        key_seed=draw(st.integers(0, 2**31 - 1)),
    )


def _size(shape) -> int:
    return int(np.prod(shape, dtype=int))


def make_problem(spec: Spec):
    """``(system, points)`` for a drawn ``Spec`` (see the module docstring); ``points`` is a
    list of ``(theta, init_key)`` at which to check the identities: every compiled
    estimator is run at each (a new point costs no compile, a new system does)."""
    rng = np.random.default_rng(spec.seed)
    theta_leaves, theta_def = jax.tree_util.tree_flatten(spec.theta)
    state_leaves, state_def = jax.tree_util.tree_flatten(spec.state)
    theta_shapes = [leaf.shape for leaf in theta_leaves]
    state_shapes = [leaf.shape for leaf in state_leaves]
    P, N, T = sum(map(_size, theta_shapes)), sum(map(_size, state_shapes)), spec.horizon
    theta = jax.tree_util.tree_unflatten(
        theta_def, [jnp.asarray(0.5 * rng.normal(size=s), jnp.float64) for s in theta_shapes]
    )
    mask = lambda *shape: rng.random(shape) < spec.density
    A = 0.9 * rng.normal(size=(N, N)) * mask(N, N) / np.sqrt(N)
    B = rng.normal(size=(N, P)) * mask(N, P) / np.sqrt(P)
    C = 0.3 * rng.normal(size=(N, P)) * mask(N, P)
    X = 0.5 * rng.normal(size=(T, N))
    r, q, y = rng.normal(size=N), 0.3 * rng.normal(size=P), rng.normal(size=T)
    s0, E = 0.5 * rng.normal(size=N), 0.5 * rng.normal(size=(N, P))
    splits = np.cumsum([_size(s) for s in state_shapes])[:-1]
    weight = 1.0 + np.arange(T) / T  # float64 (int32 t / T would be float32 in JAX)

    def flat(tree):
        return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])

    def unflat_state(v):
        parts = jnp.split(v, splits)
        return jax.tree_util.tree_unflatten(state_def, [x.reshape(s) for x, s in zip(parts, state_shapes)])

    def init(theta, key):
        s = jnp.asarray(s0)
        if spec.init_uses_theta:
            s = s + jnp.tanh(E @ flat(theta))
        if spec.init_uses_key:
            s = s + 0.5 * jax.random.normal(key, (N,), jnp.float64)
        state = unflat_state(s)
        return (state, jax.random.fold_in(key, 7)) if spec.noisy else state

    def step(theta, state, t):
        if spec.noisy:
            state, noise_key = state
        s, p = flat(state), flat(theta)
        s = jnp.tanh(A @ s + B @ p + (C @ p) * s + jnp.take(X, t, axis=0))
        if spec.noisy:
            noise_key, sub = jax.random.split(noise_key)
            s = s + 0.1 * jax.random.normal(sub, (N,), jnp.float64)
        loss = 0.5 * (r @ s - jnp.take(y, t)) ** 2 + 0.5 * (q @ p) ** 2 * jnp.take(weight, t)
        new_state = unflat_state(s)
        return ((new_state, noise_key) if spec.noisy else new_state), loss

    make_key = jax.random.key if spec.typed_key else jax.random.PRNGKey
    # a second point (larger theta: saturating tanh, another key), free for the compiled code
    theta2 = jax.tree_util.tree_map(lambda x: jnp.asarray(1.5 * rng.normal(size=x.shape), jnp.float64), theta)
    points = [(theta, make_key(spec.key_seed)), (theta2, make_key(spec.key_seed + 1))]
    return unroll.System(init=init, step=step, horizon=T), points


# --------------------------------------------------------------------------- running and references


def windows(est, num_windows: int):
    """``run(theta, key) -> (grads, infos, state)``: ``est.init`` then ``num_windows``
    consecutive ``est.estimate`` calls at a fixed theta (same key each call), as one
    ``lax.scan`` over windows; ``grads`` and ``infos`` have a leading window axis. Meant to
    be jitted together with the other estimators of a test: one compile per drawn system."""

    def run(theta, key):
        state = est.init(theta, key)

        def body(state, _):
            grad, state, info = est.estimate(theta, state, key)
            return state, (grad, info)

        state, (grads, infos) = jax.lax.scan(body, state, None, length=num_windows)
        return grads, infos, state

    return run


def window(tree, i):
    """Window ``i`` of a tree with a leading window axis."""
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def episode_keys(key, num_workers: int, worker: int, count: int):
    """The data keys of the first ``count`` episodes of ``worker``, stacked (see the module
    docstring)."""
    chain = jax.random.split(key, num_workers)[worker]
    keys = []
    for _ in range(count):
        chain, data, _ = jax.random.split(chain, 3)
        keys.append(data)
    return jnp.stack(keys)


def offsets(horizon: int, num_workers: int) -> list[int]:
    """Worker ``w`` starts ``floor(w T / W)`` steps into its first episode."""
    return [(w * horizon) // num_workers for w in range(num_workers)]


def plain_losses(system, theta, key) -> list:
    """The per-step losses of one episode from ``system.init(theta, key)``: a plain Python
    loop over ``system.step`` (no unroll machinery; differentiable)."""
    state, losses = system.init(theta, key), []
    for t in range(system.horizon):
        state, loss = system.step(theta, state, jnp.int32(t))
        losses.append(loss)
    return losses


def reference_gradient(system, theta, key):
    """Full BPTT by hand: ``jax.grad`` of ``(1/T) sum_t l_t`` through ``plain_losses``."""
    return jax.grad(lambda theta: sum(plain_losses(system, theta, key)) / system.horizon)(theta)


def reference_gradients(system, theta, keys):
    """``reference_gradient`` of each of the stacked episode ``keys`` (leading axis)."""
    return jax.vmap(lambda key: reference_gradient(system, theta, key))(keys)


def _plain(x):
    x = jnp.asarray(x)
    return np.asarray(jax.random.key_data(x)) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else np.asarray(x)


def assert_trees_close(actual, desired, what="", rtol=RTOL, atol=ATOL):
    """Same structure, shapes and dtypes; float leaves to ``rtol/atol``, the rest (keys,
    counters) exactly."""
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(desired), what
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree_util.tree_leaves(desired)):
        where = f"{what}{jax.tree_util.keystr(path)}"
        a, b = _plain(a), _plain(b)
        assert a.shape == b.shape and a.dtype == b.dtype, f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        if np.issubdtype(a.dtype, np.inexact):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=where)
        else:
            np.testing.assert_array_equal(a, b, err_msg=where)


# --------------------------------------------------------------------------- 1. truncated BPTT, K = T


@settings(max_examples=EXAMPLES, **PROPERTY)
@given(spec=specs(), num_windows=st.integers(1, 3))
def test_truncated_bptt_whole_episode_window_is_full_bptt(spec, num_windows):
    """Identity 1, one worker: ``truncated_bptt(truncation=T, num_workers=1)`` == ``full_bptt``
    window by window (gradient, loss, steps, worker state), and both == full BPTT by hand
    (``reference_gradient``) of the episode with the worker's i-th data key.

    Why exact: one unstaggered worker starts every window at an episode end (``t == T``), so
    a window of ``T`` steps is exactly one whole episode, its ``init`` included: nothing is
    held fixed, nothing truncated. Both estimators draw the i-th episode's key from the same
    worker key chain, so window ``i`` is episode ``i``'s gradient (any init, keys, noise)."""
    system, points = make_problem(spec)
    T = system.horizon
    run = jax.jit(
        lambda theta, key: (  # the estimators and the references: one compile
            windows(unroll.truncated_bptt(system, truncation=T), num_windows)(theta, key),
            windows(unroll.full_bptt(system), num_windows)(theta, key),
            reference_gradients(system, theta, episode_keys(key, 1, 0, num_windows)),
        )
    )
    for p, (theta, key) in enumerate(points):
        (trunc, trunc_info, trunc_state), (full, full_info, full_state), by_hand = run(theta, key)
        for i in range(num_windows):
            what = f"point {p} window {i}: "
            assert_trees_close(window(trunc, i), window(full, i), what + "truncated vs full ")
            assert_trees_close(window(full, i), window(by_hand, i), what + "full vs by hand ")
            np.testing.assert_allclose(trunc_info["loss"][i], full_info["loss"][i], rtol=RTOL, atol=ATOL)
            assert int(trunc_info["steps"][i]) == int(full_info["steps"][i]) == T
        assert_trees_close(trunc_state, full_state, f"point {p}: worker state ")


@settings(max_examples=EXAMPLES, **PROPERTY)
@given(spec=specs(key_free=True), num_workers=st.integers(2, 4))
def test_staggered_whole_episode_window_is_full_bptt_minus_the_cut(spec, num_workers):
    """Identity 1, ``W`` staggered workers: ``truncated_bptt(truncation=T, num_workers=W)``
    == full BPTT's gradient ``G`` minus the mean over workers of the path cut at the
    worker's offset ``o = floor(w T / W)``.

    Why exact: a window of ``T`` steps of worker ``w`` runs steps ``o..T-1`` from the state
    ``s_o`` the previous window (or ``init``'s stagger) left, held fixed, then steps
    ``0..o-1`` of the next episode, its ``init`` differentiated. On a system whose episodes
    are all the same (no key in ``init`` or in the state; drawn so here) these are the steps
    of one episode, and the only derivative missing is the one through ``s_o``:

        g_w = G - (1/T) d/dtheta [sum_{t>=o} l_t(theta held fixed, s_o(theta))]   (0 for o = 0)

    and the estimate is ``(1/W) sum_w g_w``, in every window (each worker keeps its phase).
    ``G`` and the cut are computed by hand (plain Python unrolls, ``stop_gradient`` on the
    suffix's theta for the cut)."""
    system, points = make_problem(spec)
    T, W = system.horizon, num_workers

    def cut(theta, key, o):
        state = system.init(theta, key)
        for t in range(o):
            state, _ = system.step(theta, state, jnp.int32(t))
        fixed, total = jax.lax.stop_gradient(theta), 0.0
        for t in range(o, T):
            state, loss = system.step(fixed, state, jnp.int32(t))
            total = total + loss
        return total

    def check(theta, key):  # the estimator and the reference: one compile
        full = reference_gradient(system, theta, key)
        cuts = [jax.grad(cut)(theta, key, o) for o in offsets(T, W) if o > 0]
        want = jax.tree_util.tree_map(lambda g, *c: g - sum(c) / (W * T), full, *cuts)
        return windows(unroll.truncated_bptt(system, truncation=T, num_workers=W), 2)(theta, key), want

    run = jax.jit(check)
    for p, (theta, key) in enumerate(points):
        (grads, infos, _), want = run(theta, key)
        for i in range(2):
            assert_trees_close(window(grads, i), want, f"point {p} window {i}: ")
            assert int(infos["steps"][i]) == W * T


# --------------------------------------------------------------------------- 2. RTRL


@st.composite
def rtrl_cases(draw):
    num_workers = draw(st.integers(1, 3))
    spec = draw(specs(key_free=num_workers > 1))
    truncation = draw(st.integers(1, spec.horizon))
    sparse = draw(st.sampled_from([None, False, True]))
    return spec, truncation, num_workers, sparse


@settings(max_examples=EXAMPLES, **PROPERTY)
@given(case=rtrl_cases())
def test_rtrl_windows_average_to_full_bptt(case):
    """Identity 2: the mean of ``rtrl(truncation=K, num_workers=W)``'s estimates over
    ``n = lcm(T, K) / K`` consecutive windows == full BPTT's episode gradient.

    Why exact: RTRL's window estimate is ``(1/K) sum_k dl_{t+k}/dtheta`` with each step's
    *total* derivative through its whole episode (the influence ``ds/dtheta`` is exact,
    carried across windows, restarted with episodes). So the mean of the ``n`` windows is
    the mean total derivative over the ``n K`` steps they cover:

    * one worker covers exactly episodes ``1..m`` (``m = n K / T``), whatever their keys:
      the mean == the mean of the full gradients of the worker's first ``m`` episodes;
    * ``W > 1`` staggered workers: worker ``w`` covers steps ``o_w..T-1`` of one episode,
      whole episodes, then steps ``0..o_w-1`` of another; on a system whose episodes are
      all the same (drawn so here) that is whole episodes: the mean == the episode gradient.

    The full gradients are full BPTT by hand (``reference_gradient``). Checked with the
    dense influence, the compressed (colour-grouped) one, and the automatic choice; the
    drawn sparsity of the mixing matrices changes the colouring."""
    spec, K, W, sparse = case
    system, points = make_problem(spec)
    T = system.horizon
    n = math.lcm(T, K) // K

    def check(theta, key):  # the estimator and the reference: one compile
        data_keys = episode_keys(key, 1, 0, n * K // T) if W == 1 else key[None]
        mean = lambda tree: jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), tree)
        grads, infos, _ = windows(unroll.rtrl(system, truncation=K, num_workers=W, sparse=sparse), n)(theta, key)
        return mean(grads), infos, mean(reference_gradients(system, theta, data_keys))

    run = jax.jit(check)
    for p, (theta, key) in enumerate(points):
        mean, infos, want = run(theta, key)
        assert_trees_close(mean, want, f"point {p}: ")
        assert int(infos["steps"][-1]) == W * K


# --------------------------------------------------------------------------- 3. checkpointed BPTT


@st.composite
def checkpoint_cases(draw):
    spec = draw(specs())
    return spec, draw(st.integers(1, spec.horizon + 2))


@settings(max_examples=EXAMPLES, **PROPERTY)
@given(case=checkpoint_cases())
def test_checkpointed_bptt_is_full_bptt(case):
    """Identity 3: ``checkpointed_bptt(memory_budget=m)`` == ``full_bptt`` for budgets
    ``1 <= m <= T + 2`` (below, at and above the horizon), in gradient, reported loss,
    steps and the worker state handed to the next call, over two consecutive calls (so the
    second episode, the next key of the chain, too).

    Why exact: the schedule only decides which states are stored and which recomputed;
    a recomputation replays the same deterministic steps from the same stored state (noise
    keys live in the state), and the backward pass applies the same per-step vjps, in the
    same order, from the same cotangents, plus ``init``'s vjp."""
    spec, budget = case
    system, points = make_problem(spec)
    run = jax.jit(
        lambda theta, key: (
            windows(unroll.checkpointed_bptt(system, memory_budget=budget), 2)(theta, key),
            windows(unroll.full_bptt(system), 2)(theta, key),
        )
    )
    for p, (theta, key) in enumerate(points):
        (ckpt, ckpt_info, ckpt_state), (full, full_info, full_state) = run(theta, key)
        assert_trees_close(ckpt, full, f"point {p}: gradients ")
        np.testing.assert_allclose(ckpt_info["loss"], full_info["loss"], rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(ckpt_info["steps"], full_info["steps"])
        assert_trees_close(ckpt_state, full_state, f"point {p}: worker state ")


# --------------------------------------------------------------------------- 4. window losses


EXACT_LOSS_ESTIMATORS = {
    # estimators that unroll the system's own trajectories at theta (no perturbation), so the
    # losses they report are primal values of system.step, whatever they accumulate
    "truncated_bptt": lambda system, K, W: unroll.truncated_bptt(system, truncation=K, num_workers=W),
    "rtrl": lambda system, K, W: unroll.rtrl(system, truncation=K, num_workers=W),
    "uoro": lambda system, K, W: unroll.uoro(system, truncation=K, num_workers=W),
    "forward_gradient": lambda system, K, W: unroll.forward_gradient(
        system, truncation=K, num_workers=W, num_directions=2
    ),
}


@st.composite
def loss_cases(draw):
    spec = draw(specs())
    return (
        spec,
        draw(st.sampled_from(sorted(EXACT_LOSS_ESTIMATORS))),
        draw(st.integers(1, spec.horizon)),  # truncation
        draw(st.integers(1, 3)),  # workers
        draw(st.integers(1, 3)),  # windows
    )


@settings(max_examples=EXAMPLES, **PROPERTY)
@given(case=loss_cases())
def test_window_losses_are_a_plain_unroll(case):
    """Identity 4: ``info['loss']`` of window ``i`` == the mean over workers of the losses of
    steps ``o_w + iK .. o_w + (i+1)K - 1`` of worker ``w``'s stream of episodes, each episode
    a plain Python loop of ``system.step`` from ``system.init(theta, data_key)`` with the
    data keys of the worker's key chain, ``o_w = floor(w T / W)`` its stagger.

    Why exact: these estimators (truncated BPTT, RTRL, UORO, forward gradients with 2
    directions per worker) unroll the system's own trajectories at theta, only what they
    accumulate along them differs, and windows cross episode ends by resetting with the
    next key of the chain. Also checks ``info['steps']`` and where each worker stands in
    its episode afterwards (``t``; ``T`` means "episode over")."""
    spec, name, K, W, num_windows = case
    system, points = make_problem(spec)
    T = system.horizon
    per_worker = 2 if name == "forward_gradient" else 1
    num_episodes = -(-(offsets(T, W)[-1] + num_windows * K) // T)  # touched by the last worker

    def check(theta, key):  # the estimator and the reference: one compile
        _, infos, state = windows(EXACT_LOSS_ESTIMATORS[name](system, K, W), num_windows)(theta, key)
        keys = jnp.stack([episode_keys(key, W, w, num_episodes) for w in range(W)])
        plain = lambda key: jnp.stack(plain_losses(system, theta, key))
        return infos, state.workers.t, jax.vmap(jax.vmap(plain))(keys)  # losses [W, episodes, T]

    run = jax.jit(check)
    for p, (theta, key) in enumerate(points):
        infos, t, losses = run(theta, key)
        streams = []
        for w, o in enumerate(offsets(T, W)):
            end = o + num_windows * K
            streams.append(np.asarray(losses[w]).ravel()[o:end])
            np.testing.assert_array_equal(np.asarray(t)[w], (end - 1) % T + 1, err_msg=f"point {p}: worker {w}'s t")
        for i in range(num_windows):
            want = np.mean([stream[i * K : (i + 1) * K] for stream in streams])
            np.testing.assert_allclose(
                infos["loss"][i], want, rtol=RTOL, atol=ATOL, err_msg=f"point {p}: {name} window {i}"
            )
            assert int(infos["steps"][i]) == W * K * per_worker
