r"""Stationary distributions of Langevin dynamics and of the power-law dynamic (PLD).

Time is t = k * lr throughout, so an SGD-like dynamic with learning rate lr, batch size b and
per-example gradient covariance C has diffusion D = lr * C / (2 b) (THEORY.md section 1).

PLD in a quadratic basin, drift -h x, C(x) = sigma_g + sigma_H x^2 (THEORY.md section 3):

    p(x) ∝ (1 + (sigma_H/sigma_g) x^2)^(-kappa),   kappa = 1 + b h / (lr sigma_H)

a Student-t with nu = 2 kappa - 1 degrees of freedom and scale s, s^2 = sigma_g/(sigma_H nu);
P(|X| > x) ~ x^(-nu). In d dimensions the density is normalisable only if 2 kappa > d.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import integrate, optimize, special, stats

from .. import _checks


def langevin_temperature(lr, batch_size, sigma2):
    """T = lr sigma^2 / (2 b): Gibbs density exp(-L/T) of dw = -L' dt + sqrt(lr sigma^2/b) dB."""
    _checks.positive("lr", lr)
    _checks.positive("batch_size", batch_size)
    _checks.positive("sigma2", sigma2)
    return lr * sigma2 / (2 * batch_size)


def pld_kappa(h, lr, batch_size, sigma_h):
    """kappa = 1 + b h / (lr sigma_H) (dimensionless)."""
    _checks.positive("h", h)
    _checks.positive("lr", lr)
    _checks.positive("batch_size", batch_size)
    _checks.positive("sigma_h", sigma_h)
    return 1 + batch_size * h / (lr * sigma_h)


def log_gamma_ratio(kappa):
    """log Gamma(kappa - 1/2) / Gamma(kappa), accurate for any kappa > 1/2.

    As log B(kappa - 1/2, 1/2) - log sqrt(pi): the difference of two lgamma values loses every
    digit at large kappa (the sigma_H -> 0 limit: 1/pi instead of 1 at kappa ~ 1e14).
    """
    return float(special.betaln(kappa - 0.5, 0.5)) - 0.5 * math.log(math.pi)


def pld_tail_index(h, lr, batch_size, sigma_h):
    """nu = 2 kappa - 1 = 1 + 2 b h/(lr sigma_H): P(|X| > x) ~ x^(-nu) in 1-D."""
    return 2 * pld_kappa(h, lr, batch_size, sigma_h) - 1


def pld_student_t(h, lr, batch_size, sigma_g, sigma_h):
    """The 1-D PLD stationary law as a frozen ``scipy.stats.t`` (df = nu, scale = s)."""
    _checks.positive("sigma_g", sigma_g)
    nu = pld_tail_index(h, lr, batch_size, sigma_h)
    return stats.t(df=nu, scale=math.sqrt(sigma_g / (sigma_h * nu)))


def pld_stationary_density(x, h, lr, batch_size, sigma_g, sigma_h):
    """Normalised p(x) ∝ (1 + (sigma_H/sigma_g) x^2)^(-kappa), x measured from the minimum."""
    _checks.finite("x", x)
    kappa = pld_kappa(h, lr, batch_size, sigma_h)
    _checks.positive("sigma_g", sigma_g)
    ratio = sigma_h / sigma_g
    # normaliser of (1 + ratio x^2)^(-kappa): sqrt(pi/ratio) Gamma(kappa - 1/2) / Gamma(kappa)
    log_z = 0.5 * math.log(math.pi / ratio) + log_gamma_ratio(kappa)
    x = np.asarray(x, float)
    return np.exp(-kappa * np.log1p(ratio * x**2) - log_z)


def pld_is_normalizable(kappa, dim):
    """True iff the d-dimensional isotropic PLD density is normalisable: 2 kappa > d."""
    _checks.positive("kappa", kappa)
    _checks.positive_int("dim", dim)
    return 2 * kappa > dim


def pld_max_lr(h, batch_size, sigma_h, dim):
    """Largest lr with a normalisable d-D PLD density: lr < 2 b h / (sigma_H (d - 2)).

    Returns inf for d <= 2 (normalisable at every lr).
    """
    _checks.positive("h", h)
    _checks.positive("batch_size", batch_size)
    _checks.positive("sigma_h", sigma_h)
    _checks.positive_int("dim", dim)
    return math.inf if dim <= 2 else 2 * batch_size * h / (sigma_h * (dim - 2))


def check_pld_normalizable(kappa, dim):
    """Raise ValueError when the d-D PLD has no stationary density (kappa <= d/2)."""
    if not pld_is_normalizable(kappa, dim):
        raise ValueError(
            f"the PLD stationary density is not normalisable: kappa = {kappa:.4g} <= d/2 = "
            f"{dim / 2}; lower lr or raise batch_size"
        )


