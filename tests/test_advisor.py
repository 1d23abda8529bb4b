"""``unroll.advise`` on small systems: every figure of a row against an independent
computation, the rule's consequences on a contracting and a chaotic system, the
noisy-reference trap, and bad input. (The built-in tasks: ``test_advisor_tasks.py``.)"""

import math
import statistics
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import unroll
from tests.systems import gain_theta, rnn_system
from unroll import advisor
from unroll.advisor import _advise, _measure
from unroll.diagnostics import gradient_quality, outlook_from_exponent


def pendulum(horizon: int = 600, dt: float = 0.1) -> unroll.System:
    """A driven damped pendulum (chaotic at drive 1.2, damping 0.5, drive frequency 2/3): state
    (angle, velocity) from a uniform random start; loss ``1 - cos(angle)`` (its height)."""

    def init(theta, key):
        return jax.random.uniform(key, (2,), jnp.result_type(theta["drive"]), -1.0, 1.0)

    def step(theta, state, t):
        angle, velocity = state[0], state[1]
        drive = theta["drive"] * jnp.cos(2.0 / 3.0 * dt * t)
        velocity = velocity + dt * (-theta["damping"] * velocity - jnp.sin(angle) + drive)
        angle = angle + dt * velocity
        return jnp.stack([angle, velocity]), 1.0 - jnp.cos(angle)

    return unroll.System(init, step, horizon)


PENDULUM_THETA = {"drive": jnp.asarray(1.2), "damping": jnp.asarray(0.5)}


def contracting_task(horizon: int = 200) -> unroll.Task:
    """A 16-unit tanh RNN with recurrent gain 0.3: it forgets within a few steps."""
    system = rnn_system(n=16, m=2, horizon=horizon)
    settings = {"num_workers": 4, "num_particles": 20}
    return unroll.Task(system, gain_theta(0.3, n=16, m=2), name="contracting", settings=settings)


@pytest.fixture(scope="module")
def contracting():
    task = contracting_task()
    return task, unroll.advise(task, candidates=["full-bptt", "tbptt-10", "pes-10", "uoro"], seconds=60, progress=False)


def test_contracting_short_memory_recommends_a_fast_truncation(contracting):
    """Memory of a few steps: tbptt-10's gradient is the exact one to within 1% (cosine > 0.99), and
    its windows cost a twentieth of an episode (and less than UORO's forward-mode windows on 16
    units): it wins on speed."""
    task, advice = contracting
    assert not advice.chaotic and not advice.exploding and advice.exponent < -0.5
    assert advice.reference == "exact"
    assert advice.recommendation.label == "tbptt-10", advice.to_markdown()
    rows = {row.label: row for row in advice.rows}
    assert rows["tbptt-10"].cosine > 0.99
    assert rows["tbptt-10"].progress_per_second > rows["full-bptt"].progress_per_second
    assert rows["tbptt-10"].seconds < rows["full-bptt"].seconds
    # the recommendation builds, and it is the estimator the row measured
    estimator = advice.estimator()
    grad, _, info = estimator.estimate(task.theta, estimator.init(task.theta, jax.random.key(0)), jax.random.key(1))
    assert int(info["steps"]) == 4 * 10
    assert advice.recommendation.python == "unroll.truncated_bptt(system, truncation=10, num_workers=4)"


def test_every_row_figure_matches_an_independent_computation(contracting):
    """seconds against a direct timing, system steps against the contract's count, cosine, SNR and
    bias against gradient_quality, progress against its formula, the reference against
    exact_gradient."""
    task, advice = contracting
    theta = task.theta
    exact = unroll.exact_gradient(task.system, theta, jax.random.key(5), 4)  # deterministic system
    np.testing.assert_allclose(ravel_pytree(advice.reference_gradient)[0], ravel_pytree(exact)[0], rtol=1e-9)
    steps = {"full-bptt": 4 * 200, "tbptt-10": 4 * 10, "pes-10": 4 * 20 * 10, "uoro-10": 4 * 10}
    measured = [row for row in advice.rows if math.isfinite(row.progress_per_second)]
    assert {row.label for row in measured} == set(steps)
    for row in measured:
        assert row.system_steps == steps[row.label]
        estimator = unroll.registry.get(row.name).constructor(task.system, **row.settings)
        state = estimator.init(theta, jax.random.key(0))
        compiled = jax.jit(estimator.estimate).lower(theta, state, jax.random.key(0)).compile()
        jax.block_until_ready(compiled(theta, state, jax.random.key(0)))
        times = []
        for i in range(7):
            tick = time.perf_counter()
            jax.block_until_ready(compiled(theta, state, jax.random.key(i)))
            times.append(time.perf_counter() - tick)
        direct = statistics.median(times)
        assert direct / 4 < row.seconds < direct * 4, (row.label, row.seconds, direct)  # a shared, noisy machine
        assert row.memory == advisor.compiled_memory(compiled)
        assert row.num_samples == _measure.NUM_SAMPLES  # all of them: their keys are gradient_quality's
        quality = gradient_quality(
            estimator,
            theta,
            jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 3), row.quality_index),
            row.num_samples,
            advice.reference_gradient,
            row.windows_per_sample,
            reference_error=advice.reference_standard_error,
        )
        assert row.cosine == pytest.approx(quality.cosine_of_mean, rel=1e-9)
        assert row.snr == pytest.approx(quality.window_snr, rel=1e-9)
        assert row.bias_z == pytest.approx(quality.bias_z, rel=1e-9)
        assert row.relative_bias == pytest.approx(quality.relative_bias, rel=1e-9)
        fraction = 1.0 if math.isinf(row.snr) else row.snr / (1 + row.snr)
        assert row.progress == pytest.approx(max(row.cosine, 0) ** 2 * fraction)
        assert row.progress_per_second == pytest.approx(row.progress / row.seconds)


