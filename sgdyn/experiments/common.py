"""Shared plumbing for the experiments: flags from a defaults dict, estimates as JSON, plotting
helpers and the atomic writer (figure + JSON with provenance, flags, seeds and run time)."""

from __future__ import annotations

import argparse

import importlib
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from ..cli import Parser, Progress
from ..estimators import recorded_extrapolations
from ..io import provenance, save_figure, write_json

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------------- flags


def _float_list(text: str) -> tuple:
    # ArgumentTypeError: argparse shows its text (a ValueError becomes "invalid value")
    try:
        values = tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") \
            from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser(description: str, full: dict, help_: dict, prog: str | None = None) -> Parser:
    """A Parser with one flag per key of ``full`` (default None: resolved against FULL/QUICK)."""
    p = Parser(prog=prog, description=description)
    p.add_argument("--quick", action="store_true", help="small, seconds-long run (explicit flags "
                                                        "still win)")
    p.add_argument("--out", default=None, help="output folder (default: figures/, or "
                                               "results/<name>_quick with --quick)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    for key, default in full.items():
        kind = type(default)
        if kind is tuple:
            typ, shown = _float_list, ",".join(f"{v:g}" for v in default)
        elif kind is bool:
            raise TypeError("boolean experiment flags are not supported")
        else:
            typ, shown = kind, default
        p.add_argument(_flag(key), type=typ, default=None,
                       help=f"{help_.get(key, '')} (default {shown})")
    return p


def resolve(ns, full: dict, quick: dict) -> dict:
    base = {**full, **quick} if ns.quick else dict(full)
    cfg = {k: (v if getattr(ns, k) is None else getattr(ns, k)) for k, v in base.items()}
    cfg["quick"] = bool(ns.quick)
    return cfg


def check_positive(cfg: dict, *names) -> None:
    for name in names:
        vals = cfg[name] if isinstance(cfg[name], tuple) else (cfg[name],)
        for v in vals:
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{_flag(name)} must be > 0, got {cfg[name]!r}")


def check_int(cfg: dict, *names, minimum: int = 1) -> None:
    for name in names:
        if int(cfg[name]) < minimum:
            raise ValueError(f"{_flag(name)} must be an integer >= {minimum}, got {cfg[name]!r}")


def check_distinct(cfg: dict, name: str, count: int, why: str) -> None:
    if len(set(cfg[name])) < count:
        raise ValueError(f"{_flag(name)} needs at least {count} distinct values ({why}), "
                         f"got {cfg[name]!r}")


SEED_FLAGS = ("seed", "data_seed")


def check_seeds(cfg: dict) -> None:
    """Seeds become uint32 keys (and numpy generator seeds): integers in [0, 2^32)."""
    for name in SEED_FLAGS:
        if name in cfg and not 0 <= int(cfg[name]) < 2**32:
            raise ValueError(f"{_flag(name)} must be an integer in [0, 2^32), got {cfg[name]!r}")


# ------------------------------------------------------------------------- running a module


def script_main(name: str, argv=None, doc: str | None = None) -> dict:
    """Parse flags for experiment ``name``, run it, write <out>/<name>.{png,json}; the payload."""
    mod = importlib.import_module(f"{__package__}.{name}")
    parser = build_parser((doc or mod.__doc__).strip().split("\n\n")[0], mod.FULL, mod.HELP,
                          prog=f"{name}.py")
    ns = parser.parse_args(argv)
    cfg = resolve(ns, mod.FULL, mod.QUICK)
    check_seeds(cfg)
    mod.validate(cfg)
    out = Path(ns.out) if ns.out else (ROOT / "results" / f"{name}_quick" if ns.quick
                                       else ROOT / "figures")
    return execute(mod, name, cfg, out, quiet=ns.quiet)


def execute(mod, name: str, cfg: dict, out: Path, quiet: bool = False) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = time.perf_counter()
    progress = Progress(mod.n_stages(cfg), name, quiet=quiet)
    # asymptotic-range warnings are recorded in the points; an estimate far past t_max is
    # kept in the JSON and said on stderr (--quiet or not)
    with recorded_extrapolations(ignore_other_runtime_warnings=True) as flagged:
        results = mod.run(cfg, progress)
    for message in flagged:
        print(f"[{name}] warning: {message}", file=sys.stderr)
    files = {"json": str(out / f"{name}.json"), "figure": str(out / f"{name}.png")}
    payload = {"experiment": name, "flags": cfg, "seeds": {"seed": cfg["seed"]}, **results,
               "warnings": flagged, "provenance": provenance(),
               "run_time_s": time.perf_counter() - t0, "outputs": files}
    fig = mod.plot(payload)
    save_figure(fig, files["figure"])
    plt.close(fig)
    payload["run_time_s"] = time.perf_counter() - t0
    write_json(files["json"], payload)
    if not quiet:
        print(f"[{name}] wrote {files['json']} and {files['figure']} "
              f"({payload['run_time_s']:.1f} s)", flush=True)
    return payload


# ------------------------------------------------------------------------------- estimates


def estimate_dict(result, **extra) -> dict:
    """An ExitResult's estimate as JSON-ready numbers (mean, ci95, counts, method)."""
    est = result.estimate
    d = {"mean": est.mean, "ci95": list(est.ci), "method": est.method,
         "n_escaped": est.n_escaped, "n_censored": est.n_censored,
         "n_diverged": est.n_diverged, "t_max": float(result.record.t_max)}
    d.update(extra)
    return d


def proportion_ci(k: int, n: int, confidence: float = 0.95) -> list:
    """Clopper-Pearson interval for a fraction k/n."""
    a = 1 - confidence
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return [lo, hi]


def linear_fit(x, y, w=None) -> dict:
    """Weighted least squares y = a + b x: slope, intercept, R^2, rms residual, and the number
    of points fitted: those with finite y and a finite weight > 0 (a point where nothing
    escaped has an infinite mean). With fewer than 2 distinct x among them every number is
    None (null in JSON) and ``note`` says why; R^2 is None when all fitted y are equal."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if np.unique(x).size < 2:  # no slope: the experiments check their flags against this
        raise ValueError(f"a line needs at least 2 distinct x values, got {x.tolist()}")
    w = np.ones_like(x) if w is None else np.asarray(w, float)
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(w) & (w > 0)
    x, y, w = x[keep], y[keep], w[keep]
    if np.unique(x).size < 2:
        return {"slope": None, "intercept": None, "r2": None, "rms_residual": None,
                "n_points": int(keep.sum()),
                "note": "fewer than 2 points with a finite estimate: no fit"}
    xm, ym = np.sum(w * x) / w.sum(), np.sum(w * y) / w.sum()
    slope = np.sum(w * (x - xm) * (y - ym)) / np.sum(w * (x - xm) ** 2)
    resid = y - (ym + slope * (x - xm))
    ss_tot = np.sum(w * (y - ym) ** 2)
    return {"slope": float(slope), "intercept": float(ym - slope * xm),
            "r2": float(1 - np.sum(w * resid**2) / ss_tot) if ss_tot > 0 else None,
            "rms_residual": float(np.sqrt(np.sum(w * resid**2) / w.sum())),
            "n_points": int(keep.sum())}


def log_se(est: dict) -> float:
    """Standard error of log(mean) from a 95% interval (delta method)."""
    lo, hi = est["ci95"]
    m = est["mean"]
    if not (math.isfinite(m) and m > 0 and math.isfinite(hi)):
        return math.inf
    return max((hi - lo) / (2 * 1.959964 * m), 1e-6)


def key_for(seed: int, *indices):
    import jax

    key = jax.random.key(int(seed))
    for i in indices:
        key = jax.random.fold_in(key, int(i))
    return key


# -------------------------------------------------------------------------------- plotting

COLORS = {"sgd": "tab:red", "pld": "tab:blue", "pld_loss": "tab:blue", "pld_local": "tab:purple",
          "langevin": "tab:green", "hessian": "tab:orange", "sgd_chain": "tab:brown"}
MARKERS = {"sgd": "o", "pld": "s", "pld_loss": "s", "pld_local": "D", "langevin": "^",
           "hessian": "v", "sgd_chain": "x"}


def points(ax, x, ests, label, color, marker="o", scale=1.0, positive=True, **kw):
    """Simulated means with their 95% intervals as error bars (missing points left out; for a
    ``positive`` quantity on a log axis, infinite or non-positive ends clipped to a decade)."""
    x = np.asarray(x, float)
    m = np.array([e["mean"] for e in ests], float) * scale
    lo = np.array([e["ci95"][0] for e in ests], float) * scale
    hi = np.array([e["ci95"][1] for e in ests], float) * scale
    ok = np.isfinite(m)
    if positive:
        hi = np.where(np.isfinite(hi), hi, m * 10)
        lo = np.where(lo > 0, lo, m / 10)
    else:
        ok &= np.isfinite(lo) & np.isfinite(hi)
    yerr = np.vstack([m[ok] - lo[ok], hi[ok] - m[ok]])  # the missing points' inf - inf left out
    ax.errorbar(x[ok], m[ok], yerr=yerr, fmt=marker, color=color, ms=5, capsize=3,
                label=label, zorder=3, **kw)


def panel_label(ax, text):
    ax.set_title(text, fontsize=10, loc="left")
