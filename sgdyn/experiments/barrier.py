r"""Escape time against the barrier height for the PLD and Langevin dynamics.

Kramers well with h_min = h_saddle = h and barrier Delta L (THEORY.md section 4); the loss-form
PLD (sigma_g, sigma_H) and constant-noise Langevin (sigma2) are integrated with dt = lr/substeps
and the Gobet boundary correction. Exit = saddle + ``n_lengths`` diffusion lengths.
Theory: the exact MFPT by quadrature, the PLD's asymptotic power law
tau ~ (1 + q)^(kappa - 1/2), q = 2 sigma_H Delta L / (h sigma_g), and Kramers' exponential law
tau = 2 pi / h exp(Delta L / T), T = lr sigma2 / (2 b). The PLD's log tau is close to linear in
log(Delta L), Langevin's in Delta L: the fits of both kinds are reported. Times are t = k * lr.
"""

from __future__ import annotations

import math

import numpy as np

from .. import theory as th
from ..landscapes import KramersWell
from ..measure import measure_exit_times
from ..noise import Isotropic, PLDLoss
from ..regions import Threshold
from ..sde import SDE
from ..solvers import EulerMaruyama
from . import common

DYNAMICS = ("pld", "langevin")
THEORY_NOISE = {"pld": "pld_loss", "langevin": "langevin"}

FULL = dict(barriers=(0.25, 0.354, 0.5, 0.707, 1.0, 1.414, 2.0), h=2.0, lr=0.1, batch_size=1,
            sigma_g=1.67, sigma_h=10.0, sigma2=6.0, substeps=4, n_lengths=4.0, particles=2048,
            t_max_factor=6.0, max_steps=300000, min_bucket=512, curve_points=30, seed=1)
QUICK = dict(barriers=(0.25, 0.5, 1.0, 2.0), particles=256, max_steps=40000, curve_points=10)
HELP = dict(
    barriers="barrier heights Delta L (comma-separated)",
    h="curvature at the minimum and at the saddle", lr="learning rate (time t = k * lr)",
    batch_size="batch size b", sigma_g="PLD gradient variance sigma_g",
    sigma_h="PLD Hessian variance sigma_H", sigma2="Langevin noise level C = sigma2",
    substeps="SDE step dt = lr / substeps",
    n_lengths="exit point: saddle + n_lengths diffusion lengths",
    particles="particles per point", t_max_factor="censoring time t_max = factor x exact mean",
    max_steps="cap on t_max in steps (censored particles are estimated, not dropped)",
    min_bucket="fewest slots the engine packs its stragglers into",
    curve_points="points on each theory curve",
    seed="random seed (each point folds in its index)")


def validate(cfg):
    common.check_positive(cfg, "barriers", "h", "lr", "sigma_g", "sigma_h", "sigma2",
                          "n_lengths", "t_max_factor")
    common.check_int(cfg, "batch_size", "particles", "substeps", "max_steps", "min_bucket")
    common.check_int(cfg, "curve_points", minimum=2)
    common.check_distinct(cfg, "barriers", 3, "to tell a line from a curve")


def n_stages(cfg):
    return len(cfg["barriers"]) + 1


def _params(dyn, cfg):
    return ({"sigma_g": cfg["sigma_g"], "sigma_h": cfg["sigma_h"]} if dyn == "pld"
            else {"sigma2": cfg["sigma2"]})


def _r2(fit):
    return "n/a" if fit["r2"] is None else f"{fit['r2']:.3f}"


def exact_time(dyn, cfg, barrier):
    log_t = th.kramers_exit_time(cfg["h"], cfg["h"], barrier, lr=cfg["lr"],
                                 batch_size=cfg["batch_size"], noise=THEORY_NOISE[dyn],
                                 n_lengths=cfg["n_lengths"], log=True, **_params(dyn, cfg))
    if log_t > 700:  # past float64 (e^709), and far past any run
        flags = "--sigma-g, --sigma-h" if dyn == "pld" else "--sigma2"
        raise ValueError(f"the exact {dyn} mean exit time at barrier {barrier:g} is e^{log_t:.4g}"
                         f": raise {flags} or lower --barriers")
    return math.exp(log_t)


def asymptotic_time(dyn, cfg, barrier):
    h, lr, b = cfg["h"], cfg["lr"], cfg["batch_size"]
    if dyn == "pld":
        inside = th.pld_formula_range(h, barrier, lr=lr, batch_size=b, **_params(dyn, cfg))[2]
        return math.exp(th.pld_escape_time(h, h, barrier, lr=lr, batch_size=b, log=True,
                                           **_params(dyn, cfg))), inside
    temp = th.langevin_temperature(lr, b, cfg["sigma2"])
    return 2 * math.pi / h * math.exp(barrier / temp), barrier / temp >= 5


