"""Long exit runs: what packing the stragglers below 2048 slots buys on a CPU.

    python benchmarks/long_runs.py [--barrier 0.8] [--particles 2000 20000]

A Kramers well (h = 4 at the minimum and the saddle) with loss-scaled PLD noise (sigma_g 2,
sigma_H 4, lr 0.1, b 1), three-point increments at dt 0.01, Gobet-corrected exit 4 diffusion
lengths past the saddle; barrier 0.8 gives a mean exit of 7.2e4 steps. For each particle
count it times sgdyn's default packing (``runner.default_min_bucket``: t_max here is 20x the
exact mean, so 256 or 32 slots on a CPU) against packing that stops at 2048 slots, first
call (compilation included) and the median of three more, and checks that the two records
are identical. Prints one JSON line per particle count.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import sgdyn as sg  # noqa: E402
from sgdyn import runner  # noqa: E402
from sgdyn import theory as th  # noqa: E402

WELL = dict(h_min=4.0, h_saddle=4.0)
NOISE = dict(lr=0.1, batch_size=1, noise="pld_loss", sigma_g=2.0, sigma_h=4.0)
DT = 0.01


def run(barrier: float, n: int, repeats: int = 3) -> dict:
    well = sg.KramersWell.make(WELL["h_min"], WELL["h_saddle"], barrier)
    pld = sg.PLDLoss.make(well, sigma_g=NOISE["sigma_g"], sigma_h=NOISE["sigma_h"])
    dyn = sg.EulerMaruyama.make(sg.SDE.make(well, pld, NOISE["lr"], NOISE["batch_size"]), DT,
                                "three_point")
    exact = th.kramers_exit_time(WELL["h_min"], WELL["h_saddle"], barrier, **NOISE)
    region = sg.Threshold(th.kramers_escape_point(WELL["h_min"], WELL["h_saddle"], barrier,
                                                  **NOISE))
    t_max = 20 * exact
    out = dict(barrier=barrier, particles=n, exact=exact, mean_exit_steps=exact / DT,
               default_min_bucket=runner.default_min_bucket(int(t_max / DT)))
    records = {}
    for label, floor in (("default", None), ("floor_2048", runner.MIN_BUCKET)):
        def once(seed):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                # Gobet with three-point increments (sgdyn warns: not O(dt)) as in the runs
                # already recorded, which this one is compared with; the exit point lies four
                # diffusion lengths past the saddle, where the correction matters little
                warnings.filterwarnings("ignore", "correction='gobet' assumes Gaussian")
                res = sg.measure_exit_times(jax.random.key(seed), dyn, region, [0.0], n, t_max,
                                            correction="gobet", min_bucket=floor)
            return res, time.perf_counter() - t0

        res, first = once(0)
        records[label] = res.record
        warm = float(np.median([once(s)[1] for s in range(1, 1 + repeats)]))
        out[label] = dict(first_s=first, warm_s=warm, mean=res.estimate.mean)
    out["identical"] = all(np.array_equal(getattr(records["default"], f),
                                          getattr(records["floor_2048"], f))
                           for f in ("time", "escaped", "censored", "diverged"))
    out["warm_speedup"] = out["floor_2048"]["warm_s"] / out["default"]["warm_s"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--barrier", type=float, default=0.8)
    ap.add_argument("--particles", type=int, nargs="+", default=[2000, 20000])
    args = ap.parse_args(argv)
    rows = [run(args.barrier, n) for n in args.particles]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
