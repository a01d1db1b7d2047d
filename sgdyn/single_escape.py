"""One escape-time measurement with its theory values: the library side of
``experiments/escape_time.py``."""

from __future__ import annotations

import math
import sys
import time
import warnings

import jax
import numpy as np

from . import _checks, theory
from .build import THEORY_NOISE, make_dynamic, make_landscape
from .ensemble import MAX_STEPS
from .estimators import recorded_extrapolations
from .measure import measure_exit_times
from .noise import _hessian_at_minimum
from .regions import Ball, Threshold
from .sgd import noise_batch_size


def theory_noise(cfg: dict) -> tuple[str, dict]:
    """The ``sgdyn.theory`` noise family of the run's dynamics, with its parameters."""
    noise = THEORY_NOISE[cfg["dynamics"]]
    params = ({"sigma2": cfg["sigma2"]} if noise in ("langevin", "hessian")
              else {"sigma_g": cfg["sigma_g"], "sigma_h": cfg["sigma_h"]})
    return noise, params


def theory_batch_size(cfg: dict) -> float:
    """The batch size of the run's continuous-time model: for SGD sampling without replacement
    the noise is smaller by (n - b) / (n - 1), so b(n - 1) / (n - b) (THEORY.md section 1)."""
    if cfg["dynamics"] != "sgd" or not cfg["without_replacement"]:
        return cfg["batch_size"]
    b = noise_batch_size(cfg["batch_size"], cfg["n_examples"], replace=False)
    if math.isinf(b):
        raise ValueError(f"batch_size={cfg['batch_size']} without replacement takes all "
                         f"n_examples={cfg['n_examples']}: full-batch gradient descent has no "
                         f"noise and never escapes")
    return b


