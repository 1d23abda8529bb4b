"""Recurrent-network training tasks: the copy task, 3-bit flip-flop, a character
language model and a long-dependency classification, with a choice of cell (tanh,
GRU, LSTM, LRU-style diagonal, GILR, GILR-LSTM) and of depth (``num_layers``).

Every task is an ``unroll.System`` whose theta is ``{"cell": ..., "readout": ...}``
(the network's weights; ``"cell"`` a tuple of per-layer params when stacked) and whose
episode is one pass over a sequence; the step loss is the cross-entropy (nats) of the
readout's logits against that step's target. No sequence is stored in the state: the
copy, flip-flop and long-dependency sequences are drawn step by step from the episode
key (``fold_in(key, t)``), and the language model reads the corpus at an episode
offset, so the state is the cell's state plus an int or a key (no influence, tangent or
perturbation is spent on data).

Cells whose recurrence is linear in the state (``lru``, ``gilr``, ``gilr-lstm``: gates
that read only the input) have a parallel form over time (``Cell.sequence``, by
``unroll.parallel.linear_recurrence``; Martin & Cundy 2018). Every task also draws its
whole data stream at once (no step loop), so with those cells its system has
``episode``, the per-step losses in parallel over time, equal to stepping.

Each constructor returns ``(system, theta, evaluate)``: ``evaluate(theta)`` is a
jit-able dict of metrics on fixed held-out episodes (``"objective"`` first), computed
in the parallel form where there is one.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unroll._system import System, check_positive_float, check_positive_int
from unroll._tree import PyTree
from unroll.parallel import linear_recurrence
from unroll.task import Task, adam_cosine, standard_settings
from unroll.tasks.evaluation import episode_evaluator, map_episodes

# --------------------------------------------------------------------------- cells


class Cell(NamedTuple):
    """A recurrent cell: ``init(key, input_size, hidden, dtype) -> params``,
    ``initial(params, hidden, dtype) -> state``, ``apply(params, state, x) -> state``,
    ``features(state) -> [F]`` (what the readout, or the next layer, sees;
    ``num_features(hidden)`` long) and, for a cell whose recurrence is linear in its
    state, the parallel form ``sequence(params, state0, xs [T, input_size]) -> states``:
    all ``T`` states (the state pytree with a leading time axis), the same as ``apply``
    over ``xs`` from ``state0``, by ``unroll.parallel.linear_recurrence`` (``None``
    for a cell without one)."""

    init: Callable
    initial: Callable
    apply: Callable
    features: Callable
    num_features: Callable
    sequence: Callable | None = None


# the longest memory (in steps) the gates of "gilr" and "gilr-lstm" start with when no
# `timescale` is given: right for horizons of about 100
DEFAULT_TIMESCALE = 100.0


def _glorot(key, shape, dtype):
    return jax.random.normal(key, shape, dtype) * jnp.sqrt(1.0 / shape[-1]).astype(dtype)


def _zeros(p, n, dtype):
    return jnp.zeros(n, dtype)


def _chrono(key, hidden: int, timescale: float, dtype) -> jax.Array:
    """Chrono initialization (Tallec & Ollivier 2018): ``log u``, ``u ~ U(1, T_max - 1)``.
    As the bias of a forget gate ``f = sigmoid(b)`` it makes each unit's memory
    ``1 / (1 - f) = 1 + u`` steps, spread over ``[2, T_max]``."""
    return jnp.log(jax.random.uniform(key, (hidden,), dtype, 1.0, timescale - 1.0))


def _tanh_cell() -> Cell:
    """``h' = tanh(W h + U x + b)``."""

    def init(key, input_size, hidden, dtype):
        k1, k2 = jax.random.split(key)
        return {
            "W": _glorot(k1, (hidden, hidden), dtype),
            "U": _glorot(k2, (hidden, input_size), dtype),
            "b": jnp.zeros(hidden, dtype),
        }

    def apply(p, h, x):
        return jnp.tanh(p["W"] @ h + p["U"] @ x + p["b"])

    return Cell(init, _zeros, apply, lambda h: h, lambda n: n)


def _gru_cell(timescale: float | None = None) -> Cell:
    """GRU (Cho et al. 2014): gates ``z, r = sigmoid(.)``, ``h~ = tanh(W (r h) + U x + b)``,
    ``h' = (1 - z) h + z h~``. With ``timescale``, the update gate's bias is
    ``-log u``, ``u ~ U(1, timescale - 1)`` (chrono; zeros otherwise)."""

    def init(key, input_size, hidden, dtype):
        keys = jax.random.split(key, 6)
        p = {}
        for i, gate in enumerate("zrh"):
            p[f"W{gate}"] = _glorot(keys[2 * i], (hidden, hidden), dtype)
            p[f"U{gate}"] = _glorot(keys[2 * i + 1], (hidden, input_size), dtype)
            p[f"b{gate}"] = jnp.zeros(hidden, dtype)
        if timescale is not None:
            p["bz"] = -_chrono(jax.random.fold_in(key, 6), hidden, timescale, dtype)
        return p

    def apply(p, h, x):
        z = jax.nn.sigmoid(p["Wz"] @ h + p["Uz"] @ x + p["bz"])
        r = jax.nn.sigmoid(p["Wr"] @ h + p["Ur"] @ x + p["br"])
        candidate = jnp.tanh(p["Wh"] @ (r * h) + p["Uh"] @ x + p["bh"])
        return (1 - z) * h + z * candidate

    return Cell(init, _zeros, apply, lambda h: h, lambda n: n)


