"""sgdyn against the tools researchers use today, side by side, on the machine it runs on.

    python benchmarks/run.py [--quick] [--out benchmarks/results/cpu.json] [--skip memory,...]

Prints one table and writes it (with every raw number) as JSON. Sections:

  ceilings   Gaussian random numbers/s and random bits/s inside lax.scan; one step's
             arithmetic alone (no randomness) in particle-steps/s.
  throughput (a) fixed-step particle-steps/s, 1-D PLD and 100-D PLD: sgdyn (Gaussian,
             three-point and two-point increments), NumPy, diffrax vmapped per particle
             (VirtualBrownianTree as documented, and UnsafeBrownianPath), diffrax with one
             ensemble state.
  exit       (b) time to estimate the mean exit time of the 1-D PLD and of Langevin to within
             2% of the exact value (|estimate - exact| + 95% CI half-width <= 2%; each tool's
             estimate is checked against sgdyn.theory before its time counts).
  cache      (b)'s first call for the PLD in fresh processes, without and with JAX's
             persistent compilation cache (benchmarks/compile_probe.py).
  sweep      (c) the same for the PLD swept over 8 sharpness values in one call.
  memory     peak RSS of 1e6 particles for 1e5 steps against 1e3 steps (subprocesses).
  sharding   the exit task on 2 forced host devices (subprocess) against 1 device.
  training   MNIST-1D MLP, several seeds under vmap against the same seeds one after another.

Sizes follow the platform: on a GPU the fixed-step sections use 40x the particles (diffrax
and NumPy their own counts) and sgdyn more steps in 1-D (the CPU's sizes leave it
launch-bound; ``ACCELERATOR``), the ceilings 10x the steps; the exit tasks keep theirs. A run killed midway
keeps, in --out, every section it finished.

Times are wall-clock seconds. "time to estimate" includes compilation (what a user waits);
throughputs exclude it (median of 7 repeats after a warm-up call). On a shared machine the
absolute numbers are noisy; the ratios within one run are what the targets are about.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import sgdyn as sg  # noqa: E402
from benchmarks import alternatives as alt  # noqa: E402
from benchmarks import ceilings  # noqa: E402
from benchmarks.report import summarize, table  # noqa: E402
from benchmarks.problems import LANGEVIN1, PLD1, PLD1_BASIN, PLD100  # noqa: E402

TOLERANCE = 0.02  # task (b): |estimate - exact| + CI half-width <= 2% of exact

FULL = dict(
    n=100_000,
    # (gaussian, two_point) sgdyn steps; 100-D: 32, so that the one-off start and the sample
    # written out (a transpose of 1e7 numbers) weigh on the steady-state rate less than with 8
    thr_steps={"pld1_basin": (640, 6400), "pld100": (32, 128)},
    alt_steps={"pld1_basin": 200, "pld100": 16},
    alt_n={"numpy": {"pld1_basin": 100_000, "pld100": 10_000},
           "diffrax_vmap_virtual": {"pld1_basin": 2_000, "pld100": 200},
           "diffrax_vmap_unsafe": {"pld1_basin": 20_000, "pld100": 2_000},
           "diffrax_ensemble": {"pld1_basin": 100_000, "pld100": 10_000}},
    exit={"pld1": dict(dt=0.02, n=80_000), "langevin1": dict(dt=0.01, n=80_000)},
    # dt = 0.01: at 0.02 the Euler bias at the sharp end plus the CI half-width sits at 2.3-2.5%
    sweep=dict(dt=0.01, n=80_000, scales=list(np.linspace(0.95, 1.15, 8))),
    tolerance=TOLERANCE,
    memory=dict(n=1_000_000, steps=(1_000, 100_000)),
    sharding=dict(n=1_000_000, dt=0.04),
    training=dict(seeds=8, epochs=2, batch_size=32),
    ceiling_steps=200, arith_steps=(2000, 20), matmul_size=1024,  # arith: (pld1, pld100)
    cache_repeats=3,  # fresh processes timing a first call without the cache
)
QUICK = dict(
    n=4_000,
    thr_steps={"pld1_basin": (64, 640), "pld100": (2, 64)},
    alt_steps={"pld1_basin": 20, "pld100": 2},
    alt_n={"numpy": {"pld1_basin": 4_000, "pld100": 400},
           "diffrax_vmap_virtual": {"pld1_basin": 100, "pld100": 20},
           "diffrax_vmap_unsafe": {"pld1_basin": 400, "pld100": 40},
           "diffrax_ensemble": {"pld1_basin": 4_000, "pld100": 400}},
    exit={"pld1": dict(dt=0.04, n=1_500), "langevin1": dict(dt=0.04, n=1_500)},
    sweep=dict(dt=0.04, n=600, scales=[1.0, 1.15]),
    tolerance=0.25,
    warm_rounds=1,  # one warm estimate per tool (keeps the smoke test short)
    memory=dict(n=20_000, steps=(100, 1_000)),
    sharding=dict(n=4_000, dt=0.04),
    training=dict(seeds=2, epochs=1, batch_size=256),
    ceiling_steps=20, arith_steps=(100, 2), matmul_size=256,
    cache_repeats=1,
)
# A GPU runs 1e5 particles in microseconds per step, so its throughput is launch-bound at the
# CPU's sizes: the fixed-step sections fill it (40x the particles; sgdyn's 1-D steps 3.1x, the
# ceilings' 10x). The exit tasks keep the CPU's sizes, which the 2% accuracy target fixes, not
# the hardware.
ACCELERATOR = dict(
    FULL,
    n=4_000_000,
    thr_steps={"pld1_basin": (2000, 20000), "pld100": (20, 200)},
    alt_n={"numpy": FULL["alt_n"]["numpy"],  # on the host CPU, as a researcher would run it
           "diffrax_vmap_virtual": {"pld1_basin": 100_000, "pld100": 10_000},
           "diffrax_vmap_unsafe": {"pld1_basin": 4_000_000, "pld100": 400_000},
           "diffrax_ensemble": {"pld1_basin": 4_000_000, "pld100": 400_000}},
    ceiling_steps=2000, arith_steps=(20000, 200), matmul_size=8192,
    cache_repeats=1,  # keeps device.sh within its time budget
)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- ceilings

def run_ceilings(cfg):
    n = cfg["n"]
    steps = cfg["ceiling_steps"]
    out = {"n": n,
           "gaussians_per_s": ceilings.gaussians_per_second(n, steps),
           "random_bits_per_s": ceilings.bits_per_second(n, 2 * steps),
           "counter_gaussians_per_s": ceilings.counter_gaussians_per_second(n, steps),
           "counter_bits_per_s": ceilings.counter_bits_per_second(n, 2 * steps)}
    for p, steps in zip((PLD1_BASIN, PLD100), cfg["arith_steps"]):
        dyn = sg.EulerMaruyama.make(p.sgdyn_sde(), 0.01)
        out[f"arithmetic_{p.name}_particle_steps_per_s"] = ceilings.arithmetic_steps_per_second(
            dyn, n, steps)
    return out


# ----------------------------------------------------------------------------- (a)

_samples = jax.jit(sg.simulate_samples, static_argnums=(3, 4, 5, 6))


def sgdyn_throughput(problem, increments, n, steps, dt=0.01):
    dyn = sg.EulerMaruyama.make(problem.sgdyn_sde(), dt, increments)
    rec, t = alt.timed(_samples, jax.random.key(0), dyn, jnp.zeros(problem.dim), n, steps, 1, 1,
                       repeats=alt.REPEATS)
    assert np.all(np.isfinite(np.asarray(rec.x))) and not np.asarray(rec.diverged).any()
    return float(n * (int(rec.burn_in_steps) + int(rec.thin_steps)) / t)


def run_throughput(cfg):
    rows = []
    dt = 0.01
    for p in (PLD1_BASIN, PLD100):
        g_steps, w_steps = cfg["thr_steps"][p.name]
        for inc, steps in (("gaussian", g_steps), ("three_point", 2 * g_steps),
                           ("two_point", w_steps)):
            r = sgdyn_throughput(p, inc, cfg["n"], steps, dt)
            rows.append(dict(problem=p.name, tool=f"sgdyn ({inc})", n=cfg["n"], steps=steps,
                             particle_steps_per_s=r))
            log(rows[-1])
        steps = cfg["alt_steps"][p.name]
        n = cfg["alt_n"]["numpy"][p.name]
        _, t = alt.timed(alt.numpy_steps, p, n, steps, dt, repeats=alt.REPEATS)
        rows.append(dict(problem=p.name, tool="numpy", n=n, steps=steps,
                         particle_steps_per_s=n * steps / t))
        log(rows[-1])
        for tool, make in (
            ("diffrax_vmap_virtual", lambda n: alt.diffrax_vmap_solver(
                p, n, dt, steps * dt, event=False, brownian="virtual")),
            ("diffrax_vmap_unsafe", lambda n: alt.diffrax_vmap_solver(
                p, n, dt, steps * dt, event=False, brownian="unsafe")),
            ("diffrax_ensemble", lambda n: alt.diffrax_ensemble_solver(
                p, n, dt, steps * dt, exits=False)),
        ):
            n = cfg["alt_n"][tool][p.name]
            _, t = alt.timed(make(n), jax.random.key(0), repeats=alt.REPEATS)
            rows.append(dict(problem=p.name, tool=tool, n=n, steps=steps,
                             particle_steps_per_s=n * steps / t))
            log(rows[-1])
    return rows


# ----------------------------------------------------------------------------- (b), (c)

def judge(est, exact, tol):
    """Accuracy of an estimate: |mean - exact| + 95% half-width, relative to exact."""
    hw = (est.ci[1] - est.ci[0]) / 2
    err = (abs(est.mean - exact) + hw) / exact
    return dict(mean=est.mean, exact=exact, rel_error=(est.mean - exact) / exact,
                rel_half_width=hw / exact, accuracy=err, accurate=bool(err <= tol),
                n_escaped=est.n_escaped, n_censored=est.n_censored, method=est.method)


def _estimate(time_, escaped, dt):
    """The estimate of an alternative's record (times on its grid of steps dt)."""
    time_, escaped = np.asarray(time_, float), np.asarray(escaped, bool)
    return sg.exit_time_estimate(time_, escaped, ~escaped, dt=dt)


