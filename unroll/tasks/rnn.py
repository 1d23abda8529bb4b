"""Recurrent-network training tasks: the copy task, 3-bit flip-flop and a character
language model, with a choice of cell (tanh, GRU, LSTM, LRU-style diagonal).

Every task is an ``unroll.System`` whose theta is ``{"cell": ..., "readout": ...}``
(the network's weights) and whose episode is one pass over a sequence; the step loss
is the cross-entropy (nats) of the readout's logits against that step's target. No
sequence is stored in the state: the copy and flip-flop sequences are drawn step by
step from the episode key (``fold_in(key, t)``), and the language model reads the
corpus at an episode offset, so the state is the cell's state plus an int or a key
(no influence, tangent or perturbation is spent on data).

Each constructor returns ``(system, theta, evaluate)``: ``evaluate(theta)`` is a
jit-able dict of metrics on fixed held-out episodes (``"objective"`` first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unroll.system import System, check_positive_int
from unroll.tasks.evaluation import episode_evaluator
from unroll.tasks.setup import TaskSetup, adam_cosine, standard_settings

PyTree = Any


# --------------------------------------------------------------------------- cells


class Cell(NamedTuple):
    """A recurrent cell: ``init(key, input_size, hidden, dtype) -> params``,
    ``initial(params, hidden, dtype) -> state``, ``apply(params, state, x) -> state`` and
    ``features(state) -> [F]`` (what the readout sees; ``num_features(hidden)`` long)."""

    init: Callable
    initial: Callable
    apply: Callable
    features: Callable
    num_features: Callable


def _glorot(key, shape, dtype):
    return jax.random.normal(key, shape, dtype) * jnp.sqrt(1.0 / shape[-1]).astype(dtype)


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

    return Cell(init, lambda p, n, dtype: jnp.zeros(n, dtype), apply, lambda h: h, lambda n: n)


def _gru_cell() -> Cell:
    """GRU (Cho et al. 2014): gates ``z, r = sigmoid(.)``, ``h~ = tanh(W (r h) + U x + b)``,
    ``h' = (1 - z) h + z h~``."""

    def init(key, input_size, hidden, dtype):
        keys = jax.random.split(key, 6)
        p = {}
        for i, gate in enumerate("zrh"):
            p[f"W{gate}"] = _glorot(keys[2 * i], (hidden, hidden), dtype)
            p[f"U{gate}"] = _glorot(keys[2 * i + 1], (hidden, input_size), dtype)
            p[f"b{gate}"] = jnp.zeros(hidden, dtype)
        return p

    def apply(p, h, x):
        z = jax.nn.sigmoid(p["Wz"] @ h + p["Uz"] @ x + p["bz"])
        r = jax.nn.sigmoid(p["Wr"] @ h + p["Ur"] @ x + p["br"])
        candidate = jnp.tanh(p["Wh"] @ (r * h) + p["Uh"] @ x + p["bh"])
        return (1 - z) * h + z * candidate

    return Cell(init, lambda p, n, dtype: jnp.zeros(n, dtype), apply, lambda h: h, lambda n: n)


def _lstm_cell() -> Cell:
    """LSTM (Hochreiter & Schmidhuber 1997), state ``(h, c)``, forget bias 1."""

    def init(key, input_size, hidden, dtype):
        k1, k2 = jax.random.split(key)
        b = jnp.zeros(4 * hidden, dtype).at[hidden : 2 * hidden].set(1.0)
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


def _lru_cell() -> Cell:
    """LRU-style diagonal linear recurrence (Orvieto et al. 2023): complex state
    ``h' = lambda * h + B x``, ``lambda = exp(-exp(nu) + i phase)``; the readout sees
    ``tanh`` of ``(Re h, Im h)`` (a nonlinearity outside the recurrence)."""

    def init(key, input_size, hidden, dtype):
        k1, k2, k3 = jax.random.split(key, 3)
        radius = jax.random.uniform(k1, (hidden,), dtype, 0.9, 0.999)
        return {
            "nu": jnp.log(-jnp.log(radius)),
            "phase": jax.random.uniform(k2, (hidden,), dtype, 0.0, np.pi / 10),
            "B_re": _glorot(k3, (hidden, input_size), dtype),
            "B_im": jnp.zeros((hidden, input_size), dtype),
        }

    def apply(p, h, x):
        lam = jnp.exp(jax.lax.complex(-jnp.exp(p["nu"]), p["phase"]))
        return lam * h + jax.lax.complex(p["B_re"] @ x, p["B_im"] @ x)

    def initial(p, n, dtype):
        return jnp.zeros(n, jnp.result_type(dtype, jnp.complex64))

    features = lambda h: jnp.tanh(jnp.concatenate([jnp.real(h), jnp.imag(h)]))
    return Cell(init, initial, apply, features, lambda n: 2 * n)


CELLS: dict[str, Callable[[], Cell]] = {"tanh": _tanh_cell, "gru": _gru_cell, "lstm": _lstm_cell, "lru": _lru_cell}


