"""Measure one mean exit time, with its confidence interval and the theory values.

Example (about 3 s on a 2-core CPU; mean 24.72, exact 24.63; the landscape and noise flags
here are the defaults):
    python experiments/escape_time.py --landscape kramers --h-min 4 --h-saddle 4 --barrier 0.3 \
        --dynamics pld --lr 0.1 --batch-size 1 --sigma-g 2 --sigma-h 4 --dt 0.01 \
        --correction gobet --particles 20000 --seed 0 --json out.json

The run costs about (particles) x (exact mean exit time / dt) steps: check ``sgdyn.theory``
first for slow escapes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's sgdyn, not another one installed

from sgdyn.build import DYNAMICS, LANDSCAPES  # noqa: E402
from sgdyn.cli import DefaultsFormatter, Parser, run_main  # noqa: E402
from sgdyn.io import jsonable, provenance, write_json  # noqa: E402
from sgdyn.single_escape import escape_time_experiment  # noqa: E402


# the flags each landscape and each dynamic reads; one that the run would ignore is refused
LANDSCAPE_FLAGS = {"kramers": {"h_min", "h_saddle", "barrier", "to", "n_lengths"},
                   "quadratic": {"h", "dim", "radius"},
                   "double_well": {"scale", "tilt", "radius"},
                   "styblinski_tang": {"dim", "scale", "radius"}}
DYNAMICS_FLAGS = {"sgd": {"sigma_g", "sigma_h", "n_examples", "without_replacement",
                          "data_seed"},
                  "langevin": {"sigma2"}, "hessian": {"sigma2"},
                  "pld": {"sigma_g", "sigma_h"}, "pld_local": {"sigma_g", "sigma_h"}}


def _given(p, argv) -> set:
    """The flags given on the command line (even at their default value)."""
    unset = object()
    p.set_defaults(**{a.dest: unset for a in p._actions if a.dest != "help"})
    given = {name for name, value in vars(p.parse_args(argv)).items() if value is not unset}
    p.set_defaults(**{a.dest: a.default for a in p._actions if a.dest != "help"})
    return given


def _refuse_ignored_flags(p, cfg: dict, given: set) -> None:
    for table, choice in ((LANDSCAPE_FLAGS, "landscape"), (DYNAMICS_FLAGS, "dynamics")):
        if cfg[choice] not in table:
            continue  # an unknown name: the library says so
        for name in sorted(set().union(*table.values()) - table[cfg[choice]]):
            if name in given:
                p.error(f"--{name.replace('_', '-')} does not apply to --{choice} "
                        f"{cfg[choice]}")
    if cfg["to"] == "saddle" and "n_lengths" in given:
        p.error("--n-lengths does not apply to --to saddle (the exit is the saddle itself)")


def parse(argv=None) -> dict:
    p = Parser(description=__doc__.strip().split("\n\n")[0],
               formatter_class=DefaultsFormatter)
    p.add_argument("--landscape", default="kramers", help=f"one of {', '.join(LANDSCAPES)}")
    p.add_argument("--h-min", type=float, default=4.0, help="kramers: curvature at the minimum")
    p.add_argument("--h-saddle", type=float, default=4.0, help="kramers: |curvature| at saddle")
    p.add_argument("--barrier", type=float, default=0.3, help="kramers: barrier height")
    p.add_argument("--h", type=float, default=1.0, help="quadratic: curvature")
    p.add_argument("--dim", type=int, default=1, help="quadratic / styblinski_tang: dimension")
    p.add_argument("--scale", type=float, default=1.0, help="double_well / styblinski_tang")
    p.add_argument("--tilt", type=float, default=0.0, help="double_well: linear tilt")
    p.add_argument("--radius", type=float, default=1.0,
                   help="non-kramers landscapes: exit when |w - w_min| >= radius")
    p.add_argument("--to", default="beyond", choices=("beyond", "saddle"),
                   help="kramers: exit at the saddle or n-lengths diffusion lengths beyond it")
    p.add_argument("--n-lengths", type=float, default=4.0,
                   help="kramers, --to beyond: diffusion lengths past the saddle (0: at it)")
    p.add_argument("--dynamics", default="pld", help=f"one of {', '.join(DYNAMICS)}")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (time t = k * lr)")
    p.add_argument("--batch-size", type=int, default=1, help="minibatch size b")
    p.add_argument("--sigma2", type=float, default=1.0, help="langevin / hessian noise level")
    p.add_argument("--sigma-g", type=float, default=2.0, help="PLD / SGD: gradient variance")
    p.add_argument("--sigma-h", type=float, default=4.0, help="PLD / SGD: Hessian variance")
    p.add_argument("--n-examples", type=int, default=1000, help="sgd: finite-sum size")
    p.add_argument("--without-replacement", action="store_true", help="sgd: batch sampling")
    p.add_argument("--data-seed", type=int, default=0,
                   help="sgd: seed of the finite sum's examples (its draw moves the exit time)")
    p.add_argument("--dt", type=float, default=None, help="step (default lr; must be <= lr)")
    p.add_argument("--increments", default="gaussian",
                   choices=("gaussian", "two_point", "three_point"),
                   help="noise increments: Gaussian, or weak ones matching its moments")
    p.add_argument("--correction", default=None, choices=("gobet", "bridge"),
                   help="boundary correction for grid-time exit checks")
    p.add_argument("--particles", type=int, default=20000, help="independent runs")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="particles per chunk with --checkpoint (default: a few chunks)")
    p.add_argument("--t-max", type=float, default=None,
                   help="censoring time (default: 20 x the exact mean where known)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same numbers)")
    p.add_argument("--checkpoint", default=None,
                   help="folder for finished chunks: a killed run resumes from them")
    p.add_argument("--json", default=None, help="write the result here (atomically)")
    cfg = vars(p.parse_args(argv))
    _refuse_ignored_flags(p, cfg, _given(p, argv))
    for name in ("seed", "data_seed"):  # a JAX key keeps 32 bits: others repeat another seed
        if not 0 <= cfg[name] < 2**32:
            p.error(f"--{name.replace('_', '-')} must lie in [0, 2^32), got {cfg[name]}")
    return cfg


def main(argv=None) -> dict:
    cfg = parse(argv)
    out_path = cfg.pop("json")
    result = {**escape_time_experiment(cfg), "provenance": provenance()}
    if out_path:
        write_json(out_path, result)
    summary = {k: result[k] for k in ("mean_exit_time", "ci95", "method", "n_escaped",
                                      "n_censored", "n_diverged", "exact_mean_exit_time",
                                      "asymptotic_mean_exit_time") if k in result}
    print(json.dumps(jsonable(summary), allow_nan=False))  # the file's values, as JSON has them
    return result


if __name__ == "__main__":
    sys.exit(run_main(main, resumes="only with --checkpoint: its finished chunks are kept"))