def exit_tools(problem, dt, n):
    """{tool: seed -> ExitEstimate} for one exit problem; alternatives censor at 3x the exact
    mean (a user who knows the answer's scale; the censoring-aware estimator handles the
    rest), sgdyn runs until every particle has left (the slots are refilled and the
    stragglers packed, so that is cheap). sgdyn three-point also runs with 2048 slots: too
    few to pack, so its program holds one loop, as the runner's first tier on a CPU does over
    4096 slots (over 2048 until 2026-11-27). Each callable compiles on its first call only."""
    exact = problem.exact
    t_alt = 3 * exact
    region = sg.Threshold(problem.exit_point)
    vmapped = alt.diffrax_vmap_solver(problem, n, dt, t_alt, brownian="unsafe")
    ensemble = alt.diffrax_ensemble_solver(problem, n, dt, t_alt)

    def sgdyn(increments, **engine):
        dyn = sg.EulerMaruyama.make(problem.sgdyn_sde(), dt, increments)
        return lambda seed: sg.measure_exit_times(jax.random.key(seed), dyn, region, [0.0], n,
                                                  20 * exact, **engine).estimate

    return {
        "sgdyn (gaussian)": sgdyn("gaussian"),
        "sgdyn (three_point)": sgdyn("three_point"),
        "sgdyn (three_point, 2048 slots)": sgdyn("three_point", n_slots=2048),
        "numpy": lambda seed: _estimate(*alt.numpy_exits(problem, n, dt, t_alt, seed), dt),
        "diffrax_vmap_unsafe": lambda seed: _estimate(*jax.device_get(vmapped(
            jax.random.key(seed))), dt),
        "diffrax_ensemble": lambda seed: _estimate(*jax.device_get(ensemble(
            jax.random.key(seed))), dt),
    }


