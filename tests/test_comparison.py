"""``unroll.compare``: equal budgets (outer steps, system steps, seconds), a summary that rebuilds
every estimator, and the report."""

import json

import jax
import numpy as np
import pytest

import unroll
from tests import user_task
from unroll import _task_loader as task_loader
from unroll import cli, comparison, registry
from unroll.comparison import Budget, parse_budget

ESTIMATORS = ["full-bptt", "tbptt-5", "pes"]


@pytest.fixture(scope="module")
def lotka(tmp_path_factory):
    return task_loader.load_task(f"{user_task.write(tmp_path_factory.mktemp('task'))}:make").task


def test_system_steps_give_every_estimator_the_same_total_within_one_outer_step(lotka, tmp_path):
    """Per outer step: full-bptt 2 workers x 30 steps = 60, tbptt-5 2 x 5 = 10, pes 2 x 8 x 10 = 160;
    a budget of 1000 system steps is 16, 100 and 6 outer steps."""
    _, summary = unroll.compare(
        lotka, ESTIMATORS, seeds=1, budget="system-steps=1000", out_dir=str(tmp_path), progress=False
    )
    entries = summary["estimators"]
    assert {n: e["inner_steps_per_outer_step"] for n, e in entries.items()} == {
        "full-bptt": 60,
        "tbptt-5": 10,
        "pes": 160,
    }
    assert {n: e["outer_steps_run"] for n, e in entries.items()} == {"full-bptt": 16, "tbptt-5": 100, "pes": 6}
    for entry in entries.values():
        assert 0 <= 1000 - entry["system_steps"] < entry["inner_steps_per_outer_step"]
    assert summary["budget"]["kind"] == "system-steps" and summary["budget"]["amount"] == 1000


def test_system_steps_without_an_amount_are_those_of_the_first_estimators_steps(lotka, tmp_path):
    _, summary = unroll.compare(
        lotka, ["tbptt-5", "full-bptt"], steps=12, seeds=1, budget="system-steps", out_dir=str(tmp_path), progress=False
    )
    assert summary["budget"]["amount"] == 12 * 10
    assert [e["system_steps"] for e in summary["estimators"].values()] == [120, 120]


def test_seconds_give_every_estimator_the_same_training_time(lotka, tmp_path):
    """Each estimator's schedule is sized by its short timed run (its outer steps per second times
    the budget) and carries the budget as its time limit; a run that stopped before its schedule
    ended had reached the limit. How far past the limit a run goes is not asserted here: that is the
    loaded machine's pauses (a CI run measured 1.74 s for a 1.0 s limit with 0.26 ms steps). The
    stopping rule itself is tested exactly, on a clock the test controls, in test_train.py."""
    limit = 1.0
    _, summary = unroll.compare(
        lotka, ["tbptt-5", "pes"], seeds=1, budget=f"seconds={limit}", out_dir=str(tmp_path), progress=False
    )
    for name, entry in summary["estimators"].items():
        calibration = entry["calibration"]
        assert entry["time_limit_s"] == limit and calibration["outer_steps"] >= 1, name
        rate = calibration["outer_steps"] / calibration["seconds"]
        assert entry["outer_steps"] == max(1, int(rate * limit)), name
        assert 1 <= entry["outer_steps_run"] <= entry["outer_steps"], name
        if entry["outer_steps_run"] < entry["outer_steps"]:
            assert entry["train_time_s"] >= limit - 0.01, name


def test_seconds_without_an_amount_are_the_first_estimators_time(lotka, tmp_path):
    _, summary = unroll.compare(
        lotka, ["tbptt-5", "full-bptt"], steps=30, seeds=1, budget="seconds", out_dir=str(tmp_path), progress=False
    )
    first, second = summary["estimators"].values()
    assert first["outer_steps_run"] == 30 and first["time_limit_s"] is None
    assert second["time_limit_s"] == pytest.approx(first["train_time_s"], abs=0.01)
    assert summary["budget"]["amount"] == second["time_limit_s"]


@pytest.mark.parametrize(
    "budget, parsed",
    [
        ("outer-steps", Budget("outer-steps", None)),
        ("system-steps=2e5", Budget("system-steps", 200_000)),
        ("seconds=1.5", Budget("seconds", 1.5)),
        (("seconds", 3), Budget("seconds", 3.0)),
    ],
)
def test_budgets_parse(budget, parsed):
    assert parse_budget(budget) == parsed