def run(cfg, progress) -> dict:
    h, lr, b = cfg["h"], cfg["lr"], cfg["batch_size"]
    dt = lr / cfg["substeps"]
    sim = {d: [] for d in DYNAMICS}
    for i, barrier in enumerate(cfg["barriers"]):
        land = KramersWell.make(h, h, barrier)
        noise = {"pld": PLDLoss.make(land, cfg["sigma_g"], cfg["sigma_h"]),
                 "langevin": Isotropic.make(cfg["sigma2"])}
        for j, dyn in enumerate(DYNAMICS):
            dynamic = EulerMaruyama.make(SDE.make(land, noise[dyn], lr, b), dt)
            exact = exact_time(dyn, cfg, barrier)
            x_exit = th.kramers_escape_point(h, h, barrier, lr=lr, batch_size=b,
                                             n_lengths=cfg["n_lengths"],
                                             noise=THEORY_NOISE[dyn], **_params(dyn, cfg))
            t_max = min(cfg["t_max_factor"] * exact, cfg["max_steps"] * dt)
            res = measure_exit_times(common.key_for(cfg["seed"], i, j), dynamic,
                                     Threshold(x_exit), np.zeros(1), cfg["particles"], t_max,
                                     correction="gobet", min_bucket=cfg["min_bucket"])
            asym, ok = asymptotic_time(dyn, cfg, barrier)
            sim[dyn].append(common.estimate_dict(res, barrier=barrier, dt=dt, exact=exact,
                                                 asymptotic=asym, asymptotic_in_range=ok))
        progress.step(f"barrier={barrier:g}: " + ", ".join(f"{d} {sim[d][-1]['mean']:.3g}"
                                                          for d in DYNAMICS))
    grid = np.geomspace(min(cfg["barriers"]), max(cfg["barriers"]), cfg["curve_points"])
    curves = {"barrier": grid, "exact": {}, "asymptotic": {}, "asymptotic_in_range": {}}
    for dyn in DYNAMICS:
        curves["exact"][dyn] = [exact_time(dyn, cfg, x) for x in grid]
        a = [asymptotic_time(dyn, cfg, x) for x in grid]
        curves["asymptotic"][dyn] = [v[0] for v in a]
        curves["asymptotic_in_range"][dyn] = [bool(v[1]) for v in a]
    progress.step("theory curves")

    summary = {}
    for dyn in DYNAMICS:
        pts = sim[dyn]
        x = np.array([p["barrier"] for p in pts])
        y = np.log([p["mean"] for p in pts])
        w = np.array([1 / common.log_se(p) ** 2 for p in pts])
        ye = np.log([p["exact"] for p in pts])
        loglog, semilog = common.linear_fit(np.log(x), y, w), common.linear_fit(x, y, w)
        summary[dyn] = {
            "fit_log_tau_vs_log_barrier": loglog,  # slope = power-law exponent
            "fit_log_tau_vs_barrier": semilog,  # slope = 1/T for Arrhenius
            "closer_to": ("undetermined (too few finite points)"
                          if loglog["r2"] is None or semilog["r2"] is None else
                          "power law (log-log)" if loglog["r2"] > semilog["r2"] else
                          "exponential (semi-log)"),
            "exact_fit_log_tau_vs_log_barrier": common.linear_fit(np.log(x), ye),
            "exact_fit_log_tau_vs_barrier": common.linear_fit(x, ye),
            "max_abs_log_sim_over_exact": float(np.max(np.abs(y - ye))),
        }
    summary["pld"]["predicted_exponent_kappa_minus_half"] = th.pld_kappa(
        h, lr, b, cfg["sigma_h"]) - 0.5
    summary["langevin"]["predicted_semilog_slope_1_over_T"] = 1 / th.langevin_temperature(
        lr, b, cfg["sigma2"])
    return {"dynamics": list(DYNAMICS), "theory_noise": THEORY_NOISE, "points": sim,
            "theory": curves, "summary": summary, "time_unit": "t = k * lr"}


LABELS = {"pld": "PLD, loss form", "langevin": "Langevin, C = sigma2"}


def plot(payload):
    import matplotlib.pyplot as plt

    cfg = payload["flags"]
    th_ = payload["theory"]
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5))
    for ax, scale in zip(axes, ("log", "linear")):
        for dyn in payload["dynamics"]:
            c = common.COLORS[dyn]
            ax.plot(th_["barrier"], th_["exact"][dyn], "-", color=c, lw=1.3,
                    label=f"{LABELS[dyn]}: exact MFPT (quadrature)")
            a = np.asarray(th_["asymptotic"][dyn])
            ok = np.asarray(th_["asymptotic_in_range"][dyn])
            name = "power law (1+q)^(κ-1/2)" if dyn == "pld" else "Kramers exp(ΔL/T)"
            ax.plot(th_["barrier"], np.where(ok, a, np.nan), "--", color=c, lw=1.2,
                    label=f"{LABELS[dyn]}: asymptotic {name}")
            ax.plot(th_["barrier"], np.where(~ok, a, np.nan), ":", color=c, lw=1.2,
                    label=f"{LABELS[dyn]}: asymptotic, outside its range")
            pts = payload["points"][dyn]
            s = payload["summary"][dyn]
            common.points(ax, [p["barrier"] for p in pts], pts,
                          f"{LABELS[dyn]}: simulated ± 95% CI (R² log-log "
                          f"{_r2(s['fit_log_tau_vs_log_barrier'])}, semi-log "
                          f"{_r2(s['fit_log_tau_vs_barrier'])})", c, common.MARKERS[dyn])
        ax.set_yscale("log")
        ax.set_xscale(scale)
        ax.set_xlabel("barrier height ΔL (loss units)" + ("  [log axis]" if scale == "log"
                                                          else "  [linear axis]"))
        ax.set_ylabel("mean escape time  (t = k·lr)")
        ax.grid(alpha=0.3, which="both")
    common.panel_label(axes[0], "log-log: a power law is a straight line (PLD)")
    common.panel_label(axes[1], "semi-log: an exponential is a straight line (Langevin)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Escape time vs barrier: h={cfg['h']}, lr={cfg['lr']}, b={cfg['batch_size']},"
                 f" PLD σg={cfg['sigma_g']}, σH={cfg['sigma_h']}, Langevin σ²={cfg['sigma2']}",
                 fontsize=10)
    fig.tight_layout()
    return fig
