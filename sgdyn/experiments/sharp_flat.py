r"""Sharp against flat: escape time against sharpness for SGD, the PLD, Langevin and Hessian noise.

One finite-sum problem (``SyntheticPLD`` on the Kramers well with h_min = h_saddle = h_ref,
barrier Delta L, gradient variance sigma_g, Hessian variance sigma_H) is reparametrised
w -> lambda w (THEORY.md section 4): h = lambda^2 h_ref, sigma_g and sigma_H scale as lambda^2 and
lambda^4, Delta L is fixed. At each h the four dynamics run side by side:

- ``sgd``: real minibatch SGD on the reparametrised problem (the chain, dt = lr);
- ``pld``: the loss-form PLD SDE with (sigma_g, sigma_H) estimated from the problem by
  ``pld_parameters``;
- ``langevin``: constant isotropic noise sigma2 (the same at every h);
- ``hessian``: C = sigma2_H H(a) with sigma2_H = sigma_g(h_ref) / h_ref, i.e. SGD's noise at the
  minimum with the state dependence removed;
- ``sgd_chain``: a control for ``sgd``: SGD's own SDE (local form, the estimated sigma_g,
  sigma_H) stepped like SGD, dt = lr with no boundary correction, but with Gaussian noise. Where
  it meets the exact time and SGD does not, the gap is SGD's non-Gaussian per-example noise
  (the finite sum's draw of examples), not the step.

The SDEs are integrated with dt = lr / substeps and the Gobet boundary correction, so they
estimate the continuous dynamic's escape time; exit = first time past the saddle plus
``n_lengths`` diffusion lengths (``kramers_escape_point`` of each noise). Theory: the exact MFPT
(quadrature) of every noise (SGD's continuous model is the local form sigma_g + sigma_H x^2) and
the asymptotic formulas (PLD loss form; Kramers for Langevin and Hessian noise).
Times are t = k * lr.
"""

from __future__ import annotations

import math

import numpy as np

from .. import theory as th
from ..landscapes import KramersWell, Reparametrized
from ..measure import measure_exit_times
from ..noise import HessianNoise, Isotropic, PLDLocal, PLDLoss
from ..problems import SyntheticPLD, pld_parameters
from ..regions import Threshold
from ..sde import SDE
from ..sgd import MinibatchSGD
from ..solvers import EulerMaruyama
from . import common

# sgd_chain last: each series' random stream is its index here (common.key_for)
DYNAMICS = ("sgd", "pld", "langevin", "hessian", "sgd_chain")
THEORY_NOISE = {"sgd": "pld_local", "pld": "pld_loss", "langevin": "langevin",
                "hessian": "hessian", "sgd_chain": "pld_local"}

FULL = dict(h_values=(0.7, 0.9, 1.2, 1.6, 2.1, 2.9, 4.0), h_ref=1.0, barrier=0.25, lr=0.1,
            batch_size=1, sigma_g=1.0, sigma_h=1.0, sigma2=1.0, n_examples=1000, data_seed=0,
            substeps=4, n_lengths=4.0, particles=2048, t_max_factor=6.0, max_steps=300000,
            min_bucket=512, curve_points=40, seed=0)
QUICK = dict(h_values=(1.0, 2.0, 4.0), particles=256, max_steps=40000, curve_points=10)
HELP = dict(
    h_values="curvatures h = lambda^2 h_ref of the reparametrised copies (comma-separated)",
    h_ref="curvature of the unscaled problem (lambda = 1)",
    barrier="barrier height Delta L (fixed by the reparametrisation)",
    lr="learning rate (time t = k * lr)", batch_size="batch size b",
    sigma_g="gradient variance sigma_g of the unscaled problem",
    sigma_h="Hessian variance sigma_H of the unscaled problem",
    sigma2="Langevin noise level C = sigma2 (the same at every h)",
    n_examples="examples in the finite-sum problem", data_seed="seed of the problem's data",
    substeps="SDE step dt = lr / substeps (SGD always steps dt = lr)",
    n_lengths="exit point: saddle + n_lengths diffusion lengths",
    particles="particles per point", t_max_factor="censoring time t_max = factor x exact mean",
    max_steps="cap on t_max in steps (censored particles are estimated, not dropped)",
    min_bucket="fewest slots the engine packs its stragglers into",
    curve_points="points on each theory curve", seed="random seed (each point folds in its index)")


