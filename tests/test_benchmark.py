"""A small version of the benchmark (benchmarks/run.py --quick): every tool runs, every
exit-time estimate is checked against the exact value, the JSON is written. No timing
assertions (the machine may be shared)."""

import json
import os
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

pytest.importorskip("diffrax")

from benchmarks import alternatives as alt  # noqa: E402
from benchmarks import run as bench  # noqa: E402
from benchmarks.compile_probe import TOOLS  # noqa: E402
from benchmarks.problems import LANGEVIN1, PLD1, PLD1_BASIN, PLD100  # noqa: E402
from benchmarks.report import summarize  # noqa: E402


def test_problems_match_sgdyn_classes():
    """The shared drift/noise formulas are the SDEs that sgdyn simulates."""
    import jax.numpy as jnp

    for p in (PLD1, LANGEVIN1, PLD1_BASIN, PLD100):
        sde = p.sgdyn_sde()
        x = np.linspace(-0.7, 1.4, 3 * p.dim).reshape(3, p.dim) / np.sqrt(p.dim)
        for xi in x:
            np.testing.assert_allclose(p.drift(xi), np.asarray(sde.drift(jnp.asarray(xi))),
                                       rtol=1e-5, atol=1e-6)
            g = np.asarray(sde.diffusion(jnp.asarray(xi)))
            np.testing.assert_allclose(np.broadcast_to(np.ravel(p.noise(xi)), np.ravel(g).shape),
                                       np.ravel(g), rtol=1e-5)


def test_quick_benchmark_runs_and_every_estimate_is_accurate(tmp_path):
    out = tmp_path / "quick.json"
    res = bench.main(["--quick", "--out", str(out), "--skip", "memory,sharding,training"])
    saved = json.loads(out.read_text())
    # the verdicts saved are those the saved results give (recomputed, not the same object)
    assert saved["summary"] == json.loads(json.dumps(bench.summarize(saved)))
    assert saved["summary"]["c_fastest_sgdyn"].startswith("sgdyn")
    thr = res["throughput"]
    assert {r["tool"] for r in thr} >= {"sgdyn (gaussian)", "sgdyn (two_point)", "numpy",
                                        "diffrax_vmap_virtual", "diffrax_ensemble"}
    for r in res["exit"]:
        assert r["accurate"], r  # within the quick tolerance of the exact mean exit time
        # a warm estimate per round for every compiled tool, each judged; NumPy's one timing
        rounds = 0 if r["tool"] == "numpy" else 1
        assert len(r["warm_runs"]) == len(r["warm_checks"]) == rounds, r
        assert all(w["accurate"] for w in r["warm_checks"]), r
    for r in res["sweep"]["rows"]:
        assert r["accurate"], r
    # the first-call probe: one process per tool, every estimate judged
    rows = res["cache"]["no_cache"]
    assert [r["tool"] for r in rows] == list(TOOLS) and all(r["accurate"] for r in rows), rows


def _exit_row(tool, accurate, seconds):
    return dict(problem="pld1", tool=tool, accurate=accurate, seconds=seconds,
                warm_seconds=seconds / 2)


def test_a_ratio_counts_only_when_both_estimates_are_accurate():
    """The issue's rule: a tool's time counts only once its estimate is within tolerance."""
    res = {"config": {"tolerance": 0.02},
           "exit": [_exit_row("sgdyn (gaussian)", True, 1.0), _exit_row("numpy", True, 8.0),
                    _exit_row("diffrax_ensemble", False, 4.0)],
           "cache": {"no_cache": [
               dict(tool="sgdyn (gaussian)", first_s=0.5, accurate=True),
               dict(tool="diffrax_ensemble", first_s=3.0, accurate=True)],
               "cache_hit": [  # rows from before the probe judged its estimates
               dict(tool="sgdyn (gaussian)", first_s=0.2), dict(tool="diffrax_ensemble",
                                                                first_s=2.0)]}}
    s = summarize(res)
    assert s["b_pld1_gaussian_vs_numpy_cold"] == 8.0 and s["b_pld1_gaussian_vs_numpy_warm"] == 8.0
    assert s["b_pld1_gaussian_vs_diffrax_ensemble"].startswith("not counted (an estimate missed 2%")
    assert "b_pld1_gaussian_vs_diffrax_ensemble_cold" not in s
    assert s["b_pld1_all_accurate"] is False
    assert s["b_pld1_gaussian_vs_diffrax_ensemble_first_call_no_cache"] == 6.0
    assert s["b_pld1_gaussian_vs_diffrax_ensemble_first_call_cache_hit"].startswith("not counted")


