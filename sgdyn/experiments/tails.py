r"""Stationary distribution and tails of real SGD and the PLD; the d-dimensional ergodicity limit.

1-D quadratic basin L = h x^2 / 2. Real minibatch SGD on ``SyntheticPLD`` (per-example noise
C = sigma_g + sigma_H x^2, THEORY.md section 2) and the local-form PLD SDE (Euler-Maruyama with a
small dt, one dt for every lr) run long; their stationary samples are compared with the predicted
Student-t (nu = 1 + 2 b h / (lr sigma_H), s^2 = sigma_g / (sigma_H nu)) and a Gaussian of the same
variance. The tail index is measured with the Hill estimator on |x| using the k = k_frac * N
largest of N samples (interval: cluster-robust delta method over particles, since samples of one
particle are correlated), against:

- nu (the continuous PLD, THEORY.md section 3);
- the Kesten index of the SGD *chain* x' = (1 - lr (h + delta_B)) x - lr eps_B: the alpha > 0
  with E|1 - lr (h + delta_B)|^alpha = 1, computed from the problem's own delta_i (exactly
  for b = 1, every example enumerated; from 400,000 random batches for b > 1). It is not the
  SDE's nu: with the default flags slightly above it at small lr (11.10 against 11 at lr
  0.05, b = 1) and below it at lr 0.4 (2.00 against 2.25: there E A^2 = 1 exactly);
- the Hill estimator on i.i.d. Student-t(nu) draws of the same size (the estimator's own bias).

d-dimensional limit: isotropic PLD in d dimensions (drift -h x, C = (sigma_g + sigma_H r^2) I) is
ergodic only for lr < lr_max = 2 b h / (sigma_H (d - 2)) (``pld_max_lr``). For large r,
d log r = ((d - 2) s^2 / 2 - h) dt + s dW with s^2 = lr sigma_H / b, so above lr_max the mean of
log r grows at that rate; below it stays bounded. Measured: the growth rate of E[log r] over the
second half of the run and the fraction of runs beyond r_far at the end, against lr / lr_max
(runs that pass |x_j| = 1e8 count as beyond r_far and drop out of E[log r], which lowers the
measured growth where many do; with fewer than two runs left there is no growth rate).
Times are t = k * lr.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize, stats

from .. import theory as th
from ..ensemble import simulate_samples
from ..landscapes import Quadratic
from ..noise import PLDLocal
from ..problems import SyntheticPLD
from ..sde import SDE
from ..sgd import MinibatchSGD
from ..solvers import EulerMaruyama
from . import common

FULL = dict(lrs=(0.05, 0.1, 0.2, 0.4), batch_sizes=(1.0, 2.0), h=1.0, sigma_g=1.0, sigma_h=4.0,
            n_examples=1000, data_seed=0, pld_substeps=8, particles=20000, samples=10,
            burn_in_time=20.0, thin_time=2.0, k_frac=0.005, show_lr=0.2, dim=10,
            ergodic_sigma_h=1.0, ergodic_ratios=(0.5, 0.75, 0.9, 1.1, 1.25, 1.5, 2.0),
            ergodic_substeps=8, ergodic_particles=2000, ergodic_time=12.0,
            ergodic_samples=24, r_far=100.0, seed=2)
QUICK = dict(lrs=(0.1, 0.4), batch_sizes=(1.0,), show_lr=0.4, particles=2000, samples=5, burn_in_time=10.0,
             ergodic_ratios=(0.5, 2.0), ergodic_particles=300, ergodic_time=6.0,
             ergodic_samples=8, pld_substeps=4)
HELP = dict(
    lrs="learning rates (comma-separated); with --batch-sizes they set lr/b",
    batch_sizes="batch sizes b (integers, comma-separated)",
    h="curvature of the basin", sigma_g="gradient variance sigma_g",
    sigma_h="Hessian variance sigma_H (1-D runs)", n_examples="examples in the SGD problem",
    data_seed="seed of the problem's data",
    pld_substeps="PLD step dt = min(lrs) / pld_substeps (the same dt at every lr)",
    particles="independent runs per point", samples="samples kept per run",
    burn_in_time="burn-in, t = k * lr units", thin_time="time between kept samples",
    k_frac="Hill estimator: k = k_frac x number of samples", show_lr="lr of the density panels",
    dim="dimension d of the ergodicity runs", ergodic_sigma_h="sigma_H of the d-D runs",
    ergodic_ratios="lr / lr_max values of the d-D runs",
    ergodic_substeps="d-D step dt = min(lr) / substeps", ergodic_particles="d-D runs per lr",
    ergodic_time="d-D horizon (t = k * lr)", ergodic_samples="d-D snapshots over the horizon",
    r_far="d-D: a run counts as escaped to infinity if r(T) > r_far * sqrt(sigma_g/sigma_H)",
    seed="random seed")


def validate(cfg):
    common.check_positive(cfg, "lrs", "batch_sizes", "h", "sigma_g", "sigma_h", "burn_in_time",
                          "thin_time", "k_frac", "show_lr", "ergodic_sigma_h", "ergodic_ratios",
                          "ergodic_time", "r_far")
    common.check_int(cfg, "particles", "samples", "pld_substeps", "ergodic_substeps")
    common.check_int(cfg, "ergodic_particles", minimum=2)  # a spread needs two
    common.check_int(cfg, "n_examples", minimum=3)  # SyntheticPLD in 1-D: dim + 2
    common.check_int(cfg, "dim", minimum=3)
    common.check_int(cfg, "ergodic_samples", minimum=4)
    for b in cfg["batch_sizes"]:
        if b != int(b) or b > cfg["n_examples"]:
            raise ValueError(f"--batch-sizes must be integers <= --n-examples, got {b}")
    if not cfg["k_frac"] < 0.5:
        raise ValueError(f"--k-frac must be < 0.5, got {cfg['k_frac']}")
    if cfg["particles"] * cfg["samples"] < 40:  # Hill takes the k >= 10 largest of them
        raise ValueError(f"--particles x --samples must be >= 40 for the Hill estimator, got "
                         f"{cfg['particles']} x {cfg['samples']}")
    if cfg["show_lr"] not in cfg["lrs"]:
        raise ValueError(f"--show-lr must be one of --lrs {cfg['lrs']}, got {cfg['show_lr']}")


def n_stages(cfg):
    return len(cfg["lrs"]) * len(cfg["batch_sizes"]) + len(cfg["ergodic_ratios"])


_samples = jax.jit(simulate_samples, static_argnums=(3, 4, 5, 6))


# ----------------------------------------------------------------------------- estimators

def hill(abs_x, owner, k):
    """Hill estimate of the tail index nu = 1/gamma from the k largest |x|, with a 95% interval
    from the cluster-robust (by particle) delta method."""
    order = np.argpartition(abs_x, -(k + 1))[-(k + 1):]
    order = order[np.argsort(abs_x[order])]
    threshold, top = abs_x[order[0]], order[1:]
    logs = np.log(abs_x[top] / threshold)
    gamma = logs.mean()
    # per-particle sums of (log excess - gamma): the estimating equation's clusters
    resid = np.bincount(owner[top], weights=logs - gamma)
    se = math.sqrt(np.sum(resid**2)) / k
    lo_g, hi_g = max(gamma - 1.96 * se, 1e-12), gamma + 1.96 * se
    return {"nu": 1 / gamma, "ci95": [1 / hi_g, 1 / lo_g], "k": int(k), "n": int(abs_x.size),
            "threshold": float(threshold)}


def hill_on_student_t(nu, n, k, seed, reps=5):
    """Mean Hill estimate on i.i.d. Student-t(nu) samples of size n (the estimator's bias)."""
    rng = np.random.default_rng(seed)
    vals = [hill(np.abs(rng.standard_t(nu, n)), np.arange(n), k)["nu"] for _ in range(reps)]
    return float(np.mean(vals))


def kesten_index(multipliers, weights=None):
    """alpha > 0 with E|A|^alpha = 1 for the multipliers A (a sample, or values with
    ``weights``); 0 when E log|A| >= 0 (the chain is not even stable), inf if alpha > 1e3."""
    log_a = np.log(np.abs(multipliers))
    w = np.full(log_a.shape, 1 / log_a.size) if weights is None else weights / np.sum(weights)
    f = lambda a: np.log(np.sum(w * np.exp(a * log_a)))  # noqa: E731
    if np.sum(w * log_a) >= 0:
        return 0.0
    hi = 1.0
    while f(hi) < 0:
        hi *= 2
        if hi > 1e3:
            return math.inf
    return float(optimize.brentq(f, 1e-6, hi, xtol=1e-10))


EXACT_BATCHES = 4_000_000  # up to this many batches, the SGD chain's Kesten index is exact


def sgd_chain_kesten(problem, lr, h, b, seed, draws=400000):
    """Kesten index of SGD's chain: A = 1 - lr (h + delta_B), delta_B a batch mean of delta_i
    (b indices drawn with replacement): exact over all n^b batches up to ``EXACT_BATCHES`` of
    them, else a Monte Carlo over ``draws`` batches."""
    delta = np.asarray(problem.delta, float)
    if delta.size ** b <= EXACT_BATCHES:
        sums = np.zeros(1)
        for _ in range(b):  # every ordered batch, each equally likely
            sums = np.add.outer(sums, delta).ravel()
        return kesten_index(1 - lr * (h + sums / b))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, delta.size, size=(draws, b))
    return kesten_index(1 - lr * (h + delta[idx].mean(axis=1)))