def run_exit(cfg):
    """Cold time (first call: compilation included, what a user waits for one estimate) and
    warm time (later estimates with new seeds: compiled code reused), the median of
    ``warm_rounds`` rounds that call every compiled tool in turn, so that a drift of the shared
    machine's speed (up to 2x within an hour on the VM) reaches them alike (NumPy compiles
    nothing: its warm time is its one timing, from the first pass). Every estimate is checked
    against the exact value."""
    rows = []
    rounds = cfg.get("warm_rounds", 3)
    for p in (PLD1, LANGEVIN1):
        c = cfg["exit"][p.name]
        exact = p.exact
        tools = exit_tools(p, c["dt"], c["n"])
        here = {}
        for tool, fn in tools.items():
            t0 = time.perf_counter()
            est = fn(0)
            t = time.perf_counter() - t0
            here[tool] = dict(problem=p.name, tool=tool, dt=c["dt"], n=c["n"], seconds=t,
                              **judge(est, exact, cfg["tolerance"]), warm_runs=[], warm_checks=[])
            log(here[tool])
        for r in range(rounds):
            for tool, fn in tools.items():
                if tool == "numpy":  # nothing to compile: its one timing is its warm time
                    continue
                t0 = time.perf_counter()
                est = fn(1 + r)
                here[tool]["warm_runs"].append(time.perf_counter() - t0)
                here[tool]["warm_checks"].append(judge(est, exact, cfg["tolerance"]))
        for row in here.values():
            runs = row["warm_runs"] or [row["seconds"]]
            row["warm_seconds"] = float(np.median(runs))
            row["accurate"] = row["accurate"] and all(w["accurate"] for w in row["warm_checks"])
            rows.append(row)
        log({t: (r["seconds"], r["warm_runs"]) for t, r in here.items()})
    return rows


