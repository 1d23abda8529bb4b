"""DNI against exact answers: zero synthesizer = truncated BPTT, oracle = full BPTT,
trained synthesizer beats truncated BPTT at the same truncation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import unroll
from tests.systems import rnn_system, rnn_theta, tree_mean, window_estimates
from tests.test_rtrl import _max_diff
from unroll._system import inexact_leaves, with_inexact_leaves

KEY = jax.random.key(0)
FROZEN = optax.set_to_zero()  # keeps the synthesizer as it starts


def _windows(est, theta, num_windows):
    return window_estimates(est, theta, num_windows, KEY)[0]


@pytest.mark.parametrize("truncation, num_workers", [(3, 1), (2, 3)])
def test_zero_synthesizer_is_truncated_bptt(truncation, num_workers):
    system, theta = rnn_system(n=3, m=2, horizon=7), rnn_theta(n=3, m=2)
    dni = unroll.dni(system, truncation=truncation, num_workers=num_workers, synthesizer_optimizer=FROZEN)
    tbptt = unroll.truncated_bptt(system, truncation=truncation, num_workers=num_workers)
    for a, b in zip(_windows(dni, theta, 7), _windows(tbptt, theta, 7)):
        assert _max_diff(a, b) < 1e-12


def _oracle(system, theta):
    """S(s, t) = d/ds of the episode's remaining losses from state s at time t (exact)."""
    template = system.init(theta, KEY)
    _, unravel = ravel_pytree(inexact_leaves(template))

    def remaining(flat, t):
        def body(state, k):
            new_state, loss = system.step(theta, state, k)
            keep = k >= t
            state = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new_state, state)
            return state, jnp.where(keep, loss, 0.0)

        state = with_inexact_leaves(template, unravel(flat))
        return jnp.sum(jax.lax.scan(body, state, jnp.arange(system.horizon))[1])

    return unroll.Synthesizer(lambda key, size, dtype: (), lambda phi, s, t: jax.grad(remaining)(s, t))


@pytest.mark.parametrize("problem", ["rnn", "rnn_learned_h0"])
def test_oracle_synthesizer_is_full_bptt(problem):
    """7 windows of 3 steps cover 3 episodes of 7: their mean is the episode gradient."""
    system = rnn_system(n=3, m=2, horizon=7, learned_h0=problem == "rnn_learned_h0")
    theta = rnn_theta(n=3, m=2)
    est = unroll.dni(system, truncation=3, synthesizer=_oracle(system, theta), synthesizer_optimizer=FROZEN)
    mean = tree_mean(_windows(est, theta, 7))
    assert _max_diff(mean, unroll.exact_gradient(system, theta, KEY)) < 1e-10
    # and the bootstrapped targets are what the oracle predicts: its training loss is zero
    state = est.init(theta, KEY)
    for _ in range(4):
        _, state, info = jax.jit(est.estimate)(theta, state, KEY)
        assert float(info["synthesizer_loss"]) < 1e-20


@pytest.mark.slow
def test_trained_synthesizer_beats_truncated_bptt_on_long_dependencies():
    """Influence balancing (T = 200): truncated BPTT with K = 10 points the wrong way; a
    linear synthesizer trained online at a fixed theta recovers the long-range influence."""
    system = unroll.tasks.influence_balancing(200)
    theta = jnp.asarray(0.5)
    exact = float(unroll.exact_gradient(system, theta, KEY))

    def mean_after_training(est, train_windows=3000, eval_windows=200):
        def run(state, keys):
            def body(state, key):
                grad, state, _ = est.estimate(theta, state, key)
                return state, grad

            return jax.lax.scan(body, state, keys)

        run = jax.jit(run)
        state, _ = run(est.init(theta, KEY), jax.random.split(jax.random.key(1), train_windows))
        return float(jnp.mean(run(state, jax.random.split(jax.random.key(2), eval_windows))[1]))

    dni = mean_after_training(unroll.dni(system, truncation=10, num_workers=10, synthesizer_optimizer=optax.adam(1e-2)))
    tbptt = mean_after_training(unroll.truncated_bptt(system, truncation=10, num_workers=10))
    print(f"exact {exact:.3f}, dni {dni:.3f}, truncated bptt {tbptt:.3f}")
    assert np.sign(dni) == np.sign(exact) != np.sign(tbptt)  # cosine +1 vs -1 (theta is a scalar)
    assert abs(dni - exact) < 0.1 * abs(exact) < abs(tbptt - exact)


def test_complex_state_is_refused():
    from tests.test_rtrl import diagonal_system, diagonal_theta

    with pytest.raises(TypeError, match="dni.*complex.*rtrl"):
        unroll.dni(diagonal_system(), truncation=2).init(diagonal_theta(), KEY)


def test_mlp_synthesizer_starts_at_zero_and_learns():
    """The MLP's output layer starts at zero (= truncated BPTT); training moves it."""
    system, theta = rnn_system(n=3, m=2, horizon=7), rnn_theta(n=3, m=2)
    est = unroll.dni(system, truncation=3, synthesizer=unroll.mlp_synthesizer(8))
    first = _windows(est, theta, 1)[0]
    assert _max_diff(first, _windows(unroll.truncated_bptt(system, truncation=3), theta, 1)[0]) < 1e-12
    state = est.init(theta, KEY)
    for _ in range(3):
        _, state, _ = jax.jit(est.estimate)(theta, state, KEY)
    assert float(jnp.max(jnp.abs(state.shared.params["W2"]))) > 0
