"""The theory experiments (experiments/*.py) end to end in --quick mode, through reproduce.py.

One in-process quick run of the four experiments (shared compilation cache) into a temporary
folder; every JSON is checked for points of every dynamic with finite intervals, and the
sharp-versus-flat and barrier results for the predicted direction. The large-batch experiment's
quick run has its own test (tests/test_large_batch_script.py); here reproduce.py is checked to
reach it without running it.
"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from sgdyn.experiments import common

ROOT = Path(__file__).resolve().parents[1]
FOUR = ("sharp_flat", "barrier", "tails", "discretization")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _finite_ci(p):
    lo, hi = p["ci95"]
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in (p["mean"], lo, hi)) \
        and lo <= p["mean"] <= hi


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    result = _load("reproduce").main(["--quick", "--quiet", "--out", str(out),
                                      "--skip", "large_batch"])
    assert set(result["results"]) == set(FOUR)
    return {name: json.loads((out / f"{name}.json").read_text()) for name in FOUR}, out


def test_every_script_writes_png_and_json_with_provenance(quick):
    payloads, out = quick
    for name, payload in payloads.items():
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert {"provenance", "flags", "seeds", "run_time_s"} <= set(payload), name
        assert payload["flags"]["quick"] is True
        assert payload["warnings"] == [], (name, payload["warnings"])  # no extrapolated point
        assert payload["provenance"]["versions"]["jax"]
    assert not list(out.glob("*.partial"))


def test_sharp_flat_points_and_direction(quick):
    p = quick[0]["sharp_flat"]
    for dyn in ("sgd", "pld", "langevin", "hessian"):
        pts = p["points"][dyn]
        assert len(pts) == len(p["flags"]["h_values"]) and all(_finite_ci(x) for x in pts), dyn
    s = p["summary"]
    # PLD (and real SGD) escape time falls much faster with sharpness than Langevin's
    assert s["pld"]["log_ratio_flat_to_sharp"] > 2 * s["langevin"]["log_ratio_flat_to_sharp"]
    assert s["sgd"]["log_ratio_flat_to_sharp"] > 2 * s["langevin"]["log_ratio_flat_to_sharp"]
    # Langevin: polynomial, tau ~ 1/h (log-log slope -1)
    assert s["langevin"]["fit_log_tau_vs_log_h"]["slope"] == pytest.approx(-1, abs=0.3)
    for x in p["estimated_pld_parameters"]:  # pld_parameters recovers the lambda^2, ^4 scaling
        assert x["sigma_g"] == pytest.approx(x["sigma_g_scaling"], rel=1e-4)
        assert x["sigma_h"] == pytest.approx(x["sigma_h_scaling"], rel=1e-4)


def test_barrier_points_and_shape(quick):
    p = quick[0]["barrier"]
    for dyn in ("pld", "langevin"):
        assert len(p["points"][dyn]) == len(p["flags"]["barriers"])
        assert all(_finite_ci(x) for x in p["points"][dyn]), dyn
    pld, lang = p["summary"]["pld"], p["summary"]["langevin"]
    # PLD: log tau closer to linear in log(barrier); Langevin: closer to linear in barrier
    assert pld["fit_log_tau_vs_log_barrier"]["r2"] > pld["fit_log_tau_vs_barrier"]["r2"]
    assert lang["fit_log_tau_vs_barrier"]["r2"] > lang["fit_log_tau_vs_log_barrier"]["r2"]
    # and each simulated point sits on the exact MFPT within 3.9 of its own standard errors
    # (8 points, false failure 8 x 1e-4; a flat 30% was 2.3 sd at the most censored point)
    for dyn in ("pld", "langevin"):
        for pt in p["points"][dyn]:
            z = abs(math.log(pt["mean"] / pt["exact"])) / common.log_se(pt)
            assert z < 3.9, (dyn, pt["barrier"], z)


def test_tails_points_and_ergodicity(quick):
    p = quick[0]["tails"]
    assert len(p["points"]) == len(p["flags"]["lrs"]) * len(p["flags"]["batch_sizes"])
    for pt in p["points"]:
        for dyn in ("sgd", "pld"):
            hill = pt[dyn]["hill"]
            assert math.isfinite(hill["nu"]) and all(math.isfinite(v) for v in hill["ci95"])
        # the PLD's stationary law is Student-t(nu): its Hill estimate is Hill's on i.i.d.
        # Student-t draws of the same size (the mean of 5, with the same bias), within 3.5
        # standard errors of the difference in gamma = 1/nu, the scale of Hill's interval
        # (2 points: false failure 2 x 4.7e-4)
        hill = pt["pld"]["hill"]
        g_hi, g_lo = 1 / hill["ci95"][0], 1 / hill["ci95"][1]
        se = (g_hi - g_lo) / (2 * 1.959964) * math.sqrt(1 + 1 / 5)
        gap = abs(1 / hill["nu"] - 1 / pt["hill_on_iid_student_t"])
        assert gap < 3.5 * se, (pt["lr"], hill, pt["hill_on_iid_student_t"])
    nus = [pt["pld"]["hill"]["nu"] for pt in sorted(p["points"], key=lambda q: q["lr_over_b"])]
    assert nus[0] > nus[-1]  # heavier tails at larger lr/b
    runs = sorted(p["ergodic"]["runs"], key=lambda r: r["ratio"])
    assert runs[0]["ratio"] < 1 < runs[-1]["ratio"]
    assert runs[0]["fraction_beyond_r_far"] < 0.1 < 0.5 < runs[-1]["fraction_beyond_r_far"]
    assert runs[-1]["growth_rate"] == pytest.approx(runs[-1]["predicted_drift_of_log_r"],
                                                    rel=0.3)


def test_discretization_points_and_stability(quick):
    p = quick[0]["discretization"]
    for name in p["series"]:
        assert len(p["points"][name]) == len(p["flags"]["lrs"])
        assert all(_finite_ci(x) for x in p["points"][name]), name
    cont = p["summary"]["langevin_continuous"]["max_abs_log_ratio_to_exact"]
    assert cont < 0.3  # the continuous runs track the exact MFPT at every lr
    st = p["stability"]["langevin_chain"]
    for x in st:  # the additive-noise chain diverges exactly when lr h > 2
        assert x["fraction_diverged"] == (1.0 if x["lr_h"] > 2 else 0.0), x


@pytest.mark.parametrize("script,argv,word", [
    ("sharp_flat", ["--lr", "-1"], "lr"),
    ("barrier", ["--barriers", "0.5,x"], "barriers"),
    ("tails", ["--bogus"], "bogus"),
    ("discretization", ["--particles", "many"], "particles"),
    ("reproduce", ["--only", "nonsense"], "nonsense"),
    ("reproduce", ["--only", "sharp_flat", "--skip", "sharp_flat"], "nothing to run"),
    # degenerate sizes: once a null slope with r2 = 1, or a numpy error naming no flag
    ("sharp_flat", ["--quick", "--h-values", "1"], "h-values"),
    ("barrier", ["--quick", "--barriers", "1,1,1"], "barriers"),
    ("tails", ["--quick", "--particles", "2", "--samples", "2"], "particles"),
    ("tails", ["--quick", "--ergodic-particles", "1"], "ergodic-particles"),
    ("sharp_flat", ["--quick", "--data-seed", "-5"], "data-seed"),
    ("barrier", ["--quick", "--seed", str(10**23)], "seed"),
    ("barrier", ["--barriers="], "at least one number"),  # once "invalid _float_list value"
    ("barrier", ["--quick", "--quiet", "--sigma2", "0.01"], "--sigma2"),  # "math range error"
    ("tails", ["--quick", "--quiet", "--lrs", "0.1,1.9", "--show-lr", "0.1"], "--lrs"),
    ("discretization", ["--quick", "--quiet", "--noise-langevin", "0.001"], "--noise-langevin"),
])
def test_bad_flags_print_one_line_and_exit_nonzero(script, argv, word, capsys):
    from sgdyn.cli import run_main

    mod = _load(script)
    try:
        code = run_main(mod.main, argv)
    except SystemExit as e:  # argparse errors exit from inside the parser
        code = e.code
    assert code != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and word in lines[0], lines


def test_bad_flag_from_the_command_line():
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "barrier.py"), "--h", "0"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_help_lists_every_parameter():
    from sgdyn.experiments import barrier, common, discretization, sharp_flat, tails

    for mod in (sharp_flat, barrier, tails, discretization):
        text = common.build_parser("x", mod.FULL, mod.HELP).format_help()
        for key in mod.FULL:
            assert "--" + key.replace("_", "-") in text, (mod.__name__, key)
            assert mod.HELP.get(key), (mod.__name__, key)


def test_reproduce_reaches_large_batch(monkeypatch, tmp_path):
    """reproduce.py calls experiments/large_batch.py's main with its own --out, --quick,
    --quiet and --fresh (its quick run once went to a temporary folder and was lost)."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import large_batch

    calls = []
    monkeypatch.setattr(large_batch, "main", lambda argv=None: calls.append(argv) or {})
    _load("reproduce").main(["--quick", "--quiet", "--only", "large_batch", "--out",
                             str(tmp_path), "--fresh"])
    assert calls == [["--out", str(tmp_path), "--quick", "--quiet", "--fresh"]]