def run_sweep(cfg):
    c = cfg["sweep"]
    probs = [PLD1.sharper(s) for s in c["scales"]]
    exacts = [p.exact for p in probs]
    dt, n = c["dt"], c["n"]
    dyns = [sg.EulerMaruyama.make(p.sgdyn_sde(), dt) for p in probs]
    dyns3 = [sg.EulerMaruyama.make(p.sgdyn_sde(), dt, "three_point") for p in probs]
    regions = [sg.Threshold(p.exit_point) for p in probs]
    t_alt = [3 * e for e in exacts]
    key = jax.random.key(0)

    def sg_sweep(dynamics, t_max, **kw):
        return lambda: [r.estimate for r in sg.sweep_exit_times(key, dynamics, regions, [0.0], n,
                                                                t_max, **kw)]

    def np_loop():
        return [_estimate(*r, dt) for r in alt.numpy_sweep(probs, n, dt, t_alt)]

    def dfx_vmap():
        t, esc = jax.device_get(alt.diffrax_sweep_vmap_solver(probs, n, dt, t_alt)(key))
        return [_estimate(t[i], esc[i], dt) for i in range(len(probs))]  # (problem, particle)

    def dfx_ens():
        # one compiled solve, its parameters traced, like sgdyn's sweep (a solver built per
        # value compiled 8 times)
        return [_estimate(t, esc, dt) for t, esc in
                alt.diffrax_ensemble_sweep_solver(probs, n, dt, t_alt)(key)]

    rows = []
    t_all = [20 * e for e in exacts]  # sgdyn runs every particle to its exit
    for tool, fn in (("sgdyn (sweep_exit_times, three_point)", sg_sweep(dyns3, t_all)),
                     ("sgdyn (sweep_exit_times, gaussian)", sg_sweep(dyns, t_all)),
                     ("sgdyn (sweep_exit_times, gaussian, vectorized=True, censored at 3x)",
                      sg_sweep(dyns, t_alt, vectorized=True)),
                     ("numpy (loop)", np_loop), ("diffrax_vmap_unsafe (vmap over sweep)", dfx_vmap),
                     ("diffrax_ensemble (loop)", dfx_ens)):
        t0 = time.perf_counter()
        ests = fn()
        t = time.perf_counter() - t0
        checks = [judge(e, x, cfg["tolerance"]) for e, x in zip(ests, exacts)]
        rows.append(dict(tool=tool, dt=dt, n=n, seconds=t,
                         worst_accuracy=max(ch["accuracy"] for ch in checks),
                         accurate=all(ch["accurate"] for ch in checks), points=checks))
        log({k: v for k, v in rows[-1].items() if k != "points"})
    return dict(scales=c["scales"], exact=exacts, rows=rows)


# ----------------------------------------------------------------------------- memory

