"""Small systems shared by the tests (plain functions, importable from any test file).

Every system is deterministic given ``theta`` unless its name says otherwise, and
casts its constants to the dtype of ``theta``, so float64 theta gives a float64
computation (``tests/conftest.py`` enables x64).

* ``rnn_system``: a tanh RNN driven by a fixed input sequence, with a readout loss;
  ``theta = {W, U, b, readout}``.
* ``noisy_rnn_system``: the same RNN with Gaussian state noise drawn from a key kept
  in the state (randomness the interface way: ``init`` seeds it from its key).
* ``linear_system``: ``s' = A s + B theta`` (A stable), ``0.5 |C s' - target|^2``;
  ``linear_exact_gradient`` is its closed-form episode gradient.
* ``scalar_lq_system``: ``s' = a s + theta``, ``0.5 (s' - c)^2``, ``s_0 = s0``;
  ``scalar_lq_windows`` simulates it in numpy and returns the closed-form truncated
  gradient of each window.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import unroll
from unroll import registry


def _dtype(theta):
    return jnp.result_type(*jax.tree_util.tree_leaves(theta))


# --------------------------------------------------------------------------- (a) RNN


def rnn_constants(n: int = 3, m: int = 2, horizon: int = 6, seed: int = 0):
    """Fixed inputs ``xs [T, m]``, targets ``ys [T]`` and initial hidden state ``h0 [n]``."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(horizon, m)), rng.normal(size=(horizon,)), 0.5 * rng.normal(size=(n,))


def rnn_system(n: int = 3, m: int = 2, horizon: int = 6, seed: int = 0, learned_h0: bool = False) -> unroll.System:
    """``h' = tanh(W h + U x_t + b)``, ``loss_t = 0.5 (readout . h' - y_t)^2``; state ``(h,)``.

    ``h_0`` is a fixed vector, or with ``learned_h0`` ``tanh(h0 + b)``, so that ``init``
    depends on theta (its derivative then enters every episode's gradient)."""
    xs, ys, h0 = rnn_constants(n, m, horizon, seed)

    def init(theta, key):
        del key
        h = jnp.asarray(h0, _dtype(theta))
        return (jnp.tanh(h + theta["b"]),) if learned_h0 else (h,)

    def step(theta, state, t):
        (h,) = state
        dtype = _dtype(theta)
        x = jnp.take(jnp.asarray(xs, dtype), t, axis=0)
        y = jnp.take(jnp.asarray(ys, dtype), t)
        h = jnp.tanh(theta["W"] @ h + theta["U"] @ x + theta["b"])
        loss = 0.5 * (theta["readout"] @ h - y) ** 2
        return (h,), loss

    return unroll.System(init=init, step=step, horizon=horizon)


def rnn_theta(n: int = 3, m: int = 2, seed: int = 1, dtype=jnp.float64) -> dict:
    rng = np.random.default_rng(seed)
    theta = {
        "W": 0.9 * rng.normal(size=(n, n)) / np.sqrt(n),
        "U": rng.normal(size=(n, m)) / np.sqrt(m),
        "b": 0.1 * rng.normal(size=(n,)),
        "readout": rng.normal(size=(n,)),
    }
    return {k: jnp.asarray(v, dtype) for k, v in theta.items()}


def gain_theta(gain: float, n: int = 3, m: int = 2, seed: int = 1, dtype=jnp.float64) -> dict:
    """``rnn_theta`` with ``W`` rescaled to spectral radius ``gain``: contracting for
    ``gain < 1`` (``|tanh'| <= 1``), chaotic at ``gain = 3`` (for ``n`` beyond a few units)."""
    theta = rnn_theta(n, m, seed, dtype)
    w = np.asarray(theta["W"])
    return {**theta, "W": jnp.asarray(gain * w / np.max(np.abs(np.linalg.eigvals(w))), dtype)}


def noisy_rnn_system(n: int = 3, m: int = 2, horizon: int = 6, seed: int = 0, noise: float = 0.1) -> unroll.System:
    """``rnn_system`` plus ``noise * N(0, I)`` on the hidden state each step, the noise key
    kept in the state ``(h, key)`` and seeded by ``init``'s key."""
    base = rnn_system(n, m, horizon, seed)

    def init(theta, key):
        (h,) = base.init(theta, key)
        return (h, key)

    def step(theta, state, t):
        h, key = state
        key, sub = jax.random.split(key)
        (h,), loss = base.step(theta, (h,), t)
        h = h + noise * jax.random.normal(sub, h.shape, h.dtype)
        return (h, key), loss

    return unroll.System(init=init, step=step, horizon=horizon)