def validate(cfg):
    common.check_positive(cfg, "h_values", "h_ref", "barrier", "lr", "sigma_g", "sigma_h",
                          "sigma2", "n_lengths", "t_max_factor")
    common.check_int(cfg, "batch_size", "particles", "substeps", "max_steps", "min_bucket")
    common.check_int(cfg, "curve_points", minimum=2)
    common.check_int(cfg, "n_examples", minimum=3)  # SyntheticPLD in 1-D: dim + 2
    common.check_distinct(cfg, "h_values", 2, "to fit a slope")
    if cfg["batch_size"] > cfg["n_examples"]:
        raise ValueError(f"--batch-size must be <= --n-examples={cfg['n_examples']}")


def n_stages(cfg):
    return len(cfg["h_values"]) + 1


CHAINS = ("sgd", "sgd_chain")  # dt = lr, no boundary correction, no asymptotic formula


def noise_params(dyn, cfg, h, sg, sh):
    if dyn in ("sgd", "pld", "sgd_chain"):
        return {"sigma_g": sg, "sigma_h": sh}
    if dyn == "langevin":
        return {"sigma2": cfg["sigma2"]}
    return {"sigma2": cfg["sigma_g"] / cfg["h_ref"]}  # hessian: C(a) = sigma_g(h) like SGD's


def exact_time(dyn, cfg, h, sg, sh):
    w = dict(h_min=h, h_saddle=h, barrier=cfg["barrier"], lr=cfg["lr"],
             batch_size=cfg["batch_size"], n_lengths=cfg["n_lengths"])
    return math.exp(th.kramers_exit_time(**w, noise=THEORY_NOISE[dyn], log=True,
                                         **noise_params(dyn, cfg, h, sg, sh)))


def asymptotic_time(dyn, cfg, h, sg, sh):
    """(tau, in_range): the asymptotic formula and whether it is inside its accuracy range."""
    w = dict(lr=cfg["lr"], batch_size=cfg["batch_size"])
    if dyn == "pld":
        inside = th.pld_formula_range(h, cfg["barrier"], **w, sigma_g=sg, sigma_h=sh)[2]
        return (math.exp(th.pld_escape_time(h, h, cfg["barrier"], **w, sigma_g=sg, sigma_h=sh,
                                            log=True)), inside)
    if dyn in ("langevin", "hessian"):
        s2 = noise_params(dyn, cfg, h, sg, sh)["sigma2"] * (h if dyn == "hessian" else 1.0)
        temp = th.langevin_temperature(cfg["lr"], cfg["batch_size"], s2)
        return (2 * math.pi / h * math.exp(cfg["barrier"] / temp), cfg["barrier"] / temp >= 5)
    return None, False


def scaled_noise(cfg, h):
    lam2 = h / cfg["h_ref"]
    return cfg["sigma_g"] * lam2, cfg["sigma_h"] * lam2**2


