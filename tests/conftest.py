"""Test-session setup.

* float64 everywhere, so gradient checks can be tight (``jax_enable_x64``).
* XLA's CPU backend at optimization level 0: the tests run tiny systems, where the
  time goes into compiling (vmapped scans of threefry-heavy windows compile 3x
  faster), not running. Numerics stay IEEE float64. Set ``UNROLL_TEST_XLA_OPT=1``
  to keep XLA's default; a ``--xla_backend_optimization_level`` already in
  ``XLA_FLAGS`` is respected.

The small systems the tests share live in ``tests/systems.py`` (plain functions,
importable as ``from tests.systems import ...``).
"""

import os

if os.environ.get("UNROLL_TEST_XLA_OPT") != "1" and "xla_backend_optimization_level" not in os.environ.get(
    "XLA_FLAGS", ""
):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402  (XLA_FLAGS must be set before the backend starts)

jax.config.update("jax_enable_x64", True)