# --------------------------------------------------------------------------- (b) linear


def linear_constants(n: int = 3, p: int = 2, k: int = 2, seed: int = 0):
    """``A [n, n]`` (spectral radius 0.8), ``B [n, p]``, ``C [k, n]``, ``target [k]``, ``s0 [n]``."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n))
    A = 0.8 * A / np.max(np.abs(np.linalg.eigvals(A)))
    return A, rng.normal(size=(n, p)), rng.normal(size=(k, n)), rng.normal(size=(k,)), rng.normal(size=(n,))


def linear_system(n: int = 3, p: int = 2, k: int = 2, horizon: int = 5, seed: int = 0) -> unroll.System:
    """``s' = A s + B theta``, ``loss_t = 0.5 |C s' - target|^2``, ``s_0`` fixed; theta ``[p]``."""
    A, B, C, target, s0 = linear_constants(n, p, k, seed)

    def init(theta, key):
        del key
        return jnp.asarray(s0, _dtype(theta))

    def step(theta, s, t):
        dtype = _dtype(theta)
        s = jnp.asarray(A, dtype) @ s + jnp.asarray(B, dtype) @ theta
        r = jnp.asarray(C, dtype) @ s - jnp.asarray(target, dtype)
        return s, 0.5 * jnp.sum(r**2)

    return unroll.System(init=init, step=step, horizon=horizon)


def linear_exact_gradient(theta, n: int = 3, p: int = 2, k: int = 2, horizon: int = 5, seed: int = 0):
    """Closed form in numpy: ``s_t = A^t s0 + M_t theta`` with ``M_t = sum_{j<t} A^j B``, so
    ``dL/dtheta = (1/T) sum_{t=1..T} M_t^T C^T (C s_t - target)``."""
    A, B, C, target, s0 = linear_constants(n, p, k, seed)
    theta = np.asarray(theta, np.float64)
    s, M, grad = s0.copy(), np.zeros((n, p)), np.zeros(p)
    for _ in range(horizon):
        s = A @ s + B @ theta
        M = A @ M + B
        grad += M.T @ C.T @ (C @ s - target)
    return grad / horizon


# --------------------------------------------------------------------------- (c) scalar LQ


def scalar_lq_system(a: float = 0.7, c: float = 1.3, s0: float = 0.4, horizon: int = 7) -> unroll.System:
    """``s' = a s + theta``, ``loss_t = 0.5 (s' - c)^2``, ``s_0 = s0``; theta a scalar."""

    def init(theta, key):
        del key
        return jnp.asarray(s0, _dtype(theta))

    def step(theta, s, t):
        s = a * s + theta
        return s, 0.5 * (s - c) ** 2

    return unroll.System(init=init, step=step, horizon=horizon)


def scalar_lq_windows(theta, truncation, num_windows, offset=0, a=0.7, c=1.3, s0=0.4, horizon=7):
    """The truncated-BPTT windows of one worker of ``scalar_lq_system``, in numpy.

    The worker starts an episode at ``s0``, takes ``offset`` steps, then runs
    ``num_windows`` windows of ``K = truncation`` steps, resetting to ``s0`` whenever
    ``t`` reaches the horizon (also inside a window).

    Closed form. With the window's incoming state ``s`` held fixed, after ``k`` steps
    ``s_k = a^k s + theta sum_{j<k} a^j``, so ``D_k := ds_k/dtheta = sum_{j<k} a^j =
    (1 - a^k)/(1 - a)``, i.e. ``D_0 = 0`` and ``D_{k+1} = a D_k + 1``. Each step's loss
    ``0.5 (s_k - c)^2`` contributes ``(s_k - c) D_k``, and the window gradient is
    ``(1/K) sum_{k=1..K} (s_k - c) D_k``. At an episode end inside the window the
    state restarts at ``s0``, which does not depend on theta, so ``D`` restarts at 0
    (the recursion then continues from the reset).

    Returns a list of dicts per window: ``grad``, ``loss`` (window mean loss), and the
    state ``s`` and episode time ``t`` after the window.
    """
    theta = float(theta)
    s, t = s0, 0
    for _ in range(offset):
        s, t = a * s + theta, t + 1
    windows = []
    for _ in range(num_windows):
        D, grad, loss = 0.0, 0.0, 0.0
        for _ in range(truncation):
            if t == horizon:
                s, t, D = s0, 0, 0.0
            s, D, t = a * s + theta, a * D + 1.0, t + 1
            grad += (s - c) * D
            loss += 0.5 * (s - c) ** 2
        windows.append({"grad": grad / truncation, "loss": loss / truncation, "s": s, "t": t})
    return windows


def scalar_lq_closed_form_D(a: float, k: int) -> float:
    """``ds_k/dtheta = (1 - a^k)/(1 - a)`` for ``k`` steps without a reset."""
    return (1.0 - a**k) / (1.0 - a)


# --------------------------------------------------------------------------- estimators


# the test-size settings every registered estimator is built with (each takes the ones
# its constructor has; the registry's defaults give the rest, e.g. snap's order, gpes's reuse)
SMALL_SETTINGS = {"truncation": 2, "sigma": 0.1, "num_particles": 4, "num_directions": 2, "memory_budget": 2}


def _test_name(entry: registry.Entry) -> str:
    """The constructor's name (``unroll.<name>``), plus the solver for its Newton variants."""
    solver = entry.defaults.get("solver")
    return entry.constructor.__name__ + (f"_{solver.replace('-', '_')}" if solver else "")


