"""A character language model on Python's own help text (``python_docs_corpus``)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unroll._errors import BadValue
from unroll._system import System, check_positive_int
from unroll.task import Task
from unroll.tasks.evaluation import episode_evaluator
from unroll.tasks.rnn._cells import get_cell
from unroll.tasks.rnn._network import build_network, check_num_layers, cross_entropy, network_theta
from unroll.tasks.rnn._setup import network_setup


class Corpus(NamedTuple):
    """The character corpus: ``text`` (all of it), the vocabulary (``chars``; id 0 is the
    unknown character), and the token ids of the train and validation splits."""

    text: str
    chars: str
    train: np.ndarray
    validation: np.ndarray

    def encode(self, text: str) -> np.ndarray:
        """The token ids of ``text`` (int32; 0 for a character outside the vocabulary)."""
        index = {c: i + 1 for i, c in enumerate(self.chars)}
        return np.asarray([index.get(c, 0) for c in text], np.int32)

    def decode(self, ids) -> str:
        """The text of token ids (the unknown id 0 as U+FFFD)."""
        return "".join(self.chars[i - 1] if i > 0 else "\ufffd" for i in np.asarray(ids).tolist())

    @property
    def vocab_size(self) -> int:
        """The number of token ids: the characters plus the unknown id 0."""
        return len(self.chars) + 1


def python_docs_corpus(validation_fraction: float = 0.1) -> Corpus:
    """The text of Python's own help topics (``pydoc_data.topics``, shipped with CPython,
    about 465k characters in 3.11).

    The topics are joined in sorted order; the vocabulary is the text's printable ASCII
    characters plus newline (anything else maps to the unknown id 0).

    Args:
        validation_fraction: the share of the characters, in $(0, 1)$, held out at the end
            of the text as the validation split.

    Returns:
        The ``Corpus``.
    """
    from pydoc_data.topics import topics

    if not 0.0 < validation_fraction < 1.0:
        raise BadValue(
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
    """A character language model on ``python_docs_corpus()``.

    An episode reads ``horizon + 1`` consecutive training characters from a random offset
    and predicts each next one (the step loss is the cross-entropy). The parallel form
    reads the episode's ``horizon + 1`` characters as one slice.

    Args:
        horizon: the number of characters predicted per episode.
        cell: the cell's name (``get_cell``).
        hidden: the width of each layer's state.
        embedding: the width of the learned character embedding (``theta["embedding"]``).
        seed: the seed of the initial weights (and, plus 10,000, of the validation sequences).
        dtype: the weights' dtype.
        num_eval_sequences: the number of fixed validation sequences ``evaluate`` averages over.
        eval_length: the characters predicted per validation sequence.
        num_layers: the number of stacked cells.
        timescale: the longest memory the gates start with (``get_cell``).

    Returns:
        ``(system, theta, evaluate)``: the ``unroll.System``, the initial weights
        (``network_theta`` plus ``"embedding"``) and ``evaluate(theta)``, a jit-able dict
        of the mean validation loss (``"objective"``, nats) and ``"bits_per_char"``.
    """
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
        return build_network(
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


def char_lm_setup(horizon: int = 64, cell: str = "lstm", hidden: int = 64, num_layers: int = 1) -> Task:
    """Character LM on Python's bundled help text (pydoc_data.topics).

    Args:
        horizon: the characters predicted per episode (the truncation is 16).
        cell: the cell's name (``get_cell``).
        hidden: the width of each layer's state.
        num_layers: the number of stacked cells.

    Returns:
        The ``unroll.Task`` behind ``unroll compare char-lm`` (a character embedding of width 16).
    """
    made = char_lm(horizon=horizon, cell=cell, hidden=hidden, embedding=16, num_layers=num_layers)
    reference = {
        "objective": "validation cross-entropy (nats per character); bits_per_char = objective / ln 2",
        "uniform_bits_per_char": float(np.log2(python_docs_corpus().vocab_size)),
    }
    return network_setup("char-lm", made, reference, 3000, 16, cell=cell, hidden=hidden, num_layers=num_layers)
