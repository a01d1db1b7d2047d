r"""Exact mean first exit time of a 1-D diffusion, by quadrature in log space.

For dX = mu(X) dt + sqrt(2 D(X)) dB on (l, r), reflecting at l (or l = -inf), absorbing at r,

    T(x0) = int_{x0}^{r} (1/psi(y)) int_{l}^{y} psi(z)/D(z) dz dy,    psi(y) = exp(int^y mu/D)

(THEORY.md section 4). T is in the same time unit as mu and D (for SGD models, t = k * lr).

psi spans hundreds of orders of magnitude for high barriers, so nothing is ever exponentiated
before the last step: with phi = log psi and J(y) = int_l^y exp(phi(z))/D(z) dz,

    log T = log int_{x0}^{r} exp(log J(y) - phi(y)) dy,

and every integral is a log-sum-exp over Gauss-Legendre nodes. The interval is cut into panels
(with edges at x0 and at user-given breakpoints where mu or D has a kink); on each panel
mu/D is replaced by its degree-(M-1) Legendre interpolant, integrated exactly to give phi
anywhere in the panel, and the integrands exp(phi)/D are integrated by M-point Gauss-Legendre
rules. The panel count doubles until two successive answers agree to ``rtol``. A left end at
-inf is handled by geometrically growing panels until psi/D is negligible.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from numpy.polynomial import legendre as _leg
from scipy.special import logsumexp

from .. import _checks

_M = 16  # Gauss-Legendre nodes per panel
_TOP = 40.0  # nodes this close (in log) to the top of T's integrand by z hold its mass
_PEAK_STEP = 10.0  # most that log integrand (or phi around a maximum) may move between nodes
_T, _W = _leg.leggauss(_M)
_LOG_W = np.log(_W)


def _integration_matrix(points: np.ndarray) -> np.ndarray:
    """Q with (Q @ f)[p] = int_{-1}^{points[p]} interp(f)(t) dt for f sampled at the nodes."""
    vander = _leg.legvander(_T, _M - 1)  # vander[i, n] = P_n(t_i)
    project = (2 * np.arange(_M) + 1)[:, None] / 2 * (vander * _W[:, None]).T  # f -> coefficients
    q = np.empty((points.size, _M))
    for j in range(_M):
        antideriv = _leg.legint(project[:, j], lbnd=-1)
        q[:, j] = _leg.legval(points, antideriv)
    return q


# Reference points (on [-1, 1]) where phi is needed: the right edge, the M nodes, and for each
# node t_j the M nodes of the sub-rule on [-1, t_j] (for the partial integrals up to t_j).
_SUB = -1 + np.outer(_T + 1, _T + 1) / 2  # _SUB[j, i]: i-th node of the rule on [-1, t_j]
_Q_EDGE = _integration_matrix(np.array([1.0]))[0]
_Q_NODE = _integration_matrix(_T)
_Q_SUB = _integration_matrix(_SUB.ravel())


def _log_mfpt_on_edges(drift, diffusion, edges: np.ndarray, i_start: int):
    """log T for panels ``edges``, from edges[i_start] (the start, where phi = 0: anchored far
    out on a steep side, a sharp well's, |phi| reached (h_min / h_saddle) log T near the well
    and its round-off outgrew the convergence tolerance).

    Returns (log T, log contribution of each panel to J, ``_peak_step``) so callers can judge
    truncation and resolution.
    """
    lo, hi = edges[:-1], edges[1:]
    half = (hi - lo) / 2  # (K,)
    nodes = lo[:, None] + half[:, None] * (_T + 1)  # (K, M)
    subs = lo[:, None, None] + half[:, None, None] * (_SUB + 1)  # (K, M, M)

    with np.errstate(all="ignore"):
        d_nodes = np.asarray(diffusion(nodes), float) * np.ones_like(nodes)
        d_subs = np.asarray(diffusion(subs), float) * np.ones_like(subs)
        a_nodes = np.asarray(drift(nodes), float) / d_nodes  # mu / D at the nodes

        # phi at the left edge of each panel: cumulative increments, anchored at the start
        # and accumulated outward from it (keeps phi exact where it matters).
        incr = half * (a_nodes @ _Q_EDGE)
        left_part = -np.cumsum(incr[:i_start][::-1])[::-1]
        phi_edge = np.concatenate([left_part, [0.0], np.cumsum(incr[i_start:])])
        phi_lo = phi_edge[:-1]
        phi_nodes = phi_lo[:, None] + half[:, None] * (a_nodes @ _Q_NODE.T)
        phi_subs = phi_lo[:, None, None] + half[:, None, None] * (
            a_nodes @ _Q_SUB.T
        ).reshape(-1, _M, _M)

        # log of int over each whole panel of exp(phi)/D
        log_panel = logsumexp(np.log(half)[:, None] + _LOG_W + phi_nodes - np.log(d_nodes), axis=1)
        # log J at left edges: J(edges[0]) = 0 (reflecting end, or negligible far tail)
        log_j_lo = np.concatenate([[-np.inf], np.logaddexp.accumulate(log_panel)[:-1]])
        # partial integrals from the left edge of the panel to each node
        sub_len = np.log(half)[:, None] + np.log((_T + 1) / 2)[None, :]  # log((y_j - lo)/2)
        log_partial = logsumexp(
            sub_len[:, :, None] + _LOG_W + phi_subs - np.log(d_subs), axis=2
        )
        log_j_nodes = np.logaddexp(log_j_lo[:, None], log_partial)
        log_i_nodes = log_j_nodes - phi_nodes  # log I(y) at the nodes

        outer = np.log(half)[i_start:, None] + _LOG_W + log_i_nodes[i_start:]
        log_t = logsumexp(outer)
    bad = ~np.isfinite(log_i_nodes[i_start:])
    if bad.any() or not np.isfinite(log_t):
        raise FloatingPointError(
            "drift/diffusion gave non-finite values inside the exit interval; check that the "
            "diffusion is > 0 and the drift finite on (left, right)"
        )
    # where T's double integral of exp(phi(z) - phi(y)) / D(z), z < y, x0 < y, gathers its
    # mass, by z: exp(phi(z)) / D(z) times int_{max(z, x0)}^r exp(-phi)
    with np.errstate(all="ignore"):
        log_g = np.logaddexp.accumulate(
            (np.log(half)[:, None] + _LOG_W - phi_nodes)[i_start:].ravel()[::-1])[::-1]
        log_g = np.concatenate([np.full(i_start * _M, log_g[0]), log_g])
    return float(log_t), log_panel, _peak_step(nodes.ravel(), phi_nodes.ravel(), log_g,
                                               np.log(d_nodes.ravel()), a_nodes.ravel())


def _peak_step(x, phi, log_g, log_d, slope):
    """How far the log of T's integrand by z, phi + log G - log D, may move between
    neighbouring nodes ``x`` where it is within _TOP of its highest (D's own jumps at
    breakpoints left out: no refinement shrinks them), and phi around any of its maxima
    (|phi'| = |``slope``| times the gap, the larger end). Small where the wells are resolved;
    large where the one that carries T, or the half of it on the coarse side of a segment's
    edge, or a well out in the left tail, falls between two nodes far apart, whose values
    cannot show it."""
    with np.errstate(all="ignore"):
        mass = phi + log_g - log_d
        near_top = np.maximum(mass[:-1], mass[1:]) >= np.nanmax(mass) - _TOP
        peak = (slope[:-1] > 0) & (slope[1:] <= 0)
        gap = np.diff(x)[peak]
        step = np.concatenate([np.abs(np.diff(phi + log_g))[near_top],
                               np.maximum(slope[:-1][peak] * gap, -slope[1:][peak] * gap)])
    return float(np.max(step, initial=0.0)) if np.all(np.isfinite(step)) else np.inf


def _finite_edges(points: Sequence[float], n_panels: int) -> np.ndarray:
    """Panel edges through every point in ``points`` with about n_panels panels in all, shared
    out by length; every segment gets at least n_panels / max(32, segments) (and 4), so that
    doubling n_panels refines them all (a short segment held at 4 panels never converged: a
    well in it stayed unresolved while the long ones' answers agreed), and no more than about
    2 n_panels in all however many breakpoints there are."""
    points = np.unique(np.asarray(points, float))
    total = points[-1] - points[0]
    edges = [points[:1]]
    floor = max(4, n_panels // max(32, points.size - 1))
    for a, b in zip(points[:-1], points[1:]):
        k = max(floor, int(math.ceil(n_panels * (b - a) / total)))
        edges.append(np.linspace(a, b, k + 1)[1:])
    return np.concatenate(edges)


def _left_tail_edges(anchor: float, width: float, doublings: int = 64, per: int = 4):
    """Edges anchor - width*(2^k - 1), k = 0..doublings, each gap cut into ``per`` panels."""
    big = anchor - width * (2.0 ** np.arange(doublings + 1) - 1)
    fine = [np.linspace(big[k + 1], big[k], per + 1)[:-1] for k in range(doublings)]
    return np.sort(np.concatenate(fine))  # excludes the anchor itself


def log_mean_exit_time(
    drift: Callable[[np.ndarray], np.ndarray],
    diffusion: Callable[[np.ndarray], np.ndarray],
    x0: float,
    right: float,
    left: float = -np.inf,
    *,
    breakpoints: Sequence[float] = (),
    rtol: float = 1e-10,
    n_panels: int = 128,
    max_panels: int = 8192,
) -> float:
    r"""log of the exact mean first exit time of dX = drift(X) dt + sqrt(2 diffusion(X)) dB.

    Args:
      drift: mu(x), vectorised over numpy arrays (units: length / time).
      diffusion: D(x) = sigma(x)^2 / 2 > 0, vectorised (units: length^2 / time).
      x0: start, ``left <= x0 < right``.
      right: absorbing boundary.
      left: reflecting boundary, or ``-inf`` (then the process must be confined on the left:
        psi/D integrable at -inf, else ValueError). For exit from a symmetric interval
        (-r, r) started at 0 with a symmetric problem, use ``left=0``.
      breakpoints: points where drift or diffusion is not smooth (panel edges go there).
      rtol: requested relative accuracy of T (at best ~1e-13 |log T|, float64 round-off).
      n_panels, max_panels: the first and the largest panel counts (doubled in between).

    A start far out on a steep flank (an OU well of width 0.2 started 1000 widths away) asks
    for panels narrower than the flank's diffusion length D/|mu| all the way: a
    FloatingPointError then says the quadrature did not converge. The panels are refined
    until the well that carries T is resolved, or a FloatingPointError says it is not.

    Returns:
      log T(x0), T in the time unit of ``drift`` and ``diffusion`` (t = k * lr for SGD models).
    """
    for name, v in (("x0", x0), ("right", right)):
        _checks.finite(name, v)
    if np.isnan(left) or left == np.inf:
        raise ValueError(f"left must be a finite number or -inf, got {left!r}")
    if not left <= x0 < right:
        raise ValueError(f"x0 must lie in [left, right) = [{left}, {right}), got {x0!r}")
    _checks.positive("rtol", rtol)
    _checks.positive_int("n_panels", n_panels)  # 0 would never refine: 0 * 2 = 0
    _checks.positive_int("max_panels", max_panels)
    inside = [float(p) for p in breakpoints if left < p < right]
    for p in breakpoints:
        _checks.finite("breakpoints", p)

    finite_left = np.isfinite(left)
    lo_pt = left if finite_left else min([x0, *inside])
    width = right - lo_pt
    if not finite_left:
        lo_pt = lo_pt - width  # some room left of the start before the geometric tail begins

    def solve(n):
        finite = _finite_edges([lo_pt, x0, *inside, right], n)
        if finite_left:
            edges = finite
        else:
            # refined with the rest: a minimum far left of the start (weak noise) lies in the
            # tail, which 4 panels per doubling once resolved to only 1% at log T = 5000
            tail = _left_tail_edges(lo_pt, width, per=max(4, n // 32))
            edges = np.concatenate([tail, finite])
        i_start = int(np.searchsorted(edges, x0))
        log_t, log_panel, peak_step = _log_mfpt_on_edges(drift, diffusion, edges, i_start)
        if not finite_left:
            # the far-left panels must carry a negligible share of psi/D
            total = logsumexp(log_panel[np.isfinite(log_panel)])
            far = log_panel[:8]
            if np.any(np.isnan(far)) or np.any(far > total - 40):
                raise ValueError(
                    "left=-inf but psi/D is not integrable at -inf (the process is not confined "
                    "on the left); give a finite reflecting `left`"
                )
        return log_t, peak_step

    # the well that carries T must be resolved: panels are shared out by length, and one far
    # wider than a well (a start or a breakpoint far from it) can hold it, or half of it,
    # between two nodes at every count, when two wrong answers agree (an OU well of width 0.2
    # started 1e5 away once read log T = 5.1 for 9.48). Resolved, the log of T's integrand
    # moves by a few units at most between neighbouring nodes where it is large.
    prev, _ = solve(n_panels)
    n = n_panels
    while True:
        n *= 2
        cur, peak_step = solve(n)
        # |log T| ~ 1e5 (weak noise) carries float64 round-off of ~1e-13 |log T| in phi's sums,
        # which more panels only add to: the relative accuracy of T can be no better
        tol = rtol + 1e-13 * abs(cur)
        resolved = peak_step <= _PEAK_STEP
        if (abs(cur - prev) <= tol and resolved) or n >= max_panels:
            break
        prev = cur
    if abs(cur - prev) > 10 * tol:
        raise FloatingPointError(
            f"exit-time quadrature did not converge: relative change {abs(cur - prev):.2e} at "
            f"{n} panels; add breakpoints where the drift or diffusion has kinks (or, for a "
            f"start far out on a steep flank, start nearer the well)"
        )
    if not resolved:
        raise FloatingPointError(
            f"exit-time quadrature: a well (a peak of psi) is not resolved at {n} panels (the "
            f"log of T's integrand moves by {peak_step:.3g} between neighbouring nodes there): "
            f"the interval is too long for it; start nearer the well (and keep breakpoints "
            f"near it), give a finite reflecting `left` (a potential with ripples all the way "
            f"to -inf), or raise max_panels")
    return cur


def mean_exit_time(drift, diffusion, x0, right, left=-np.inf, **kwargs) -> float:
    """Exact mean first exit time (see ``log_mean_exit_time``), as a float.

    Raises OverflowError if T exceeds the float64 range (use ``log_mean_exit_time`` then).
    """
    log_t = log_mean_exit_time(drift, diffusion, x0, right, left, **kwargs)
    if log_t > 709.0:
        raise OverflowError(
            f"mean exit time exp({log_t:.1f}) overflows float64; use log_mean_exit_time"
        )
    return math.exp(log_t)
