"""The recurrent cells: tanh, GRU, LSTM, LRU-style diagonal, GILR and GILR-LSTM.

Cells whose recurrence is linear in the state (``lru``, ``gilr``, ``gilr-lstm``: gates
that read only the input) have a parallel form over time (``Cell.sequence``, by
``unroll.parallel.linear_recurrence``; Martin & Cundy 2018).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unroll._errors import BadValue
from unroll._system import check_positive_float
from unroll.jacobians import StepJacobian
from unroll.parallel import linear_recurrence


class Cell(NamedTuple):
    """A recurrent cell: ``init(key, input_size, hidden, dtype) -> params``,
    ``initial(params, hidden, dtype) -> state``, ``apply(params, state, x) -> state``,
    ``features(state) -> [F]`` (what the readout, or the next layer, sees;
    ``num_features(hidden)`` long) and, for a cell whose recurrence is linear in its
    state, the parallel form ``sequence(params, state0, xs [T, input_size]) -> states``:
    all ``T`` states (the state pytree with a leading time axis), the same as ``apply``
    over ``xs`` from ``state0``, by ``unroll.parallel.linear_recurrence`` (``None``
    for a cell without one); and ``jacobian(params, state, x) -> unroll.StepJacobian``,
    ``d apply(params, state, x) / d state`` as a diagonal plus a low-rank part, at about
    the cost of one ``apply`` (what DEER and quasi-DEER linearize with; ``None``: not
    declared)."""

    init: Callable
    initial: Callable
    apply: Callable
    features: Callable
    num_features: Callable
    sequence: Callable | None = None
    jacobian: Callable | None = None


DEFAULT_TIMESCALE = 100.0
"""The longest memory (in steps) the gates of ``"gilr"`` and ``"gilr-lstm"`` start with
when no ``timescale`` is given: right for horizons of about 100."""


def glorot(key, shape, dtype):
    """Normal weights of variance ``1 / fan_in`` (``fan_in = shape[-1]``)."""
    return jax.random.normal(key, shape, dtype) * jnp.sqrt(1.0 / shape[-1]).astype(dtype)


def _zeros(p, n, dtype):
    return jnp.zeros(n, dtype)


def _through(scales: tuple, blocks: list) -> tuple[jax.Array, jax.Array]:
    """``(diag, rows)`` of ``sum_k diag(scales_k) blocks_k``: a Jacobian through pre-activations
    ``blocks_k @ state`` (square blocks), the rows of each block scaled by the derivative by its
    pre-activation; the diagonal costs ``O(n)``, so a solver that reads only it skips the rows."""
    diag = sum(d * jnp.diagonal(w) for d, w in zip(scales, blocks))
    return diag, sum(d[:, None] * w for d, w in zip(scales, blocks))


def _chrono(key, hidden: int, timescale: float, dtype) -> jax.Array:
    """Chrono initialization (Tallec & Ollivier 2018): ``log u``, ``u ~ U(1, T_max - 1)``.
    As the bias of a forget gate ``f = sigmoid(b)`` it makes each unit's memory
    ``1 / (1 - f) = 1 + u`` steps, spread over ``[2, T_max]``."""
    return jnp.log(jax.random.uniform(key, (hidden,), dtype, 1.0, timescale - 1.0))


def _tanh_cell() -> Cell:
    """``h' = tanh(W h + U x + b)``."""

    def init(key, input_size, hidden, dtype):
        k1, k2 = jax.random.split(key)
        return {
            "W": glorot(k1, (hidden, hidden), dtype),
            "U": glorot(k2, (hidden, input_size), dtype),
            "b": jnp.zeros(hidden, dtype),
        }

    def apply(p, h, x):
        return jnp.tanh(p["W"] @ h + p["U"] @ x + p["b"])

    def jacobian(p, h, x):  # diag(1 - h'^2) W: its diagonal and its rows
        slope = 1 - apply(p, h, x) ** 2
        return StepJacobian(slope * jnp.diagonal(p["W"]), slope[:, None] * p["W"])

    return Cell(init, _zeros, apply, lambda h: h, lambda n: n, jacobian=jacobian)