MEMORY_SCRIPT = r"""
import resource, sys, jax, jax.numpy as jnp
import sgdyn as sg
n, steps = int(sys.argv[1]), int(sys.argv[2])
sde = sg.SDE.make(sg.Quadratic.make(1.0), sg.Isotropic.make(1.0), 0.1, 1)
dyn = sg.EulerMaruyama.make(sde, 0.01, "two_point")
f = jax.jit(sg.simulate_samples, static_argnums=(3, 4, 5, 6))
import time; t0 = time.perf_counter()
rec = jax.block_until_ready(f(jax.random.key(0), dyn, jnp.zeros(1), n, steps, 1, 1))
t = time.perf_counter() - t0
try:  # this process's own peak: ru_maxrss keeps the parent's peak across fork + exec on Linux
    peak_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
except OSError:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
dev = jax.devices()[0]
stats = (dev.memory_stats() or {}) if dev.platform != "cpu" else {}
print(peak_kb, t, rec.burn_in_steps + rec.thin_steps, stats.get("peak_bytes_in_use", 0))
"""


def run_memory(cfg):
    n, (s_lo, s_hi) = cfg["memory"]["n"], cfg["memory"]["steps"]
    out = {"n": n}
    for steps in (s_lo, s_hi):
        res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(n), str(steps)],
                             capture_output=True, text=True, env=_env(), check=True)
        rss_kb, t, done, device_bytes = res.stdout.split()
        out[f"steps_{steps}"] = dict(peak_rss_mb=int(rss_kb) / 1024, seconds=float(t),
                                     steps_run=int(done))
        if int(device_bytes):  # an accelerator: its own memory is what the state lives in
            out[f"steps_{steps}"]["peak_device_mb"] = int(device_bytes) / 2**20
        log(out)
    lo, hi = out[f"steps_{s_lo}"], out[f"steps_{s_hi}"]
    out["ratio"] = hi["peak_rss_mb"] / lo["peak_rss_mb"]
    if "peak_device_mb" in lo:
        out["device_ratio"] = hi["peak_device_mb"] / lo["peak_device_mb"]
    return out


# ----------------------------------------------------------------------------- sharding

SHARD_SCRIPT = r"""
import json, sys, time, jax, numpy as np
sys.path.insert(0, sys.argv[3])
import sgdyn as sg
from sgdyn import sharding
from benchmarks.problems import PLD1
n, dt = int(sys.argv[1]), float(sys.argv[2])
dyn = sg.EulerMaruyama.make(PLD1.sgdyn_sde(), dt)
args = (jax.random.key(0), dyn, sg.Threshold(PLD1.exit_point), [0.0], n, 20 * PLD1.exact)
def timed(f):
    f(*args)  # compile every bucket size
    ts = []
    for _ in range(3):
        t0 = time.perf_counter(); r = f(*args); ts.append(time.perf_counter() - t0)
    return r, float(np.median(ts))
one_dev = sharding.particle_mesh(jax.devices()[:1])
r1, t1 = timed(lambda *a: sharding.measure_exit_times_sharded(*a, mesh=one_dev))
r2, t2 = timed(sharding.measure_exit_times_sharded)
r0, t0 = timed(sg.measure_exit_times)
same = all(np.array_equal(getattr(r0.record, f), getattr(r2.record, f))
           for f in ("time", "escaped", "censored")) and all(
           np.array_equal(getattr(r0.record, f), getattr(r1.record, f))
           for f in ("time", "escaped", "censored"))
out = dict(devices=jax.device_count(), n=n, dt=dt, seconds_measure_exit_times=t0,
           seconds_sharded_1_device=t1, seconds_sharded_2_devices=t2, speedup_2_vs_1=t1 / t2,
           identical=bool(same))
# training: the same seeds split over both devices against all on one
import optax
from sgdyn.train import MLP, mnist1d, train
seeds, epochs = int(sys.argv[4]), int(sys.argv[5])
data, model = mnist1d(), MLP(hidden=(100, 100), num_classes=10)
kw = dict(lr=0.05, batch_size=32, epochs=epochs, sharpness_iters=0, seeds=list(range(seeds)))
sgd = lambda lr, key: optax.sgd(lr)
for shard in (True, False):
    train(model, data, sgd, shard_seeds=shard, **kw)  # compile
    t = min(train(model, data, sgd, shard_seeds=shard, **kw).wall_time_s for _ in range(3))
    out["training_seconds_" + ("2_devices" if shard else "1_device")] = t
out["training_speedup_2_vs_1"] = out["training_seconds_1_device"] / out["training_seconds_2_devices"]
# and the same seeds one after another (each on one device): what vmap split over the cores gains
one = dict(kw, seeds=[0])
train(model, data, sgd, shard_seeds=False, **one)  # compile
out["training_seconds_loop"] = min(
    sum(train(model, data, sgd, shard_seeds=False, **dict(kw, seeds=[s])).wall_time_s
        for s in kw["seeds"]) for _ in range(3))
out["training_speedup_2_devices_vs_loop"] = (out["training_seconds_loop"]
                                             / out["training_seconds_2_devices"])
print(json.dumps(out))
"""


