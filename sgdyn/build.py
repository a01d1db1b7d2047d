r"""Build landscapes and dynamics from names: what the command-line scripts call.

Names (each error lists the valid ones):

    landscapes: "kramers" (h_min, h_saddle, barrier), "quadratic" (h, dim),
                "double_well" (scale, tilt), "styblinski_tang" (dim, scale)
    dynamics:   "sgd" (real minibatch SGD on the synthetic finite-sum problem of THEORY.md
                section 2 built on the landscape: sigma_g, sigma_h, n_examples, replace),
                "langevin" (sigma2), "hessian" (sigma2), "pld" (loss form: sigma_g, sigma_h),
                "pld_local" (sigma_g, sigma_h)
"""

from __future__ import annotations

from . import _checks
from .landscapes import DoubleWell, KramersWell, Quadratic, StyblinskiTang
from .noise import HessianNoise, Isotropic, PLDLocal, PLDLoss
from .problems import SyntheticPLD
from .sde import SDE
from .sgd import MinibatchSGD
from .solvers import EulerMaruyama

LANDSCAPES = ("kramers", "quadratic", "double_well", "styblinski_tang")
DYNAMICS = ("sgd", "langevin", "hessian", "pld", "pld_local")
THEORY_NOISE = {"langevin": "langevin", "hessian": "hessian", "pld": "pld_loss",
                "pld_local": "pld_local", "sgd": "pld_local"}


def make_landscape(name, *, h_min=2.0, h_saddle=2.0, barrier=1.0, h=1.0, dim=1, scale=1.0,
                   tilt=0.0):
    _checks.choice("landscape", name, LANDSCAPES)
    if name == "kramers":
        return KramersWell.make(h_min, h_saddle, barrier)
    if name == "quadratic":
        return Quadratic.make(h, dim)
    if name == "double_well":
        return DoubleWell.make(scale, tilt)
    return StyblinskiTang.make(dim, scale)


def make_dynamic(name, landscape, *, lr, batch_size, sigma2=1.0, sigma_g=1.0, sigma_h=1.0,
                 dt=None, increments="gaussian", n_examples=1000, replace=True, data_seed=0):
    """A dynamic (``EulerMaruyama`` of the SGD-like SDE, or ``MinibatchSGD``) by name."""
    _checks.choice("dynamics", name, DYNAMICS)
    if name == "sgd":
        if increments != "gaussian":  # SGD draws examples, not Gaussian increments
            raise ValueError(f"increments applies to the SDE dynamics, not dynamics='sgd', got "
                             f"increments={increments!r}")
        if dt is not None and float(dt) != float(lr):
            raise ValueError(f"dt must equal lr for dynamics='sgd' (one step per update), got "
                             f"dt={dt}, lr={lr}")
        problem = SyntheticPLD.make(landscape, sigma_g, sigma_h, n_examples, seed=data_seed)
        return MinibatchSGD.make(problem, lr, batch_size, replace)
    noise = {
        "langevin": lambda: Isotropic.make(sigma2),
        "hessian": lambda: HessianNoise.make(landscape, sigma2),
        "pld": lambda: PLDLoss.make(landscape, sigma_g, sigma_h),
        "pld_local": lambda: PLDLocal.make(sigma_g, sigma_h),
    }[name]()
    return EulerMaruyama.make(SDE.make(landscape, noise, lr, batch_size), dt, increments)
