r"""Discretization: the chain at dt = lr against the continuous dynamic, and where it blows up.

The SDE dw = -L' dt + sqrt(lr C / b) dB depends on lr only through the noise level lr C / b.
To isolate the effect of the step, that level is held fixed while lr grows: Langevin
C = S / lr, the local-form PLD C = (S_g + S_H x^2) / lr, and real SGD on ``SyntheticPLD`` with
sigma_g = S_g / lr, sigma_H = S_H / lr. So the continuous dynamic, its exact MFPT (quadrature,
THEORY.md section 4) and its exit point are the same at every lr; only the discretisation changes:

- "chain": Euler-Maruyama at dt = lr without boundary correction (the SGD-like chain), and real
  minibatch SGD (which is a chain by nature);
- "continuous": Euler-Maruyama at dt = lr / substeps with the Gobet correction.

Stability (quadratic basin, exit region larger than the divergence bound, so a particle either
stays or diverges): the fraction of particles that diverge within ``stab_steps`` steps against
lr h. The Langevin chain (additive noise) is stable iff |1 - lr h| < 1, i.e. lr h < 2. The PLD
and SGD chains are multiplicative at large |x|, x' = A x with A = 1 - lr (h + noise); they diverge
iff the Lyapunov exponent E log|A| > 0, which moves the threshold away from lr h = 2 (computed
exactly: Gaussian A for the PLD chain, the problem's own delta_i for SGD). Times are t = k * lr.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import integrate, optimize, stats

from .. import theory as th
from ..ensemble import MAX_STEPS
from ..landscapes import KramersWell, Quadratic
from ..measure import measure_exit_times
from ..noise import Isotropic, PLDLocal
from ..problems import SyntheticPLD
from ..regions import Ball, Threshold
from ..sde import SDE
from ..sgd import MinibatchSGD
from ..solvers import EulerMaruyama
from . import common

SERIES = ("sgd_chain", "pld_chain", "pld_continuous", "langevin_chain", "langevin_continuous")

FULL = dict(lrs=(0.05, 0.1, 0.2, 0.4, 0.7, 1.0, 1.4), h=1.0, barrier=0.3, batch_size=1,
            noise_langevin=0.2, noise_g=0.1, noise_h=0.25, n_examples=1000, data_seed=0,
            substeps=16, n_lengths=4.0, particles=2048, t_max_factor=8.0, min_bucket=512,
            stab_lr_h=(1.0, 1.5, 1.8, 1.9, 2.0, 2.1, 2.2, 2.4, 2.7, 3.0), stab_particles=1000,
            stab_steps=3000, seed=3)
QUICK = dict(lrs=(0.1, 0.4, 1.0), particles=256, substeps=8, stab_lr_h=(1.5, 2.0, 2.5),
             stab_particles=128, stab_steps=1000)
HELP = dict(
    lrs="learning rates (comma-separated)", h="curvature at the minimum and the saddle",
    barrier="barrier height Delta L", batch_size="batch size b",
    noise_langevin="fixed Langevin noise level S = lr * sigma2 (temperature S / (2b))",
    noise_g="fixed PLD level S_g = lr * sigma_g", noise_h="fixed PLD level S_H = lr * sigma_H",
    n_examples="examples in the SGD problem", data_seed="seed of the problem's data",
    substeps="continuous runs: dt = lr / substeps (with Gobet correction)",
    n_lengths="exit point: saddle + n_lengths diffusion lengths",
    particles="particles per point", t_max_factor="censoring time = factor x exact mean",
    min_bucket="fewest slots the engine packs its stragglers into",
    stab_lr_h="stability runs: values of lr * h (comma-separated)",
    stab_particles="particles per stability point", stab_steps="steps per stability run",
    seed="random seed")


def validate(cfg):
    common.check_positive(cfg, "lrs", "h", "barrier", "noise_langevin", "noise_g", "noise_h",
                          "n_lengths", "t_max_factor", "stab_lr_h")
    common.check_int(cfg, "batch_size", "particles", "substeps", "min_bucket", "stab_particles",
                     "stab_steps")
    common.check_int(cfg, "n_examples", minimum=3)  # SyntheticPLD in 1-D: dim + 2
    if cfg["batch_size"] > cfg["n_examples"]:
        raise ValueError(f"--batch-size must be <= --n-examples={cfg['n_examples']}")


def n_stages(cfg):
    return len(cfg["lrs"]) + len(cfg["stab_lr_h"])


def lyapunov_gaussian(a, c):
    """E log|1 - a + c xi|, xi ~ N(0, 1) (exact, by quadrature with the log singularity)."""
    mu = 1 - a
    f = lambda z: np.log(np.abs(mu + c * z)) * stats.norm.pdf(z)  # noqa: E731
    root = -mu / c
    return sum(integrate.quad(f, lo, hi, limit=200)[0] for lo, hi in
               ((-np.inf, root), (root, np.inf)))


def run(cfg, progress) -> dict:
    h, b, dl = cfg["h"], cfg["batch_size"], cfg["barrier"]
    sl, sg_, sh_ = cfg["noise_langevin"], cfg["noise_g"], cfg["noise_h"]
    well = KramersWell.make(h, h, dl)
    quad = Quadratic.make(h)
    common_w = dict(h_min=h, h_saddle=h, barrier=dl, lr=1.0, batch_size=b,
                    n_lengths=cfg["n_lengths"])
    # lr = 1 with the fixed levels as the noise parameters: the same SDE as every (lr, C / lr)
    exact = {"pld": th.kramers_exit_time(**common_w, noise="pld_local", sigma_g=sg_,
                                         sigma_h=sh_),
             "langevin": th.kramers_exit_time(**common_w, noise="langevin", sigma2=sl)}
    x_exit = {"pld": th.kramers_escape_point(h, h, dl, lr=1.0, batch_size=b, noise="pld_local",
                                             n_lengths=cfg["n_lengths"], sigma_g=sg_,
                                             sigma_h=sh_),
              "langevin": th.kramers_escape_point(h, h, dl, lr=1.0, batch_size=b,
                                                  noise="langevin", n_lengths=cfg["n_lengths"],
                                                  sigma2=sl)}
    # the finest runs take t_max / (lr / substeps) steps, which the engine caps at 2^30
    finest = min(cfg["lrs"]) / cfg["substeps"]
    for fam, flags in (("pld", "--noise-g, --noise-h"), ("langevin", "--noise-langevin")):
        if cfg["t_max_factor"] * exact[fam] / finest >= MAX_STEPS + 1:
            raise ValueError(f"the exact {fam} mean exit time {exact[fam]:.3g} needs "
                             f"{cfg['t_max_factor'] * exact[fam] / finest:.3g} steps at dt = "
                             f"{finest:.3g}, more than the engine's 2^30: raise {flags}, or "
                             f"lower --barrier or --t-max-factor")
    base_problem = SyntheticPLD.make(well, 1.0, 1.0, cfg["n_examples"], seed=cfg["data_seed"])
    sims = {s: [] for s in SERIES}
    for i, lr in enumerate(cfg["lrs"]):
        problem = SyntheticPLD.make(well, sg_ / lr, sh_ / lr, cfg["n_examples"],
                                    seed=cfg["data_seed"])
        pld = SDE.make(well, PLDLocal.make(sg_ / lr, sh_ / lr), lr, b)
        lang = SDE.make(well, Isotropic.make(sl / lr), lr, b)
        dyns = {"sgd_chain": (MinibatchSGD.make(problem, lr, b), None, "pld"),
                "pld_chain": (EulerMaruyama.make(pld), None, "pld"),  # dt = lr
                "pld_continuous": (EulerMaruyama.make(pld, lr / cfg["substeps"]), "gobet", "pld"),
                "langevin_chain": (EulerMaruyama.make(lang), None, "langevin"),
                "langevin_continuous": (EulerMaruyama.make(lang, lr / cfg["substeps"]), "gobet",
                                        "langevin")}
        for j, (name, (dyn, corr, fam)) in enumerate(dyns.items()):
            res = measure_exit_times(common.key_for(cfg["seed"], i, j), dyn,
                                     Threshold(x_exit[fam]), np.zeros(1), cfg["particles"],
                                     cfg["t_max_factor"] * exact[fam], correction=corr,
                                     min_bucket=cfg["min_bucket"])
            sims[name].append(common.estimate_dict(res, lr=lr, lr_h=lr * h, dt=float(dyn.dt),
                                                   exact=exact[fam]))
        progress.step(f"lr={lr:g}: " + ", ".join(f"{s} {sims[s][-1]['mean']:.3g}"
                                                 for s in SERIES))
    del base_problem

    # stability on the quadratic basin
    stab = {"lr_h": list(cfg["stab_lr_h"]), "langevin_chain": [], "pld_chain": [],
            "sgd_chain": []}
    lyap = {"lr_h": np.linspace(min(cfg["stab_lr_h"]) * 0.9, max(cfg["stab_lr_h"]) * 1.05, 60)}
    for i, a in enumerate(cfg["stab_lr_h"]):
        lr = a / h
        problem = SyntheticPLD.make(quad, sg_ / lr, sh_ / lr, cfg["n_examples"],
                                    seed=cfg["data_seed"])
        # dt defaults to the SDE's own (float32) lr: passing the Python float lr can be rejected
        # as "dt > lr" by one float32 rounding (see the report on sgdyn/solvers.py)
        dyns = {"langevin_chain": EulerMaruyama.make(SDE.make(quad, Isotropic.make(sl / lr), lr,
                                                              b)),
                "pld_chain": EulerMaruyama.make(SDE.make(quad, PLDLocal.make(sg_ / lr, sh_ / lr),
                                                         lr, b)),
                "sgd_chain": MinibatchSGD.make(problem, lr, b)}
        for j, (name, dyn) in enumerate(dyns.items()):
            with warnings.catch_warnings():  # every run diverging is a result here, not a
                # fault, and so is none (the region, |x| < 1e12, only counts divergence)
                warnings.filterwarnings("ignore", "all .* particles diverged", RuntimeWarning)
                warnings.filterwarnings("ignore", "no particle escaped", RuntimeWarning)
                res = measure_exit_times(common.key_for(cfg["seed"], 500 + i, j), dyn,
                                         Ball.make([0.0], 1e12), np.zeros(1),
                                         cfg["stab_particles"], cfg["stab_steps"] * lr,
                                         min_bucket=cfg["min_bucket"])
            k = res.estimate.n_diverged
            stab[name].append({"lr_h": a, "n_diverged": k, "n": cfg["stab_particles"],
                               "fraction_diverged": k / cfg["stab_particles"],
                               "ci95": common.proportion_ci(k, cfg["stab_particles"])})
        progress.step(f"stability lr*h={a:g}: diverged " + ", ".join(
            f"{n} {stab[n][-1]['fraction_diverged']:.2f}" for n in ("langevin_chain",
                                                                    "pld_chain", "sgd_chain")))
    # Lyapunov exponents of the chains at large |x| and the predicted thresholds
    z = np.asarray(SyntheticPLD.make(quad, 1.0, 1.0, cfg["n_examples"],
                                     seed=cfg["data_seed"]).delta, float)  # unit-variance delta
    lyap["pld_chain"] = [lyapunov_gaussian(a, math.sqrt(a / h * sh_ / b)) for a in lyap["lr_h"]]
    lyap["sgd_chain"] = [sgd_lyapunov(a, h, sh_, b, z, cfg["seed"]) for a in lyap["lr_h"]]
    lyap["langevin_chain"] = [math.log(abs(1 - a)) for a in lyap["lr_h"]]
    thresholds = {"langevin_chain": 2.0}
    for name in ("pld_chain", "sgd_chain"):
        fn = ((lambda a: lyapunov_gaussian(a, math.sqrt(a / h * sh_ / b))) if name == "pld_chain"
              else (lambda a: sgd_lyapunov(a, h, sh_, b, z, cfg["seed"])))
        try:
            thresholds[name] = float(optimize.brentq(fn, 1.0, 6.0, xtol=1e-6))
        except ValueError:
            thresholds[name] = None
    summary = {name: {"max_abs_log_ratio_to_exact": max(abs(math.log(p["mean"] / p["exact"]))
                                                         for p in sims[name]),
                      "ratio_at_largest_lr": sims[name][-1]["mean"] / sims[name][-1]["exact"]}
               for name in SERIES}
    return {"series": list(SERIES), "exact": exact, "exit_points": x_exit, "points": sims,
            "stability": stab, "lyapunov": lyap, "stability_thresholds_lr_h": thresholds,
            "summary": summary, "time_unit": "t = k * lr"}


def sgd_lyapunov(a, h, s_h, b, z, seed, draws=200000):
    """E log|1 - lr (h + delta_B)| for SGD with Var(delta) = S_H / lr, delta_i = sqrt(S_H/lr) z_i."""
    lr = a / h
    delta = math.sqrt(s_h / lr) * z
    if b > 1:
        rng = np.random.default_rng(seed)
        delta = delta[rng.integers(0, z.size, size=(draws, b))].mean(axis=1)
    return float(np.mean(np.log(np.abs(1 - lr * (h + delta)))))


STYLE = {"sgd_chain": ("real SGD (chain, dt = lr)", "tab:red", "o", "full"),
         "pld_chain": ("PLD local, chain dt = lr", "tab:blue", "s", "full"),
         "pld_continuous": ("PLD local, dt = lr/substeps + Gobet (continuous)", "tab:blue", "s",
                            "none"),
         "langevin_chain": ("Langevin, chain dt = lr", "tab:green", "^", "full"),
         "langevin_continuous": ("Langevin, dt = lr/substeps + Gobet (continuous)", "tab:green",
                                 "^", "none")}


STAB_LABEL = {"langevin_chain": "Langevin chain", "pld_chain": "PLD local chain",
              "sgd_chain": "real SGD"}


def plot(payload):
    import matplotlib.pyplot as plt

    cfg = payload["flags"]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(17, 5.2))
    for name in payload["series"]:
        lab, c, m, fill = STYLE[name]
        pts = payload["points"][name]
        x = np.array([p["lr_h"] for p in pts]) * (0.97 if "continuous" in name else 1.0)
        common.points(a1, x, pts, lab + " ± 95% CI", c, m, mfc="none" if fill == "none" else c)
        common.points(a2, x, [{"mean": p["mean"] / p["exact"],
                               "ci95": [v / p["exact"] for v in p["ci95"]]} for p in pts],
                      lab, c, m, mfc="none" if fill == "none" else c)
    for fam, c in (("pld", "tab:blue"), ("langevin", "tab:green")):
        a1.axhline(payload["exact"][fam], color=c, lw=1.2,
                   label=f"exact MFPT, {fam} SDE (quadrature; the same at every lr)")
    a1.set_yscale("log")
    a1.set_xscale("log")
    a1.set_xlabel("lr · h  (log; noise level lr·C/b held fixed)")
    a1.set_ylabel("mean escape time  (t = k·lr)")
    common.panel_label(a1, f"(a) Kramers well ΔL={cfg['barrier']}, h={cfg['h']}")
    a1.legend(fontsize=6.5)
    a2.axhline(1, color="k", lw=0.8)
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_xlabel("lr · h  (log)")
    a2.set_ylabel("simulated / exact MFPT of the continuous SDE")
    common.panel_label(a2, "(b) discretization error of the escape time")
    a2.legend(fontsize=6.5)
    st = payload["stability"]
    for name, c, m in (("langevin_chain", "tab:green", "^"), ("pld_chain", "tab:blue", "s"),
                       ("sgd_chain", "tab:red", "o")):
        common.points(a3, st["lr_h"], [{"mean": p["fraction_diverged"], "ci95": p["ci95"]}
                                       for p in st[name]],
                      STAB_LABEL[name] + ": fraction past |x| = 1e8 ± 95% CI", c, m)
        thr = payload["stability_thresholds_lr_h"].get(name)
        if thr is not None:
            a3.axvline(thr, color=c, ls="--", lw=1,
                       label=f"predicted threshold lr·h = {thr:.3g} "
                             + ("(|1 − lr h| = 1)" if name == "langevin_chain"
                                else "(Lyapunov E log|A| = 0)"))
    a3.set_ylim(-0.05, 1.05)
    a3.set_xlabel("lr · h")
    # below the Lyapunov threshold a run can still pass the bound: the tail index is small
    a3.set_ylabel(f"fraction past |x| = 1e8 within {cfg['stab_steps']} steps")
    common.panel_label(a3, "(c) stability of the chains (quadratic basin)")
    a3.legend(fontsize=6.5, loc="center left")
    for ax in (a1, a2, a3):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig
