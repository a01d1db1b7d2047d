r"""Fixed-step integrators that turn an ``SDE`` into a *dynamic*.

A dynamic is what the ensemble engine steps: ``dt`` (time per step, t = k * lr units),
``noise_spec`` (the random values one step consumes, see ``sgdyn.rng``) and a pure
``step(x, noise) -> x_next`` for one particle. Real minibatch SGD (``sgdyn.sgd``) is a dynamic
too, so exit times, samplers and sweeps treat all of them alike.

Euler-Maruyama:  x_{n+1} = x_n + mu(x_n) dt + G(x_n) sqrt(dt) xi_n

with xi_n standard Gaussian, or, for the weak schemes, cheaper increments with the same first
moments: "two_point" (+-1, weak order 1 like Euler) or "three_point" (+-sqrt(3) w.p. 1/6,
0 w.p. 2/3). dt = lr gives the SGD-like chain; dt << lr resolves the continuous dynamic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from ._pytree import pytree_dataclass, static_field
from .rng import NoiseSpec

INCREMENTS = {"gaussian": "normal", "two_point": "two_point", "three_point": "three_point"}


@pytree_dataclass
class EulerMaruyama:
    """The Euler-Maruyama dynamic of an ``SDE``: x_{n+1} = x_n + mu(x_n) dt + G(x_n) sqrt(dt)
    xi_n with Gaussian, two-point or three-point increments xi_n (module docstring). Build it
    with ``EulerMaruyama.make(sde, dt, increments)``."""

    sde: object
    dt: jax.Array
    increments: str = static_field(default="gaussian")

    @staticmethod
    def make(sde, dt=None, increments: str = "gaussian") -> "EulerMaruyama":
        """``dt`` defaults to lr (the SGD-like discretisation); it may not exceed lr."""
        _checks.choice("increments", increments, INCREMENTS)
        if dt is None:
            dt = sde.lr
        _checks.positive("dt", dt)
        if _checks.is_concrete(dt) and _checks.is_concrete(sde.lr):
            # elementwise: a stacked ensemble has one lr (and maybe one dt) per member
            over = np.asarray(dt, float) > np.asarray(sde.lr, float) * (1 + 1e-6)
            if np.any(over):
                raise ValueError(f"dt must be <= lr ({np.asarray(sde.lr).tolist()}), got "
                                 f"{np.asarray(dt).tolist()}")
        return EulerMaruyama(sde, jnp.asarray(dt, float), increments)

    @property
    def dim(self) -> int:
        return self.sde.dim

    @property
    def noise_spec(self) -> NoiseSpec:
        return NoiseSpec(((INCREMENTS[self.increments], self.dim),))

    def step(self, x, noise):
        (xi,) = noise
        return x + self.sde.drift(x) * self.dt + self.sde.apply_diffusion(x, jnp.sqrt(self.dt) * xi)

    def std_along(self, x, normal):
        return self.sde.std_along(x, normal)
