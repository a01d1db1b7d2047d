"""The benchmark's verdict and printout: the issue's targets as ratios within one run
(``summarize``) and the table the README copies (``table``). Pure functions of the results
dict that benchmarks/run.py writes, so ``run.py --report FILE`` can redo both offline."""

from __future__ import annotations

import statistics

# sgdyn's rows in task (b): "sgdyn (<variant>)"
VARIANTS = ("gaussian", "three_point", "three_point, 2048 slots")


def _key(variant):
    return variant.replace(", ", "_").replace(" ", "_")


def summarize(res):
    """Targets of the performance issue, as ratios measured in this run."""
    s = {}
    tol = f"{100 * res.get('config', {}).get('tolerance', 0.02):g}%"
    c = res.get("ceilings")
    thr = {(r["problem"], r["tool"]): r["particle_steps_per_s"] for r in res.get("throughput", [])}
    if c and thr:
        g = c["gaussians_per_s"]
        s["a_gaussian_pld1_vs_rng_ceiling"] = thr[("pld1_basin", "sgdyn (gaussian)")] / g
        s["a_gaussian_pld100_vs_rng_ceiling"] = 100 * thr[("pld100", "sgdyn (gaussian)")] / g
        if "counter_gaussians_per_s" in c:  # the generator sgdyn actually draws from
            g = c["counter_gaussians_per_s"]
            s["a_gaussian_pld1_vs_sgdyn_rng_ceiling"] = thr[("pld1_basin", "sgdyn (gaussian)")] / g
            s["a_gaussian_pld100_vs_sgdyn_rng_ceiling"] = (
                100 * thr[("pld100", "sgdyn (gaussian)")] / g)
        s["a_two_point_pld1_vs_arithmetic_ceiling"] = (
            thr[("pld1_basin", "sgdyn (two_point)")] / c["arithmetic_pld1_basin_particle_steps_per_s"])
        s["a_two_point_pld100_vs_arithmetic_ceiling"] = (
            thr[("pld100", "sgdyn (two_point)")] / c["arithmetic_pld100_particle_steps_per_s"])
    ex = {(r["problem"], r["tool"]): r for r in res.get("exit", [])}
    for p in ("pld1", "langevin1"):
        for variant in VARIANTS:
            base = ex.get((p, f"sgdyn ({variant})"))
            if base is None:
                continue
            for tool in ("diffrax_vmap_unsafe", "diffrax_ensemble", "numpy"):
                other = ex.get((p, tool))
                if other is None:
                    continue
                name = f"b_{p}_{_key(variant)}_vs_{tool}"
                if not (base["accurate"] and other["accurate"]):
                    s[name] = f"not counted (an estimate missed {tol})"
                    continue
                s[name + "_cold"] = other["seconds"] / base["seconds"]
                s[name + "_warm"] = other["warm_seconds"] / base["warm_seconds"]
        if any(q == p for q, _ in ex):
            s[f"b_{p}_all_accurate"] = all(r["accurate"] for (q, _), r in ex.items() if q == p)
    repeated = {}  # variant: ratios of the processes without a cache
    for run, rows in res.get("cache", {}).items():
        if not isinstance(rows, list):  # an error message
            continue
        first = {r["tool"]: r["first_s"] for r in rows}
        # rows from before the probe judged its estimates carry no verdict: not counted
        accurate = {r["tool"]: r.get("accurate", False) for r in rows}
        for variant in VARIANTS:
            if f"sgdyn ({variant})" in first:  # the 2048-slot row is newer than some results
                name = f"b_pld1_{_key(variant)}_vs_diffrax_ensemble_first_call_{run}"
                if not (accurate["diffrax_ensemble"] and accurate[f"sgdyn ({variant})"]):
                    s[name] = f"not counted (an estimate missed {tol}, or was not checked)"
                    continue
                ratio = first["diffrax_ensemble"] / first[f"sgdyn ({variant})"]
                repeat = run.startswith("no_cache_repeat")
                if repeat or run == "no_cache":
                    repeated.setdefault(variant, []).append(ratio)
                if not repeat:  # the repeats show only in the median
                    s[name] = ratio
    for variant, ratios in repeated.items():
        if len(ratios) > 1:
            s[f"b_pld1_{_key(variant)}_vs_diffrax_ensemble_first_call_no_cache_median"] = (
                statistics.median(ratios))
    if "sweep" in res:
        rows = res["sweep"]["rows"]
        # each sgdyn variant's own ratios, and the fastest one's (named) as c_speedup_vs_*
        ours = {r["tool"]: r["seconds"] for r in rows
                if r["tool"].startswith("sgdyn") and r["accurate"]}
        best = min(ours, key=ours.get) if ours else None
        if best:
            s["c_fastest_sgdyn"] = best
        for r in rows:
            tool = r["tool"].split(" ")[0]
            if tool == "sgdyn":
                continue
            if best and r["accurate"]:
                s[f"c_speedup_vs_{tool}"] = r["seconds"] / ours[best]
                for name, seconds in ours.items():
                    variant = ("vectorized" if "vectorized" in name else
                               "three_point" if "three_point" in name else "gaussian")
                    s[f"c_{variant}_speedup_vs_{tool}"] = r["seconds"] / seconds
            else:
                s[f"c_speedup_vs_{tool}"] = f"not counted (an estimate missed {tol})"
        s["c_all_accurate"] = all(r["accurate"] for r in rows)
    if "memory" in res:
        s["memory_ratio_long_vs_short"] = res["memory"]["ratio"]
        if "device_ratio" in res["memory"]:
            s["memory_device_ratio_long_vs_short"] = res["memory"]["device_ratio"]
    if "sharding" in res:
        s["sharding_speedup_2_devices"] = res["sharding"]["speedup_2_vs_1"]
        s["sharding_identical"] = res["sharding"]["identical"]
        if "training_speedup_2_vs_1" in res["sharding"]:
            s["sharding_training_speedup_2_devices"] = res["sharding"]["training_speedup_2_vs_1"]
        if "training_speedup_2_devices_vs_loop" in res["sharding"]:
            s["training_vmap_2_devices_speedup"] = res["sharding"][
                "training_speedup_2_devices_vs_loop"]
    if "training" in res:
        s["training_vmap_speedup"] = res["training"]["speedup"]
        if "speedup_ceiling" in res["training"]:
            s["training_vmap_speedup_ceiling"] = res["training"]["speedup_ceiling"]
        if "speedup_bound_all_cores" in res["training"]:
            s["training_vmap_speedup_bound_all_cores"] = res["training"][
                "speedup_bound_all_cores"]
    return s


