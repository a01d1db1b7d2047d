"""Where a first call's time goes: tracing, lowering and XLA compilation of the exit-time task.

    python benchmarks/compile_probe.py [--cache DIR] [--tool TOOL ...]

For sgdyn's exit run (Gaussian and three-point increments) and diffrax's ensemble solve of the
1-D PLD task of benchmarks/run.py (b), the same callables it times (sgdyn three-point also
with 2048 slots, too few to pack the stragglers: one loop, so its tick compiles once instead
of twice), prints one JSON line per tool: the first call's wall time, the second's (compiled
code reused, new seed), the first estimate judged against the exact mean exit time (as task
(b) judges it), and the trace, lowering and backend compile seconds JAX reports while the
first call runs. Only the first tool of a process makes a true first call (later ones may
reuse what it compiled): benchmarks/run.py starts one process per tool. With --cache, JAX's
persistent compilation cache (sgdyn.cache) is on: run twice to see a later process's first
call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

import sgdyn as sg  # noqa: E402
from benchmarks.problems import PLD1  # noqa: E402
from benchmarks.run import exit_tools, judge  # noqa: E402

TOOLS = ("sgdyn (gaussian)", "sgdyn (three_point)", "sgdyn (three_point, 2048 slots)",
         "diffrax_ensemble")

EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
          "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
          "/jax/core/compile/backend_compile_duration": "backend_compile_s"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", help="persistent compilation cache folder")
    ap.add_argument("--n", type=int, default=80_000)
    ap.add_argument("--dt", type=float, default=0.02)
    ap.add_argument("--tolerance", type=float, default=0.02,
                    help="relative error (bias + 95%% half-width) an estimate may have")
    ap.add_argument("--tool", action="append", choices=TOOLS,
                    help="probe this tool (repeatable; default: all, in this order)")
    args = ap.parse_args(argv)
    tools_asked = args.tool or list(TOOLS)
    if args.cache:
        sg.enable_compilation_cache(args.cache)
    spent = defaultdict(float)
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: spent.__setitem__(event, spent[event] + secs))

    tools = exit_tools(PLD1, args.dt, args.n)  # the callables task (b) times; nothing compiled
    for tool in tools_asked:
        fn = tools[tool]
        spent.clear()
        t0 = time.perf_counter()
        est = fn(0)
        first = time.perf_counter() - t0
        parts = {name: spent.get(event, 0.0) for event, name in EVENTS.items()}
        t0 = time.perf_counter()
        fn(1)
        second = time.perf_counter() - t0
        print(json.dumps(dict(tool=tool, cache=bool(args.cache), first_s=first, second_s=second,
                              **judge(est, PLD1.exact, args.tolerance), **parts)), flush=True)


if __name__ == "__main__":
    main()