def gibbs_density(loss, temperature, *, support=(-np.inf, np.inf), points=None):
    """Normalised Gibbs density x -> exp(-L(x)/T)/Z in 1-D (Z by adaptive quadrature).

    ``loss`` is vectorised over numpy arrays; returns a callable density. The quadrature is
    anchored at the global minimum m (a grid over the support within [-50, 50], then a
    downhill search that may leave it): a window of 20 widths on each side, a width being
    where L first rises by T above L(m), then the two tails. Other narrow wells far from m:
    pass them in ``points`` (in a tail too). The density is 0 outside ``support``. A ValueError
    says when exp(-L/T) is not integrable, e.g. where L falls below L(m) far out on an infinite
    side (probed at m +- 10^2 ... 10^12): a loss unbounded below, such as a cubic well, needs a
    bounded support.
    """
    _checks.positive("temperature", temperature)
    lo, hi = support
    if not lo < hi:
        raise ValueError(f"support must satisfy low < high, got {support}")
    points = sorted(float(p) for p in (points or ()))

    def on_support(x):
        return float(loss(x)) if lo <= x <= hi else math.inf

    grid = np.linspace(max(lo, -50.0), min(hi, 50.0), 20001)
    i = int(np.argmin(loss(grid)))
    step = grid[1] - grid[0]
    # downhill from the best grid point (Brent, bracketing outward as far as the loss falls)
    with np.errstate(over="ignore", invalid="ignore"):  # a loss unbounded below: refused below
        res = optimize.minimize_scalar(on_support, bracket=(grid[i] - step, grid[i]))
    m = float(res.x) if math.isfinite(res.fun) and res.fun <= loss(grid[i]) else float(grid[i])
    shift = on_support(m)

    def width(sign):
        # the level set L = L(m) + T, by doubling: no curvature needed (flat or kinked minima)
        s = 1e-9 * max(1.0, abs(m))
        while s < 1e12 and on_support(m + sign * s) - shift < temperature:
            if not lo <= m + sign * 2 * s <= hi:
                return s
            s *= 2
        return s

    a, b = max(lo, m - 20 * width(-1)), min(hi, m + 20 * width(1))
    # far out on an infinite side, a loss below L(m) means the minimum searched for lies
    # beyond the grid or L is unbounded below (a cubic well): exp(-L/T) is then not what the
    # quadrature around m would normalise, or not integrable at all
    for side, end in ((-1, lo), (1, hi)):
        if math.isinf(end):
            for far in (m + side * 10.0**k for k in range(2, 13)):
                with np.errstate(over="ignore", invalid="ignore"):
                    below = on_support(far) < shift
                if below:
                    raise ValueError(
                        f"exp(-L/T) is not integrable on the given support, or its minimum lies "
                        f"outside [-50, 50]: L({far:.3g}) = {on_support(far):.6g} is below "
                        f"L({m:.6g}) = {shift:.6g}; give a bounded support")

    def weight(x):
        try:
            return math.exp(-(loss(x) - shift) / temperature)
        except OverflowError:  # L far below L(m) inside the support
            raise ValueError(f"exp(-L/T) is not integrable on the given support: L({x:.6g}) "
                             f"is far below L({m:.6g}) = {shift:.6g}") from None

    def piece(u, v, epsabs=0.0):
        """Integral over (u, v), split at the given points so quad cannot step over a well."""
        inner = [p for p in points if u < p < v]
        if math.isinf(u) and inner:  # quad takes no points on an infinite range
            return piece(u, inner[0], epsabs) + piece(inner[0], v, epsabs)
        if math.isinf(v) and inner:
            return piece(u, inner[-1], epsabs) + piece(inner[-1], v, epsabs)
        if not u < v:
            return 0.0
        return integrate.quad(weight, u, v, points=inner or None, limit=500, epsabs=epsabs,
                              epsrel=1e-11)[0]

    # the tails to within 1e-13 of the window's mass: a relative tolerance alone on a tail that
    # holds next to nothing ends in quad's round-off warnings
    window = piece(a, m) + piece(m, b)
    z = piece(lo, a, 1e-13 * window) + window + piece(b, hi, 1e-13 * window)
    if not (z > 0 and math.isfinite(z)):
        raise ValueError("exp(-L/T) is not integrable on the given support")

    def density(x):
        x = np.asarray(x, float)
        inside = (x >= lo) & (x <= hi)
        with np.errstate(over="ignore", invalid="ignore"):  # L outside the support: any value
            p = np.exp(-(loss(x) - shift) / temperature) / z
        return np.where(inside, p, 0.0)

    return density


def warn_if(condition: bool, message: str) -> None:
    if condition:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