def em_chain_kesten(h, lr, b, sigma_h, dt):
    """Kesten index of the PLD's Euler chain at step dt: A = 1 - h dt + sqrt(dt lr sigma_H/b) xi."""
    xi = np.linspace(-8, 8, 40001)
    return kesten_index(1 - h * dt + math.sqrt(dt * lr * sigma_h / b) * xi, stats.norm.pdf(xi))


# ----------------------------------------------------------------------------------- runs

def run(cfg, progress) -> dict:
    h, sg, sh = cfg["h"], cfg["sigma_g"], cfg["sigma_h"]
    land = Quadratic.make(h)
    problem = SyntheticPLD.make(land, sg, sh, cfg["n_examples"], seed=cfg["data_seed"])
    dt_pld = min(cfg["lrs"]) / cfg["pld_substeps"]
    n, m = cfg["particles"], cfg["samples"]
    points, densities = [], {}
    idx = 0
    for b in (int(v) for v in cfg["batch_sizes"]):
        for lr in cfg["lrs"]:
            nu = th.pld_tail_index(h, lr, b, sh)
            k = max(10, int(round(cfg["k_frac"] * n * m)))
            point = {"lr": lr, "batch_size": b, "lr_over_b": lr / b, "nu_theory": nu,
                     "student_t_scale": math.sqrt(sg / (sh * nu)),
                     "hill_on_iid_student_t": hill_on_student_t(nu, n * m, k, cfg["seed"] + idx),
                     "kesten_sgd_chain": sgd_chain_kesten(problem, lr, h, b, cfg["seed"]),
                     "kesten_pld_euler_chain": em_chain_kesten(h, lr, b, sh, dt_pld)}
            dyns = {"sgd": MinibatchSGD.make(problem, lr, b),
                    "pld": EulerMaruyama.make(SDE.make(land, PLDLocal.make(sg, sh), lr, b),
                                              dt_pld)}
            dt_sgd_min = min(cfg["lrs"])  # fixed step counts: one compilation for all lrs
            for j, (name, dyn) in enumerate(dyns.items()):
                dt = dt_sgd_min if name == "sgd" else dt_pld
                burn = int(math.ceil(cfg["burn_in_time"] / dt))
                thin = int(math.ceil(cfg["thin_time"] / dt))
                rec = _samples(common.key_for(cfg["seed"], idx, j), dyn, jnp.zeros(1), n, burn,
                               m, thin)
                x = np.asarray(rec.x[:, :, 0], float)  # (m, n)
                ok = ~np.asarray(rec.diverged)
                x = x[:, ok]
                if x.size <= k:  # Hill needs k + 1 samples (diverged runs have none)
                    raise ValueError(f"at lr {lr:g} (--lrs), b {b}: {int((~ok).sum())} of {n} "
                                     f"{name.upper()} runs diverged, too few samples left for "
                                     f"the Hill estimate (k = {k}); lower the lr")
                owner = np.broadcast_to(np.arange(x.shape[1]), x.shape).ravel()
                flat = x.ravel()
                t_burn = burn * float(dyn.dt)
                point[name] = {"hill": hill(np.abs(flat), owner, k),
                               "n_diverged": int((~ok).sum()), "variance": float(flat.var()),
                               "ks_vs_student_t": float(stats.kstest(
                                   flat[::max(1, flat.size // 20000)],
                                   th.pld_student_t(h, lr, b, sg, sh).cdf).statistic),
                               "burn_in_time": t_burn, "thin_time": thin * float(dyn.dt),
                               "dt": float(dyn.dt)}
                if lr == cfg["show_lr"] and b == int(cfg["batch_sizes"][0]):
                    densities[name] = flat
            points.append(point)
            idx += 1
            progress.step(f"lr={lr:g} b={b}: nu theory {nu:.2f}, Hill SGD "
                          f"{point['sgd']['hill']['nu']:.2f}, PLD {point['pld']['hill']['nu']:.2f}"
                          f", Kesten(SGD chain) {point['kesten_sgd_chain']:.2f}")

    # density / survival curves at show_lr
    b0 = int(cfg["batch_sizes"][0])
    law = th.pld_student_t(h, cfg["show_lr"], b0, sg, sh)
    nu0 = th.pld_tail_index(h, cfg["show_lr"], b0, sh)
    gauss_sd = math.sqrt(law.var()) if nu0 > 2 else float(np.std(densities["pld"]))
    edges = np.linspace(-1, 1, 121) * np.quantile(np.abs(densities["pld"]), 0.9995)
    xs = np.geomspace(0.05, float(np.abs(densities["pld"]).max()), 60)
    shown = {"lr": cfg["show_lr"], "batch_size": b0, "nu": nu0, "gaussian_sd": gauss_sd,
             "bin_edges": edges, "x_grid": np.linspace(edges[0], edges[-1], 400),
             "survival_x": xs, "student_t_survival": 2 * law.sf(xs),
             "gaussian_survival": 2 * stats.norm.sf(xs / gauss_sd)}
    shown["student_t_pdf"] = law.pdf(shown["x_grid"])
    shown["gaussian_pdf"] = stats.norm.pdf(shown["x_grid"], scale=gauss_sd)
    for name, flat in densities.items():
        dens, _ = np.histogram(flat, bins=edges, density=False)
        shown[f"{name}_density"] = dens / (flat.size * np.diff(edges))
        shown[f"{name}_survival"] = [float(np.mean(np.abs(flat) > x)) for x in xs]
        shown[f"{name}_n"] = int(flat.size)

    ergodic = run_ergodic(cfg, progress)
    return {"points": points, "shown": shown, "ergodic": ergodic, "time_unit": "t = k * lr",
            "hill_k_rule": f"k = round({cfg['k_frac']} x N) largest |x| of N samples"}


def run_ergodic(cfg, progress) -> dict:
    d, h, sg, sh = cfg["dim"], cfg["h"], cfg["sigma_g"], cfg["ergodic_sigma_h"]
    b = 1
    lr_max = th.pld_max_lr(h, b, sh, d)
    lrs = [r * lr_max for r in cfg["ergodic_ratios"]]
    dt = min(lrs) / cfg["ergodic_substeps"]
    steps_total = int(math.ceil(cfg["ergodic_time"] / dt))
    m = cfg["ergodic_samples"]
    thin = max(1, steps_total // m)
    times = dt * thin * np.arange(1, m + 1)
    r_far = cfg["r_far"] * math.sqrt(sg / sh)
    land = Quadratic.make(h, dim=d)
    out = {"dim": d, "lr_max": lr_max, "sigma_h": sh, "times": times, "r_far": r_far, "runs": []}
    for i, (ratio, lr) in enumerate(zip(cfg["ergodic_ratios"], lrs)):
        dyn = EulerMaruyama.make(SDE.make(land, PLDLocal.make(sg, sh), lr, b), dt)
        rec = _samples(common.key_for(cfg["seed"], 1000 + i), dyn, jnp.zeros(d),
                       cfg["ergodic_particles"], 0, m, thin)
        # a run past |x_j| = 1e8 is diverged (NaN from then on): it counts as beyond r_far,
        # and E[log r] and its growth rate are those of the runs still finite
        ok = ~np.asarray(rec.diverged)
        x = np.asarray(rec.x, float)[:, ok]  # (m, N_ok, d)
        log_r = np.log(np.linalg.norm(x, axis=2))  # (m, N_ok)
        late = times >= times[-1] / 2
        tt = times[late] - times[late].mean()
        per_run = (tt[:, None] * (log_r[late] - log_r[late].mean(axis=0))).sum(0) / (tt**2).sum()
        n = per_run.size
        s2 = lr * sh / b
        drift = (d - 2) * s2 / 2 - h  # of log r at large r
        predicted = max(0.0, drift)  # bounded below lr_max: no growth
        if n >= 2:
            rate = float(per_run.mean())
            half = 1.96 * float(per_run.std(ddof=1)) / math.sqrt(n)
            ci, note = [rate - half, rate + half], {}
        else:  # every run (or all but one) passed the divergence bound
            rate, ci = None, [None, None]
            note = {"growth_rate_note": f"{n} of {ok.size} runs stayed below |x_j| = 1e8: "
                                        f"no growth rate (shorten --ergodic-time)"}
        far = int(np.sum(np.exp(log_r[-1]) > r_far)) + int(np.sum(~ok))
        n_all = ok.size
        out["runs"].append({
            "ratio": ratio, "lr": lr, "kappa": th.pld_kappa(h, lr, b, sh),
            "normalizable": bool(th.pld_is_normalizable(th.pld_kappa(h, lr, b, sh), d)),
            "mean_log_r": log_r.mean(axis=1) if n else [None] * m, "growth_rate": rate,
            "growth_rate_ci95": ci, **note,
            "predicted_drift_of_log_r": drift,
            "predicted_growth_rate": predicted,
            "fraction_beyond_r_far": far / n_all,
            "fraction_beyond_ci95": common.proportion_ci(far, n_all),
            "n_diverged": int(np.sum(~ok)), "dt": dt})
        shown = "n/a" if rate is None else f"{rate:.3f}"
        progress.step(f"d={d} lr/lr_max={ratio:g}: growth of E log r {shown} "
                      f"(predicted {predicted:.3f}), beyond r_far {far / n_all:.2f}")
    return out


# -------------------------------------------------------------------------------- plotting

def plot(payload):
    import matplotlib.pyplot as plt

    cfg = payload["flags"]
    sh = payload["shown"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    (a1, a2, a3), (a4, a5, a6) = axes
    centers = 0.5 * (np.asarray(sh["bin_edges"][1:]) + np.asarray(sh["bin_edges"][:-1]))
    for name, c in (("sgd", common.COLORS["sgd"]), ("pld", common.COLORS["pld"])):
        lab = "real SGD (dt = lr)" if name == "sgd" else "PLD SDE (simulated)"
        a1.plot(centers, sh[f"{name}_density"], ".", color=c, ms=4, label=f"{lab}")
        a2.plot(sh["survival_x"], np.where(np.asarray(sh[f"{name}_survival"]) > 0,
                                           sh[f"{name}_survival"], np.nan), ".-", color=c, ms=4,
                lw=0.8, label=lab)
    a1.plot(sh["x_grid"], sh["student_t_pdf"], "k-", lw=1.2,
            label=f"Student-t, ν={sh['nu']:.2f} (exact stationary law)")
    a1.plot(sh["x_grid"], sh["gaussian_pdf"], "k--", lw=1, label="Gaussian, same variance")
    a1.set_yscale("log")
    a1.set_ylim(max(1e-5, 0.3 / sh["sgd_n"] / (centers[1] - centers[0])), None)
    a1.set_xlabel("x = w − a  (parameter units)")
    a1.set_ylabel("stationary density p(x)")
    common.panel_label(a1, f"(a) stationary law, lr={sh['lr']}, b={sh['batch_size']}")
    a1.legend(fontsize=7)
    a2.plot(sh["survival_x"], sh["student_t_survival"], "k-", lw=1.2,
            label=f"Student-t: P(|X|>x) ~ x^-{sh['nu']:.2f} (exact)")
    a2.plot(sh["survival_x"], sh["gaussian_survival"], "k--", lw=1, label="Gaussian")
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_ylim(0.5 / sh["sgd_n"], 1.5)
    a2.set_xlabel("|x|  (parameter units, log)")
    a2.set_ylabel("P(|X| > x)")
    common.panel_label(a2, "(b) tails on log-log axes (power law = straight line)")
    a2.legend(fontsize=7)

    pts = payload["points"]
    bs = sorted({p["batch_size"] for p in pts})
    grid = np.geomspace(min(p["lr_over_b"] for p in pts) / 1.3,
                        max(p["lr_over_b"] for p in pts) * 1.3, 100)
    a3.plot(grid, 1 + 2 * cfg["h"] / (grid * cfg["sigma_h"]), "k-", lw=1.2,
            label="ν = 1 + 2bh/(lr σH) (exact, continuous PLD)")
    mk = {1: "o", 2: "s", 4: "^"}
    for b in bs:
        sel = sorted((p for p in pts if p["batch_size"] == b), key=lambda p: p["lr_over_b"])
        x = [p["lr_over_b"] for p in sel]
        for name, c, dx in (("sgd", common.COLORS["sgd"], 0.97), ("pld", common.COLORS["pld"],
                                                                   1.03)):
            est = [{"mean": p[name]["hill"]["nu"], "ci95": p[name]["hill"]["ci95"]} for p in sel]
            common.points(a3, np.asarray(x) * dx, est,
                          f"{name.upper()} b={b}: Hill (k={sel[0][name]['hill']['k']}) ± 95% CI",
                          c, mk.get(b, "D"), mfc="none" if b > 1 else None)
        a3.plot(x, [p["kesten_sgd_chain"] for p in sel], ":", color=common.COLORS["sgd"],
                marker=mk.get(b, "D"), ms=3, lw=1,
                label=f"Kesten index of the SGD chain, b={b} "
                      + ("(exact root)" if cfg["n_examples"] ** b <= EXACT_BATCHES
                         else "(root over random batches)"))
        a3.plot(x, [p["hill_on_iid_student_t"] for p in sel], "--", color="gray", lw=1,
                label="Hill on i.i.d. Student-t(ν) draws (estimator bias)" if b == bs[0]
                else None)
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    a3.set_xscale("log")
    a3.set_yscale("log")
    for axis in (a3.xaxis, a3.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    a3.set_xlabel("lr / b  (log)")
    a3.set_ylabel("tail index ν  (P(|X|>x) ~ x^-ν)")
    common.panel_label(a3, "(c) tail index against lr/b")
    a3.legend(fontsize=6.5)

    erg = payload["ergodic"]
    cmap = plt.get_cmap("coolwarm")
    ratios = [r["ratio"] for r in erg["runs"]]
    for r in erg["runs"]:
        col = cmap((r["ratio"] - min(ratios)) / max(max(ratios) - min(ratios), 1e-9))
        a4.plot(erg["times"], r["mean_log_r"], "-", color=col, lw=1.4,
                label=f"lr/lr_max = {r['ratio']:g}")
        if r["predicted_drift_of_log_r"] > 0 and r["mean_log_r"][-1] is not None:
            t = np.asarray(erg["times"])
            anchor = r["mean_log_r"][-1]
            a4.plot(t, anchor + r["predicted_drift_of_log_r"] * (t - t[-1]), ":", color=col,
                    lw=1)
    a4.set_xlabel("time t = k·lr")
    a4.set_ylabel("E[log r],  r = |w − a|")
    common.panel_label(a4, f"(d) d={erg['dim']} PLD: mean log radius (dotted: predicted slope)")
    a4.legend(fontsize=7)
    xr = np.linspace(min(ratios) * 0.9, max(ratios) * 1.05, 100)
    s2 = xr * erg["lr_max"] * erg["sigma_h"]
    a5.plot(xr, np.maximum((erg["dim"] - 2) * s2 / 2 - cfg["h"], 0), "k-", lw=1.2,
            label="max(0, (d−2)s²/2 − h), s² = lr σH/b (exact, large r)")
    common.points(a5, ratios, [{"mean": r["growth_rate"], "ci95": r["growth_rate_ci95"]}
                               for r in erg["runs"]], "simulated ± 95% CI", "tab:blue", "o",
                  positive=False)  # a rate can be negative
    a5.axvline(1, color="gray", lw=0.8, ls="--")
    a5.set_xlabel("lr / lr_max   (lr_max = 2bh/(σH(d−2)), pld_max_lr)")
    a5.set_ylabel("growth rate of E[log r]  (per unit t)")
    common.panel_label(a5, "(e) ergodicity limit: log r drifts off above lr_max")
    a5.legend(fontsize=7)
    common.points(a6, ratios, [{"mean": r["fraction_beyond_r_far"],
                                "ci95": r["fraction_beyond_ci95"]} for r in erg["runs"]],
                  f"simulated, T = {erg['times'][-1]:.3g} ± 95% CI", "tab:blue", "o")
    a6.axvline(1, color="gray", lw=0.8, ls="--", label="lr = lr_max (theory)")
    a6.set_ylim(-0.05, 1.05)
    a6.set_xlabel("lr / lr_max")
    a6.set_ylabel(f"fraction of runs with r(T) > {erg['r_far']:.3g}")
    common.panel_label(a6, "(f) runs that do not stay bounded")
    a6.legend(fontsize=7)
    for ax in axes.ravel():
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Stationary laws and tails: h={cfg['h']}, σg={cfg['sigma_g']}, "
                 f"σH={cfg['sigma_h']} (1-D); d-D runs with σH={cfg['ergodic_sigma_h']}",
                 fontsize=10)
    fig.tight_layout()
    return fig