def test_quick_sharding_and_training_sections_run(tmp_path):
    """The two sections the test above skips (they train, and sharding runs a 2-device child):
    sharded exit records are bit-identical, and the vmapped seeds reach the test accuracy of
    each seed alone."""
    res = bench.main(["--quick", "--out", str(tmp_path / "q.json"), "--only", "sharding,training"])
    h, t = res["sharding"], res["training"]
    assert h["devices"] == 2 and h["identical"] is True
    assert h["training_seconds_loop"] > 0 and h["training_speedup_2_devices_vs_loop"] > 0
    # same numbers up to float rounding: at most a few of the 1000 test examples may flip
    assert t["max_test_acc_difference"] <= 0.005 and t["seeds"] == 2
    assert t["speedup_ceiling"] > 0 and t["bare_sgd_vmap_gain"] > 0
    assert t["layer_shape"] == [256, 40, 100] and t["layer_gflops_stacked"] > 0
    on_cpu = jax.default_backend() == "cpu"  # the one-core and all-core rows are a CPU's
    if on_cpu and hasattr(os, "sched_setaffinity"):  # Linux: the child pinned to one core ran
        assert t["matmul_gflops_one_core"] > 0
    assert t["seconds_evaluation_per_epoch"] > 0
    cores = bench.usable_cores()
    if on_cpu and cores > 1:  # the bound for seeds split over the cores, from measured parts
        steps_s = t["seeds"] * t["steps_per_seed"] * t["us_per_seed_step_vmap_bare_sgd"] * 1e-6
        expect = t["seconds_loop"] / (t["epochs"] * t["seconds_evaluation_per_epoch"]
                                      + steps_s / cores)
        assert t["cores"] == cores and t["speedup_bound_all_cores"] == pytest.approx(expect)
        assert "training_vmap_speedup_bound_all_cores" in res["summary"]
    assert {"training_vmap_2_devices_speedup", "training_vmap_speedup"} <= set(res["summary"])


def test_long_run_probe_compares_identical_records():
    """benchmarks/long_runs.py: the default packing and the 2048-slot floor give one record."""
    from benchmarks import long_runs

    from sgdyn import runner

    # barrier 0.5: t_max is 2.2e5 steps, past 2^17, so on a CPU the default floor is 256 and
    # the 2048 slots of 2000 particles pack into 256 (at barrier 0.3 both runs were one loop)
    n = 2000
    row = long_runs.run(0.5, n, repeats=1)
    if jax.default_backend() == "cpu":
        assert row["default_min_bucket"] == 256 < runner.MIN_BUCKET
    assert row["identical"] is True and row["default"]["mean"] == row["floor_2048"]["mean"]
    # 3.9 standard errors of an exponential's mean: a review measured an sd of 1.07 of that
    # (barrier 0.3), so the margin is 3.6 sd, a false failure about 3e-4
    assert abs(row["default"]["mean"] - row["exact"]) < 3.9 * row["exact"] / np.sqrt(n)


def test_alternatives_agree_on_exit_times():
    """Same scheme, same dt: the alternatives' exit times agree with sgdyn's within noise."""
    dt, n, t_max = 0.04, 1000, 3 * PLD1.exact
    ests = {
        "numpy": bench._estimate(*alt.numpy_exits(PLD1, n, dt, t_max, 1), dt),
        "ensemble": bench._estimate(*alt.diffrax_ensemble_solver(PLD1, n, dt, t_max)(
            __import__("jax").random.key(1)), dt),
    }
    for name, est in ests.items():
        se = (est.ci[1] - est.ci[0]) / 2 / 1.96
        assert abs(est.mean - PLD1.exact) < 3.3 * se + 0.01 * PLD1.exact, (name, est)


def test_a_run_that_fails_midway_keeps_the_sections_it_finished(tmp_path, monkeypatch):
    out = tmp_path / "partial.json"

    def fails(cfg):
        raise RuntimeError("killed")

    monkeypatch.setitem(bench.SECTIONS, "memory", lambda cfg: {"n": 1, "ratio": 1.25})
    monkeypatch.setitem(bench.SECTIONS, "sharding", fails)
    with pytest.raises(RuntimeError, match="killed"):
        bench.main(["--quick", "--out", str(out), "--only", "memory,sharding"])
    saved = json.loads(out.read_text())
    assert saved["memory"] == {"n": 1, "ratio": 1.25} and "sharding" not in saved
    assert saved["summary"]["memory_ratio_long_vs_short"] == 1.25
    assert not list(tmp_path.glob("*.partial"))
    # --report redoes summary and table from the file alone
    res = bench.main(["--report", str(out)])
    assert res["summary"]["memory_ratio_long_vs_short"] == 1.25


def test_bare_sgd_floor_does_every_seeds_steps():
    """The training ceiling's floor is a real SGD run per seed (nothing optimised away)."""
    import jax.numpy as jnp

    from benchmarks import ceilings
    from sgdyn.train import MLP, models

    model = MLP(hidden=(8,), num_classes=3)
    x = jax.random.normal(jax.random.key(0), (20, 5))
    y = jnp.arange(20) % 3
    run, params = ceilings.bare_sgd_epoch(model, x, y, batch_size=4, seeds=2, steps=3, lr=0.5)
    # float32 products: a GPU's default (TF32) rounds the vmapped scan and the eager steps apart
    with jax.default_matmul_precision("float32"):
        out = run(params)
        for s in range(2):
            p = jax.tree.map(lambda a: a[s], params)
            for k in range(3):
                rows = (jnp.arange(4) + 4 * (2 * k + s)) % 20  # step k, seed s
                g = jax.grad(lambda q: models.mean_loss(model, q, x[rows], y[rows]))(p)
                p = jax.tree.map(lambda w, gw: w - 0.5 * gw, p, g)
            for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(jax.tree.map(lambda a: a[s], out))):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert ceilings.vmapped_sgd_step_seconds(model, x, y, 4, 2, 3, repeats=1) > 0