def _gru_cell(timescale: float | None = None) -> Cell:
    """GRU (Cho et al. 2014): gates ``z, r = sigmoid(.)``, ``h~ = tanh(W (r h) + U x + b)``,
    ``h' = (1 - z) h + z h~``. With ``timescale``, the update gate's bias is
    ``-log u``, ``u ~ U(1, timescale - 1)`` (chrono; zeros otherwise)."""

    def init(key, input_size, hidden, dtype):
        keys = jax.random.split(key, 6)
        p = {}
        for i, gate in enumerate("zrh"):
            p[f"W{gate}"] = glorot(keys[2 * i], (hidden, hidden), dtype)
            p[f"U{gate}"] = glorot(keys[2 * i + 1], (hidden, input_size), dtype)
            p[f"b{gate}"] = jnp.zeros(hidden, dtype)
        if timescale is not None:
            p["bz"] = -_chrono(jax.random.fold_in(key, 6), hidden, timescale, dtype)
        return p

    def gates(p, h, x):
        z = jax.nn.sigmoid(p["Wz"] @ h + p["Uz"] @ x + p["bz"])
        r = jax.nn.sigmoid(p["Wr"] @ h + p["Ur"] @ x + p["br"])
        return z, r, jnp.tanh(p["Wh"] @ (r * h) + p["Uh"] @ x + p["bh"])

    def apply(p, h, x):
        z, _, candidate = gates(p, h, x)
        return (1 - z) * h + z * candidate

    def jacobian(p, h, x):
        # diag(1 - z) + diag(a) Wz + diag(b) Wh (diag(r) + diag(q) Wr), the last factor d (r h) / d h
        z, r, candidate = gates(p, h, x)
        a, b, q = (candidate - h) * z * (1 - z), z * (1 - candidate**2), h * r * (1 - r)
        wz, wr, wh = p["Wz"], p["Wr"], p["Wh"]
        diagonal = 1 - z + a * jnp.diagonal(wz) + b * (jnp.diagonal(wh) * r + (wh * wr.T) @ q)
        return StepJacobian(diagonal, a[:, None] * wz + b[:, None] * (wh * r + wh @ (q[:, None] * wr)))

    return Cell(init, _zeros, apply, lambda h: h, lambda n: n, jacobian=jacobian)


def _lstm_cell(timescale: float | None = None) -> Cell:
    """LSTM (Hochreiter & Schmidhuber 1997), state ``(h, c)``, forget bias 1; with
    ``timescale``, chrono biases ``b_f = log u``, ``b_i = -b_f``, ``u ~ U(1, timescale - 1)``."""

    def init(key, input_size, hidden, dtype):
        k1, k2 = jax.random.split(key)
        b = jnp.zeros(4 * hidden, dtype).at[hidden : 2 * hidden].set(1.0)
        if timescale is not None:
            forget = _chrono(jax.random.fold_in(key, 2), hidden, timescale, dtype)
            b = b.at[:hidden].set(-forget).at[hidden : 2 * hidden].set(forget)
        return {
            "W": glorot(k1, (4 * hidden, hidden), dtype),
            "U": glorot(k2, (4 * hidden, input_size), dtype),
            "b": b,
        }

    def apply(p, state, x):
        h, c = state
        i, f, g, o = jnp.split(p["W"] @ h + p["U"] @ x + p["b"], 4)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    def jacobian(p, state, x):
        # through the pre-activations W h: each gate's block of W, its rows scaled by d c' (or d h') / d gate
        h, c = state
        pre_i, pre_f, pre_g, pre_o = jnp.split(p["W"] @ h + p["U"] @ x + p["b"], 4)
        i, f, o, g = jax.nn.sigmoid(pre_i), jax.nn.sigmoid(pre_f), jax.nn.sigmoid(pre_o), jnp.tanh(pre_g)
        squashed = jnp.tanh(f * c + i * g)
        e = o * (1 - squashed**2)  # dh' / dc'
        to_c = (g * i * (1 - i), c * f * (1 - f), i * (1 - g**2), jnp.zeros_like(h))
        to_h = (*(e * d for d in to_c[:3]), squashed * o * (1 - o))
        diagonal, rows = _through(to_h, jnp.split(p["W"], 4))
        left = (
            jnp.concatenate([rows, jnp.diag(e * f)], 1),
            jnp.concatenate([_through(to_c, jnp.split(p["W"], 4))[1], jnp.diag(f)], 1),
        )
        return StepJacobian((diagonal, f), left)

    initial = lambda p, n, dtype: (jnp.zeros(n, dtype), jnp.zeros(n, dtype))
    return Cell(init, initial, apply, lambda s: s[0], lambda n: n, jacobian=jacobian)