@pytest.mark.parametrize(
    "budget, needle",
    [
        ("minutes=3", "unknown budget kind 'minutes'"),
        ("seconds=0", "the amount must be positive"),
        ("seconds=-1", "the amount must be positive"),
        ("outer-steps=2.5", "counted in whole steps"),
        ("seconds=abc", "the amount must be a number"),
    ],
)
def test_bad_budgets_fail_before_any_run(budget, needle, lotka, tmp_path):
    with pytest.raises(ValueError, match=needle):
        unroll.compare(lotka, ["tbptt-5"], budget=budget, out_dir=str(tmp_path), progress=False)
    assert not (tmp_path / "checkpoints").exists()


def _first_gradient(estimator, theta):
    key = jax.random.key(3)
    state = jax.jit(estimator.init)(theta, key)
    return jax.jit(estimator.estimate)(theta, state, jax.random.fold_in(key, 1))[0]


@pytest.mark.parametrize("source", ["user", "built-in"])
def test_the_summary_rebuilds_every_estimator(source, lotka, tmp_path):
    """From summary.json alone (family and settings) each estimator is rebuilt and gives the same
    first gradient as the one the comparison ran."""
    if source == "user":
        task, reference, options = lotka, lotka, None
    else:
        options = {"horizon": 40}
        task, reference = task_loader.load_task("influence-balancing", options).task, "influence-balancing"
    names = ["pes", "checkpointed-bptt"]
    _, summary = unroll.compare(
        reference, names, steps=2, seeds=1, task_options=options, out_dir=str(tmp_path), progress=False
    )
    summary = json.loads((tmp_path / "summary.json").read_text())  # as written, through JSON
    assert summary["task_options"] == (options or {})
    for name in names:
        entry = summary["estimators"][name]
        rebuilt = registry.ESTIMATORS[entry["family"]].constructor(task.system, **entry["settings"])
        ran = comparison.build_estimator(task, *comparison.parse_estimator(name, task))
        jax.tree_util.tree_map(
            np.testing.assert_array_equal, _first_gradient(rebuilt, task.theta), _first_gradient(ran, task.theta)
        )
    assert summary["estimators"]["pes"]["settings"]["num_particles"] == task.settings["num_particles"]


def test_the_report_holds_the_table_the_reference_the_budget_the_plot_and_the_command(lotka, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('estimators = ["tbptt-5", "full-bptt"]\nseeds = 1\nsteps = 4\n[task_options]\nhorizon = 16\n')
    out = tmp_path / "run"
    task_file = tmp_path / "lotka.py"
    task_file.write_text(user_task.SOURCE)
    argv = ["compare", f"{task_file}:make", "--config", str(config), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"] == {
        "estimators": ["tbptt-5", "full-bptt"],
        "seeds": 1,
        "steps": 4,
        "task_options": {"horizon": 16},
    }
    assert summary["horizon"] == 16 and "lotka (horizon 16)" in printed
    report = (out / "report.md").read_text()
    table = comparison.summary_text(summary)
    assert table in report and table in printed
    assert "* `true_a`: 1.0" in report and "4 outer steps per estimator" in report
    assert "![objective against outer steps, system steps and training time](curves.png)" in report
    assert f"unroll compare {task_file}:make --config {config} --out {out} --no-progress" in report


def test_a_python_call_records_itself_as_the_command(lotka, tmp_path):
    _, summary = unroll.compare(lotka, ["tbptt-5"], steps=2, seeds=1, out_dir=str(tmp_path), progress=False)
    assert summary["command"] == (
        "unroll.compare(<Task 'lotka'>, estimators=['tbptt-5'], steps=2, seeds=1, budget='outer-steps=2', seed=0)"
    )


def test_a_seconds_budget_resumes_with_the_steps_it_was_sized_to(lotka, tmp_path):
    """The calibrated outer steps are kept beside the checkpoint: the same comparison into the
    same folder reads the finished run back (same steps, same final objective) instead of
    calibrating anew."""
    run = lambda: unroll.compare(
        lotka, ["tbptt-5"], seeds=1, budget="seconds=0.5", out_dir=str(tmp_path), progress=False
    )[1]["estimators"]["tbptt-5"]
    first, again = run(), run()
    assert again["calibration"] == first["calibration"] and again["outer_steps"] == first["outer_steps"]
    assert again["final_objective"] == first["final_objective"]
    kept = json.loads((tmp_path / "checkpoints" / "tbptt-5.allowance.json").read_text())
    assert kept["num_steps"] == first["outer_steps"] and kept["time_limit"] == 0.5