# the registry, keyed by constructor name (``unroll.<name>``; ``parallel_bptt_deer`` and
# ``parallel_bptt_quasi_deer`` for its solvers): registering an estimator once puts it in
# every test parametrized over these names
REGISTERED = {_test_name(entry): entry for entry in registry.ESTIMATORS.values()}
ESTIMATOR_NAMES = tuple(REGISTERED)
WINDOWED = tuple(name for name, entry in REGISTERED.items() if entry.windowed)
ES_FAMILY = tuple(name for name, entry in REGISTERED.items() if entry.family == "es")


def stepped_episode(system) -> unroll.System:
    """``system`` with ``episode`` computed by a ``lax.scan`` of its own ``step`` (the
    contract's losses, sequentially), where it has no parallel form: so machinery tests
    (determinism, bad input, sharding, resume) cover ``parallel_bptt`` on any test system.
    Its parallel forms proper are tested in ``tests/test_parallel.py`` and ``test_cells.py``."""
    if getattr(system, "episode", None) is not None or not all(hasattr(system, a) for a in ("init", "step", "horizon")):
        return system  # (a malformed system goes on to the estimator's own check)

    def episode(theta, key):
        step = lambda state, t: system.step(theta, state, t)
        return jax.lax.scan(step, system.init(theta, key), jnp.arange(system.horizon, dtype=jnp.int32))[1]

    return unroll.System(system.init, system.step, system.horizon, episode)


def needs_episode(name: str) -> bool:
    """Whether the registered estimator ``name`` runs ``system.episode``."""
    entry = REGISTERED[name]
    return entry.constructor is unroll.parallel_bptt and entry.defaults.get("solver") is None


def build_estimator(name: str, system, **overrides):
    """``unroll.<name>(system, ...)`` with small default settings, ``overrides`` on top
    (each passed only where the constructor takes it); ``parallel_bptt`` gets
    ``stepped_episode(system)``."""
    if needs_episode(name):
        system = stepped_episode(system)
    return registry.build(REGISTERED[name].name, system, **{**SMALL_SETTINGS, **overrides})


# --------------------------------------------------------------------------- running estimators


def window_estimates(est, theta, num_windows: int, key):
    """``init`` once, then ``num_windows`` consecutive jitted estimates at a fixed theta
    (same ``key`` each call). Returns the list of gradients, the final state and the last info."""
    state = est.init(theta, key)
    estimate = jax.jit(est.estimate)
    grads = []
    for _ in range(num_windows):
        grad, state, info = estimate(theta, state, key)
        grads.append(grad)
    return grads, state, info


def tree_mean(trees: list):
    """Leaf-wise mean of a list of pytrees."""
    return jax.tree_util.tree_map(lambda *leaves: sum(leaves) / len(leaves), *trees)