def _lru_cell(timescale: float | None = None) -> Cell:
    """LRU-style diagonal linear recurrence (Orvieto et al. 2023): complex state
    ``h' = lambda * h + gamma * B x``, ``lambda = exp(-exp(nu) + i phase)``; the readout
    sees ``tanh`` of ``(Re h, Im h)`` (a nonlinearity outside the recurrence). The radius
    ``|lambda|`` starts uniform in ``[0.9, 0.999]`` and ``gamma = 1``. With ``timescale``
    it starts at ``exp(-1 / tau)``, ``tau = 1 + u``, ``u ~ U(1, timescale - 1)``
    (memories of ``[2, timescale]`` steps, as chrono gives the gated cells), and the input
    is normalized as in the LRU paper: ``gamma = exp(gamma_log)`` (a parameter), starting
    at ``sqrt(1 - |lambda|^2)`` so that ``h`` stays of the input's scale however long the
    memory. Parallel form: one complex ``linear_recurrence``."""

    def init(key, input_size, hidden, dtype):
        k1, k2, k3 = jax.random.split(key, 3)
        if timescale is None:
            radius = jax.random.uniform(k1, (hidden,), dtype, 0.9, 0.999)
            nu = jnp.log(-jnp.log(radius))
        else:
            nu = -jnp.log1p(jax.random.uniform(k1, (hidden,), dtype, 1.0, timescale - 1.0))  # -log r = 1 / tau
        p = {
            "nu": nu,
            "phase": jax.random.uniform(k2, (hidden,), dtype, 0.0, np.pi / 10),
            "B_re": glorot(k3, (hidden, input_size), dtype),
            "B_im": jnp.zeros((hidden, input_size), dtype),
        }
        if timescale is not None:
            p["gamma_log"] = 0.5 * jnp.log(-jnp.expm1(-2 * jnp.exp(nu)))  # log sqrt(1 - |lambda|^2)
        return p

    def terms(p, x):  # (lambda, gamma B x) for x [in] or xs [T, in]
        lam = jnp.exp(jax.lax.complex(-jnp.exp(p["nu"]), p["phase"]))
        bx = jax.lax.complex(x @ p["B_re"].T, x @ p["B_im"].T)
        return lam, bx * jnp.exp(p["gamma_log"]) if "gamma_log" in p else bx

    def apply(p, h, x):
        lam, bx = terms(p, x)
        return lam * h + bx

    def sequence(p, h0, xs):
        lam, bx = terms(p, xs)
        return linear_recurrence(jnp.broadcast_to(lam, bx.shape), bx, h0)

    def jacobian(p, h, x):  # the complex diagonal lambda (holomorphic: 2x2 blocks on the real view)
        return StepJacobian(jnp.broadcast_to(terms(p, x)[0], h.shape))

    def initial(p, n, dtype):
        return jnp.zeros(n, jnp.result_type(dtype, jnp.complex64))

    features = lambda h: jnp.tanh(jnp.concatenate([jnp.real(h), jnp.imag(h)], axis=-1))
    return Cell(init, initial, apply, features, lambda n: 2 * n, sequence, jacobian)


def _gilr_init(key, input_size, hidden, dtype, timescale):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "Ug": glorot(k1, (hidden, input_size), dtype),
        "bg": _chrono(k3, hidden, timescale, dtype),
        "Uz": glorot(k2, (hidden, input_size), dtype),
        "bz": jnp.zeros(hidden, dtype),
    }


