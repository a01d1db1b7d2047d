"""sgdyn: simulate how SGD, Langevin dynamics and the power-law dynamic move on loss landscapes.

Flat public API. The pieces, each in its own module:

- landscapes (``Quadratic``, ``KramersWell``, ``DoubleWell``, ``StyblinskiTang``,
  ``Reparametrized``) and finite-sum problems (``SyntheticPLD``, ``LeastSquares``);
- noise models (``Isotropic``, ``HessianNoise``, ``PLDLocal``, ``PLDLoss``) and the ``SDE``;
- dynamics: ``EulerMaruyama`` (any SDE, Gaussian or weak increments) and ``MinibatchSGD``;
- exit regions (``Threshold``, ``Halfspace``, ``Ball``, ``Interval``) with boundary corrections;
- sums in one fixed order (``ordered_sum``, ``ordered_dot``, ``ordered_matvec``,
  ``ordered_norm``), for every sum over a particle's coordinates, so no result depends on how
  many particles run beside it;
- the engine (``simulate_exits``, ``simulate_samples``) and the one-call
  ``measure_exit_times`` / ``sweep_exit_times``;
- estimators (``exit_time_estimate``, ``constant_rate_test``, ``kaplan_meier``) and exact
  theory (``sgdyn.theory``);
- ``enable_compilation_cache``: keep compiled kernels on disk across processes.

Time is t = k * lr throughout.
"""

from . import theory
from .cache import enable_compilation_cache
from .ensemble import ExitRecord, SampleRecord, simulate_exits, simulate_samples
from .estimators import ExitEstimate, constant_rate_test, exit_time_estimate, kaplan_meier
from .landscapes import DoubleWell, KramersWell, Quadratic, Reparametrized, StyblinskiTang
from .measure import (ExitResult, measure_exit_times, sample_stationary, stack,
                      sweep_exit_times)
from .noise import HessianNoise, Isotropic, PLDLocal, PLDLoss
from .ordered import ordered_dot, ordered_matvec, ordered_norm, ordered_sum
from .problems import (LeastSquares, SyntheticPLD, gradient_noise_covariance,
                       pld_parameters)
from .regions import Ball, Halfspace, Interval, Threshold
from .sde import SDE
from .sgd import MinibatchSGD
from .solvers import EulerMaruyama

__version__ = "0.1.0"

__all__ = [
    "Ball", "DoubleWell", "EulerMaruyama", "ExitEstimate", "ExitRecord", "ExitResult",
    "Halfspace", "HessianNoise", "Interval", "Isotropic", "KramersWell", "LeastSquares",
    "MinibatchSGD", "PLDLocal", "PLDLoss", "Quadratic", "Reparametrized", "SDE", "SampleRecord",
    "StyblinskiTang", "SyntheticPLD", "Threshold", "enable_compilation_cache",
    "constant_rate_test", "exit_time_estimate", "gradient_noise_covariance", "kaplan_meier",
    "measure_exit_times", "ordered_dot", "ordered_matvec", "ordered_norm",
    "ordered_sum",
    "pld_parameters", "sample_stationary", "simulate_exits", "simulate_samples", "stack",
    "sweep_exit_times", "theory",
]