def run(cfg, progress) -> dict:
    h_ref, lr, b = cfg["h_ref"], cfg["lr"], cfg["batch_size"]
    well = KramersWell.make(h_ref, h_ref, cfg["barrier"])
    problem = SyntheticPLD.make(well, cfg["sigma_g"], cfg["sigma_h"], cfg["n_examples"],
                                seed=cfg["data_seed"])
    dt_sde = lr / cfg["substeps"]
    sim = {d: [] for d in DYNAMICS}
    estimated = []
    for i, h in enumerate(cfg["h_values"]):
        lam = math.sqrt(h / h_ref)
        prob = Reparametrized.make(problem, lam)
        sg, sh = (float(v) for v in pld_parameters(prob))
        estimated.append({"h": h, "sigma_g": sg, "sigma_h": sh,
                          "sigma_g_scaling": scaled_noise(cfg, h)[0],
                          "sigma_h_scaling": scaled_noise(cfg, h)[1],
                          "kappa": th.pld_kappa(h, lr, b, sh)})
        land = Reparametrized.make(well, lam)
        models = {
            "sgd": lambda: MinibatchSGD.make(prob, lr, b),
            "pld": lambda: EulerMaruyama.make(SDE.make(land, PLDLoss.make(land, sg, sh), lr, b),
                                              dt_sde),
            "langevin": lambda: EulerMaruyama.make(
                SDE.make(land, Isotropic.make(cfg["sigma2"]), lr, b), dt_sde),
            "hessian": lambda: EulerMaruyama.make(
                SDE.make(land, HessianNoise.make(land, cfg["sigma_g"] / h_ref), lr, b), dt_sde),
            "sgd_chain": lambda: EulerMaruyama.make(
                SDE.make(land, PLDLocal.make(sg, sh), lr, b)),  # dt = lr, like SGD
        }
        for j, dyn in enumerate(DYNAMICS):
            dynamic = models[dyn]()
            dt = float(dynamic.dt)
            exact = exact_time(dyn, cfg, h, sg, sh)
            x_exit = th.kramers_escape_point(h, h, cfg["barrier"], lr=lr, batch_size=b,
                                             n_lengths=cfg["n_lengths"], noise=THEORY_NOISE[dyn],
                                             **noise_params(dyn, cfg, h, sg, sh))
            t_max = min(cfg["t_max_factor"] * exact, cfg["max_steps"] * dt)
            res = measure_exit_times(common.key_for(cfg["seed"], i, j), dynamic,
                                     Threshold(x_exit), np.zeros(1), cfg["particles"], t_max,
                                     correction=None if dyn in CHAINS else "gobet",
                                     min_bucket=cfg["min_bucket"])
            sim[dyn].append(common.estimate_dict(res, h=h, dt=dt, exact=exact, exit_point=x_exit))
        progress.step(f"h={h:g}: " + ", ".join(f"{d} {sim[d][-1]['mean']:.3g}" for d in DYNAMICS))

    # theory curves on a fine grid
    hs = np.geomspace(min(cfg["h_values"]) / 1.1, max(cfg["h_values"]) * 1.1,
                     cfg["curve_points"])
    curves = {"h": hs, "exact": {}, "asymptotic": {}, "asymptotic_in_range": {}}
    for dyn in DYNAMICS:
        curves["exact"][dyn] = [exact_time(dyn, cfg, h, *scaled_noise(cfg, h)) for h in hs]
        if dyn not in CHAINS:
            asym = [asymptotic_time(dyn, cfg, h, *scaled_noise(cfg, h)) for h in hs]
            curves["asymptotic"][dyn] = [a[0] for a in asym]
            curves["asymptotic_in_range"][dyn] = [bool(a[1]) for a in asym]
    progress.step("theory curves")

    summary = {}
    for dyn in DYNAMICS:
        pts = sim[dyn]
        x = [1 / p["h"] for p in pts]
        y = [math.log(p["mean"]) for p in pts]
        w = [1 / common.log_se(p) ** 2 for p in pts]
        flat, sharp = pts[int(np.argmin([p["h"] for p in pts]))], pts[int(np.argmax(
            [p["h"] for p in pts]))]
        summary[dyn] = {
            "fit_log_tau_vs_inv_h": common.linear_fit(x, y, w),
            "fit_log_tau_vs_log_h": common.linear_fit(np.log([p["h"] for p in pts]), y, w),
            "log_ratio_flat_to_sharp": math.log(flat["mean"] / sharp["mean"]),
            "exact_log_ratio_flat_to_sharp": math.log(flat["exact"] / sharp["exact"]),
            "max_abs_log_sim_over_exact": max(abs(math.log(p["mean"] / p["exact"]))
                                              for p in pts),
        }
    return {"dynamics": list(DYNAMICS), "theory_noise": THEORY_NOISE, "points": sim,
            "estimated_pld_parameters": estimated, "theory": curves, "summary": summary,
            "time_unit": "t = k * lr"}