def _gilr_terms(p, x):
    """``(g, (1 - g) i)`` of the GILR recurrence ``h' = g h + (1 - g) i``, for ``x [in]`` or ``xs [T, in]``."""
    g = jax.nn.sigmoid(x @ p["Ug"].T + p["bg"])
    return g, (1 - g) * jnp.tanh(x @ p["Uz"].T + p["bz"])


def _gilr_cell(timescale: float | None = None) -> Cell:
    """GILR, the gated impulse linear recurrent layer (Martin & Cundy 2018):

        g_t = sigmoid(U_g x_t + b_g),   i_t = tanh(U_z x_t + b_z),
        h_t = g_t * h_{t-1} + (1 - g_t) * i_t.

    The gates read only the input, so ``h`` is a linear recurrence (parallel form: one
    ``linear_recurrence``). ``b_g`` starts at chrono values ``log u``,
    ``u ~ U(1, timescale - 1)`` (Tallec & Ollivier 2018; ``timescale`` defaults to
    ``DEFAULT_TIMESCALE``): unit memories of ``1 + u`` steps."""
    timescale = DEFAULT_TIMESCALE if timescale is None else timescale

    def apply(p, h, x):
        g, impulse = _gilr_terms(p, x)
        return g * h + impulse

    def sequence(p, h0, xs):
        return linear_recurrence(*_gilr_terms(p, xs), h0)

    def jacobian(p, h, x):  # diag(g): the gate reads only the input
        return StepJacobian(jnp.broadcast_to(_gilr_terms(p, x)[0], h.shape))

    init = lambda key, input_size, hidden, dtype: _gilr_init(key, input_size, hidden, dtype, timescale)
    return Cell(init, _zeros, apply, lambda h: h, lambda n: n, sequence, jacobian)


def _gilr_lstm_cell(timescale: float | None = None) -> Cell:
    """GILR-LSTM (Martin & Cundy 2018): an LSTM whose gates read a GILR linear surrogate
    ``s`` of its input instead of its own ``h_{t-1}``, and whose output drops the
    ``tanh`` of ``c``:

        s_t = g_t * s_{t-1} + (1 - g_t) * tanh(U_z x_t + b_z),  g_t = sigmoid(U_g x_t + b_g)
        f_t, i_t, o_t = sigmoid(U_{f,i,o} s_t + b_{f,i,o}),  z_t = tanh(U_c s_t + b_c)
        c_t = f_t * c_{t-1} + i_t * z_t,   h_t = o_t * c_t.

    (As in the paper the gates see the surrogate ``s_t``, which carries ``x_t``, not
    ``x_t`` alone.) Both ``s`` and ``c`` are linear recurrences: the parallel form is
    two ``linear_recurrence`` calls. State ``(s, c, h)`` (``h`` carried for the
    readout; the recurrence does not read it). Chrono biases (``timescale``, default
    ``DEFAULT_TIMESCALE``): ``b_g = b_f = log u``, ``b_i = -b_f``,
    ``u ~ U(1, timescale - 1)``."""
    timescale = DEFAULT_TIMESCALE if timescale is None else timescale

    def init(key, input_size, hidden, dtype):
        k1, k2, k3 = jax.random.split(key, 3)
        forget = _chrono(k3, hidden, timescale, dtype)
        b = jnp.zeros(4 * hidden, dtype).at[:hidden].set(forget).at[hidden : 2 * hidden].set(-forget)
        return {
            "gilr": _gilr_init(k1, input_size, hidden, dtype, timescale),
            "U": glorot(k2, (4 * hidden, hidden), dtype),
            "b": b,
        }

    def gates(p, s):  # (f, i z, o) for s [n] or [T, n]
        f, i, o, z = jnp.split(s @ p["U"].T + p["b"], 4, axis=-1)
        return jax.nn.sigmoid(f), jax.nn.sigmoid(i) * jnp.tanh(z), jax.nn.sigmoid(o)

    def apply(p, state, x):
        s, c, _ = state
        g, impulse = _gilr_terms(p["gilr"], x)
        s = g * s + impulse
        f, write, o = gates(p, s)
        c = f * c + write
        return s, c, o * c

    def sequence(p, state0, xs):
        s0, c0, _ = state0
        s = linear_recurrence(*_gilr_terms(p["gilr"], xs), s0)
        f, write, o = gates(p, s)
        c = linear_recurrence(f, write, c0)
        return s, c, o * c

    def jacobian(p, state, x):
        # diag (g, f, 0); columns s: dc'/ds, dh'/ds through s' = g s + ... (columns scaled by g); columns c: o f on h'
        s, c, _ = state
        g, impulse = _gilr_terms(p["gilr"], x)
        f, i, o, z = jnp.split((g * s + impulse) @ p["U"].T + p["b"], 4)
        f, i, o, z = jax.nn.sigmoid(f), jax.nn.sigmoid(i), jax.nn.sigmoid(o), jnp.tanh(z)
        to_c = (c * f * (1 - f), z * i * (1 - i), jnp.zeros_like(c), i * (1 - z**2))
        to_h = (o * to_c[0], o * to_c[1], (f * c + i * z) * o * (1 - o), o * to_c[3])
        blocks = jnp.split(p["U"], 4)
        zero = jnp.zeros_like(p["U"][: s.shape[-1]])
        left = (
            jnp.concatenate([zero, zero, zero], 1),
            jnp.concatenate([_through(to_c, blocks)[1] * g, jnp.diag(f), zero], 1),
            jnp.concatenate([_through(to_h, blocks)[1] * g, jnp.diag(o * f), zero], 1),
        )
        return StepJacobian((g, f, jnp.zeros_like(g)), left)

    initial = lambda p, n, dtype: (jnp.zeros(n, dtype),) * 3
    return Cell(init, initial, apply, lambda s: s[2], lambda n: n, sequence, jacobian)


