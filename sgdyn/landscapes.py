r"""Loss landscapes L: R^d -> R, written for one parameter vector ``x`` of shape (d,).

A landscape is a frozen pytree dataclass with ``loss(x)``, ``grad(x)`` (``jax.grad`` of the loss
unless a closed form is cheaper), ``minimum`` (the basin the dynamics start in) and the static
``dim``. Its numeric fields are pytree leaves, so a stack of landscapes (a sharpness sweep) can be
vmapped in one compiled call. Adding a landscape means writing one such class; no solver changes.
Its sums over coordinates use ``sgdyn.ordered`` (one fixed order of additions), so a particle's
result does not depend on how many particles the engine steps beside it.
x is in parameter units and L in loss units; the curvature h has units loss / parameter^2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from ._pytree import pytree_dataclass, static_field
from .ordered import ordered_sum
from .theory.wells import kramers_grad, kramers_loss


class Landscape:
    """Mixin: gradient and Hessian from the loss."""

    dim: int

    def grad(self, x):
        return jax.grad(self.loss)(x)

    def hessian(self, x):
        return jax.hessian(self.loss)(x)

    def curvature_at_minimum(self):
        """Mean Hessian eigenvalue at ``minimum`` (the curvature h of the basin in 1-D)."""
        return jnp.trace(self.hessian(self.minimum)) / self.dim


@pytree_dataclass
class Quadratic(Landscape):
    """L(x) = (1/2) sum_j h_j (x_j - a_j)^2; ``h`` scalar (isotropic) or per coordinate."""

    h: jax.Array
    center: jax.Array
    dim: int = static_field(default=1)

    @staticmethod
    def make(h, dim: int | None = None, center=0.0) -> "Quadratic":
        """``dim`` defaults to the length of a per-coordinate ``h`` or ``center``, else 1."""
        _checks.positive("h", h)
        _checks.finite("center", center)
        shapes = {"h": np.shape(h), "center": np.shape(center)}
        for name, shape in shapes.items():
            if len(shape) > 1:
                raise ValueError(f"{name} must be a scalar or a vector, got shape {shape}")
        # one value per coordinate; a single value (scalar or length 1) broadcasts
        lengths = {name: shape[0] for name, shape in shapes.items() if shape and shape[0] != 1}
        if dim is None:
            if len(set(lengths.values())) > 1:
                raise ValueError(f"h has {lengths['h']} coordinates and center "
                                 f"{lengths['center']}: give one value or one per coordinate")
            dim = max(lengths.values(), default=1)
        _checks.positive_int("dim", dim)
        for name, n in lengths.items():
            if n != dim:
                raise ValueError(f"{name} has {n} coordinates but dim={dim}: give one value "
                                 f"or one per coordinate")
        h = jnp.asarray(h, float)
        h = h.reshape(()) if h.shape == (1,) else h  # one value: stacks like a scalar h
        return Quadratic(h, jnp.broadcast_to(jnp.asarray(center, float), (dim,)), dim)

    def loss(self, x):
        return 0.5 * ordered_sum(self.h * (x - self.center) ** 2)

    def grad(self, x):
        return self.h * (x - self.center)

    @property
    def minimum(self):
        return self.center


@pytree_dataclass
class KramersWell(Landscape):
    """The 1-D piecewise-quadratic well of ``sgdyn.theory.wells``: minimum 0 (curvature h_min),
    saddle at ``saddle`` (curvature -h_saddle), barrier height ``barrier``."""

    h_min: jax.Array
    h_saddle: jax.Array
    barrier: jax.Array
    dim: int = static_field(default=1)

    @staticmethod
    def make(h_min, h_saddle, barrier) -> "KramersWell":
        for name, v in (("h_min", h_min), ("h_saddle", h_saddle), ("barrier", barrier)):
            _checks.positive(name, v)
        return KramersWell(*(jnp.asarray(v, float) for v in (h_min, h_saddle, barrier)))

    def loss(self, x):
        return ordered_sum(kramers_loss(x, self.h_min, self.h_saddle, self.barrier, xp=jnp))

    def grad(self, x):
        return kramers_grad(x, self.h_min, self.h_saddle, self.barrier, xp=jnp)

    @property
    def minimum(self):
        return jnp.zeros(1)

    @property
    def saddle(self):
        c = jnp.sqrt(2 * self.barrier / (self.h_min * (1 + self.h_min / self.h_saddle)))
        return c * (1 + self.h_min / self.h_saddle)

    def curvature_at_minimum(self):
        return self.h_min


@pytree_dataclass
class DoubleWell(Landscape):
    """Smooth asymmetric double well L(x) = scale (x^2 - 1)^2 / 4 + tilt x (1-D).

    Minima near -1 and +1; ``minimum`` is the left well, and the barrier from it is about
    scale/4 + tilt (from the right well scale/4 - tilt); use ``sgdyn.theory`` quadrature for
    exact numbers.
    """

    scale: jax.Array
    tilt: jax.Array
    dim: int = static_field(default=1)

    @staticmethod
    def make(scale=1.0, tilt=0.0) -> "DoubleWell":
        _checks.positive("scale", scale)
        _checks.finite("tilt", tilt)
        # L' = scale x (x^2 - 1) + tilt has three roots (two wells) only for |tilt| below the
        # cubic's turning value; beyond it one well is gone and ``minimum`` would not be one
        limit = 2 * np.asarray(scale, float) / (3 * np.sqrt(3))
        if not np.all(np.abs(np.asarray(tilt, float)) < limit):
            raise ValueError(f"tilt must satisfy |tilt| < 2 scale / (3 sqrt(3)) (about "
                             f"0.385 scale: {np.round(limit, 4).tolist()} here), beyond which one "
                             f"well vanishes; got tilt={tilt!r}")
        return DoubleWell(jnp.asarray(scale, float), jnp.asarray(tilt, float))

    def loss(self, x):
        return ordered_sum(self.scale * (x**2 - 1) ** 2 / 4 + self.tilt * x)

    def grad(self, x):
        return self.scale * x * (x**2 - 1) + self.tilt

    @property
    def minimum(self):
        # Newton from -1 on scale x (x^2 - 1) + tilt = 0
        x = -jnp.ones(1)
        for _ in range(8):
            x = x - (self.scale * x * (x**2 - 1) + self.tilt) / (self.scale * (3 * x**2 - 1))
        return x


@pytree_dataclass
class StyblinskiTang(Landscape):
    """L(x) = scale * sum_j (x_j^4 - 16 x_j^2 + 5 x_j) (THEORY.md's form; scale 1/2 is the usual).

    Separable, 2^d local minima at x_j ~ -2.90 (deep) or 2.75 (shallow). ``minimum`` is the
    all-shallow corner, the one to escape from.
    """

    scale: jax.Array
    dim: int = static_field(default=2)

    @staticmethod
    def make(dim: int = 2, scale=1.0) -> "StyblinskiTang":
        _checks.positive_int("dim", dim)
        _checks.positive("scale", scale)
        return StyblinskiTang(jnp.asarray(scale, float), dim)

    def loss(self, x):
        return self.scale * ordered_sum(x**4 - 16 * x**2 + 5 * x)

    def grad(self, x):
        return self.scale * (4 * x**3 - 32 * x + 5)

    @property
    def minimum(self):
        x = jnp.full((self.dim,), 2.75)
        for _ in range(8):
            x = x - (4 * x**3 - 32 * x + 5) / (12 * x**2 - 32)
        return x


@pytree_dataclass
class Reparametrized(Landscape):
    """The same landscape seen through w -> scale * w: L'(x) = L(scale * x).

    Curvatures grow by scale^2, barriers stay: a sharper copy of the same problem
    (THEORY.md section 4, "sharp against flat"). Works for finite-sum problems too.
    """

    base: object
    scale: jax.Array

    @staticmethod
    def make(base, scale) -> "Reparametrized":
        _checks.positive("scale", scale)
        return Reparametrized(base, jnp.asarray(scale, float))

    @property
    def dim(self):
        return self.base.dim

    def loss(self, x):
        return self.base.loss(self.scale * x)

    def grad(self, x):
        return self.scale * self.base.grad(self.scale * x)

    @property
    def minimum(self):
        return self.base.minimum / self.scale

    def curvature_at_minimum(self):
        return self.scale**2 * self.base.curvature_at_minimum()

    # finite-sum problems: l_i'(x) = l_i(scale * x), so minibatch SGD runs on the sharper copy
    @property
    def n(self):
        return self.base.n  # AttributeError when the base is not a finite sum

    def example_loss(self, x, i):
        return self.base.example_loss(self.scale * x, i)

    def batch_grad(self, x, idx):
        return self.scale * self.base.batch_grad(self.scale * x, idx)

    def example_grads(self, x):
        return jax.vmap(lambda i: self.batch_grad(x, i[None]))(jnp.arange(self.n))