def _env(devices=None):
    """A subprocess's environment: forced host devices run on the CPU; otherwise the child
    uses the platform this process uses (the memory section measures the accelerator there)."""
    env = dict(os.environ)
    if devices or jax.default_backend() == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if devices:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                            + f" --xla_force_host_platform_device_count={devices}").strip()
    return env


def run_sharding(cfg):
    c = cfg["sharding"]
    t = cfg["training"]
    res = subprocess.run([sys.executable, "-c", SHARD_SCRIPT, str(c["n"]), str(c["dt"]),
                          str(ROOT), str(t["seeds"]), str(t["epochs"])],
                         capture_output=True, text=True, env=_env(2))
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    out = json.loads(res.stdout.strip().splitlines()[-1])
    log(out)
    return out


# ----------------------------------------------------------------------------- cache

# XLA's older CPU emitters compile faster and run a little slower (an XLA option of
# jaxlib 0.10, which a later jaxlib may not know: then that probe is recorded as failed)
LEGACY_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def run_cache(cfg):
    """Task (b)'s first call for the 1-D PLD in fresh processes (benchmarks/compile_probe.py):
    without a compilation cache (``cache_repeats`` processes: a first call on a shared machine
    moves by tens of percent from one minute to the next), then twice with JAX's persistent
    cache in a new folder (the first fills it, the second is what a rerun of a script waits);
    on a CPU once more without a cache, every tool compiled with XLA's older emitters
    (``LEGACY_EMITTERS``; sgdyn's exit runner compiles with them anyway, so this row shows
    what they do for diffrax)."""
    from benchmarks.compile_probe import TOOLS

    c = cfg["exit"]["pld1"]
    probe = [sys.executable, str(ROOT / "benchmarks" / "compile_probe.py"),
             "--n", str(c["n"]), "--dt", str(c["dt"]), "--tolerance", str(cfg["tolerance"])]
    out = {}
    env = _env()
    repeats = [(f"no_cache_repeat_{i}", [], env)
               for i in range(2, cfg.get("cache_repeats", 1) + 1)]
    with tempfile.TemporaryDirectory(prefix="sgdyn-bench-cache-") as folder:
        runs = [("no_cache", [], env), *repeats, ("cache_fill", ["--cache", folder], env),
                ("cache_hit", ["--cache", folder], env)]
        if jax.default_backend() == "cpu":
            flags = (env.get("XLA_FLAGS", "") + " " + LEGACY_EMITTERS).strip()
            runs.append(("no_cache_legacy_emitters", [], dict(env, XLA_FLAGS=flags)))
        for run, extra, run_env in runs:
            rows = []
            for tool in TOOLS:  # one process each: every tool's first call is a true one
                res = subprocess.run(probe + extra + ["--tool", tool], capture_output=True,
                                     text=True, env=run_env)
                if res.returncode:
                    break
                rows += [json.loads(line) for line in res.stdout.splitlines()
                         if line.startswith("{")]
            if res.returncode:
                if run == "no_cache_legacy_emitters":  # optional: the flag may be gone
                    out["legacy_emitters_error"] = res.stderr[-500:]
                    continue
                raise RuntimeError(res.stderr[-3000:])
            out[run] = rows
            log(run, out[run])
    return out


# ----------------------------------------------------------------------------- training