def test_compiled_memory_grows_with_the_stored_trajectory():
    """full-bptt keeps every state of its episodes: doubling the horizon adds about W T states of
    bytes to the compiled memory the advisor reports (an independent account of the figure)."""
    memories = {}
    for horizon in (200, 400):
        task = unroll.Task(
            rnn_system(n=8, m=2, horizon=horizon), gain_theta(0.3, n=8, m=2), settings={"num_workers": 4}
        )
        advice = unroll.advise(task, candidates=["full-bptt"], seconds=30, progress=False)
        memories[horizon] = advice.rows[0].memory
    added = memories[400] - memories[200]
    trajectory = 4 * 200 * 8 * 8  # workers x added steps x state floats x bytes (float64)
    # about W T states: full_bptt compiles to jax.grad's scan, which XLA may store in a little under a state a step
    # (measured 0.91 of it)
    assert trajectory / 2 <= added <= 4 * trajectory, (added, trajectory)


def test_window_count_covers_each_step_equally():
    for horizon, truncation, workers in [(1000, 10, 10), (1000, 1, 10), (1000, 100, 10), (400, 10, 4), (7, 3, 2)]:
        n = advisor.windows_per_sample(horizon, truncation, workers)
        offsets = (np.arange(workers) * horizon) // workers
        counts = np.zeros(horizon, int)
        for offset in offsets:
            np.add.at(counts, (offset + np.arange(n * truncation)) % horizon, 1)
        assert len(set(counts)) == 1, (horizon, truncation, workers, n)


def test_chaotic_pendulum_exact_estimator_is_not_biased_against_a_noisy_reference():
    """The trap a user found: against exact_gradient over finitely many episodes, full_bptt read as
    biased because bias_z ignored the reference's own error. Counting it, it does not."""
    system = pendulum()
    key = jax.random.key(0)
    per_episode = jax.jit(jax.vmap(lambda k: jax.grad(lambda th: unroll.episode_loss(system, th, k))(PENDULUM_THETA)))
    estimator = unroll.full_bptt(system, num_workers=8)
    plain, counted = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(3):
            samples = per_episode(jax.random.split(jax.random.fold_in(key, seed), 16))
            reference = jax.tree_util.tree_map(lambda s: s.mean(axis=0), samples)
            counted.append(gradient_quality(estimator, PENDULUM_THETA, key, 32, reference, reference_samples=samples))
            plain.append(gradient_quality(estimator, PENDULUM_THETA, key, 32, reference))
    # the reference of 16 episodes is noisier than the estimator's 256 (heavy tails: not every time)
    assert any("limits the bias" in str(w.message) for w in caught)
    assert max(p.bias_z for p in plain) > advisor.BIAS_Z  # the trap: read as biased
    assert all(q.bias_z < advisor.BIAS_Z for q in counted), [q.bias_z for q in counted]
    assert all(p.bias_z > q.bias_z for p, q in zip(plain, counted))


def test_chaotic_pendulum_advice_smooths_the_reference_and_does_not_call_bptt_biased():
    task = unroll.Task(pendulum(), PENDULUM_THETA, name="pendulum", settings={"num_workers": 4, "sigma": 0.05})
    advice = unroll.advise(task, candidates=["full-bptt", "es"], seconds=40, progress=False)
    assert advice.chaotic and advice.exponent > 0
    assert advice.reference == "smoothed, sigma=0.05"
    rows = {row.label: row for row in advice.rows}
    assert "biased" not in rows["full-bptt"].verdict
    assert advice.recommendation is not None and advice.recommendation.name == "es"


