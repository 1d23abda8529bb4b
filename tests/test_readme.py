"""The README's tour runs as written and its claims hold."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")


@pytest.mark.slow
def test_tour_runs_and_recovers_the_oscillator(capsys):
    with open(README) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert blocks, "README has no python block"
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    for name in ("full BPTT", "PES (10)"):
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        stiffness, damping = (float(x) for x in re.findall(r"(?:stiffness|damping) ([\d.]+)", line))
        assert stiffness == pytest.approx(4.0, abs=0.05) and damping == pytest.approx(0.3, abs=0.02), line


def test_readme_test_command_is_what_ci_runs():
    with open(README) as f:
        readme = f.read()
    with open(os.path.join(os.path.dirname(README), ".ci", "run")) as f:
        ci = f.read()
    command = re.search(r"\*\*Install and run the tests\*\*.*?```bash\n(.*?)\n```", readme, re.S).group(1)
    assert command.strip() in ci


def test_learned_optimizer_snippet_trains_with_the_saved_optimizer(capsys, monkeypatch):
    """The README's export snippet runs as written: the committed learned optimizer, loaded
    as an optax optimizer, trains a digits MLP it never saw (full batch, 300 steps) to a
    training loss below 1e-3 (chance: ln 10 = 2.30; Adam at the optimizer's starting
    learning rate, 1e-2, ends at 0.011)."""
    with open(README) as f:
        block = next(b for b in re.findall(r"```python\n(.*?)```", f.read(), re.S) if "learned_optimizer.npz" in b)
    monkeypatch.chdir(os.path.dirname(README))
    exec(compile(block, "README.md", "exec"), {})
    value = float(re.search(r"training loss after 300 steps: ([\d.e+-]+)", capsys.readouterr().out).group(1))
    assert value < 1e-3


def _function_source(text: str, name: str) -> str:
    return re.search(rf"^def {name}\(.*?(?=^\S)", text + "\nEND", re.S | re.M).group(0).strip()


def test_the_tours_command_line_runs_on_the_tours_own_oscillator(tmp_path, capsys):
    """The tour ends with one CLI line on examples/oscillator.py, whose init and step are the
    tour's, line for line; that line runs as written (shortened to 8 outer steps of full BPTT's
    system steps, one seed) and every estimator gets them, within one of its outer steps."""
    from unroll import cli

    with open(README) as f:
        readme = f.read()
    with open(os.path.join(os.path.dirname(README), "examples", "oscillator.py")) as f:
        example = f.read()
    tour = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    for name in ("init", "step"):
        assert _function_source(example, name) == _function_source(tour, name), name
    line = re.search(r"```bash\n(unroll compare examples/oscillator.py:make[^\n]*)\n```", readme).group(1)
    argv = line.split()[1:] + ["--steps", "8", "--seeds", "1", "--out", str(tmp_path), "--no-progress"]
    cwd = os.getcwd()
    os.chdir(os.path.dirname(README))
    try:
        assert cli.main(argv) == 0
    finally:
        os.chdir(cwd)
    import json

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["budget"]["amount"] == 8 * 8 * 100  # 8 outer steps of full-bptt: 8 workers x 100 steps
    steps = {name: e["system_steps"] for name, e in summary["estimators"].items()}
    assert steps == {"full-bptt": 6400, "tbptt-10": 6400, "pes": 5120}  # pes: 8 x 64 x 10 a step
    assert "oscillator (horizon 100)" in capsys.readouterr().out
