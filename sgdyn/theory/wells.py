r"""The piecewise-quadratic Kramers well (THEORY.md section 4), written once for NumPy and JAX.

Minimum at 0 with curvature h_min, saddle at ``saddle`` with curvature -h_saddle, barrier
``barrier``; the two parabolas join with matching value and slope at ``c``:

    L(x) = h_min x^2 / 2                          for x <= c
    L(x) = barrier - h_saddle (x - saddle)^2 / 2   for x >  c
    c^2 = 2 barrier / (h_min (1 + h_min/h_saddle)),   saddle = c (1 + h_min/h_saddle)

Left of the minimum the first parabola continues, so the well is confining at -inf and the
only way out is over the saddle. x is in units of the parameter, L in units of the loss.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import _checks


class KramersGeometry(NamedTuple):
    """The piecewise-quadratic Kramers well (THEORY.md section 4): curvatures, barrier, the
    join point c and the saddle b = c (1 + h_min / h_saddle), minimum at 0."""

    h_min: float
    h_saddle: float
    barrier: float
    c: float  # where the parabolas join
    saddle: float  # position of the saddle (the barrier top)


def kramers_geometry(h_min, h_saddle, barrier) -> KramersGeometry:
    """Join point and saddle position of the well with the given curvatures and barrier."""
    _checks.positive("h_min", h_min)
    _checks.positive("h_saddle", h_saddle)
    _checks.positive("barrier", barrier)
    c = math.sqrt(2 * barrier / (h_min * (1 + h_min / h_saddle)))
    return KramersGeometry(h_min, h_saddle, barrier, c, c * (1 + h_min / h_saddle))


def kramers_loss(x, h_min, h_saddle, barrier, xp=np):
    """L(x) of the well; ``xp`` is numpy or jax.numpy (parameters may be traced arrays)."""
    c = xp.sqrt(2 * barrier / (h_min * (1 + h_min / h_saddle)))
    saddle = c * (1 + h_min / h_saddle)
    return xp.where(x <= c, 0.5 * h_min * x**2, barrier - 0.5 * h_saddle * (x - saddle) ** 2)


def kramers_grad(x, h_min, h_saddle, barrier, xp=np):
    """L'(x) of the well (continuous; the curvature jumps at c)."""
    c = xp.sqrt(2 * barrier / (h_min * (1 + h_min / h_saddle)))
    saddle = c * (1 + h_min / h_saddle)
    return xp.where(x <= c, h_min * x, -h_saddle * (x - saddle))