def theory_values(cfg: dict) -> dict:
    """Exact MFPT and the asymptotic formula for the Kramers well (THEORY.md section 4)."""
    if cfg["landscape"] != "kramers":
        return {}
    well = dict(h_min=cfg["h_min"], h_saddle=cfg["h_saddle"], barrier=cfg["barrier"])
    noise, params = theory_noise(cfg)
    common = dict(lr=cfg["lr"], batch_size=theory_batch_size(cfg))
    out = {"exact_mean_exit_time": theory.kramers_exit_time(
        **well, **common, noise=noise, to=cfg["to"],
        n_lengths=None if cfg["to"] == "saddle" else cfg["n_lengths"], **params)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if noise == "langevin":
            asym = theory.langevin_escape_time(**well, **common, sigma2=cfg["sigma2"])
        elif noise == "hessian":
            asym = theory.langevin_escape_time(**well, **common,
                                               sigma2=cfg["sigma2"] * cfg["h_min"])
        elif noise == "pld_loss":
            asym = theory.pld_escape_time(**well, **common, **params)
        else:
            asym = None
    if asym is not None:
        # the formula counts full escapes; from the saddle itself (--to saddle, or zero lengths
        # beyond it) each side is equally likely
        if cfg["to"] == "saddle" or cfg["n_lengths"] == 0:
            asym /= 2
        out["asymptotic_mean_exit_time"] = asym
        out["asymptotic_warnings"] = [str(w.message) for w in caught]
    return out


def exit_region(cfg: dict, landscape):
    if cfg["landscape"] == "kramers":
        noise, params = theory_noise(cfg)
        n = 0.0 if cfg["to"] == "saddle" else cfg["n_lengths"]
        x = theory.kramers_escape_point(cfg["h_min"], cfg["h_saddle"], cfg["barrier"],
                                        lr=cfg["lr"], batch_size=theory_batch_size(cfg),
                                        n_lengths=n, noise=noise, **params)
        return Threshold(x)
    _checks.positive("radius", cfg["radius"])
    return Ball.make(np.asarray(landscape.minimum), cfg["radius"])


def _unstable_at_start(landscape, dt: float) -> str | None:
    """A warning where a step of dt is unstable at the minimum the particles start in (dt times
    its top curvature >= 2: gradient descent overshoots), None otherwise. Such a chain can
    leave by the step's instability, in a few steps, whatever the noise (Styblinski-Tang's
    shallow minimum, h = 58.5, at the default lr = 0.1: 0.33 time units), or diverge; where
    the curvature turns negative close by, it can also stay, on a bounded orbit."""
    # the jitted eigenvalues HessianNoise uses: the eager jax.hessian took 0.9 s of compiling
    top = float(np.max(np.asarray(_hessian_at_minimum(landscape)[0])))
    if dt * top < 2:
        return None
    return (f"the step dt = {dt:.4g} (lr for SGD) times the start's top curvature {top:.4g} is "
            f"{dt * top:.3g} >= 2: the chain is unstable at the minimum (gradient descent "
            f"overshoots it), so its exits or divergences can come from the step, not the noise; "
            f"a smaller --dt (or --lr) measures a noise-driven escape")


def escape_time_experiment(cfg: dict) -> dict:
    """Run one measurement described by ``cfg`` (the script's flags) and return the JSON dict."""
    start = time.time()
    landscape = make_landscape(cfg["landscape"], h_min=cfg["h_min"], h_saddle=cfg["h_saddle"],
                               barrier=cfg["barrier"], h=cfg["h"], dim=cfg["dim"],
                               scale=cfg["scale"], tilt=cfg["tilt"])
    dynamic = make_dynamic(cfg["dynamics"], landscape, lr=cfg["lr"],
                           batch_size=cfg["batch_size"], sigma2=cfg["sigma2"],
                           sigma_g=cfg["sigma_g"], sigma_h=cfg["sigma_h"], dt=cfg["dt"],
                           increments=cfg["increments"], n_examples=cfg["n_examples"],
                           replace=not cfg["without_replacement"],
                           data_seed=cfg.get("data_seed", 0))
    region = exit_region(cfg, landscape)
    theory_out = theory_values(cfg)
    unstable = _unstable_at_start(landscape, float(dynamic.dt))
    t_max = cfg["t_max"]
    if t_max is None:
        exact = theory_out.get("exact_mean_exit_time")
        if exact is None:
            raise ValueError("--t-max is required where no exact exit time is known (the "
                             "default is 20 times it)")
        t_max = 20 * exact
        if t_max / float(dynamic.dt) > MAX_STEPS:  # else an error about a t_max never given
            raise ValueError(f"the default --t-max, 20 times the exact mean exit time "
                             f"{exact:.4g}, is {t_max / float(dynamic.dt):.3g} steps, past "
                             f"the 2^30 a run can take: the escape is too slow to simulate; "
                             f"raise the noise or lower the barrier (or give --t-max to "
                             f"measure a censored run)"
                             + ("" if unstable is None else
                                f". The exact time assumes a stable chain, though: {unstable}"))
    with recorded_extrapolations() as flagged:
        res = measure_exit_times(jax.random.key(cfg["seed"]), dynamic, region,
                                 np.asarray(landscape.minimum), cfg["particles"], t_max,
                                 correction=cfg["correction"], chunk_size=cfg["chunk_size"],
                                 checkpoint=cfg.get("checkpoint"))
    if unstable:
        flagged.append(unstable)
    for message in flagged:
        print(f"warning: {message}", file=sys.stderr)
    out = {"arguments": cfg, "t_max": res.record.t_max, **res.estimate.as_dict(), **theory_out,
           "dt": float(dynamic.dt), "warnings": flagged, "run_time_s": time.time() - start}
    if not np.isfinite(out["ci95"][1]):
        out["ci95"][1] = None  # an unbounded interval (no escape) is null in JSON
    if not math.isfinite(out["mean_exit_time"]):
        out["mean_exit_time"] = None  # JSON has no inf: no particle escaped
    return out
