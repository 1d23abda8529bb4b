"""benchmarks/device.py, the one prepared GPU run: its quick form runs every part here, so it
cannot rot between the rare runs on a lent GPU; its clock, its predictions and where it may
write are checked without measuring anything."""

import importlib.metadata
import math
import os

import jax
import pytest

from benchmarks import device

PLATFORM = jax.devices()[0].platform
NAMES = ("parallel_time", "pes_throughput", "checkpoint_memory")


def _read(out_dir, name):
    path = os.path.join(out_dir, f"{name}-{device.platform_name()}.md")
    assert os.path.exists(path), os.listdir(out_dir)
    return open(path).read()


def test_device_script_runs_quick(tmp_path):
    """Every part at tiny sizes (one solver: each adds seconds of compiling); each file has
    the device line and a table row of each of its parts, and nothing failed."""
    written = device.main(["--quick", "--solvers", "quasi-deer", "--out-dir", str(tmp_path)])
    assert sorted(written) == sorted(NAMES)
    rows = {
        "parallel_time": ["| lru | 32 | 100 |", "| tanh | 8 | 50 | quasi-deer |"],
        "pes_throughput": ["| 16 | 8 |"],
        "checkpoint_memory": ["| 50 | full_bptt |", "| 50 | checkpointed_bptt | 5 |"],
    }
    for name in NAMES:
        text = _read(tmp_path, name)
        assert f"platform {PLATFORM}" in text and f"jax {jax.__version__}" in text and "Date: " in text
        for row in rows[name]:
            assert row in text, (name, row, text)
        assert ": failed after" not in text, text  # a part that raised (skips, e.g. evosax not installed, are fine)
        assert ": skipped (" not in text, text  # a case skipped for time (evosax not installed is a note, fine)


def test_device_script_skips_past_its_budget(tmp_path):
    """With no time left every case is skipped, said so in each file, and nothing runs."""
    device.main(["--quick", "--budget-s", "0", "--out-dir", str(tmp_path)])
    for name in NAMES:
        text = _read(tmp_path, name)
        assert "Device: " in text and "skipped (" in text and "|---" not in text


def test_the_prediction_is_a_line_through_the_last_two():
    costs = device.Costs()
    assert costs.predict("a", 10) is None
    costs.record("a", 10, 2.0)
    assert costs.predict("a", 100) == pytest.approx(20.0)  # through the origin after one
    costs.record("a", 100, 11.0)
    assert costs.predict("a", 1000) == pytest.approx(11.0 + 0.1 * 900)
    costs.record("b", 10, 5.0)
    costs.record("b", 100, 4.0)  # noise: never predicted below the last
    assert costs.predict("b", 1000) == 4.0
    costs.record("c", 10, None)  # skipped or failed: the larger ones are not tried
    assert costs.predict("c", 100) == math.inf
    assert costs.predict("d", 10) == 5.0  # none of its own: the slowest other at its size


def test_a_cpu_run_never_writes_into_benchmarks_results(capsys):
    if PLATFORM != "cpu":
        pytest.skip("the refusal is a CPU run's")
    for argv in (["--out-dir", device.RESULTS], ["--quick", "--out-dir", device.RESULTS]):
        with pytest.raises(SystemExit):
            device.main(argv)
    assert "benchmarks/results" in capsys.readouterr().err


def test_stage_deps_copies_what_the_device_lacks(tmp_path):
    pytest.importorskip("evosax")
    device.main(["--stage-deps", str(tmp_path)])
    assert (tmp_path / "evosax" / "__init__.py").exists() and (tmp_path / "dotmap").is_dir()
    assert not list(tmp_path.rglob("*.pyc"))
    found = importlib.metadata.distributions(path=[str(tmp_path)])
    assert {d.metadata["Name"].lower() for d in found} == set(device.STAGED)


def test_the_checkpoint_prediction_scales_what_runs_again():
    """Each method that runs at the next T, by its forward steps, times the runs, plus the
    last T's compile time: not ours at an m of the last T alone, nor what is left out."""
    from benchmarks.checkpoint_memory import Row
    from unroll.checkpointing import plan

    rows = [
        Row(1000, "full_bptt", None, 0, 1.0, None, 0.0),
        Row(1000, "checkpointed_bptt", 10, 0, 2.0, None, 0.0),  # not at the next T
        Row(1000, "checkpointed_bptt", 100, 0, 3.0, None, 0.0),
        Row(1000, "checkpointed_bptt", 64, 0, 4.0, None, 0.0),  # the benchmark's own m: comes again
        Row(1000, "equinox", 100, 0, 5.0, None, 0.0),  # left out
        Row(1000, "nested", 32, 0, 6.0, None, 0.0),
    ]
    runs, compiles = 3, 7.0
    wall = compiles + runs * sum(r.seconds for r in rows)
    ratio = lambda m: plan(10_000, m).forward_steps / plan(1000, m).forward_steps
    expected = compiles + runs * (10 * 1.0 + 3.0 * ratio(100) + 4.0 * ratio(64) + 10 * 6.0)
    predicted = device.checkpoint_prediction(rows, wall, (10, 100), 10_000, (100,), {("equinox", 100)}, runs - 1)
    assert predicted == pytest.approx(expected)


def test_a_solver_that_fails_is_found_alone_and_left_out(tmp_path, monkeypatch):
    """Where the solvers fail together on a system's first case, each runs alone there; the
    run goes on without the one that failed, and says so."""
    from benchmarks import parallel_time

    calls = []

    def fake(cell, width, horizon, budget_s, max_repeats, solvers):
        calls.append((horizon, tuple(solvers)))
        if "broken" in solvers:
            raise ValueError("this solver breaks here")
        fields = dict.fromkeys(parallel_time.DeerRow._fields, 1)
        fields.update(cell=cell, width=width, horizon=horizon, adjoint_iterations=None, forward_converged=True)
        return [parallel_time.DeerRow(**(fields | {"solver": s})) for s in solvers]

    monkeypatch.setattr(parallel_time, "measure_deer_case", fake)
    settings = device.QUICK._replace(
        solvers=("deer", "broken", "quasi-deer"), solver_cases=((50, "tanh", 8), (100, "tanh", 8))
    )
    report = device.Report(str(tmp_path / "solvers.md"), "solvers", "test")
    rows = device.run_solvers(settings, device.Clock(60), report)
    assert calls == [
        (50, ("deer", "broken", "quasi-deer")),
        (50, ("deer",)),
        (50, ("broken",)),
        (50, ("quasi-deer",)),
        (100, ("deer", "quasi-deer")),
    ]
    assert [(r.horizon, r.solver) for r in rows] == [
        (50, "deer"),
        (50, "quasi-deer"),
        (100, "deer"),
        (100, "quasi-deer"),
    ]
    text = (tmp_path / "solvers.md").read_text()
    assert "broken alone: failed" in text and "going on with deer, quasi-deer (left out: broken)" in text
