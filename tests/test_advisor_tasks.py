"""``unroll.advise`` on the built-in tasks agrees with their committed studies
(``experiments/results``): the estimators a study found to miss its answer are marked
biased or exploding, and the recommendation is one the study found to reach it. Each case
names the candidates of its study (small settings where the study is slow)."""

import dataclasses

import pytest

import unroll
from unroll import load_task

# four whole advisor runs, about 90 s in all. Their budgets are generous so that a loaded machine measures
# every candidate (a run ends when they are measured; only the reference's share grows with `seconds`, and it
# is spent in full only where the reference cannot reach its target, as at T = 10,000: 12 s of 60)
pytestmark = pytest.mark.slow


def _verdicts(advice) -> dict:
    return {row.label: row.verdict for row in advice.rows}


def test_influence_balancing_recommends_an_unbiased_estimator():
    """experiments/results/influence-balancing: tbptt-1, -10, -100 and tes miss theta*; pes, nres,
    forward, rtrl and full-bptt reach it."""
    task = load_task("influence-balancing").task
    study = ["tbptt-1", "tbptt-10", "tbptt-100", "tes", "pes", "rtrl", "full-bptt"]  # forward, nres: as pes
    advice = unroll.advise(task, candidates=study, grid=False, seconds=120, progress=False)
    verdicts = _verdicts(advice)
    for label in ("tbptt-1", "tbptt-10", "tbptt-100", "tes-10"):
        assert "biased" in verdicts[label], advice.to_markdown()
    assert advice.recommendation.name in {"pes", "rtrl", "full-bptt"}
    assert not advice.chaotic and advice.reference == "exact"


def test_lr_schedule_recommends_one_the_study_found_within_two_percent():
    """experiments/results/lr-schedule: pes, nres, es and full-bptt end within 2% of the grid
    optimum; tbptt-10 and tes do not (here at horizon 100 and 16 particles, to be quick)."""
    task = load_task("lr-schedule", {"horizon": 100}).task
    task = dataclasses.replace(task, settings={**task.settings, "num_particles": 16})
    study = ["pes", "nres", "es", "full-bptt", "tbptt-10", "tes"]
    advice = unroll.advise(task, candidates=study, grid=False, seconds=120, progress=False)
    verdicts = _verdicts(advice)
    assert "biased" in verdicts["tbptt-10"] and "biased" in verdicts["tes-10"], advice.to_markdown()
    assert advice.recommendation.name in {"pes", "nres", "es", "full-bptt"}


def test_lorenz_at_an_exploding_horizon_is_chaotic_and_gets_an_es_estimator():
    """experiments/results/lorenz: at horizon 800 BPTT's gradient norm has grown hundreds of times
    (0.688 at 10 steps to 268 at 800 from theta_0) while ES's stays bounded."""
    task = load_task("lorenz", {"horizon": 800}).task
    candidates = ["full-bptt", "rtrl", "uoro", "tbptt-10", "pes", "es"]
    advice = unroll.advise(task, candidates=candidates, grid=False, seconds=120, progress=False)
    assert advice.chaotic and advice.exploding and advice.reference.startswith("smoothed")
    verdicts = _verdicts(advice)
    for label in ("full-bptt", "rtrl-10", "uoro-10"):
        assert "exploding" in verdicts[label], advice.to_markdown()
    assert advice.recommendation.name in {"pes", "es"}


def test_long_dependency_at_ten_thousand_steps_recommends_parallel_bptt():
    """experiments/results/long-dependency: at T = 10,000 the GILR-LSTM trained by parallel_bptt
    reaches 100% while truncated BPTT stays near chance. Here full-bptt and parallel-bptt compute
    the same exact gradient (one quality measurement, shared, sampled on the faster: the parallel scan)."""
    task = load_task("long-dependency", {"horizon": 10_000}).task
    candidates = ["full-bptt", "parallel-bptt", "tbptt-100"]
    # 60 s: with 40 a loaded CI run (two workers on two cores) left no candidate measured in time
    advice = unroll.advise(task, candidates=candidates, grid=False, seconds=60, progress=False)
    assert advice.recommendation is not None, advice.to_markdown()
    assert advice.recommendation.name == "parallel-bptt", advice.to_markdown()
    rows = {row.label: row for row in advice.rows}
    assert rows["parallel-bptt"].seconds < rows["full-bptt"].seconds
    assert rows["parallel-bptt"].cosine == rows["full-bptt"].cosine  # shared: the same estimate,
    assert "the same exact estimate as parallel-bptt" in rows["full-bptt"].note  # sampled on the faster one
