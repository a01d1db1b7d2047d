"""Particle-major against coordinate-major steps, dimension by dimension, on this machine.

The engine holds a block's states as (d, N) from ``sgdyn.ensemble.coordinate_major_dim()``
coordinates on (8 on a CPU, 3 on a GPU) and as (N, d) below (``ensemble._Layout``). This
probe moves the threshold to run each dimension both ways, in one process, and prints
particle-steps per second for Gaussian and three-point increments, in a sample run (1-D
quadratic basin with local PLD noise, d copies) and in an exit run that never exits (the exit
kernel alone, with the engine's default slots: 2**14 on a CPU, 2**20 on an accelerator):

    python benchmarks/layout_probe.py --dims 4,8,16,32 --out benchmarks/results/cpu_layout.jsonl

A sample run moves --numbers coordinates in all (2**21 by default; 2**25 fills a GPU:
``--numbers 33554432 --out benchmarks/results/gpu_layout.jsonl``). Medians of three calls
after a compiling one (``alternatives.timed``). Shared machines: read the ratios, within a run."""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sgdyn as sg  # noqa: E402
from sgdyn import ensemble, runner  # noqa: E402

from benchmarks.alternatives import timed  # noqa: E402

def _dynamic(d, increments):
    sde = sg.SDE.make(sg.Quadratic.make(1.0, dim=d), sg.PLDLocal.make(1.0, 0.01), 0.1, 1.0)
    return sg.EulerMaruyama.make(sde, 0.02, increments)


def samples_rate(d, increments, numbers):
    dyn = _dynamic(d, increments)
    n, steps = max(4096, (numbers // d) // 64 * 64), 64

    def sample(key):
        rec = sg.simulate_samples(key, dyn, jnp.zeros(d), n, steps, 1)
        # the steps run: burn-in and thin are rounded up to whole ticks (66 or 68 in 1-D)
        return rec.x.sum(), rec.burn_in_steps + rec.thin_steps

    (_, ran), seconds = timed(jax.jit(sample), jax.random.key(1), repeats=3)
    return n * int(ran) / seconds


def exit_kernel_rate(d, increments):
    dyn, region = _dynamic(d, increments), sg.Ball.make(jnp.zeros(d), 1e3)  # nobody leaves
    steps, slots = max(64, 4096 // d), runner.default_slots()
    run = lambda key: sg.measure_exit_times(key, dyn, region, jnp.zeros(d), 4 * slots,
                                            steps * 0.02, n_slots=slots).record.time
    return 4 * slots * steps / timed(run, jax.random.key(1), repeats=3)[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", default="4,6,7,8,10,12,16,24,31,32")
    ap.add_argument("--numbers", type=int, default=2**21,
                    help="coordinates a sample run moves (particles times d)")
    ap.add_argument("--out", help="append one JSON line per dimension to this file")
    args = ap.parse_args(argv)
    backend = jax.default_backend()
    default = ensemble.coordinate_major_dim(backend)
    for d in (int(s) for s in args.dims.split(",")):
        row = dict(dim=d, default_layout="coordinate" if d >= default else "particle",
                   backend=jax.default_backend(), device=jax.devices()[0].device_kind,
                   cores=os.cpu_count(), numbers=args.numbers)
        for layout, threshold in (("particle", d + 1), ("coordinate", d)):
            ensemble.COORDINATE_MAJOR_DIM[backend] = threshold
            # the layout is chosen at trace time: programs of the other layout must go
            jax.clear_caches()
            runner._advance_fn.cache_clear()
            for inc in ("gaussian", "three_point"):
                row[f"{layout} samples {inc}"] = samples_rate(d, inc, args.numbers)
                row[f"{layout} exits {inc}"] = exit_kernel_rate(d, inc)
        ensemble.COORDINATE_MAJOR_DIM[backend] = default
        ratios = {k.replace("coordinate ", ""): row[k] / row[k.replace("coordinate", "particle")]
                  for k in list(row) if k.startswith("coordinate ")}
        row["coordinate/particle"] = ratios
        print(f"d={d:3d} coordinate/particle: " + ", ".join(
            f"{k} {v:.2f}" for k, v in ratios.items()), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