CELLS: dict[str, Callable[..., Cell]] = {
    "tanh": _tanh_cell,
    "gru": _gru_cell,
    "lstm": _lstm_cell,
    "lru": _lru_cell,
    "gilr": _gilr_cell,
    "gilr-lstm": _gilr_lstm_cell,
}
"""The cell constructors by name: ``CELLS[name](timescale=...) -> Cell`` (``get_cell``
checks the name and the timescale)."""

TIMESCALE_CELLS = frozenset({"gru", "lstm", "lru", "gilr", "gilr-lstm"})
"""The cells whose gates (or eigenvalues) take a ``timescale``."""


def get_cell(name: str, timescale: float | None = None) -> Cell:
    """The cell called ``name``, its gates starting with memories up to ``timescale`` steps.

    Args:
        name: a key of ``CELLS``: ``"tanh"``, ``"gru"``, ``"lstm"``, ``"lru"``, ``"gilr"``
            or ``"gilr-lstm"``.
        timescale: the longest memory (in steps, at least 2) the cell's gates start with
            (chrono initialization), for the cells in ``TIMESCALE_CELLS`` only; ``None``
            gives the cell's default initialization.

    Returns:
        The ``Cell``.

    Raises:
        ValueError: for an unknown ``name``, or a ``timescale`` that is below 2 or given
            to a cell without gates.
    """
    if name not in CELLS:
        raise BadValue(f"`cell`={name!r} is not a known cell; choose one of {', '.join(CELLS)}.")
    if timescale is None:
        return CELLS[name]()
    if name not in TIMESCALE_CELLS:
        raise BadValue(
            f"`timescale`={timescale!r} has no effect on `cell`={name!r} (it has no gate); pass timescale=None, "
            f"or use one of {', '.join(sorted(TIMESCALE_CELLS))}."
        )
    timescale = check_positive_float(timescale, "timescale", "it is the longest memory in steps, e.g. timescale=100.")
    if timescale < 2:
        raise BadValue(
            f"`timescale`={timescale!r} must be at least 2 (memories of 1 + U(1, timescale - 1) steps); "
            "use e.g. timescale=horizon."
        )
    return CELLS[name](timescale=timescale)
