"""The JAX-internal import behind one adapter: JAX's dead-code elimination where it
works, a conservative liveness pass where it is missing, a clear error where it changed."""

import jax
import jax.numpy as jnp
import pytest

from unroll._jax_compat import SUPPORTED_JAX, liveness, used_inputs


def _jaxpr(fn, *args):
    return jax.make_jaxpr(fn)(*args)


STRAIGHT = [
    (lambda x, y, z: x * 2.0 + jnp.sin(y), (1.0, 2.0, 3.0)),  # z unread
    (lambda x, y, z: (x, y + z), (1.0, 2.0, 3.0)),
    (lambda x, i: (x * 0.0, i + 1), (1.0, 1)),  # x read (multiplied by zero still reads it)
    (lambda x, i: i * 2, (1.0, 1)),
]


@pytest.mark.parametrize("fn, args", STRAIGHT)
def test_fallback_equals_jax_dce_on_straight_line_jaxprs(fn, args):
    closed = _jaxpr(fn, *args)
    assert used_inputs(closed) == used_inputs(closed, dce=False) == liveness(closed.jaxpr)


def test_fallback_is_conservative_inside_a_scan():
    # the int carry of a scan never reads the float carry; JAX's DCE sees inside the scan, the
    # fallback treats the scan as one equation: it may say "read" where JAX says not, never the reverse
    def fn(x, i):
        def body(carry, _):
            x, i = carry
            return (x * 2.0, i + 1), None

        return jax.lax.scan(body, (x, i), None, length=3)[0][1]

    closed = _jaxpr(fn, 1.0, 1)
    exact, fallback = used_inputs(closed), used_inputs(closed, dce=False)
    assert exact == [False, True]
    assert all(f or not e for e, f in zip(exact, fallback))


def test_a_changed_jax_internal_fails_naming_the_jax_version_and_range():
    def changed(jaxpr, used_outputs):
        raise TypeError("dce_jaxpr() got an unexpected keyword argument")

    with pytest.raises(RuntimeError, match=rf"jax {jax.__version__}: .*dce_jaxpr.*jax{SUPPORTED_JAX}"):
        used_inputs(_jaxpr(lambda x: x + 1.0, 1.0), dce=changed)


def test_the_supported_range_is_the_one_pyproject_declares():
    import pathlib
    import tomllib

    project = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert f"jax{SUPPORTED_JAX}" in project["dependencies"]
    assert f"jaxlib{SUPPORTED_JAX}" in project["dependencies"]