def step_losses(system, theta, key, num_steps):
    """Steps ``system`` from ``init(theta, key)`` one Python call at a time (a reference,
    not the library's scan): ``(final state, [loss_0, ..., loss_{num_steps-1}])``."""
    state = system.init(theta, key)
    losses = []
    for t in range(num_steps):
        state, loss = system.step(theta, state, t)
        losses.append(float(loss))
    return state, losses


def sharding_case(name: str, num_workers: int = 8):
    """``(estimator, theta)`` on which ``unroll.shard`` is checked for the registered
    estimator ``name`` (``tests/sharding_worker.py``): ES estimators on the
    linear-quadratic system (2 particles), the others on the RNN, ``num_workers`` workers."""
    from tests.stochastic import THETA, linear_quadratic  # (stochastic imports this module's unroll only)

    entry = REGISTERED[name]
    if entry.family == "es":
        settings = {"truncation": 3, "sigma": 0.1, "num_particles": 2}
        return registry.build(entry.name, linear_quadratic(7), num_workers=num_workers, **settings), jnp.asarray(THETA)
    settings = {"truncation": 4, "num_directions": 2, "memory_budget": 2}
    # (parallel_bptt, any solver, and full_bptt, whose windows are whole episodes, read only
    # the episode keys: on a system that ignores them, every device would compute the same
    # gradient with nothing to communicate)
    system = (
        stepped_episode(noisy_rnn_system(horizon=6))
        if entry.constructor in (unroll.parallel_bptt, unroll.full_bptt)
        else rnn_system(horizon=6)
    )
    return registry.build(entry.name, system, num_workers=num_workers, **settings), rnn_theta()


# --------------------------------------------------------------------------- (d) diagonal linear, parallel form


def diagonal_system(n: int = 3, m: int = 2, horizon: int = 8, complex_state: bool = False) -> unroll.System:
    """``h' = lambda * h + B x_t`` (diagonal), ``loss_t = 0.5 (r . Re h' - y_t)^2``, with
    ``x_t, y_t`` drawn from ``fold_in(key, t)`` (episode-random data, the key in the state)
    and ``h_0 = tanh(h0)`` learned. ``lambda = sigmoid(theta["a"])``, or with
    ``complex_state`` ``exp(-exp(nu) + i phase)`` (an LRU-style complex state).
    ``episode`` is its parallel form by ``unroll.parallel.linear_recurrence``."""

    def data(key, t, dtype):
        x = jax.random.normal(jax.random.fold_in(key, t), (m + 1,), dtype)
        return x[:m], x[m]

    def decay(theta):
        if complex_state:
            return jnp.exp(jax.lax.complex(-jnp.exp(theta["nu"]), theta["phase"]))
        return jax.nn.sigmoid(theta["a"])

    def drive(theta, x):
        return (theta["B"] @ x).astype(decay(theta).dtype)

    def init(theta, key):
        return jnp.tanh(theta["h0"]).astype(decay(theta).dtype), key

    def step(theta, state, t):
        h, key = state
        x, y = data(key, t, theta["B"].dtype)
        h = decay(theta) * h + drive(theta, x)
        return (h, key), 0.5 * (theta["readout"] @ jnp.real(h) - y) ** 2

    def episode(theta, key):
        h0, _ = init(theta, key)
        xs, ys = jax.vmap(lambda t: data(key, t, theta["B"].dtype))(jnp.arange(horizon))
        lam = jnp.broadcast_to(decay(theta), (horizon, n))
        hs = unroll.parallel.linear_recurrence(lam, jax.vmap(lambda x: drive(theta, x))(xs), h0)
        return 0.5 * (jnp.real(hs) @ theta["readout"] - ys) ** 2

    return unroll.System(init, step, horizon, episode)


def diagonal_theta(n: int = 3, m: int = 2, complex_state: bool = False, seed: int = 2, dtype=jnp.float64) -> dict:
    rng = np.random.default_rng(seed)
    theta = {"B": rng.normal(size=(n, m)), "readout": rng.normal(size=n), "h0": 0.5 * rng.normal(size=n)}
    if complex_state:
        theta.update(nu=np.log(-np.log(rng.uniform(0.6, 0.95, n))), phase=rng.uniform(0, 0.5, n))
    else:
        theta["a"] = rng.normal(size=n)
    return {k: jnp.asarray(v, dtype) for k, v in theta.items()}