def _lstm_cell(timescale: float | None = None) -> Cell:
    """LSTM (Hochreiter & Schmidhuber 1997), state ``(h, c)``, forget bias 1; with
    ``timescale``, chrono biases ``b_f = log u``, ``b_i = -b_f``, ``u ~ U(1, timescale - 1)``."""

    def init(key, input_size, hidden, dtype):
        k1, k2 = jax.random.split(key)
        b = jnp.zeros(4 * hidden, dtype).at[hidden : 2 * hidden].set(1.0)
        if timescale is not None:
            forget = _chrono(jax.random.fold_in(key, 2), hidden, timescale, dtype)
            b = b.at[:hidden].set(-forget).at[hidden : 2 * hidden].set(forget)
        return {
            "W": _glorot(k1, (4 * hidden, hidden), dtype),
            "U": _glorot(k2, (4 * hidden, input_size), dtype),
            "b": b,
        }

    def apply(p, state, x):
        h, c = state
        i, f, g, o = jnp.split(p["W"] @ h + p["U"] @ x + p["b"], 4)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    initial = lambda p, n, dtype: (jnp.zeros(n, dtype), jnp.zeros(n, dtype))
    return Cell(init, initial, apply, lambda s: s[0], lambda n: n)


def _lru_cell(timescale: float | None = None) -> Cell:
    """LRU-style diagonal linear recurrence (Orvieto et al. 2023): complex state
    ``h' = lambda * h + gamma * B x``, ``lambda = exp(-exp(nu) + i phase)``; the readout
    sees ``tanh`` of ``(Re h, Im h)`` (a nonlinearity outside the recurrence). The radius
    ``|lambda|`` starts uniform in ``[0.9, 0.999]`` and ``gamma = 1``. With ``timescale``
    it starts at ``exp(-1 / tau)``, ``tau = 1 + u``, ``u ~ U(1, timescale - 1)``
    (memories of ``[2, timescale]`` steps, as chrono gives the gated cells), and the input
    is normalized as in the LRU paper: ``gamma = exp(gamma_log)`` (a parameter), starting
    at ``sqrt(1 - |lambda|^2)`` so that ``h`` stays of the input's scale however long the
    memory. Parallel form: one complex ``linear_recurrence``."""

    def init(key, input_size, hidden, dtype):
        k1, k2, k3 = jax.random.split(key, 3)
        if timescale is None:
            radius = jax.random.uniform(k1, (hidden,), dtype, 0.9, 0.999)
            nu = jnp.log(-jnp.log(radius))
        else:
            nu = -jnp.log1p(jax.random.uniform(k1, (hidden,), dtype, 1.0, timescale - 1.0))  # -log r = 1 / tau
        p = {
            "nu": nu,
            "phase": jax.random.uniform(k2, (hidden,), dtype, 0.0, np.pi / 10),
            "B_re": _glorot(k3, (hidden, input_size), dtype),
            "B_im": jnp.zeros((hidden, input_size), dtype),
        }
        if timescale is not None:
            p["gamma_log"] = 0.5 * jnp.log(-jnp.expm1(-2 * jnp.exp(nu)))  # log sqrt(1 - |lambda|^2)
        return p

    def terms(p, x):  # (lambda, gamma B x) for x [in] or xs [T, in]
        lam = jnp.exp(jax.lax.complex(-jnp.exp(p["nu"]), p["phase"]))
        bx = jax.lax.complex(x @ p["B_re"].T, x @ p["B_im"].T)
        return lam, bx * jnp.exp(p["gamma_log"]) if "gamma_log" in p else bx

    def apply(p, h, x):
        lam, bx = terms(p, x)
        return lam * h + bx

    def sequence(p, h0, xs):
        lam, bx = terms(p, xs)
        return linear_recurrence(jnp.broadcast_to(lam, bx.shape), bx, h0)

    def initial(p, n, dtype):
        return jnp.zeros(n, jnp.result_type(dtype, jnp.complex64))

    features = lambda h: jnp.tanh(jnp.concatenate([jnp.real(h), jnp.imag(h)], axis=-1))
    return Cell(init, initial, apply, features, lambda n: 2 * n, sequence)


def _gilr_init(key, input_size, hidden, dtype, timescale):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "Ug": _glorot(k1, (hidden, input_size), dtype),
        "bg": _chrono(k3, hidden, timescale, dtype),
        "Uz": _glorot(k2, (hidden, input_size), dtype),
        "bz": jnp.zeros(hidden, dtype),
    }


def _gilr_terms(p, x):
    """``(g, (1 - g) i)`` of the GILR recurrence ``h' = g h + (1 - g) i``, for ``x [in]`` or ``xs [T, in]``."""
    g = jax.nn.sigmoid(x @ p["Ug"].T + p["bg"])
    return g, (1 - g) * jnp.tanh(x @ p["Uz"].T + p["bz"])


def _gilr_cell(timescale: float | None = None) -> Cell:
    """GILR, the gated impulse linear recurrent layer (Martin & Cundy 2018):

        g_t = sigmoid(U_g x_t + b_g),   i_t = tanh(U_z x_t + b_z),
        h_t = g_t * h_{t-1} + (1 - g_t) * i_t.

    The gates read only the input, so ``h`` is a linear recurrence (parallel form: one
    ``linear_recurrence``). ``b_g`` starts at chrono values ``log u``,
    ``u ~ U(1, timescale - 1)`` (Tallec & Ollivier 2018; ``timescale`` defaults to
    ``DEFAULT_TIMESCALE``): unit memories of ``1 + u`` steps."""
    timescale = DEFAULT_TIMESCALE if timescale is None else timescale

    def apply(p, h, x):
        g, impulse = _gilr_terms(p, x)
        return g * h + impulse

    def sequence(p, h0, xs):
        return linear_recurrence(*_gilr_terms(p, xs), h0)

    init = lambda key, input_size, hidden, dtype: _gilr_init(key, input_size, hidden, dtype, timescale)
    return Cell(init, _zeros, apply, lambda h: h, lambda n: n, sequence)