def test_cache_probe_under_an_unknown_xla_flag_is_recorded_not_fatal(monkeypatch):
    """The legacy-emitter probe uses an XLA option a later jaxlib may drop: its failure is
    kept as a message, the other probes' rows are kept, and the summary skips it."""
    import subprocess

    row = {"tool": "sgdyn (three_point)", "first_s": 1.0, "accurate": True}
    rows = [row, {**row, "tool": "diffrax_ensemble", "first_s": 3.0}]

    def fake_run(cmd, env, **kw):
        if bench.LEGACY_EMITTERS in env.get("XLA_FLAGS", ""):
            return subprocess.CompletedProcess(cmd, 1, "", "Unknown flags in XLA_FLAGS")
        tool = cmd[cmd.index("--tool") + 1]  # one process per tool
        return subprocess.CompletedProcess(
            cmd, 0, "\n".join(json.dumps(r) for r in rows if r["tool"] == tool), "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setattr(bench.jax, "default_backend", lambda: "cpu")  # the CPU's probe list
    out = bench.run_cache(bench.QUICK)
    assert set(out) == {"no_cache", "cache_fill", "cache_hit", "legacy_emitters_error"}
    assert "Unknown flags" in out["legacy_emitters_error"] and out["cache_hit"] == rows
    s = bench.summarize({"cache": out})
    assert s["b_pld1_three_point_vs_diffrax_ensemble_first_call_no_cache"] == 3.0
    assert not any("legacy" in k for k in s)
    assert "legacy" not in bench.table({"cache": out, "summary": s, "machine": "m",
                                        "quick": True})


@pytest.mark.parametrize("flag", ["--only", "--skip"])
def test_an_unknown_section_is_refused_before_anything_runs(flag, capsys, monkeypatch):
    monkeypatch.setattr(bench, "SECTIONS", {**bench.SECTIONS, "exit": None})  # must not run
    with pytest.raises(SystemExit) as exc:
        bench.main(["--quick", flag, "exit,sharding_typo"])
    assert exc.value.code == 2 and "sharding_typo" in capsys.readouterr().err


def _estimate_at(mean, half_width):
    import sgdyn as sg

    return sg.ExitEstimate(mean, (mean - half_width, mean + half_width), 0.95, "sample-mean",
                           100, 0, 0, mean)


def test_the_accuracy_check_fails_an_estimate_that_misses():
    """Bias plus the 95% half-width must stay within the tolerance, and a NaN or unbounded
    estimate never passes (the quick run's loose tolerance cannot show that it can fail)."""
    assert bench.judge(_estimate_at(10.1, 0.05), 10.0, 0.02)["accurate"]  # 1% + 0.5%
    assert not bench.judge(_estimate_at(10.1, 0.15), 10.0, 0.02)["accurate"]  # 1% + 1.5%
    assert not bench.judge(_estimate_at(9.75, 0.0), 10.0, 0.02)["accurate"]  # 2.5% low
    assert not bench.judge(_estimate_at(float("nan"), 0.0), 10.0, 0.02)["accurate"]
    assert not bench.judge(_estimate_at(10.0, float("inf")), 10.0, 0.02)["accurate"]


def test_a_tool_whose_later_estimate_misses_is_not_counted(monkeypatch):
    """Every compiled tool's first estimate and each later one are judged: one miss in a warm
    round marks the row inaccurate, so its time cannot count."""
    def missing_at(*seeds):  # seed 0: the first (cold) estimate, 1, 2, 3: the warm rounds
        return lambda problem: lambda seed: _estimate_at(
            problem.exact * (1.05 if seed in seeds else 1.0), 0.001 * problem.exact)

    kinds = {"good": missing_at(), "cold": missing_at(0), "first warm": missing_at(1),
             "last warm": missing_at(3)}
    monkeypatch.setattr(bench, "exit_tools", lambda problem, dt, n: {
        name: kind(problem) for name, kind in kinds.items()})
    cfg = {"tolerance": 0.02, "warm_rounds": 3,
           "exit": {p.name: {"dt": 0.02, "n": 10} for p in (PLD1, LANGEVIN1)}}
    rows = bench.run_exit(cfg)
    verdict = {(r["problem"], r["tool"]): r["accurate"] for r in rows}
    assert verdict == {(p.name, t): t == "good" for p in (PLD1, LANGEVIN1) for t in kinds}
