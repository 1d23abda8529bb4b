"""SnAp-n against RTRL (Menick et al. 2020)."""

import jax
import numpy as np
import pytest

import unroll
from tests.systems import tree_mean, window_estimates
from tests.test_rtrl import PROBLEMS, _max_diff
from unroll.estimators.rtrl import influence_pattern

KEY = jax.random.key(0)


def _episode_mean(est, theta, num_windows=7):
    grads, state, _ = window_estimates(est, theta, num_windows, KEY)
    return tree_mean(grads), state


def test_snap1_is_rtrl_on_a_diagonal_recurrence():
    system, theta = PROBLEMS["complex_diagonal"]()
    rtrl, _ = _episode_mean(unroll.rtrl(system, truncation=3), theta)
    snap, state = _episode_mean(unroll.snap(system, truncation=3, order=1), theta)
    dense, _ = _episode_mean(unroll.snap(system, truncation=3, order=1, sparse=False), theta)
    assert _max_diff(snap, rtrl) < 1e-12
    assert _max_diff(dense, rtrl) < 1e-12
    # each of nu, phase, b_re, b_im (4 x 4 parameters) reaches its own unit of 4 (its real and
    # imaginary parts, of the 8 real coordinates); c_re, c_im reach none
    mask = influence_pattern(system, theta, KEY, order=1).mask
    assert float(np.mean(mask)) == pytest.approx(16 / (24 * 4))
    assert state.acc.influence.shape == (1, 1, 4, 8)  # compressed: 4 colours x 8 coordinates


@pytest.mark.parametrize("problem", ["tanh_rnn", "tanh_rnn_learned_h0", "gru"])
def test_snap2_is_rtrl_on_dense_recurrences_and_snap1_is_not(problem):
    system, theta = PROBLEMS[problem]()
    rtrl, _ = _episode_mean(unroll.rtrl(system, truncation=3), theta)
    snap2, state2 = _episode_mean(unroll.snap(system, truncation=3, order=2), theta)
    snap1, state1 = _episode_mean(unroll.snap(system, truncation=3, order=1), theta)
    assert _max_diff(snap2, rtrl) < 1e-12
    assert _max_diff(snap1, rtrl) > 1e-4
    # SnAp-2 keeps every entry a parameter of the dynamics can reach; SnAp-1 strictly fewer
    mask = lambda order: influence_pattern(system, theta, KEY, order=order).mask
    assert np.sum(mask(1)) < np.sum(mask(2))


def test_snap1_pattern_of_a_dense_rnn():
    """tanh(W h + U x + b): W[a, b], U[a, c] and b[a] move unit a only (one step); the
    readout moves none. So SnAp-1 keeps exactly one unit for each of those parameters."""
    system, theta = PROBLEMS["tanh_rnn"]()  # n = 3, m = 2
    per_parameter = influence_pattern(system, theta, KEY, order=1).mask.sum(
        axis=0
    )  # [N, p]: units reached per parameter
    flat_names = sorted(theta)  # ravel_pytree order: sorted dict keys
    sizes = {name: np.size(theta[name]) for name in flat_names}
    offset = 0
    for name in flat_names:
        reached = per_parameter[offset : offset + sizes[name]]
        offset += sizes[name]
        assert np.all(reached == (0 if name == "readout" else 1)), (name, reached)


def test_order_must_be_positive():
    system, _ = PROBLEMS["tanh_rnn"]()
    with pytest.raises(ValueError, match="order"):
        unroll.snap(system, truncation=3, order=0)
