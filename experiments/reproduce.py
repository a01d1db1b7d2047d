"""Regenerate every figure in figures/ from nothing: the four theory experiments (sharp_flat,
barrier, tails, discretization) and the large-batch training experiment.

    python experiments/reproduce.py            # full run -> figures/*.png + *.json (~2 min on 2 cores)
    python experiments/reproduce.py --quick    # everything small -> results/reproduce_quick/

Each figure gets a JSON beside it with the plotted numbers, flags, seeds, package versions and
run time. Same machine, same seed: the same numbers.

Interrupted runs resume: after each experiment a progress file (<out>/.reproduce_progress.json)
records it as done; re-running the same command on the same code (even after kill -9) skips
what is done and runs the rest, and a complete run removes the file. --fresh ignores it, and
so does a run whose code (library, scripts, pyproject.toml) differs from the interrupted one's.
"""

import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from sgdyn.cli import Parser, Progress, run_main  # noqa: E402
from sgdyn.experiments import EXPERIMENTS  # noqa: E402
from sgdyn.experiments.common import script_main  # noqa: E402
from sgdyn.io import source_state, write_json  # noqa: E402

ALL = (*EXPERIMENTS, "large_batch")


def _names(text):
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in ALL]
    if bad:
        raise ValueError(f"unknown experiment(s) {bad}; choose from {', '.join(ALL)}")
    return names


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def main(argv=None) -> dict:
    p = Parser(prog="reproduce.py", description=__doc__.strip().split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="run everything small (for the tests)")
    p.add_argument("--out", default=None, help="output folder (default figures/, or "
                                               "results/reproduce_quick with --quick)")
    p.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {ALL}")
    p.add_argument("--skip", default="", help="comma-separated experiments to leave out")
    p.add_argument("--quiet", action="store_true", help="no per-stage progress lines")
    p.add_argument("--fresh", action="store_true",
                   help="ignore the progress of an interrupted run and start over")
    ns = p.parse_args(argv)
    skip = _names(ns.skip)
    names = [n for n in _names(ns.only) if n not in skip]
    if not names:
        raise ValueError(f"nothing to run: --only {ns.only!r} less --skip {ns.skip!r} leaves no "
                         f"experiment")
    out = Path(ns.out) if ns.out else (ROOT / "results" / "reproduce_quick" if ns.quick
                                       else ROOT / "figures")
    t0 = time.perf_counter()
    progress = Progress(len(names), "reproduce", quiet=ns.quiet)
    results, times = {}, {}
    marker = out / ".reproduce_progress.json"
    # the same command on the same code: after a change to the code (or its defaults) a kept
    # result would be stale, so the run starts over
    run_id = {"quick": ns.quick, "names": sorted(names), "source": source_state()}
    done = {}  # name -> sha256 of the JSON it wrote: a file written since by another run is
    # not this run's result
    if marker.exists() and not ns.fresh:
        saved = json.loads(marker.read_text())
        if saved.get("run") == run_id and isinstance(saved.get("done"), dict):
            done = {n: sha for n, sha in saved["done"].items() if _sha256(out / f"{n}.json") == sha}
    for name in names:
        if name in done:
            results[name] = json.loads((out / f"{name}.json").read_text())
            progress.step(f"{name} already done before the interruption: kept")
            continue
        start = time.perf_counter()
        argv_ = ["--out", str(out)] + (["--quick"] if ns.quick else []) + (
            ["--quiet"] if ns.quiet else [])
        if name == "large_batch":
            import large_batch  # experiments/large_batch.py

            # it keeps its own progress of finished methods: --fresh starts that over too
            results[name] = large_batch.main(argv_ + (["--fresh"] if ns.fresh else []))
        else:
            results[name] = script_main(name, argv_)
        times[name] = time.perf_counter() - start
        done[name] = _sha256(out / f"{name}.json")
        write_json(marker, {"run": run_id, "done": done})
        progress.step(f"{name} done in {times[name]:.0f} s")
    marker.unlink(missing_ok=True)
    total = time.perf_counter() - t0
    if not ns.quiet:
        print("run times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
              + f"; total {total:.0f} s ({total / 60:.1f} min)", flush=True)
    return {"results": results, "run_time_s": times, "total_s": total, "out": str(out)}


if __name__ == "__main__":
    sys.exit(run_main(main, resumes="the finished experiments are kept"))
