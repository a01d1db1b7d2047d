r"""Exit regions and the boundary corrections for exit times measured on a time grid.

A region is the set the particle starts in; it *exits* at the first step that leaves it.
Each region gives ``distance(x)`` (>= 0 inside: distance to the boundary, in parameter units)
and ``normal(x)`` (the unit outward normal of the nearest boundary point). The built-in ones
also take ``xp=numpy``, so that a run's start is checked on the host with nothing to compile.

Checking the boundary only at grid times misses excursions between them and overestimates
exit times by O(sqrt(dt)) (THEORY.md section 5). Two corrections give O(dt):

    "gobet":  exit once distance(x_n) <= 0.5826 * s(x_n) * sqrt(dt)     (boundary shifted in)
    "bridge": also exit between grid points with the Brownian-bridge crossing probability
              exp(-2 d(x_n) d(x_{n+1}) / (s(x_n)^2 dt))

where s(x) = sqrt(n' G G' n) is the noise level along the normal, 0.5826 = -zeta(1/2)/sqrt(2 pi).
Both rest on Gaussian increments: with two- or three-point ones a walk overshoots the boundary
differently, and the correction removes most of the O(sqrt(dt)) bias but not all
(``check_correction`` warns).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from ._pytree import pytree_dataclass
from .ordered import ordered_dot, ordered_norm

GOBET_BETA = 0.5825971579390106  # -zeta(1/2) / sqrt(2 pi)
CORRECTIONS = (None, "gobet", "bridge")


def _known(correction) -> None:
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")


def check_correction(correction, dynamic) -> None:
    """ValueError for an unknown correction or one the dynamic cannot take (it needs the noise
    level along the boundary normal, ``std_along``); a RuntimeWarning where its increments are
    not Gaussian. An OU exit from (-1, 1) with Gobet's correction, against the exact mean
    (200,000 particles, CIs +-0.4%): -1.05% and -0.13% at dt = 0.01 and 0.0025 with Gaussian
    increments, but +0.96% and +1.61% with three-point ones and -4.5% and -2.0% with
    two-point ones."""
    _known(correction)
    if correction is None:
        return
    if not hasattr(dynamic, "std_along"):
        raise ValueError(f"correction={correction!r} needs an SDE dynamic (Euler-Maruyama); "
                         f"{type(dynamic).__name__} has no noise level to correct with")
    weak = {kind for kind, _ in dynamic.noise_spec.parts} & {"two_point", "three_point"}
    if weak:
        warnings.warn(f"correction={correction!r} assumes Gaussian increments; with "
                      f"{'/'.join(sorted(weak))} increments the walk overshoots the boundary "
                      f"differently, and the correction removes most of the sqrt(dt) bias of "
                      f"exit times but not all: use increments='gaussian' for an O(dt) one",
                      RuntimeWarning, stacklevel=_checks.stacklevel_outside_sgdyn())


@pytree_dataclass
class Halfspace:
    """Inside while direction . x < level, ``direction`` a unit vector (so that ``distance`` is
    the distance to the boundary, which the corrections weigh against the noise's reach: a
    direction of length 2 read Gobet-corrected exit times 9% long); ``Halfspace.make``
    normalises any direction, and ``Threshold(level)`` in 1-D is x < level."""

    direction: jax.Array
    level: jax.Array

    @staticmethod
    def make(direction, level) -> "Halfspace":
        """{x : direction . x < level} for any non-zero ``direction`` (shape (d,))."""
        _checks.finite("direction", direction)
        _checks.scalar("level", level)
        direction = np.asarray(direction, np.float64)
        norm = np.linalg.norm(direction)
        if direction.ndim != 1 or not norm > 0:
            raise ValueError(f"direction must be a non-zero vector of shape (d,), got "
                             f"{direction.tolist()}")
        dtype = jax.dtypes.canonicalize_dtype(float)
        return Halfspace(jax.device_put((direction / norm).astype(dtype)),
                         jnp.asarray(float(level) / norm, dtype))

    def distance(self, x, xp=jnp):
        return self.level - ordered_dot(self.direction, x, xp=xp)

    def normal(self, x):
        return self.direction


def Threshold(level, dim: int = 1, axis: int = 0) -> Halfspace:
    """Exit when x[axis] >= level (e.g. a point past the saddle)."""
    _checks.scalar("level", level)
    dim = _checks.positive_int("dim", dim)
    if not (isinstance(axis, (int, np.integer)) and 0 <= axis < dim):
        raise ValueError(f"axis must be an integer in [0, {dim}), got {axis!r}")
    # built in numpy: eager jnp ops would each compile a tiny XLA program on first use
    direction = np.eye(dim, dtype=jax.dtypes.canonicalize_dtype(float))[axis]
    return Halfspace(jax.device_put(direction), jnp.asarray(level, float))


@pytree_dataclass
class Ball:
    """Inside while |x - center| < radius (exit = first step with |w - w0| >= r)."""

    center: jax.Array
    radius: jax.Array

    @staticmethod
    def make(center, radius) -> "Ball":
        _checks.finite("center", center)
        _checks.positive("radius", _checks.scalar("radius", radius))
        return Ball(jnp.atleast_1d(jnp.asarray(center, float)), jnp.asarray(radius, float))

    def distance(self, x, xp=jnp):
        return self.radius - ordered_norm(x - self.center, xp=xp)

    def normal(self, x):
        dx = x - self.center
        r = ordered_norm(dx)
        return jnp.where(r > 0, dx / jnp.where(r > 0, r, 1.0), jnp.zeros_like(dx).at[0].set(1.0))


@pytree_dataclass
class Interval:
    """1-D: inside while low < x < high."""

    low: jax.Array
    high: jax.Array

    @staticmethod
    def make(low, high) -> "Interval":
        _checks.scalar("low", low)
        _checks.scalar("high", high)
        if not low < high:
            raise ValueError(f"low must be < high, got low={low}, high={high}")
        return Interval(jnp.asarray(low, float), jnp.asarray(high, float))

    def distance(self, x, xp=jnp):
        return xp.minimum(x[0] - self.low, self.high - x[0])

    def normal(self, x):
        upper = self.high - x[0] < x[0] - self.low
        return jnp.where(upper, 1.0, -1.0)[None]


def check_region(region, dim: int) -> None:
    """The built-in regions must match the dynamic's dimension (else they would read x[0] or
    broadcast silently), and a Halfspace's direction must be a unit vector (else its distance
    is not one, and the corrections move the boundary by the wrong amount)."""
    scalar = {Halfspace: "level", Ball: "radius", Interval: "low"}.get(type(region))
    if scalar is not None and np.ndim(getattr(region, scalar)) != 0:
        raise ValueError(f"region must be one region, not a stack of "
                         f"{np.shape(getattr(region, scalar))[0]} (sgdyn.stack): pass "
                         f"sweep_exit_times a list of regions")
    if isinstance(region, Interval) and dim != 1:
        raise ValueError(f"region: an Interval is 1-D, the dynamic has dim={dim}; use "
                         f"Ball.make(center, r) or Threshold(level, dim={dim}, axis=...)")
    vec = {Ball: "center", Halfspace: "direction"}.get(type(region))
    if vec is not None and np.shape(getattr(region, vec))[-1:] != (dim,):
        raise ValueError(f"region: its {vec} has shape {np.shape(getattr(region, vec))}, the "
                         f"dynamic has dim={dim}")
    if isinstance(region, Halfspace):
        norm = np.linalg.norm(np.asarray(region.direction, np.float64), axis=-1)
        if not np.all(np.abs(norm - 1) <= 1e-5):
            raise ValueError(f"region: a Halfspace's direction must be a unit vector, got length "
                             f"{norm}; Halfspace.make(direction, level) normalises it")


@jax.jit
def _distance(region, x):
    # one small compiled program per region type instead of one per eager operation
    return region.distance(x)


def check_start(region, x0) -> None:
    """ValueError unless x0 lies strictly inside the region."""
    x0 = np.asarray(x0, jax.dtypes.canonicalize_dtype(float))
    if type(region) in (Halfspace, Ball, Interval):  # in numpy: a first call compiles nothing
        d = float(jax.tree.map(np.asarray, region).distance(x0, xp=np))
    else:  # a user's region: its own distance, compiled once per type
        d = float(_distance(region, x0))
    if not d > 0:
        raise ValueError(f"x0 must lie strictly inside the exit region (distance to boundary "
                         f"{d:.4g} <= 0), got x0={x0}")


def exited(region, dynamic, x_old, x_new, uniform, correction):
    """Did the particle leave between x_old and x_new (one step of ``dynamic``)?"""
    d_new = region.distance(x_new)
    if correction is None:
        return d_new <= 0
    if correction == "gobet":
        s = dynamic.std_along(x_new, region.normal(x_new))
        return d_new <= GOBET_BETA * s * jnp.sqrt(dynamic.dt)
    _known(correction)  # at trace time: a misspelt name would run as a bridge that never draws
    d_old = region.distance(x_old)
    s = dynamic.std_along(x_old, region.normal(x_old))
    p_cross = jnp.exp(-2 * jnp.maximum(d_old, 0) * jnp.maximum(d_new, 0) / (s**2 * dynamic.dt))
    return (d_new <= 0) | (uniform < p_cross)