def _gilr_lstm_cell(timescale: float | None = None) -> Cell:
    """GILR-LSTM (Martin & Cundy 2018): an LSTM whose gates read a GILR linear surrogate
    ``s`` of its input instead of its own ``h_{t-1}``, and whose output drops the
    ``tanh`` of ``c``:

        s_t = g_t * s_{t-1} + (1 - g_t) * tanh(U_z x_t + b_z),  g_t = sigmoid(U_g x_t + b_g)
        f_t, i_t, o_t = sigmoid(U_{f,i,o} s_t + b_{f,i,o}),  z_t = tanh(U_c s_t + b_c)
        c_t = f_t * c_{t-1} + i_t * z_t,   h_t = o_t * c_t.

    (As in the paper the gates see the surrogate ``s_t``, which carries ``x_t``, not
    ``x_t`` alone.) Both ``s`` and ``c`` are linear recurrences: the parallel form is
    two ``linear_recurrence`` calls. State ``(s, c, h)`` (``h`` carried for the
    readout; the recurrence does not read it). Chrono biases (``timescale``, default
    ``DEFAULT_TIMESCALE``): ``b_g = b_f = log u``, ``b_i = -b_f``,
    ``u ~ U(1, timescale - 1)``."""
    timescale = DEFAULT_TIMESCALE if timescale is None else timescale

    def init(key, input_size, hidden, dtype):
        k1, k2, k3 = jax.random.split(key, 3)
        forget = _chrono(k3, hidden, timescale, dtype)
        b = jnp.zeros(4 * hidden, dtype).at[:hidden].set(forget).at[hidden : 2 * hidden].set(-forget)
        return {
            "gilr": _gilr_init(k1, input_size, hidden, dtype, timescale),
            "U": _glorot(k2, (4 * hidden, hidden), dtype),
            "b": b,
        }

    def gates(p, s):  # (f, i z, o) for s [n] or [T, n]
        f, i, o, z = jnp.split(s @ p["U"].T + p["b"], 4, axis=-1)
        return jax.nn.sigmoid(f), jax.nn.sigmoid(i) * jnp.tanh(z), jax.nn.sigmoid(o)

    def apply(p, state, x):
        s, c, _ = state
        g, impulse = _gilr_terms(p["gilr"], x)
        s = g * s + impulse
        f, write, o = gates(p, s)
        c = f * c + write
        return s, c, o * c

    def sequence(p, state0, xs):
        s0, c0, _ = state0
        s = linear_recurrence(*_gilr_terms(p["gilr"], xs), s0)
        f, write, o = gates(p, s)
        c = linear_recurrence(f, write, c0)
        return s, c, o * c

    initial = lambda p, n, dtype: (jnp.zeros(n, dtype),) * 3
    return Cell(init, initial, apply, lambda s: s[2], lambda n: n, sequence)


# steps the parallel form runs at once: longer sequences run as chunks of this many steps,
# one after another, each recomputed in the backward pass (memory O(T / chunk + chunk))
PARALLEL_CHUNK = 2048

CELLS: dict[str, Callable[..., Cell]] = {
    "tanh": _tanh_cell,
    "gru": _gru_cell,
    "lstm": _lstm_cell,
    "lru": _lru_cell,
    "gilr": _gilr_cell,
    "gilr-lstm": _gilr_lstm_cell,
}
# the cells whose gates (or eigenvalues) take a `timescale`
TIMESCALE_CELLS = frozenset({"gru", "lstm", "lru", "gilr", "gilr-lstm"})


def get_cell(name: str, timescale: float | None = None) -> Cell:
    """The cell called ``name`` (a key of ``CELLS``); ``timescale`` (``>= 2`` steps, for
    the cells in ``TIMESCALE_CELLS``) sets the longest memory its gates start with."""
    if name not in CELLS:
        raise ValueError(f"`cell`={name!r} is not a known cell; choose one of {', '.join(CELLS)}.")
    if timescale is None:
        return CELLS[name]()
    if name not in TIMESCALE_CELLS:
        raise ValueError(
            f"`timescale`={timescale!r} has no effect on `cell`={name!r} (it has no gate); pass timescale=None, "
            f"or use one of {', '.join(sorted(TIMESCALE_CELLS))}."
        )
    timescale = check_positive_float(timescale, "timescale", "it is the longest memory in steps, e.g. timescale=100.")
    if timescale < 2:
        raise ValueError(
            f"`timescale`={timescale!r} must be at least 2 (memories of 1 + U(1, timescale - 1) steps); "
            "use e.g. timescale=horizon."
        )
    return CELLS[name](timescale=timescale)


def check_num_layers(num_layers: Any) -> int:
    return check_positive_int(
        num_layers,
        "num_layers",
        "It counts the stacked cells (layer l + 1 reads layer l's features): use 1 or more, e.g. num_layers=2.",
    )


def layer_params(cell_params: PyTree, num_layers: int) -> tuple:
    """The per-layer params of ``theta["cell"]``: the dict itself for one layer, else its
    ``num_layers`` entries."""
    return (cell_params,) if num_layers == 1 else tuple(cell_params)


def network_theta(
    cell: Cell, key, input_size: int, hidden: int, num_outputs: int, dtype=jnp.float32, num_layers: int = 1
) -> dict:
    """``{"cell": cell params, "readout": {"W": [outputs, F], "b": [outputs]}}``; with
    ``num_layers > 1``, ``"cell"`` is a tuple of per-layer params (layer 0 reads
    ``input_size`` inputs, layer ``l > 0`` the ``F = num_features(hidden)`` features of
    layer ``l - 1``)."""
    k1, k2 = jax.random.split(key)
    features = cell.num_features(hidden)
    if num_layers == 1:
        params = cell.init(k1, input_size, hidden, dtype)
    else:
        keys = jax.random.split(k1, num_layers)
        params = tuple(cell.init(k, input_size if i == 0 else features, hidden, dtype) for i, k in enumerate(keys))
    return {
        "cell": params,
        "readout": {"W": 0.1 * _glorot(k2, (num_outputs, features), dtype), "b": jnp.zeros(num_outputs, dtype)},
    }


