"""The benchmark problems, written once for every tool: drift mu(x) and noise factor G(x).

Each tool integrates dx = mu(x) dt + G(x) dB (G a scalar per particle times the identity) with
Euler-Maruyama; sgdyn gets the same SDE through its own classes (``sgdyn_sde``), and the exact
mean exit times come from ``sgdyn.theory`` (quadrature), never from a simulation.

- ``pld1``: the 1-D power-law dynamic (loss form) in the Kramers well h_min = h_saddle = 4,
  barrier 0.3, lr 0.1, b = 1, sigma_g = 2, sigma_H = 4 (kappa = 11).
- ``langevin1``: the same well with constant noise sigma^2 = 2 (T = 0.1, barrier / T = 3).
- ``pld1_basin``: the 1-D PLD (local form) in a quadratic basin, h = 4, same noise (throughput:
  it is confining, so fixed-step runs never diverge, unlike the open-ended Kramers well).
- ``pld100``: a 100-D quadratic basin (h = 1) with local-form PLD noise
  C = sigma_g + sigma_H |x|^2, sigma_g = 1, sigma_H = 0.01 (throughput only).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

import sgdyn as sg
from sgdyn import theory as th

LR, B = 0.1, 1.0
WELL = dict(h_min=4.0, h_saddle=4.0, barrier=0.3)


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    dim: int
    kind: str  # "pld_loss", "langevin", "pld_local_quadratic"
    h: float = 4.0  # well curvature (h_min = h_saddle) or basin curvature
    barrier: float = 0.3
    sigma2: float = 2.0
    sigma_g: float = 2.0
    sigma_h: float = 4.0

    # ---------------------------------------------------------------- shared formulas
    def drift(self, x, xp=np):
        """mu(x) for an array of particles x of shape (..., dim)."""
        if self.kind == "pld_local_quadratic":
            return -self.h * x
        return -th.kramers_grad(x, self.h, self.h, self.barrier, xp=xp)

    def noise(self, x, xp=np):
        """G(x) of shape (..., 1): the noise factor sqrt(lr C(x) / b) of each particle."""
        if self.kind == "langevin":
            return xp.full(x.shape[:-1] + (1,), math.sqrt(LR / B * self.sigma2), dtype=x.dtype)
        if self.kind == "pld_local_quadratic":
            c = self.sigma_g + self.sigma_h * xp.sum(x * x, axis=-1, keepdims=True)
        else:
            loss = th.kramers_loss(x, self.h, self.h, self.barrier, xp=xp)
            c = self.sigma_g + 2 * self.sigma_h / self.h * xp.maximum(loss, 0.0)
        return xp.sqrt(LR / B * c)

    # ---------------------------------------------------------------- sgdyn and theory
    def sgdyn_sde(self):
        if self.kind == "pld_local_quadratic":
            return sg.SDE.make(sg.Quadratic.make(self.h, dim=self.dim),
                               sg.PLDLocal.make(self.sigma_g, self.sigma_h), LR, B)
        land = sg.KramersWell.make(self.h, self.h, self.barrier)
        model = (sg.Isotropic.make(self.sigma2) if self.kind == "langevin"
                 else sg.PLDLoss.make(land, self.sigma_g, self.sigma_h))
        return sg.SDE.make(land, model, LR, B)

    def _noise_kw(self):
        if self.kind == "langevin":
            return dict(noise="langevin", sigma2=self.sigma2)
        return dict(noise="pld_loss", sigma_g=self.sigma_g, sigma_h=self.sigma_h)

    @property
    def exit_point(self) -> float:
        """Escape = reaching the saddle plus 4 diffusion lengths (sgdyn.theory's convention)."""
        return th.kramers_escape_point(self.h, self.h, self.barrier, lr=LR, batch_size=B,
                                       **self._noise_kw())

    @property
    def exact(self) -> float:
        """Exact mean exit time from x0 = 0 (t = k * lr units), by quadrature."""
        return th.kramers_exit_time(self.h, self.h, self.barrier, lr=LR, batch_size=B,
                                    **self._noise_kw())

    def sharper(self, scale: float) -> "Problem":
        """The same finite-sum problem seen through w -> scale * w (THEORY.md section 4): h and
        sigma_g grow by scale^2, sigma_H by scale^4, the barrier stays."""
        s2 = scale * scale
        return dataclasses.replace(self, name=f"{self.name}@{scale:.3g}", h=self.h * s2,
                                   sigma_g=self.sigma_g * s2, sigma_h=self.sigma_h * s2 * s2)


PLD1 = Problem("pld1", 1, "pld_loss")
LANGEVIN1 = Problem("langevin1", 1, "langevin")
PLD1_BASIN = Problem("pld1_basin", 1, "pld_local_quadratic", h=4.0, sigma_g=2.0, sigma_h=4.0)
PLD100 = Problem("pld100", 100, "pld_local_quadratic", h=1.0, sigma_g=1.0, sigma_h=0.01)
PROBLEMS = {p.name: p for p in (PLD1, LANGEVIN1, PLD1_BASIN, PLD100)}