def test_gradient_quality_counts_the_reference_error_in_closed_form():
    system = rnn_system(n=3, m=2, horizon=6)
    theta = gain_theta(0.5)
    estimator = unroll.uoro(system, truncation=3)
    exact = unroll.exact_gradient(system, theta, jax.random.key(0))
    error = jax.tree_util.tree_map(lambda g: 0.01 + 0.0 * g, exact)
    quality = gradient_quality(estimator, theta, jax.random.key(1), 64, exact, 2, reference_error=error)
    samples = np.asarray(quality.samples)
    bias = samples.mean(axis=0) - np.asarray(ravel_pytree(exact)[0])
    z = np.abs(bias) / np.sqrt(samples.std(axis=0) ** 2 / 64 + 0.01**2)
    assert quality.bias_z == pytest.approx(z.max(), rel=1e-9)
    assert quality.reference_error == pytest.approx(0.01 * math.sqrt(samples.shape[1]))
    noise = np.sum(samples.std(axis=0) ** 2 / 64 + 0.01**2)
    excess = math.sqrt(max(np.sum(bias**2) - noise, 0.0))
    assert quality.relative_bias == pytest.approx(excess / np.linalg.norm(ravel_pytree(exact)[0]), rel=1e-9)
    with pytest.raises(ValueError, match="not both"):
        gradient_quality(estimator, theta, jax.random.key(1), 8, exact, reference_error=error, reference_samples=exact)


def test_parallel_outlook_speaks_of_evaluation_speed_only():
    for exponent in (-0.5, 0.01):
        rule = outlook_from_exponent(exponent, 1000, "deer").rule
        assert "prefer" not in rule and "evaluation" in rule


def test_bad_input_fails_clearly():
    task = contracting_task(horizon=40)
    with pytest.raises(ValueError, match=r"`seconds`=1 is below"):
        unroll.advise(task, seconds=1)
    with pytest.raises(TypeError, match="`seconds` must be a number"):
        unroll.advise(task, seconds="fast")
    with pytest.raises(ValueError, match="unknown candidate 'bptt'; choose from full-bptt"):
        unroll.advise(task, candidates=["bptt"])
    with pytest.raises(ValueError, match="full-bptt takes no truncation"):
        unroll.advise(task, candidates=["full-bptt-10"])
    with pytest.raises(ValueError, match="`memory_budget`='lots'"):
        unroll.advise(task, memory_budget="lots")


def test_a_memory_budget_nothing_fits_gives_no_recommendation_and_says_why():
    task = contracting_task(horizon=40)
    advice = unroll.advise(task, candidates=["full-bptt", "tbptt-10"], memory_budget=64, seconds=30, progress=False)
    assert advice.recommendation is None
    assert all("over budget" in row.verdict for row in advice.rows)
    assert "no candidate fits the memory budget of 64 B" in advice.reasons[-1]
    with pytest.raises(ValueError, match="No recommendation: no candidate fits"):
        advice.estimator()
    assert "**No recommendation**" in advice.to_markdown()


def test_a_tight_time_budget_skips_candidates_and_says_so():
    task = contracting_task(horizon=40)
    names = ["full-bptt", "tbptt-10", "pes", "nres", "es", "uoro", "forward", "rtrl", "tes", "gpes", "dni"]
    advice = unroll.advise(task, candidates=names, seconds=12, progress=False)
    assert advice.seconds < 1.5 * 12  # the budget holds, up to one measurement's overrun (on a loaded machine)
    assert advice.skipped, "12 s cannot measure eleven candidates and their grids"
    assert all(row.verdict != "recommended" for row in advice.rows if row.verdict == "not measured")
    assert "Not measured in the time given" in advice.to_markdown()


def test_advice_to_json_round_trips_its_figures(contracting):
    import json

    _, advice = contracting
    data = json.loads(advice.to_json())
    assert data["recommendation"]["label"] == advice.recommendation.label
    assert data["reference"] == "exact" and data["chaotic"] is False
    assert len(data["rows"]) == len(advice.rows)
    assert data["rows"][0]["progress_per_second"] == pytest.approx(advice.rows[0].progress_per_second)


def test_a_budget_the_system_measurements_use_up_is_an_error_naming_the_figures(monkeypatch):
    task = contracting_task(horizon=40)
    monkeypatch.setattr(_advise._Clock, "left", lambda self: 0.5)  # as if the measurements took it all
    with pytest.raises(ValueError, match=r"`seconds`=30 leaves no time for a candidate: .* took .* s"):
        unroll.advise(task, candidates=["full-bptt"], seconds=30, progress=False)


def test_checkpointed_bptt_stands_in_where_full_bptt_is_over_the_memory_budget(contracting):
    """Between checkpointed-bptt's memory and full-bptt's, full-bptt is over budget and
    checkpointed-bptt, with the slots the budget leaves, fits and computes the same exact gradient."""
    task, measured = contracting
    full = {row.label: row for row in measured.rows}["full-bptt"].memory
    trajectory = 4 * 200 * 16 * 8  # workers x steps x state bytes (float64)
    budget = full - trajectory // 2
    advice = unroll.advise(
        task, candidates=["full-bptt", "checkpointed-bptt"], memory_budget=budget, seconds=40, progress=False
    )
    rows = {row.label: row for row in advice.rows}
    assert rows["full-bptt"].verdict == "over budget"
    checkpointed = rows["checkpointed-bptt"]
    assert checkpointed.verdict == "recommended", advice.to_markdown()
    assert 0 < checkpointed.memory <= budget
    assert 1 <= checkpointed.settings["memory_budget"] < 200
    assert checkpointed.relative_bias < 1e-6 and checkpointed.cosine > 1 - 1e-9