def get_cell(name: str) -> Cell:
    if name not in CELLS:
        raise ValueError(f"`cell`={name!r} is not a known cell; choose one of {', '.join(CELLS)}.")
    return CELLS[name]()


def network_theta(cell: Cell, key, input_size: int, hidden: int, num_outputs: int, dtype=jnp.float32) -> dict:
    """``{"cell": cell params, "readout": {"W": [outputs, F], "b": [outputs]}}``."""
    k1, k2 = jax.random.split(key)
    features = cell.num_features(hidden)
    return {
        "cell": cell.init(k1, input_size, hidden, dtype),
        "readout": {"W": 0.1 * _glorot(k2, (num_outputs, features), dtype), "b": jnp.zeros(num_outputs, dtype)},
    }


def cross_entropy(logits: jax.Array, target: jax.Array) -> jax.Array:
    """``-log softmax(logits)[target]`` (nats)."""
    return -jax.nn.log_softmax(logits)[target]


class Network(NamedTuple):
    """A cell and readout over a sequence: ``forward(theta, state, t) -> (state, logits,
    target)`` and the ``System`` scoring each step by ``loss(logits, target)``."""

    system: System
    forward: Callable


def _network(cell: Cell, hidden: int, horizon: int, dtype, data_init, data_step, embed, loss) -> Network:
    """State ``(cell state, data state)``; each step reads ``x_t, y_t, data' =
    data_step(data, t)``, advances the cell on ``embed(theta, x_t)`` and scores the readout."""

    def init(theta, key):
        return cell.initial(theta["cell"], hidden, dtype), data_init(key)

    def forward(theta, state, t):
        h, data = state
        x, y, data = data_step(data, t)
        h = cell.apply(theta["cell"], h, embed(theta, x))
        logits = theta["readout"]["W"] @ cell.features(h) + theta["readout"]["b"]
        return (h, data), logits, y

    def step(theta, state, t):
        state, logits, y = forward(theta, state, t)
        return state, loss(logits, y)

    return Network(System(init, step, horizon), forward)


def _per_step_mean(network: Network, key, num_episodes: int, score: Callable) -> Callable:
    """``theta -> mean over fixed episodes and steps of score(logits, target, t)``."""
    keys = jax.random.split(key, num_episodes)

    def one(theta, key):
        def body(state, t):
            state, logits, y = network.forward(theta, state, t)
            return state, score(logits, y, t)

        _, scores = jax.lax.scan(body, network.system.init(theta, key), jnp.arange(network.system.horizon))
        return jnp.mean(scores)

    return lambda theta: jnp.mean(jax.vmap(lambda k: one(theta, k))(keys))


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
):
    """The copy task: remember ``length`` symbols over ``delay`` steps, then recall them.
    Returns ``(system, theta, evaluate)``; ``evaluate`` gives the mean step loss
    (``"objective"``) and the recall accuracy (``copy_memoryless_loss`` is the loss to beat)."""
    length = check_positive_int(length, "length")
    delay = check_positive_int(delay, "delay")
    num_symbols = check_positive_int(num_symbols, "num_symbols")
    hidden = check_positive_int(hidden, "hidden")
    net = get_cell(cell)
    vocab = num_symbols + 2
    horizon = 2 * length + delay

    def data_step(key, t):
        x, y = copy_sequence(key, t, length, delay, num_symbols)
        return x, y, key

    network = _network(
        net,
        hidden,
        horizon,
        dtype,
        lambda key: key,
        data_step,
        lambda theta, x: jax.nn.one_hot(x, vocab, dtype=dtype),
        cross_entropy,
    )
    theta = network_theta(net, jax.random.key(seed), vocab, hidden, num_symbols + 1, dtype)
    eval_key = jax.random.key(seed + 10_000)
    # hits over the recall steps, per step of the whole episode: their mean * horizon / length
    recall = _per_step_mean(
        network, eval_key, num_eval_episodes, lambda logits, y, t: (jnp.argmax(logits) == y) & (t >= length + delay)
    )
    evaluate = episode_evaluator(
        network.system,
        eval_key,
        num_eval_episodes,
        extra=lambda theta: {"recall_accuracy": recall(theta) * horizon / length},
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


def flip_flop(
    num_bits: int = 3,
    horizon: int = 100,
    pulse_probability: float = 0.05,
    cell: str = "gru",
    hidden: int = 64,
    seed: int = 0,
    dtype=jnp.float32,
    num_eval_episodes: int = 64,
):
    """The ``num_bits``-bit flip-flop (Sussillo & Barak 2013): each output must hold the
    sign of the last pulse on its channel (``+1`` before any). The step loss is the
    binary cross-entropy summed over channels (logit per channel). Returns
    ``(system, theta, evaluate)``; ``evaluate`` adds the per-bit accuracy."""
    num_bits = check_positive_int(num_bits, "num_bits")
    horizon = check_positive_int(horizon, "horizon")
    hidden = check_positive_int(hidden, "hidden")
    if not 0.0 < pulse_probability <= 1.0:
        raise ValueError(
            f"`pulse_probability`={pulse_probability!r} must lie in (0, 1]; it is the chance of a pulse per "
            "channel and step, e.g. pulse_probability=0.05."
        )
    net = get_cell(cell)

    def data_init(key):
        return key, jnp.ones(num_bits, jnp.int32)  # (episode key, the bits held so far)

    def data_step(data, t):
        key, bits = data
        pulses = flip_flop_inputs(key, t, num_bits, pulse_probability)
        bits = jnp.where(pulses != 0, pulses, bits)
        return pulses, bits, (key, bits)

    def loss(logits, target):
        return jnp.sum(jax.nn.softplus(-target * logits))  # BCE with labels (1 + target) / 2

    network = _network(net, hidden, horizon, dtype, data_init, data_step, lambda theta, x: x.astype(dtype), loss)
    theta = network_theta(net, jax.random.key(seed), num_bits, hidden, num_bits, dtype)
    eval_key = jax.random.key(seed + 10_000)
    accuracy = _per_step_mean(
        network, eval_key, num_eval_episodes, lambda logits, y, t: jnp.mean(jnp.sign(logits) == y)
    )
    evaluate = episode_evaluator(
        network.system, eval_key, num_eval_episodes, extra=lambda theta: {"bit_accuracy": accuracy(theta)}
    )
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
):
    """A character language model on ``python_docs_corpus()``: an episode reads
    ``horizon + 1`` consecutive training characters from a random offset and predicts
    each next one. Returns ``(system, theta, evaluate)``; ``evaluate`` gives the mean
    validation loss (``"objective"``, nats) and ``"bits_per_char"`` on
    ``num_eval_sequences`` fixed validation sequences of ``eval_length`` characters."""
    horizon = check_positive_int(horizon, "horizon")
    hidden = check_positive_int(hidden, "hidden")
    corpus = python_docs_corpus()
    net = get_cell(cell)
    vocab = corpus.vocab_size
    train = corpus.train

    def make_system(ids: np.ndarray, length: int) -> System:
        def data_init(key):
            return jax.random.randint(key, (), 0, len(ids) - length - 1)

        def data_step(offset, t):
            pair = jax.lax.dynamic_slice(jnp.asarray(ids), (offset + t,), (2,))
            return pair[0], pair[1], offset

        embed = lambda theta, x: theta["embedding"][x]
        return _network(net, hidden, length, dtype, data_init, data_step, embed, cross_entropy).system

    system = make_system(train, horizon)
    k1, k2 = jax.random.split(jax.random.key(seed))
    theta = network_theta(net, k1, embedding, hidden, vocab, dtype)
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
}