ONE_CORE_SCRIPT = r"""
import os, sys
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before XLA sizes its thread pool
from benchmarks import ceilings
print(ceilings.matmul_flops_per_second(int(sys.argv[1])))
"""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the platform reports one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def one_core_matmul_flops_per_second(size):
    """``ceilings.matmul_flops_per_second`` in a child pinned to one core: the most one
    core does, against which a product that XLA runs on one thread is measured. None where
    the platform cannot pin a process (not Linux) or JAX runs on an accelerator."""
    if jax.default_backend() != "cpu" or not hasattr(os, "sched_setaffinity"):
        return None
    res = subprocess.run([sys.executable, "-c", ONE_CORE_SCRIPT, str(size)],
                         capture_output=True, text=True, env=_env(), check=True)
    return float(res.stdout.split()[-1])


def run_training(cfg):
    import optax

    from sgdyn.train import MLP, mnist1d, train

    c = cfg["training"]
    data = mnist1d()
    model = MLP(hidden=(100, 100), num_classes=10)
    seeds = list(range(c["seeds"]))

    def opt(lr, key):
        return optax.sgd(lr)

    kw = dict(lr=0.05, batch_size=c["batch_size"], epochs=c["epochs"], sharpness_iters=0)
    train(model, data, opt, seeds=seeds, **kw)  # compile
    train(model, data, opt, seeds=[0], **kw)
    t_vmap, t_loop = [], []
    for _ in range(3):  # alternating, the fastest of each: the VM's noise only slows runs down
        t0 = time.perf_counter()
        together = train(model, data, opt, seeds=seeds, **kw)
        t_vmap.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        alone = [train(model, data, opt, seeds=[s], **kw) for s in seeds]
        t_loop.append(time.perf_counter() - t0)
    t_vmap, t_loop = min(t_vmap), min(t_loop)
    agree = max(float(np.max(np.abs(together.test_acc[:, i] - a.test_acc[:, 0])))
                for i, a in enumerate(alone))
    steps = together.steps_per_epoch * c["epochs"]
    # the barest vmapped SGD step: a floor under any vmapped step, so a ceiling on the speed-up
    xy = (jnp.asarray(data.x_train), jnp.asarray(data.y_train))
    bare_s = ceilings.vmapped_sgd_step_seconds(model, *xy, c["batch_size"], len(seeds),
                                               together.steps_per_epoch)
    # the same bare step for one seed: how much of the floor vmap itself removes
    bare_1 = ceilings.vmapped_sgd_step_seconds(model, *xy, c["batch_size"], 1,
                                               together.steps_per_epoch)
    # the first hidden layer's products, one seed against all seeds stacked as vmap does
    layer = (c["batch_size"], data.x_train.shape[1], model.hidden[0])
    layer_gflops = [ceilings.dense_products_flops_per_second(k, *layer) / 1e9
                    for k in (1, len(seeds))]
    loop_s = t_loop / (len(seeds) * steps)  # one seed's full step, per step
    n_params = sum(int(np.size(p)) for p in jax.tree.leaves(
        model.init(jax.random.key(0), jnp.zeros((1, data.x_train.shape[1])))))
    out = dict(seeds=len(seeds), epochs=c["epochs"], batch_size=c["batch_size"],
               steps_per_seed=steps, seconds_vmap=t_vmap, seconds_loop=t_loop,
               seed_steps_per_s_vmap=len(seeds) * steps / t_vmap,
               seed_steps_per_s_loop=len(seeds) * steps / t_loop, speedup=t_loop / t_vmap,
               us_per_seed_step_loop=1e6 * loop_s, us_per_seed_step_vmap_bare_sgd=1e6 * bare_s,
               speedup_ceiling=loop_s / bare_s, us_per_seed_step_bare_sgd_1_seed=1e6 * bare_1,
               bare_sgd_vmap_gain=bare_1 / bare_s, layer_shape=list(layer),
               layer_gflops_1_seed=layer_gflops[0], layer_gflops_stacked=layer_gflops[1],
               max_test_acc_difference=agree,
               # forward + backward of a dense net: about 6 FLOPs per parameter per example
               train_gflops_vmap=6 * n_params * c["batch_size"] * len(seeds) * steps / t_vmap / 1e9,
               matmul_size=cfg["matmul_size"],
               matmul_gflops=ceilings.matmul_flops_per_second(cfg["matmul_size"]) / 1e9,
               final_test_acc=[float(v) for v in together.test_acc[-1]])
    # The evaluation after each epoch is work the loop does too, and on a CPU it already keeps
    # every core busy: splitting the seeds over one device per core can shorten the steps
    # only. With the steps split perfectly and the evaluation as on one device:
    out["seconds_evaluation_per_epoch"] = ceilings.evaluation_seconds(model, together.params,
                                                                      data)
    cores = usable_cores()
    if jax.default_backend() == "cpu" and cores > 1:
        out["cores"] = cores
        out["speedup_bound_all_cores"] = t_loop / (
            c["epochs"] * out["seconds_evaluation_per_epoch"]
            + len(seeds) * steps * bare_s / cores)
    one_core = one_core_matmul_flops_per_second(cfg["matmul_size"])
    if one_core:  # one device runs the stacked seeds' products on one thread
        out["matmul_gflops_one_core"] = one_core / 1e9
    log(out)
    return out


