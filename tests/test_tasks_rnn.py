"""Known facts of the RNN training tasks (copy, flip-flop, character LM) and cells."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from unroll import tasks
from unroll.tasks.rnn import cross_entropy

KEY = jax.random.key(0)


def zero_readout(theta):
    theta = dict(theta)
    theta["readout"] = jax.tree_util.tree_map(jnp.zeros_like, theta["readout"])
    return theta


def test_copy_sequence_recalls_the_shown_symbols():
    length, delay, symbols = 5, 7, 4
    xs, ys = zip(*[tasks.copy_sequence(KEY, t, length, delay, symbols) for t in range(2 * length + delay)])
    xs, ys = np.asarray(xs), np.asarray(ys)
    assert np.all((1 <= xs[:length]) & (xs[:length] <= symbols))
    assert np.all(xs[length : length + delay - 1] == 0) and xs[length + delay - 1] == symbols + 1
    assert np.all(xs[length + delay :] == 0)
    assert np.all(ys[: length + delay] == 0)
    np.testing.assert_array_equal(ys[length + delay :], xs[:length])


def test_copy_memoryless_and_perfect_predictors():
    """The memoryless optimum (blank until recall, then uniform symbols) scores
    length ln(A) / (2 length + delay); a predictor that remembers scores 0."""
    length, delay, symbols = 6, 10, 8
    horizon = 2 * length + delay
    ys = np.asarray([tasks.copy_sequence(KEY, t, length, delay, symbols)[1] for t in range(horizon)])
    big = 1e4
    memoryless = [
        jnp.where(jnp.arange(symbols + 1) == 0, -big, 0.0)
        if t >= length + delay
        else jnp.where(jnp.arange(symbols + 1) == 0, 0.0, -big)
        for t in range(horizon)
    ]
    loss = np.mean([float(cross_entropy(lg, y)) for lg, y in zip(memoryless, ys)])
    assert loss == pytest.approx(tasks.copy_memoryless_loss(length, delay, symbols), rel=1e-6)
    assert loss == pytest.approx(length * np.log(symbols) / horizon, rel=1e-6)
    perfect = np.mean([float(cross_entropy(big * jax.nn.one_hot(y, symbols + 1), y)) for y in ys])
    assert perfect < 1e-6


@pytest.mark.parametrize("cell", sorted(tasks.CELLS))
def test_zero_readout_predicts_uniformly(cell):
    """With the readout zeroed every step predicts the uniform distribution: the episode
    loss is ln(number of classes) exactly, through the whole system, for every cell."""
    system, theta, evaluate = tasks.copy_task(
        length=3, delay=4, num_symbols=5, cell=cell, hidden=8, num_eval_episodes=4
    )
    loss = unroll.episode_loss(system, zero_readout(theta), KEY)
    assert float(loss) == pytest.approx(np.log(6), rel=1e-6)
    metrics = jax.jit(evaluate)(zero_readout(theta))
    assert float(metrics["objective"]) == pytest.approx(np.log(6), rel=1e-6)
    assert 0.0 <= float(metrics["recall_accuracy"]) <= 1.0


def test_flip_flop_targets_hold_the_last_pulse():
    num_bits, horizon = 3, 200
    pulses = np.stack([np.asarray(tasks.flip_flop_inputs(KEY, t, num_bits, 0.1)) for t in range(horizon)])
    assert set(np.unique(pulses)) <= {-1, 0, 1} and np.any(pulses != 0)
    expected, bits = [], np.ones(num_bits, int)
    for p in pulses:  # independent reference: a Python loop
        bits = np.where(p != 0, p, bits)
        expected.append(bits.copy())
    system, theta, _ = tasks.flip_flop(num_bits, horizon, 0.1, cell="tanh", hidden=4)
    state = system.init(theta, KEY)
    held = []
    for t in range(horizon):
        state, _ = system.step(theta, state, t)
        held.append(np.asarray(state[1][1]))
    np.testing.assert_array_equal(np.stack(held), np.stack(expected))
    loss = unroll.episode_loss(system, zero_readout(theta), KEY)
    assert float(loss) == pytest.approx(num_bits * np.log(2), rel=1e-6)  # logit 0 on every bit


def test_python_docs_corpus_split_and_vocabulary():
    corpus = tasks.python_docs_corpus()
    assert len(corpus.text) > 300_000
    assert len(corpus.train) + len(corpus.validation) == len(corpus.text)
    assert len(corpus.validation) == pytest.approx(0.1 * len(corpus.text), abs=1)
    np.testing.assert_array_equal(corpus.validation, corpus.encode(corpus.text[len(corpus.train) :]))
    assert set("abcxyzABC0189 \n()[]{}.,:;'\"") <= set(corpus.chars)
    assert corpus.vocab_size == len(corpus.chars) + 1 <= 97
    sample = corpus.text[:2000]
    known = "".join(c for c in sample if c in corpus.chars)
    assert corpus.decode(corpus.encode(known)) == known
    assert np.mean(corpus.train == 0) < 0.01  # almost every character is in the vocabulary


def test_char_lm_reads_consecutive_characters():
    """Zero readout: loss ln(vocab) per step; the episode's data state is an offset into the
    training split and stays fixed while t advances."""
    system, theta, evaluate = tasks.char_lm(
        horizon=16, cell="gru", hidden=8, embedding=4, num_eval_sequences=2, eval_length=8
    )
    corpus = tasks.python_docs_corpus()
    assert float(unroll.episode_loss(system, zero_readout(theta), KEY)) == pytest.approx(np.log(corpus.vocab_size))
    metrics = jax.jit(evaluate)(zero_readout(theta))
    assert float(metrics["bits_per_char"]) == pytest.approx(np.log2(corpus.vocab_size), rel=1e-6)
    # step t reads train[offset + t] and scores train[offset + t + 1]: replay it by hand
    from unroll.tasks.rnn import get_cell

    cell = get_cell("gru")
    state = system.init(theta, KEY)
    offset = int(state[1])
    assert 0 <= offset < len(corpus.train) - 17
    h = jnp.zeros(8)
    for t in range(4):
        state, loss = system.step(theta, state, t)
        h = cell.apply(theta["cell"], h, theta["embedding"][corpus.train[offset + t]])
        logits = theta["readout"]["W"] @ h + theta["readout"]["b"]
        assert float(loss) == pytest.approx(float(cross_entropy(logits, corpus.train[offset + t + 1])), rel=1e-5)
    assert int(state[1]) == offset


def test_unknown_cell_is_a_clear_error():
    with pytest.raises(ValueError, match="cell"):
        tasks.copy_task(cell="transformer")