def _network_setup(
    made,
    reference: dict,
    learning_rate: float,
    defaults: list[str],
    steps: int,
    truncation: int,
    sigma: float,
    particles: int,
    workers: int = 4,
) -> TaskSetup:
    system, theta, evaluate = made
    return TaskSetup(
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


def copy_setup(horizon: int | None = None, length: int = 5, cell: str = "gru", hidden: int = 32) -> TaskSetup:
    """Copy task: recall 5 symbols (of 4) after a delay; horizon = 2 * length + delay."""
    delay = 10 if horizon is None else horizon - 2 * length
    if delay < 1:
        raise ValueError(f"`horizon`={horizon} must exceed 2 * length = {2 * length} for the copy task.")
    made = copy_task(length=length, delay=delay, num_symbols=4, cell=cell, hidden=hidden)
    reference = {
        "objective": "mean step cross-entropy (nats) on 64 held-out sequences",
        "memoryless_loss": copy_memoryless_loss(length, delay, 4),
        "cell": cell,
        "hidden": hidden,
    }
    return _network_setup(
        made, reference, 3e-3, DEFAULT_ESTIMATORS["copy"], 300, truncation=5, sigma=0.01, particles=16
    )


def flip_flop_setup(horizon: int = 100, cell: str = "gru", hidden: int = 32) -> TaskSetup:
    """3-bit flip-flop: hold the sign of each channel's last pulse."""
    made = flip_flop(num_bits=3, horizon=horizon, pulse_probability=0.05, cell=cell, hidden=hidden)
    reference = {
        "objective": "mean step binary cross-entropy (nats, summed over 3 bits) on 64 held-out sequences",
        "chance_loss": 3 * float(np.log(2)),
        "cell": cell,
        "hidden": hidden,
    }
    return _network_setup(
        made, reference, 3e-3, DEFAULT_ESTIMATORS["flip-flop"], 300, truncation=10, sigma=0.01, particles=16
    )


def char_lm_setup(horizon: int = 64, cell: str = "lstm", hidden: int = 64) -> TaskSetup:
    """Character LM on Python's bundled help text (pydoc_data.topics)."""
    made = char_lm(horizon=horizon, cell=cell, hidden=hidden, embedding=16)
    reference = {
        "objective": "validation cross-entropy (nats per character); bits_per_char = objective / ln 2",
        "uniform_bits_per_char": float(np.log2(python_docs_corpus().vocab_size)),
        "cell": cell,
        "hidden": hidden,
    }
    return _network_setup(
        made, reference, 3e-3, DEFAULT_ESTIMATORS["char-lm"], 3000, truncation=16, sigma=0.01, particles=16
    )