SECTIONS = {"ceilings": run_ceilings, "throughput": run_throughput, "exit": run_exit,
            "cache": run_cache, "sweep": run_sweep, "memory": run_memory, "sharding": run_sharding,
            "training": run_training}


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows: hosts of one VM type differ,
    and the compared tools do not gain alike from a faster one."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" not in info:
        return platform.processor() or platform.machine()
    # a VM may show only the brand ("AMD EPYC"): family and model tell the generation
    return f"{info['model name']} (family {info.get('cpu family')}, model {info.get('model')})"


def versions() -> dict:
    """Versions of the packages whose speed the benchmark compares (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("jax", "jaxlib", "numpy", "diffrax", "equinox", "flax", "optax"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds): a smoke test")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    names = ", ".join(SECTIONS)
    ap.add_argument("--only", default="", help=f"comma-separated sections to run, of {names}")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip")
    ap.add_argument("--report", type=Path, help="only reprint (and rewrite to --out) the table "
                    "and summary of an existing results JSON")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other sections of an existing --out file (rerun some only)")
    args = ap.parse_args(argv)
    if args.report:
        res = json.loads(args.report.read_text())
        _save(res, args.out)
        print(table(res))
        return res
    only = [s for s in args.only.split(",") if s] or list(SECTIONS)
    skip = {s for s in args.skip.split(",") if s}
    unknown = [s for s in (*only, *sorted(skip)) if s not in SECTIONS]
    if unknown:  # before any section runs, not minutes into a run
        ap.error(f"unknown section(s) {', '.join(unknown)} in --only/--skip; choose from {names}")
    on_cpu = jax.default_backend() == "cpu"
    cfg = QUICK if args.quick else FULL if on_cpu else ACCELERATOR
    res = dict(machine=f"{platform.node()} {platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} CPUs, jax {jax.__version__} "
                       f"{jax.devices()[0].platform} x{jax.device_count()}"
                       + ("" if on_cpu else f" ({jax.devices()[0].device_kind})"),
               cpu=cpu_model(), versions=versions(), quick=args.quick,
               sizes="quick" if args.quick else "cpu" if on_cpu else "accelerator",
               config={k: v for k, v in cfg.items()},
               started=time.strftime("%Y-%m-%d %H:%M:%S"))
    if args.merge and args.out and args.out.exists():
        old = json.loads(args.out.read_text())
        for name in SECTIONS:
            if name in old and name not in only:
                res[name] = old[name]
                res.setdefault("section_seconds", {})[name] = old["section_seconds"][name]
        res["merged_from_run_started"] = old.get("started")
    t0 = time.perf_counter()
    for name in only:
        if name in skip:
            continue
        log(f"== {name}")
        t = time.perf_counter()
        res[name] = SECTIONS[name](cfg)
        res.setdefault("section_seconds", {})[name] = time.perf_counter() - t
        res["total_seconds"] = time.perf_counter() - t0
        _save(res, args.out)  # a run killed later keeps every finished section
    res["total_seconds"] = time.perf_counter() - t0
    _save(res, args.out)
    print(table(res))
    return res


def _save(res, out):
    res["summary"] = summarize(res)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".partial")
        tmp.write_text(json.dumps(res, indent=1, default=float))
        tmp.replace(out)  # atomic: a kill mid-write leaves the previous file whole


if __name__ == "__main__":
    main()