def _g(d: dict, key: str, fmt: str = ".3g", unit: str = "") -> str:
    """A number of ``d`` formatted (with its ``unit``), or "n/a" where an older results file
    lacks it (not 0)."""
    v = d.get(key)
    return "n/a" if v is None else format(v, fmt) + unit


def table(res):
    lines = [f"sgdyn benchmark on {res['machine']}  ({'quick' if res['quick'] else 'full'})"]
    if res.get("cpu"):  # older results files lack these
        lines.append(f"CPU {res['cpu']}; " + ", ".join(
            f"{k} {v}" for k, v in res.get("versions", {}).items() if v))
    if "ceilings" in res:
        c = res["ceilings"]
        lines += ["", "Ceilings (inside lax.scan, n = %d)" % c["n"],
                  f"  Gaussian random numbers/s        {c['gaussians_per_s']:.3g}",
                  f"  random bits/s                    {c['random_bits_per_s']:.3g}",
                  f"  same, sgdyn.rng Gaussians/s      {_g(c, 'counter_gaussians_per_s')}",
                  f"  same, sgdyn.rng bits/s           {_g(c, 'counter_bits_per_s')}",
                  f"  arithmetic only, pld1 (p-steps/s) {c['arithmetic_pld1_basin_particle_steps_per_s']:.3g}",
                  f"  arithmetic only, pld100          {c['arithmetic_pld100_particle_steps_per_s']:.3g}"]
    if "throughput" in res:
        lines += ["", "(a) Fixed-step throughput (particle-steps/s)",
                  f"  {'problem':8s} {'tool':24s} {'n':>8s} {'steps':>6s} {'p-steps/s':>10s}"]
        for r in res["throughput"]:
            lines.append(f"  {r['problem']:8s} {r['tool']:24s} {r['n']:8d} {r['steps']:6d} "
                         f"{r['particle_steps_per_s']:10.3g}")
    if "exit" in res:
        lines += ["", "(b) Time to the mean exit time within %.0f%% (|err| + 95%% half-width; "
                  "err%% and hw%% of the first estimate, ok: it and every later one within)"
                  % (100 * res["config"]["tolerance"]),
                  f"  {'problem':9s} {'tool':22s} {'dt':>5s} {'n':>7s} {'cold s':>8s} "
                  f"{'warm s':>7s} {'mean':>8s} {'exact':>8s} {'err%':>6s} {'hw%':>5s} ok"]
        for r in res["exit"]:
            lines.append(f"  {r['problem']:9s} {r['tool']:22s} {r['dt']:5.3g} {r['n']:7d} "
                         f"{r['seconds']:8.2f} {r['warm_seconds']:7.2f} {r['mean']:8.3f} {r['exact']:8.3f} "
                         f"{100 * r['rel_error']:+6.2f} {100 * r['rel_half_width']:5.2f} "
                         f"{'yes' if r['accurate'] else 'NO'}")
    if "sweep" in res:
        lines += ["", "(c) PLD exit time over %d sharpness values (scale %s), exact %s" % (
            len(res["sweep"]["scales"]), ", ".join(f"{s:.3g}" for s in res["sweep"]["scales"]),
            ", ".join(f"{e:.3g}" for e in res["sweep"]["exact"]))]
        for r in res["sweep"]["rows"]:
            lines.append(f"  {r['tool']:52s} {r['seconds']:8.2f} s  worst {100 * r['worst_accuracy']:.2f}%"
                         f"  {'ok' if r['accurate'] else 'NOT ACCURATE'}")
    if "cache" in res:
        lines += ["", "(b) 1-D PLD first call in a fresh process (s): " + "; ".join(
            f"{run.replace('_', ' ')}: " + ", ".join(f"{r['tool']} {r['first_s']:.2f}"
                                                      for r in rows)
            for run, rows in res["cache"].items() if isinstance(rows, list))]
    if "memory" in res:
        m = res["memory"]
        lines += ["", f"Memory, n = {m['n']}: " + ", ".join(
            f"{k}: {v['peak_rss_mb']:.0f} MB" + (f" host, {v['peak_device_mb']:.0f} MB device"
                                                 if "peak_device_mb" in v else "")
            + f" ({v['seconds']:.1f} s)" for k, v in m.items() if k.startswith("steps_"))
            + f"; ratio {m['ratio']:.2f}"
            + (f" (device {m['device_ratio']:.2f})" if "device_ratio" in m else "")]
    if "sharding" in res:
        h = res["sharding"]
        lines += ["", f"Sharding (2 forced host devices, n = {h['n']}): 1 device "
                  f"{h['seconds_sharded_1_device']:.2f} s, 2 devices "
                  f"{h['seconds_sharded_2_devices']:.2f} s (x{h['speedup_2_vs_1']:.2f}), "
                  f"measure_exit_times {h['seconds_measure_exit_times']:.2f} s, identical: "
                  f"{h['identical']}; training {_g(h, 'training_speedup_2_vs_1', '.2f', 'x')}"]
        if "training_speedup_2_devices_vs_loop" in h:
            lines += [f"  training seeds under vmap split over the 2 devices against one after "
                      f"another: x{h['training_speedup_2_devices_vs_loop']:.2f}"]
    if "training" in res:
        t = res["training"]
        lines += ["", f"Training MNIST-1D MLP, {t['seeds']} seeds x {t['steps_per_seed']} steps: "
                  f"vmap {t['seconds_vmap']:.2f} s, loop {t['seconds_loop']:.2f} s "
                  f"(x{t['speedup']:.2f}); {t['train_gflops_vmap']:.1f} GFLOP/s of training "
                  f"against {t['matmul_gflops']:.1f} for a {t.get('matmul_size', 1024)}^2 matmul"]
        if "speedup_ceiling" in t:
            lines += [f"  a bare vmapped SGD step (gradient and update only) takes "
                      f"{t['us_per_seed_step_vmap_bare_sgd']:.0f} us per seed-step against "
                      f"{t['us_per_seed_step_loop']:.0f} us for one seed's "
                      f"whole step in the loop: vmap can gain at most x{t['speedup_ceiling']:.2f}"]
        if "speedup_bound_all_cores" in t:
            lines += [f"  evaluation after each epoch: "
                      f"{1e3 * t['seconds_evaluation_per_epoch']:.1f} ms for all seeds; with "
                      f"the bare steps split perfectly over the {t['cores']} cores and that "
                      f"evaluation, the seeds could gain at most x{t['speedup_bound_all_cores']:.2f}"]
        if "bare_sgd_vmap_gain" in t:
            lines += [f"  (one seed's bare step: {t['us_per_seed_step_bare_sgd_1_seed']:.0f} us, "
                      f"so vmap makes the bare step itself x{t['bare_sgd_vmap_gain']:.2f} faster)"]
        if "layer_gflops_stacked" in t:
            rows, fan_in, fan_out = t["layer_shape"]
            lines += [f"  first layer's products ({rows}x{fan_in} by {fan_in}x{fan_out}): "
                      f"{t['layer_gflops_1_seed']:.1f} GFLOP/s for one seed, "
                      f"{t['layer_gflops_stacked']:.1f} stacked for {t['seeds']} seeds"
                      + (f", against {t['matmul_gflops_one_core']:.1f} for the matmul on one "
                         f"core" if "matmul_gflops_one_core" in t else "")]
    lines += ["", "Targets (ratios in this run):"]
    lines += [f"  {k:45s} {v:.3g}" if isinstance(v, float) else f"  {k:45s} {v}"
              for k, v in res["summary"].items()]
    return "\n".join(lines)
