"""Argument validation shared by the whole library.

Every public function checks its arguments *before* anything is traced or compiled, and a
failure names the argument and the allowed range, e.g.
``ValueError: lr must be a finite number > 0, got -0.1``.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Iterable

import numpy as np


def _as_float_array(name: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number or array of them, got {value!r}") from None
    return arr


def finite(name: str, value: Any) -> Any:
    """Reject NaN and infinities (scalars or arrays). Returns ``value`` unchanged."""
    arr = _as_float_array(name, value)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (no NaN or inf), got {value!r}")
    return value


def scalar(name: str, value: Any) -> Any:
    """One finite number, not an array of them (a vector parameter broadcast deep inside a
    kernel fails there without naming it, or silently means something else)."""
    finite(name, value)
    if np.ndim(value) != 0:
        raise ValueError(f"{name} must be one number, got shape {np.shape(value)}")
    return value


def positive(name: str, value: Any) -> Any:
    """Finite and strictly positive (every element, for arrays)."""
    arr = _as_float_array(name, finite(name, value))
    if not np.all(arr > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def nonnegative(name: str, value: Any) -> Any:
    arr = _as_float_array(name, finite(name, value))
    if not np.all(arr >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def in_range(name: str, value: Any, low: float, high: float, *, closed: bool = False) -> Any:
    """``low < value < high`` (or ``<=`` when ``closed``), elementwise."""
    arr = _as_float_array(name, finite(name, value))
    ok = (arr >= low) & (arr <= high) if closed else (arr > low) & (arr < high)
    if not np.all(ok):
        brackets = "[]" if closed else "()"
        raise ValueError(
            f"{name} must lie in {brackets[0]}{low}, {high}{brackets[1]}, got {value!r}"
        )
    return value


def choice(name: str, value: Any, options: Iterable[str]) -> str:
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def is_concrete(value: Any) -> bool:
    """True unless ``value`` is a JAX tracer (then checks are left to the caller's caller)."""
    try:
        import jax

        return not isinstance(value, jax.core.Tracer)
    except Exception:  # pragma: no cover
        return True


def finite_result(name: str, value: float) -> float:
    """Guard the outputs of numerical routines: never hand back NaN or inf silently."""
    if not math.isfinite(value):
        raise FloatingPointError(f"{name} is not finite ({value}); see the Troubleshooting section")
    return value


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _library_dirs() -> tuple[str, ...]:
    import jax  # a warning raised while JAX traces a user's jit points past JAX's frames too

    return _PACKAGE, os.path.dirname(os.path.abspath(jax.__file__)) + os.sep


def stacklevel_outside_sgdyn() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside sgdyn and JAX (the
    user's line, however many sgdyn functions, or JAX's tracing of a jitted sgdyn function,
    lie between), for the function that calls this."""
    inside = _library_dirs()
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level