def test_fits_leave_out_points_without_escapes_and_say_when_no_fit_is_left():
    """A point where nothing escaped has an infinite mean: once it turned the fit into NaN
    with R^2 = 1.0, and barrier.py then called the result 'exponential'."""
    from sgdyn.experiments import common

    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 5.0, math.inf]
    fit = common.linear_fit(x, y, [1.0, 1.0, 1.0, 0.0])
    assert fit["slope"] == pytest.approx(2.0) and fit["r2"] == pytest.approx(1.0)
    assert fit["n_points"] == 3
    none = common.linear_fit(x, [1.0, math.inf, math.inf, math.inf])
    assert none["slope"] is None and none["r2"] is None and "no fit" in none["note"]


def test_ergodic_runs_that_all_diverge_give_no_growth_rate_instead_of_a_crash():
    from sgdyn.cli import Progress
    from sgdyn.experiments import tails

    cfg = {**tails.FULL, **tails.QUICK, "ergodic_ratios": (4.0,), "ergodic_particles": 50,
           "ergodic_time": 12.0}
    run = tails.run_ergodic(cfg, Progress(1, "t", quiet=True))["runs"][0]
    assert run["n_diverged"] >= 49  # every run (or all but one) passed |x_j| = 1e8
    assert run["growth_rate"] is None and run["growth_rate_ci95"] == [None, None]
    assert "no growth rate" in run["growth_rate_note"]


def test_points_extrapolated_far_past_t_max_are_flagged_in_the_json(tmp_path, capsys):
    """A censoring time far below the mean (--t-max-factor 0.05) makes estimates that rest on
    the exponential assumption alone: each is kept in the JSON's warnings and said on stderr
    (the scripts once silenced every RuntimeWarning, this one included)."""
    payload = _load("barrier").main(["--quick", "--quiet", "--t-max-factor", "0.05", "--out",
                                     str(tmp_path)])
    assert payload["warnings"] and all("times t_max" in w or "no particle escaped" in w
                                       for w in payload["warnings"])  # (one point: none did)
    assert "times t_max" in capsys.readouterr().err  # --quiet silences progress, not this