LABELS = {"sgd": "SGD (real minibatch, dt = lr)", "pld": "PLD, loss form (sim.)",
          "langevin": "Langevin, C = sigma2 (sim.)", "hessian": "Hessian noise C = s2 H(a) (sim.)",
          "sgd_chain": "SGD's SDE, Gaussian, dt = lr (control)"}
EXACT_LABELS = {"sgd": "exact MFPT, local-form PLD (SGD's SDE)", "pld": "exact MFPT, PLD",
                "langevin": "exact MFPT, Langevin", "hessian": "exact MFPT, Hessian"}


def plot(payload):
    import matplotlib.pyplot as plt

    cfg = payload["flags"]
    th_ = payload["theory"]
    inv = 1 / np.asarray(th_["h"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [3, 2]})
    for dyn in payload["dynamics"]:
        c = common.COLORS[dyn]
        if dyn == "sgd_chain":  # a control: its exact time is SGD's; shown against it only
            pts = payload["points"][dyn]
            common.points(ax2, [1 / p["h"] for p in pts],
                          [{"mean": p["mean"] / p["exact"],
                            "ci95": [v / p["exact"] for v in p["ci95"]]} for p in pts],
                          LABELS[dyn], c, common.MARKERS[dyn])
            continue
        ax.plot(inv, th_["exact"][dyn], "-", color=c, lw=1.2, alpha=0.8,
                label=EXACT_LABELS[dyn] + " (exact)")
        if dyn in th_["asymptotic"]:
            a = np.asarray(th_["asymptotic"][dyn])
            ok = np.asarray(th_["asymptotic_in_range"][dyn])
            ax.plot(inv, np.where(ok, a, np.nan), "--", color=c, lw=1.2,
                    label=("PLD formula" if dyn == "pld" else "Kramers formula") +
                    f" ({dyn}, asymptotic)")
            ax.plot(inv, np.where(~ok, a, np.nan), ":", color=c, lw=1.0)
        pts = payload["points"][dyn]
        common.points(ax, [1 / p["h"] for p in pts], pts, LABELS[dyn] + " ± 95% CI", c,
                      common.MARKERS[dyn])
        ratio = [p["mean"] / p["exact"] for p in pts]
        ci = [[p["ci95"][0] / p["exact"], p["ci95"][1] / p["exact"]] for p in pts]
        common.points(ax2, [1 / p["h"] for p in pts],
                      [{"mean": r, "ci95": c_} for r, c_ in zip(ratio, ci)], dyn, c,
                      common.MARKERS[dyn])
    ax.set_yscale("log")
    ax.set_xlabel("flatness 1/h  (h = curvature at the minimum, loss/param²; sharp ← → flat)")
    ax.set_ylabel("mean escape time  (t = k·lr)")
    common.panel_label(ax, f"Escape time vs sharpness: barrier ΔL={cfg['barrier']}, lr={cfg['lr']},"
                       f" b={cfg['batch_size']}; dotted = asymptotic outside its range")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    ax2.axhline(1, color="k", lw=0.8)
    ax2.set_yscale("log")
    ax2.set_xlabel("flatness 1/h")
    ax2.set_ylabel("simulated / exact MFPT")
    common.panel_label(ax2, "Simulation against exact quadrature (SGD vs local-form SDE)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig
