r"""Escape times from the Kramers well: exact (quadrature) and asymptotic formulas.

All times in units of t = k * lr. The SGD-like SDE is dw = -L'(w) dt + sqrt(lr C(w)/b) dB, so
in 1-D its diffusion is D(w) = lr C(w) / (2 b). Noise families (THEORY.md section 2), in the
well of ``sgdyn.theory.wells`` (L(a) = 0 at the minimum a = 0):

    "langevin":  C = sigma2                          (temperature T = lr sigma2 / (2b))
    "hessian":   C = sigma2 * h_min                   (curvature at the minimum)
    "pld_loss":  C = sigma_g + (2 sigma_H / h_min) max(L(w) - L(a), 0)
                 (the excess loss is clipped at 0 so that C >= sigma_g stays positive past the
                 saddle, where L drops below L(a); the two agree on the whole well and saddle)
    "pld_local": C = sigma_g + sigma_H w^2

Asymptotic formulas (THEORY.md section 4):

    Kramers:  tau = 2 pi / sqrt(h_min h_saddle) * exp(barrier / T)
    PLD:      tau = 2 pi sqrt(b / (lr sigma_H h_saddle)) Gamma(kappa - 1/2)/Gamma(kappa)
                    * (1 + q)^(kappa - 1/2),
              kappa = 1 + b h_min/(lr sigma_H),  q = 2 sigma_H barrier / (h_min sigma_g)
"""

from __future__ import annotations

import math

import numpy as np

from .. import _checks
from .mfpt import log_mean_exit_time
from .stationary import langevin_temperature, log_gamma_ratio, pld_kappa, warn_if
from .wells import kramers_geometry, kramers_grad, kramers_loss

NOISES = ("langevin", "hessian", "pld_loss", "pld_local")


def noise_covariance(noise, *, h_min, h_saddle, barrier, sigma2=None, sigma_g=None, sigma_h=None):
    """C(w) of a noise family in the Kramers well, as a numpy-vectorised function."""
    _checks.choice("noise", noise, NOISES)
    kramers_geometry(h_min, h_saddle, barrier)  # its checks: a well to compute C(w) in
    wanted = ("sigma2",) if noise in ("langevin", "hessian") else ("sigma_g", "sigma_h")
    given = dict(sigma2=sigma2, sigma_g=sigma_g, sigma_h=sigma_h)
    stray = [name for name, value in given.items() if value is not None and name not in wanted]
    if stray:  # silently ignored, a sweep over the wrong parameter would look flat
        raise ValueError(f"{', '.join(stray)}: not a parameter of noise={noise!r}, which takes "
                         f"{' and '.join(wanted)}")
    if noise in ("langevin", "hessian"):
        if sigma2 is None:
            raise ValueError(f"sigma2 is required for noise={noise!r}")
        _checks.positive("sigma2", sigma2)
        level = sigma2 * (h_min if noise == "hessian" else 1.0)
        return lambda w: level + 0.0 * np.asarray(w, float)
    if sigma_g is None or sigma_h is None:
        raise ValueError(f"sigma_g and sigma_h are required for noise={noise!r}")
    _checks.positive("sigma_g", sigma_g)
    _checks.positive("sigma_h", sigma_h)
    if noise == "pld_loss":
        return lambda w: sigma_g + 2 * sigma_h / h_min * np.maximum(
            kramers_loss(w, h_min, h_saddle, barrier), 0.0)
    return lambda w: sigma_g + sigma_h * np.asarray(w, float) ** 2


def kramers_escape_point(h_min, h_saddle, barrier, *, lr, batch_size, n_lengths=4.0, **noise):
    """The saddle plus ``n_lengths`` diffusion lengths sqrt(D(saddle)/h_saddle).

    Reaching it means the particle has left for good (from there, past a parabolic saddle, it
    returns with probability erfc(n_lengths / sqrt 2) = 2 (1 - Phi(n_lengths)), 6.3e-5 at the
    default 4); the mean time to reach it is the Kramers escape time.
    """
    g = kramers_geometry(h_min, h_saddle, barrier)
    _checks.positive("lr", lr)
    _checks.positive("batch_size", batch_size)
    _checks.nonnegative("n_lengths", n_lengths)
    cov = noise_covariance(h_min=h_min, h_saddle=h_saddle, barrier=barrier, **noise)
    d_saddle = lr * float(cov(g.saddle)) / (2 * batch_size)
    return g.saddle + n_lengths * math.sqrt(d_saddle / h_saddle)


def kramers_exit_time(
    h_min, h_saddle, barrier, *, lr, batch_size, noise, x0=0.0, to="beyond", n_lengths=None,
    log=False, **noise_params,
):
    """Exact mean time (t = k lr) from x0 to the saddle (``to="saddle"``) or past it, to
    ``kramers_escape_point`` at ``n_lengths`` diffusion lengths beyond the saddle (default 4).

    ``noise`` is one of NOISES with its parameters (sigma2, or sigma_g and sigma_h).
    ``log=True`` returns log T (for times beyond the float64 range).
    """
    _checks.choice("to", to, ("beyond", "saddle"))
    if to == "saddle" and n_lengths is not None:  # else silently ignored
        raise ValueError("n_lengths applies to to='beyond' only, not to='saddle'")
    n_lengths = 4.0 if n_lengths is None else n_lengths
    g = kramers_geometry(h_min, h_saddle, barrier)
    _checks.positive("lr", lr)
    _checks.positive("batch_size", batch_size)
    cov = noise_covariance(noise, h_min=h_min, h_saddle=h_saddle, barrier=barrier, **noise_params)
    if to == "saddle":
        right = g.saddle
    else:
        right = kramers_escape_point(h_min, h_saddle, barrier, lr=lr, batch_size=batch_size,
                                     n_lengths=n_lengths, noise=noise, **noise_params)
    _checks.finite("x0", x0)
    if not x0 < right:
        raise ValueError(f"x0 must lie left of the exit point {right:.6g}, got {x0!r}")
    log_t = log_mean_exit_time(
        lambda w: -kramers_grad(w, h_min, h_saddle, barrier),
        lambda w: lr * cov(w) / (2 * batch_size),
        x0, right,
        # kinks: the curvature jump at c, and where the clipped excess loss of "pld_loss" hits 0
        breakpoints=[g.c, g.saddle, g.saddle + math.sqrt(2 * barrier / h_saddle)],
    )
    return log_t if log else _exp_or_raise(log_t)


def _exp_or_raise(log_t):
    if log_t > 709.0:
        raise OverflowError(f"escape time exp({log_t:.1f}) overflows float64; pass log=True")
    return math.exp(log_t)


def kramers_time(h_min, h_saddle, barrier, temperature, *, log=False):
    """Kramers' escape time 2 pi / sqrt(h_min h_saddle) exp(barrier/T) (t = k lr units);
    ``log=True`` returns its log (for times beyond the float64 range).

    Asymptotic in barrier/T -> inf: a review measured it 1.1% below the exact value at
    barrier/T = 5 and 3.8% below at 3; warns below barrier/T = 5.
    """
    for name, v in (("h_min", h_min), ("h_saddle", h_saddle), ("barrier", barrier),
                    ("temperature", temperature)):
        _checks.positive(name, v)
    warn_if(barrier / temperature < 5,
            f"Kramers formula used at barrier/T = {barrier / temperature:.3g} < 5, "
            "outside its accuracy range; use kramers_exit_time for the exact value")
    prefactor = 2 * math.pi / math.sqrt(h_min * h_saddle)
    log_t = math.log(prefactor) + barrier / temperature
    if log:
        return log_t
    if barrier / temperature > 709.0:  # exp alone would overflow where the product does not
        return _exp_or_raise(log_t)
    return prefactor * math.exp(barrier / temperature)


def langevin_escape_time(h_min, h_saddle, barrier, *, lr, batch_size, sigma2, log=False):
    """Kramers' formula with T = lr sigma2/(2b) (its log with ``log=True``)."""
    return kramers_time(h_min, h_saddle, barrier, langevin_temperature(lr, batch_size, sigma2),
                        log=log)


def pld_formula_range(h_min, barrier, *, lr, batch_size, sigma_g, sigma_h):
    """(kappa, effective barrier (kappa - 1/2) ln(1 + q), inside) for ``pld_escape_time``:
    inside its accuracy range where kappa >= 5 and the effective barrier >= 4 (a heuristic,
    see there), q = 2 sigma_H barrier / (h_min sigma_g)."""
    _checks.positive("sigma_g", sigma_g)
    _checks.positive("barrier", barrier)
    kappa = pld_kappa(h_min, lr, batch_size, sigma_h)
    effective = (kappa - 0.5) * math.log1p(2 * sigma_h * barrier / (h_min * sigma_g))
    return kappa, effective, bool(kappa >= 5 and effective >= 4)


def pld_escape_time(h_min, h_saddle, barrier, *, lr, batch_size, sigma_g, sigma_h, log=False):
    """Asymptotic escape time of the loss-form PLD (Laplace's method; t = k lr units).

    tau ~ 2 pi sqrt(b / (lr sigma_H h_s)) Gamma ratio(kappa) (1 + q)^(kappa - 1/2), with
    q = 2 sigma_H barrier / (h_min sigma_g); (kappa - 1/2) ln(1 + q) is the effective barrier
    (barrier/T in the Langevin limit). Against the exact quadrature, for h_min = h_saddle and
    q from 0.01 to 30: within -2% and +0.2%, 0.4%, 0.9%, 2.0%, 3.7%, 5.2% and 9% at kappa =
    201, 101, 41, 20, 11, 8 and 5 once the effective barrier is 4 or more (the -2%, at large
    kappa just above 4, is Kramers' formula's own error at barrier/T = 4); below 4, from
    +37% (kappa = 5, q = 0.01) down to -6% or -7% (kappa 41-201, q 0.01-0.03), though some
    such points are within 1%. With h_saddle = 10 h_min a review found in-range points 6-11%
    low.
    Warns outside ``pld_formula_range`` (a heuristic). ``log=True`` returns log tau.
    """
    for name, v in (("h_min", h_min), ("h_saddle", h_saddle), ("barrier", barrier),
                    ("sigma_g", sigma_g)):
        _checks.positive(name, v)
    kappa, effective, inside = pld_formula_range(h_min, barrier, lr=lr, batch_size=batch_size,
                                                 sigma_g=sigma_g, sigma_h=sigma_h)
    warn_if(not inside,
            f"PLD escape formula used at kappa = {kappa:.3g} and effective barrier "
            f"(kappa - 1/2) ln(1 + q) = {effective:.3g}, outside its accuracy range "
            f"(kappa >= 5 and effective barrier >= 4); use kramers_exit_time for the exact "
            f"value")
    log_tau = (
        math.log(2 * math.pi)
        + 0.5 * math.log(batch_size / (lr * sigma_h * h_saddle))
        + log_gamma_ratio(kappa)
        + effective  # (kappa - 1/2) ln(1 + q)
    )
    return log_tau if log else _exp_or_raise(log_tau)
