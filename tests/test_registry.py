"""The registry is the one list of estimators: an estimator registered from a module of
its own (its file, its registry entry, its test: nothing else) appears in `unroll list`,
runs in `unroll compare`, and is in the docs' estimator table and API reference."""

import importlib
import json
import os
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

import unroll
from tests.test_docs import REGISTRY_TABLES
from unroll import cli, registry
from unroll.tasks import influence_balancing

TOY = textwrap.dedent(
    '''
    """A toy estimator: truncated BPTT written with the builder."""

    from unroll._constructor import keyword_only
    from unroll.builder import backprop, plain_rule, windowed


    @keyword_only
    def toy_bptt(system, *, truncation: int, num_workers: int = 1):
        """Truncated BPTT from the builder: reverse mode through each window.

        Args:
            system: the unrolled system.
            truncation: the window's steps.
            num_workers: staggered workers.

        Returns:
            An `Estimator`.
        """
        return windowed(system, plain_rule(system), truncation=truncation, num_workers=num_workers, gradient=backprop)
    '''
)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    (tmp_path / "toy_estimator.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_estimator")
    entry = registry.Entry(
        "toy", module.toy_bptt, {"truncation": 5}, "truncated BPTT from the builder", "bptt", "biased (truncation)",
        "tests/test_registry.py (= tbptt)",
    )  # fmt: skip
    registry.register(entry)
    yield entry
    registry.unregister("toy")
    sys.modules.pop("toy_estimator", None)


def test_a_registered_toy_estimator_is_listed_compared_and_documented(toy, tmp_path, capsys):
    assert cli.main(["list"]) == 0
    assert "    toy[-K]: truncated BPTT from the builder" in capsys.readouterr().out

    # its gradient is truncated BPTT's, computed by the library's own constructor
    system = influence_balancing(horizon=20)
    theta, key = jnp.asarray(0.3), jax.random.PRNGKey(0)
    ours, theirs = registry.build("toy", system, truncation=5), unroll.truncated_bptt(system, truncation=5)
    g1 = ours.estimate(theta, ours.init(theta, key), key).grad
    g2 = theirs.estimate(theta, theirs.init(theta, key), key).grad
    assert jnp.allclose(g1, g2, rtol=1e-12, atol=1e-12)

    out = tmp_path / "run"
    code = cli.main(
        ["compare", "influence-balancing", "--estimators", "toy-4", "tbptt-4", "--seeds", "1", "--steps", "3",
         "--horizon", "20", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["estimators"]) == {"toy-4", "tbptt-4"}
    toy_run, tbptt_run = summary["estimators"]["toy-4"], summary["estimators"]["tbptt-4"]
    assert toy_run["final_theta"]["mean"] == pytest.approx(tbptt_run["final_theta"]["mean"], rel=1e-12)

    table, reference = REGISTRY_TABLES.estimator_table(), REGISTRY_TABLES.estimator_reference()
    assert "| `toy[-K]` | `toy_estimator.toy_bptt` | truncated BPTT from the builder | biased (truncation) |" in table
    assert "::: toy_estimator.toy_bptt" in reference


def test_every_built_in_estimator_is_in_the_docs_table_and_reference():
    table, reference = REGISTRY_TABLES.estimator_table(), REGISTRY_TABLES.estimator_reference()
    for entry in registry.ESTIMATORS.values():
        assert f"| `{entry.name}" in table
        assert f"::: unroll.{entry.constructor.__name__}\n" in reference
        assert entry.bias and entry.proof, f"{entry.name}: state its bias and the tests that prove it"
        for path in entry.proof.replace(",", " ").split():
            if path.startswith("tests/"):
                assert os.path.isfile(os.path.join(os.path.dirname(os.path.dirname(__file__)), path)), path


@pytest.mark.parametrize(
    "entry, needle",
    [
        (registry.Entry("pes", unroll.pes, {}, "", "es"), "registered already"),
        (registry.Entry("toy-3", unroll.pes, {}, "", "es"), "reads as a truncation"),
        (registry.Entry("toy", unroll.pes, {}, "", "evolution"), "`family`='evolution' is not one of"),
        (registry.Entry("toy", lambda theta: None, {}, "", "es"), "must be a function constructor(system"),
    ],
)
def test_register_refuses_what_would_break_the_registry(entry, needle):
    with pytest.raises((ValueError, TypeError), match=needle.replace("(", r"\(").replace("[", r"\[")):
        registry.register(entry)
    assert "toy" not in registry.ESTIMATORS and "toy-3" not in registry.ESTIMATORS