def cross_entropy(logits: jax.Array, target: jax.Array) -> jax.Array:
    """``-log softmax(logits)[target]`` (nats)."""
    return -jax.nn.log_softmax(logits)[target]


class Network(NamedTuple):
    """A stack of cells and a readout over a sequence: ``forward(theta, state, t) ->
    (state, logits, target)``; the ``System`` scoring each step by ``loss(logits,
    target)``; and, when the cell and the data have parallel forms,
    ``sequence(theta, key) -> (logits [T, ...], targets [T, ...])`` of the episode
    ``init(theta, key)`` starts (else ``None``)."""

    system: System
    forward: Callable
    loss: Callable
    sequence: Callable | None = None


def _network(
    cell: Cell,
    hidden: int,
    horizon: int,
    dtype,
    data_init,
    data_step,
    embed,
    loss,
    data_sequence=None,
    num_layers: int = 1,
    chunk: int | None = PARALLEL_CHUNK,
) -> Network:
    """State ``(cell state, data state)`` (the cell state a tuple over layers when
    ``num_layers > 1``); each step reads ``x_t, y_t, data' = data_step(data, t)``, runs
    the layers in turn on ``embed(theta, x_t)`` (layer ``l + 1`` on layer ``l``'s
    features) and scores the readout ``W features + b`` of the last layer.

    With ``cell.sequence`` and ``data_sequence(data0, horizon) -> (xs [T, ...], ys [T, ...])``
    (the whole stream, without a step loop), the system also has the parallel form
    ``episode``: the embedding, each layer over the whole sequence in turn, the readout
    and the loss, vmapped over time. A horizon longer than ``chunk`` runs as chunks of
    ``chunk`` steps, each in parallel, in turn (a ``lax.scan`` carrying the layers' states),
    each chunk recomputed in the backward pass: memory ``O(T / chunk + chunk)`` states
    instead of ``O(T)`` residuals, for one more forward pass (``chunk=None``: the whole
    sequence at once)."""

    def readout(theta, features):
        return theta["readout"]["W"] @ features + theta["readout"]["b"]

    def init(theta, key):
        states = tuple(cell.initial(p, hidden, dtype) for p in layer_params(theta["cell"], num_layers))
        return (states[0] if num_layers == 1 else states), data_init(key)

    def forward(theta, state, t):
        hs, data = state
        x, y, data = data_step(data, t)
        x = embed(theta, x)
        new = []
        for p, h in zip(layer_params(theta["cell"], num_layers), (hs,) if num_layers == 1 else hs):
            h = cell.apply(p, h, x)
            x = cell.features(h)
            new.append(h)
        return (new[0] if num_layers == 1 else tuple(new), data), readout(theta, x), y

    def step(theta, state, t):
        state, logits, y = forward(theta, state, t)
        return state, loss(logits, y)

    if cell.sequence is None or data_sequence is None:
        return Network(System(init, step, horizon), forward, loss)

    def layers(theta, states, features):
        """Every layer over a stretch of the sequence: the states it ends in, the features."""
        ends = []
        for p, h0 in zip(layer_params(theta["cell"], num_layers), states):
            hs = cell.sequence(p, h0, features)
            ends.append(jax.tree_util.tree_map(lambda h: h[-1], hs))
            features = jax.vmap(cell.features)(hs)
        return tuple(ends), features

    def sequence(theta, key):
        xs, ys = data_sequence(data_init(key), horizon)
        states = tuple(cell.initial(p, hidden, dtype) for p in layer_params(theta["cell"], num_layers))
        _, features = layers(theta, states, jax.vmap(lambda x: embed(theta, x))(xs))
        return jax.vmap(lambda f: readout(theta, f))(features), ys

    def episode(theta, key):
        if chunk is None or horizon <= chunk:
            logits, ys = sequence(theta, key)
            return jax.vmap(loss)(logits, ys)
        xs, ys = data_sequence(data_init(key), horizon)
        num_chunks = -(-horizon // chunk)
        pad = lambda a: jnp.concatenate([a, jnp.zeros((num_chunks * chunk - horizon,) + a.shape[1:], a.dtype)])
        chunks = jax.tree_util.tree_map(lambda a: pad(a).reshape((num_chunks, chunk) + a.shape[1:]), (xs, ys))

        @jax.checkpoint  # the backward pass recomputes a chunk instead of storing its insides
        def body(states, data):
            xs, ys = data
            states, features = layers(theta, states, jax.vmap(lambda x: embed(theta, x))(xs))
            return states, jax.vmap(loss)(jax.vmap(lambda f: readout(theta, f))(features), ys)

        states = tuple(cell.initial(p, hidden, dtype) for p in layer_params(theta["cell"], num_layers))
        _, losses = jax.lax.scan(body, states, chunks)
        return losses.reshape(-1)[:horizon]  # (the padding's steps come after the last and are dropped)

    return Network(System(init, step, horizon, episode), forward, loss, sequence)


def _keyed_stream(at: Callable) -> tuple[Callable, Callable]:
    """``(data_step, data_sequence)`` for a stream drawn from the episode key alone,
    ``at(key, t) -> (x_t, y_t)``: the key is the data state, and the whole sequence is
    ``at`` vmapped over ``t``."""

    def data_step(key, t):
        x, y = at(key, t)
        return x, y, key

    def data_sequence(key, horizon):
        return jax.vmap(lambda t: at(key, t))(jnp.arange(horizon))

    return data_step, data_sequence


def _network_evaluator(network: Network, key, num_episodes: int, metrics: dict | None = None) -> Callable:
    """``theta -> {"objective": mean step loss, name: scale * mean step score(logits,
    target, t), ...}`` for ``metrics = {name: (score, scale)}``, averaged over
    ``num_episodes`` fixed episodes (``split(key, num_episodes)``) in one pass each: the
    parallel form where the network has one, else a ``lax.scan`` of the steps."""
    keys = jax.random.split(key, num_episodes)
    metrics = metrics or {}
    horizon = network.system.horizon

    def scores(logits, y, t):
        return {"objective": network.loss(logits, y), **{n: score(logits, y, t) for n, (score, _) in metrics.items()}}

    def one(theta, key):
        if network.sequence is not None:
            logits, ys = network.sequence(theta, key)
            per_step = jax.vmap(scores)(logits, ys, jnp.arange(horizon))
        else:

            def body(state, t):
                state, logits, y = network.forward(theta, state, t)
                return state, scores(logits, y, t)

            _, per_step = jax.lax.scan(body, network.system.init(theta, key), jnp.arange(horizon))
        return jax.tree_util.tree_map(jnp.mean, per_step)

    def evaluate(theta):
        out = map_episodes(lambda k: one(theta, k), keys, horizon, parallel=network.sequence is not None)
        out = jax.tree_util.tree_map(jnp.mean, out)
        return {"objective": out["objective"], **{n: out[n] * scale for n, (_, scale) in metrics.items()}}

    return evaluate


# --------------------------------------------------------------------------- copy task


def copy_sequence(key, t, length: int, delay: int, num_symbols: int):
    """Input and target token at step ``t`` of the copy task (Arjovsky et al. 2016).

    Tokens: ``0`` blank, ``1..num_symbols`` symbols, ``num_symbols + 1`` the "go" marker.
    Steps ``0..length-1`` show random symbols, then blanks, with "go" at step
    ``length + delay - 1``; the target is blank until step ``length + delay``, from where
    the ``length`` symbols are to be recalled in order. Horizon ``2 length + delay``.
    """
    t = jnp.asarray(t, jnp.int32)
    symbol = lambda i: 1 + jax.random.randint(jax.random.fold_in(key, jnp.maximum(i, 0)), (), 0, num_symbols)
    shown = t < length
    go = t == length + delay - 1
    x = jnp.where(shown, symbol(t), jnp.where(go, num_symbols + 1, 0))
    recall = t >= length + delay
    y = jnp.where(recall, symbol(t - length - delay), 0)
    return x, y


def copy_memoryless_loss(length: int, delay: int, num_symbols: int) -> float:
    """The mean step loss of the best predictor without memory: it predicts blank with
    certainty until recall, then uniform symbols: ``length ln(num_symbols) / (2 length + delay)``."""
    return length * float(np.log(num_symbols)) / (2 * length + delay)


def copy_task(
    length: int = 10,
    delay: int = 20,
    num_symbols: int = 8,
    cell: str = "gru",
    hidden: int = 64,
    seed: int = 0,
    dtype=jnp.float32,
    num_eval_episodes: int = 64,
    num_layers: int = 1,
    timescale: float | None = None,
):
    """The copy task: remember ``length`` symbols over ``delay`` steps, then recall them.
    Returns ``(system, theta, evaluate)``; ``evaluate`` gives the mean step loss
    (``"objective"``) and the recall accuracy (``copy_memoryless_loss`` is the loss to beat).
    ``num_layers`` stacks cells; ``timescale`` sets the gates' initial memory (``get_cell``).
    With a cell that has a parallel form (``gilr``, ``gilr-lstm``, ``lru``) the system
    has ``episode``."""
    length = check_positive_int(length, "length")
    delay = check_positive_int(delay, "delay")
    num_symbols = check_positive_int(num_symbols, "num_symbols")
    hidden = check_positive_int(hidden, "hidden")
    num_layers = check_num_layers(num_layers)
    net = get_cell(cell, timescale)
    vocab = num_symbols + 2
    horizon = 2 * length + delay

    data_step, data_sequence = _keyed_stream(lambda key, t: copy_sequence(key, t, length, delay, num_symbols))

    network = _network(
        net,
        hidden,
        horizon,
        dtype,
        lambda key: key,
        data_step,
        lambda theta, x: jax.nn.one_hot(x, vocab, dtype=dtype),
        cross_entropy,
        data_sequence,
        num_layers,
    )
    theta = network_theta(net, jax.random.key(seed), vocab, hidden, num_symbols + 1, dtype, num_layers)
    # hits over the recall steps, per step of the whole episode: their mean * horizon / length
    recall = (lambda logits, y, t: (jnp.argmax(logits) == y) & (t >= length + delay), horizon / length)
    evaluate = _network_evaluator(
        network, jax.random.key(seed + 10_000), num_eval_episodes, {"recall_accuracy": recall}
    )
    return network.system, theta, evaluate


# --------------------------------------------------------------------------- flip-flop


def flip_flop_inputs(key, t, num_bits: int, pulse_probability: float):
    """Step ``t``'s input pulses in ``{-1, 0, +1}^num_bits`` (each channel pulses with
    probability ``pulse_probability``, sign fair), int32."""
    k1, k2 = jax.random.split(jax.random.fold_in(key, t))
    pulse = jax.random.bernoulli(k1, pulse_probability, (num_bits,))
    sign = jnp.where(jax.random.bernoulli(k2, 0.5, (num_bits,)), 1, -1)
    return jnp.where(pulse, sign, 0).astype(jnp.int32)


def flip_flop_sequence(key, horizon: int, num_bits: int, pulse_probability: float, bits0=None):
    """The whole flip-flop stream of an episode at once: ``(pulses [T, num_bits],
    targets [T, num_bits])``, ``targets[t, c]`` the last nonzero pulse of channel ``c`` at
    or before ``t`` (``bits0[c]``, default ``+1``, before any). The last pulse's index is a
    running maximum (``lax.cummax``) of the pulse times, so there is no step loop; equal,
    value for value, to stepping ``flip_flop_inputs``."""
    pulses = jax.vmap(lambda t: flip_flop_inputs(key, t, num_bits, pulse_probability))(jnp.arange(horizon))
    times = jnp.where(pulses != 0, jnp.arange(horizon)[:, None], -1)
    last = jax.lax.cummax(times, axis=0)
    held = jnp.take_along_axis(pulses, jnp.maximum(last, 0), axis=0)
    bits0 = jnp.ones(num_bits, jnp.int32) if bits0 is None else bits0
    return pulses, jnp.where(last >= 0, held, bits0)


def flip_flop(
    num_bits: int = 3,
    horizon: int = 100,
    pulse_probability: float = 0.05,
    cell: str = "gru",
    hidden: int = 64,
    seed: int = 0,
    dtype=jnp.float32,
    num_eval_episodes: int = 64,
    num_layers: int = 1,
    timescale: float | None = None,
):
    """The ``num_bits``-bit flip-flop (Sussillo & Barak 2013): each output must hold the
    sign of the last pulse on its channel (``+1`` before any). The step loss is the
    binary cross-entropy summed over channels (logit per channel). Returns
    ``(system, theta, evaluate)``; ``evaluate`` adds the per-bit accuracy. ``num_layers``
    and ``timescale`` as in ``copy_task``; the parallel form's targets are
    ``flip_flop_sequence``."""
    num_bits = check_positive_int(num_bits, "num_bits")
    horizon = check_positive_int(horizon, "horizon")
    hidden = check_positive_int(hidden, "hidden")
    num_layers = check_num_layers(num_layers)
    if not 0.0 < pulse_probability <= 1.0:
        raise ValueError(
            f"`pulse_probability`={pulse_probability!r} must lie in (0, 1]; it is the chance of a pulse per "
            "channel and step, e.g. pulse_probability=0.05."
        )
    net = get_cell(cell, timescale)

    def data_init(key):
        return key, jnp.ones(num_bits, jnp.int32)  # (episode key, the bits held so far)

    def data_step(data, t):
        key, bits = data
        pulses = flip_flop_inputs(key, t, num_bits, pulse_probability)
        bits = jnp.where(pulses != 0, pulses, bits)
        return pulses, bits, (key, bits)

    def data_sequence(data, horizon):
        key, bits = data
        return flip_flop_sequence(key, horizon, num_bits, pulse_probability, bits)

    def loss(logits, target):
        return jnp.sum(jax.nn.softplus(-target * logits))  # BCE with labels (1 + target) / 2

    network = _network(
        net,
        hidden,
        horizon,
        dtype,
        data_init,
        data_step,
        lambda theta, x: x.astype(dtype),
        loss,
        data_sequence,
        num_layers,
    )
    theta = network_theta(net, jax.random.key(seed), num_bits, hidden, num_bits, dtype, num_layers)
    accuracy = (lambda logits, y, t: jnp.mean(jnp.sign(logits) == y), 1.0)
    evaluate = _network_evaluator(network, jax.random.key(seed + 10_000), num_eval_episodes, {"bit_accuracy": accuracy})
    return network.system, theta, evaluate


# --------------------------------------------------------------------------- long dependency


def long_dependency_sequence(key, horizon: int, num_classes: int, signal_length: int = 1, noise: float = 0.1):
    """One episode of the long-dependency classification: ``(xs [T, num_classes] float,
    ys [T] int32)``. The class ``k`` is drawn from the episode key; the first
    ``signal_length`` inputs are ``one_hot(k)``, the others ``noise * N(0, I)`` (step
    ``t``'s from ``fold_in(noise key, t)``); ``ys`` is ``k`` at ``t = T - 1`` and ``-1``
    (no target) elsewhere. ``long_dependency_step`` gives step ``t`` of the same values."""
    return jax.vmap(lambda t: long_dependency_step(key, t, horizon, num_classes, signal_length, noise))(
        jnp.arange(horizon)
    )


def long_dependency_step(key, t, horizon: int, num_classes: int, signal_length: int = 1, noise: float = 0.1):
    """Step ``t``'s ``(x [num_classes], y)`` of ``long_dependency_sequence``."""
    class_key, noise_key = jax.random.split(key)
    label = jax.random.randint(class_key, (), 0, num_classes)
    t = jnp.asarray(t, jnp.int32)
    signal = jax.nn.one_hot(label, num_classes)
    x = jnp.where(
        t < signal_length, signal, noise * jax.random.normal(jax.random.fold_in(noise_key, t), (num_classes,))
    )
    return x, jnp.where(t == horizon - 1, label, -1).astype(jnp.int32)


def last_step_loss(logits: jax.Array, target: jax.Array, horizon: int) -> jax.Array:
    """``horizon * cross_entropy(logits, target)`` where there is a target (``target >= 0``,
    the last step), ``0`` elsewhere: the mean step loss of an episode is then the final
    cross-entropy."""
    return jnp.where(target >= 0, horizon * cross_entropy(logits, jnp.maximum(target, 0)), 0.0)


def long_dependency(
    horizon: int = 1000,
    num_classes: int = 4,
    signal_length: int | None = None,
    noise: float = 0.1,
    cell: str = "gilr-lstm",
    hidden: int = 32,
    num_layers: int = 1,
    timescale: float | None = None,
    seed: int = 0,
    dtype=jnp.float32,
    num_eval_episodes: int = 64,
    chunk: int | None = PARALLEL_CHUNK,
):
    """Long-dependency classification after Martin & Cundy (2018, their synthetic task
    of a dependency over up to a million steps): the class ``k`` (one of
    ``num_classes``) is shown by the first ``signal_length`` inputs (``one_hot(k)``;
    default: 1% of the horizon, at least 1, which keeps the task's difficulty about the
    same across horizons: with memories as long as the horizon a single shown step reaches
    the end scaled by about ``1 / T``, and a GILR-LSTM was still at chance after 1,500 Adam
    steps at ``T = 3000``, where 1% learned in about 200), the rest of the ``horizon``
    inputs are ``noise * N(0, I)``, and the network's readout is
    scored at the last step only: the step loss is ``0`` for ``t < T - 1`` and
    ``T * cross_entropy(logits_{T-1}, k)`` at ``t = T - 1`` (``last_step_loss``), so the
    objective (mean step loss) is the final cross-entropy; ``ln(num_classes)`` is
    chance. Every value comes from the episode key (``long_dependency_sequence``).

    The cells' gates start with memories up to ``timescale`` steps (default: the
    horizon; chrono init). Returns ``(system, theta, evaluate)``; ``evaluate`` gives the
    final cross-entropy (``"objective"``) and ``"accuracy"`` (the argmax of the last
    logits is the class) on ``num_eval_episodes`` fixed episodes, in the parallel form
    when the cell has one (``gilr``, ``gilr-lstm``, ``lru``: then ``system.episode``
    too; ``chunk`` steps at a time, see ``_network``)."""
    horizon = check_positive_int(horizon, "horizon")
    num_classes = check_positive_int(num_classes, "num_classes")
    if chunk is not None:
        chunk = check_positive_int(chunk, "chunk", "It is the steps the parallel form runs at once (None: all).")
    signal_length = max(1, horizon // 100) if signal_length is None else signal_length
    signal_length = check_positive_int(signal_length, "signal_length")
    hidden = check_positive_int(hidden, "hidden")
    num_layers = check_num_layers(num_layers)
    if horizon < 2 or num_classes < 2:
        raise ValueError(
            f"`horizon`={horizon} and `num_classes`={num_classes} must both be at least 2 (a class to remember "
            "over at least one step); e.g. horizon=1000, num_classes=4."
        )
    if signal_length >= horizon:
        raise ValueError(
            f"`signal_length`={signal_length} must be shorter than `horizon`={horizon} (the class is shown at the "
            "start and asked for at the end); e.g. signal_length=1."
        )
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0 <= noise < float("inf"):
        raise ValueError(f"`noise`={noise!r} must be a finite float >= 0 (the noise inputs' scale), e.g. noise=0.1.")
    if timescale is None and cell in TIMESCALE_CELLS:
        timescale = max(2.0, float(horizon))
    net = get_cell(cell, timescale)

    data_step, data_sequence = _keyed_stream(
        lambda key, t: long_dependency_step(key, t, horizon, num_classes, signal_length, noise)
    )

    network = _network(
        net,
        hidden,
        horizon,
        dtype,
        lambda key: key,
        data_step,
        lambda theta, x: x.astype(dtype),
        lambda logits, y: last_step_loss(logits, y, horizon),
        data_sequence,
        num_layers,
        chunk,
    )
    theta = network_theta(net, jax.random.key(seed), num_classes, hidden, num_classes, dtype, num_layers)
    # the hit at the last step, per step of the episode: its mean * horizon
    accuracy = (lambda logits, y, t: (jnp.argmax(logits) == y) & (y >= 0), float(horizon))
    evaluate = _network_evaluator(network, jax.random.key(seed + 10_000), num_eval_episodes, {"accuracy": accuracy})
    return network.system, theta, evaluate


# --------------------------------------------------------------------------- char LM


class Corpus(NamedTuple):
    """The character corpus: ``text`` (all of it), the vocabulary (``chars``; id 0 is the
    unknown character), and the token ids of the train and validation splits."""

    text: str
    chars: str
    train: np.ndarray
    validation: np.ndarray

    def encode(self, text: str) -> np.ndarray:
        index = {c: i + 1 for i, c in enumerate(self.chars)}
        return np.asarray([index.get(c, 0) for c in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[i - 1] if i > 0 else "\ufffd" for i in np.asarray(ids).tolist())

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1


def python_docs_corpus(validation_fraction: float = 0.1) -> Corpus:
    """The text of Python's own help topics (``pydoc_data.topics``, shipped with CPython,
    about 465k characters in 3.11): the topics joined in sorted order, the vocabulary its
    printable ASCII characters plus newline (anything else maps to the unknown id 0), the
    last ``validation_fraction`` of the characters held out as validation."""
    from pydoc_data.topics import topics

    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"`validation_fraction`={validation_fraction!r} must lie in (0, 1); it is the share of the text held "
            "out, e.g. validation_fraction=0.1."
        )
    text = "\n".join(topics[name] for name in sorted(topics))
    chars = "".join(sorted(c for c in set(text) if c == "\n" or (c.isascii() and c.isprintable())))
    corpus = Corpus(text, chars, np.zeros(0, np.int32), np.zeros(0, np.int32))
    ids = corpus.encode(text)
    cut = int(round(len(ids) * (1 - validation_fraction)))
    return corpus._replace(train=ids[:cut], validation=ids[cut:])


def char_lm(
    horizon: int = 128,
    cell: str = "lstm",
    hidden: int = 128,
    embedding: int = 32,
    seed: int = 0,
    dtype=jnp.float32,
    num_eval_sequences: int = 64,
    eval_length: int = 256,
    num_layers: int = 1,
    timescale: float | None = None,
):
    """A character language model on ``python_docs_corpus()``: an episode reads
    ``horizon + 1`` consecutive training characters from a random offset and predicts
    each next one. Returns ``(system, theta, evaluate)``; ``evaluate`` gives the mean
    validation loss (``"objective"``, nats) and ``"bits_per_char"`` on
    ``num_eval_sequences`` fixed validation sequences of ``eval_length`` characters.
    ``num_layers`` and ``timescale`` as in ``copy_task``; the parallel form reads the
    episode's ``horizon + 1`` characters as one slice."""
    horizon = check_positive_int(horizon, "horizon")
    hidden = check_positive_int(hidden, "hidden")
    num_layers = check_num_layers(num_layers)
    corpus = python_docs_corpus()
    net = get_cell(cell, timescale)
    vocab = corpus.vocab_size
    train = corpus.train

    def make_system(ids: np.ndarray, length: int) -> System:
        def data_init(key):
            return jax.random.randint(key, (), 0, len(ids) - length - 1)

        def data_step(offset, t):
            pair = jax.lax.dynamic_slice(jnp.asarray(ids), (offset + t,), (2,))
            return pair[0], pair[1], offset

        def data_sequence(offset, length):
            window = jax.lax.dynamic_slice(jnp.asarray(ids), (offset,), (length + 1,))
            return window[:-1], window[1:]

        embed = lambda theta, x: theta["embedding"][x]
        return _network(
            net, hidden, length, dtype, data_init, data_step, embed, cross_entropy, data_sequence, num_layers
        ).system

    system = make_system(train, horizon)
    k1, k2 = jax.random.split(jax.random.key(seed))
    theta = network_theta(net, k1, embedding, hidden, vocab, dtype, num_layers)
    theta["embedding"] = jax.random.normal(k2, (vocab, embedding), dtype)
    validation = make_system(corpus.validation, eval_length)
    evaluate_loss = episode_evaluator(validation, jax.random.key(seed + 10_000), num_eval_sequences)

    def evaluate(theta):
        out = evaluate_loss(theta)
        return {**out, "bits_per_char": out["objective"] / jnp.log(2.0)}

    return system, theta, evaluate


# the estimators `unroll compare TASK` runs when none are named
DEFAULT_ESTIMATORS: dict[str, list[str]] = {
    "copy": ["tbptt-5", "full-bptt", "uoro", "dni-5", "pes", "forward"],
    "flip-flop": ["tbptt-10", "full-bptt", "uoro", "dni", "pes", "forward"],
    "char-lm": ["tbptt-16", "full-bptt", "dni-16", "uoro-16", "pes-16"],
    # the class is scored at the last step only: a window short of the horizon sees no
    # loss that depends on the first input
    "long-dependency": ["full-bptt", "parallel-bptt", "tbptt-10", "pes"],
}


def _network_setup(
    name: str,
    made,
    reference: dict,
    learning_rate: float,
    defaults: list[str],
    steps: int,
    truncation: int,
    sigma: float,
    particles: int,
    workers: int = 4,
) -> Task:
    system, theta, evaluate = made
    return Task(
        name=name,
        system=system,
        theta=theta,
        evaluate=evaluate,
        reference=dict(reference, horizon=system.horizon),
        settings=standard_settings(
            workers=workers, particles=particles, sigma=sigma, truncation=truncation, directions=4
        ),
        default_estimators=defaults,
        **adam_cosine(learning_rate),
        default_steps=steps,
        default_seeds=2,
    )


def copy_setup(
    horizon: int | None = None, length: int = 5, cell: str = "gru", hidden: int = 32, num_layers: int = 1
) -> Task:
    """Copy task: recall 5 symbols (of 4) after a delay; horizon = 2 * length + delay."""
    delay = 10 if horizon is None else horizon - 2 * length
    if delay < 1:
        raise ValueError(f"`horizon`={horizon} must exceed 2 * length = {2 * length} for the copy task.")
    made = copy_task(length=length, delay=delay, num_symbols=4, cell=cell, hidden=hidden, num_layers=num_layers)
    reference = {
        "objective": "mean step cross-entropy (nats) on 64 held-out sequences",
        "memoryless_loss": copy_memoryless_loss(length, delay, 4),
        "cell": cell,
        "hidden": hidden,
        "num_layers": num_layers,
    }
    return _network_setup(
        "copy", made, reference, 3e-3, DEFAULT_ESTIMATORS["copy"], 300, truncation=5, sigma=0.01, particles=16
    )


def flip_flop_setup(horizon: int = 100, cell: str = "gru", hidden: int = 32, num_layers: int = 1) -> Task:
    """3-bit flip-flop: hold the sign of each channel's last pulse."""
    made = flip_flop(
        num_bits=3, horizon=horizon, pulse_probability=0.05, cell=cell, hidden=hidden, num_layers=num_layers
    )
    reference = {
        "objective": "mean step binary cross-entropy (nats, summed over 3 bits) on 64 held-out sequences",
        "chance_loss": 3 * float(np.log(2)),
        "cell": cell,
        "hidden": hidden,
        "num_layers": num_layers,
    }
    return _network_setup(
        "flip-flop",
        made,
        reference,
        3e-3,
        DEFAULT_ESTIMATORS["flip-flop"],
        300,
        truncation=10,
        sigma=0.01,
        particles=16,
    )


def char_lm_setup(horizon: int = 64, cell: str = "lstm", hidden: int = 64, num_layers: int = 1) -> Task:
    """Character LM on Python's bundled help text (pydoc_data.topics)."""
    made = char_lm(horizon=horizon, cell=cell, hidden=hidden, embedding=16, num_layers=num_layers)
    reference = {
        "objective": "validation cross-entropy (nats per character); bits_per_char = objective / ln 2",
        "uniform_bits_per_char": float(np.log2(python_docs_corpus().vocab_size)),
        "cell": cell,
        "hidden": hidden,
        "num_layers": num_layers,
    }
    return _network_setup(
        "char-lm", made, reference, 3e-3, DEFAULT_ESTIMATORS["char-lm"], 3000, truncation=16, sigma=0.01, particles=16
    )


def long_dependency_setup(horizon: int = 1000, cell: str = "gilr-lstm", hidden: int = 16, num_layers: int = 1) -> Task:
    """Long-dependency classification (Martin & Cundy 2018): the class of the first of
    ``horizon`` inputs (4 classes, noise 0.1), read out at the last step."""
    made = long_dependency(horizon=horizon, num_classes=4, cell=cell, hidden=hidden, num_layers=num_layers)
    reference = {
        "objective": "final-step cross-entropy (nats) on 64 held-out sequences; accuracy of the final argmax",
        "chance_loss": float(np.log(4)),
        "cell": cell,
        "hidden": hidden,
        "num_layers": num_layers,
    }
    return _network_setup(
        "long-dependency",
        made,
        reference,
        3e-3,
        DEFAULT_ESTIMATORS["long-dependency"],
        300,
        truncation=min(10, horizon),
        sigma=0.01,
        particles=16,
    )
