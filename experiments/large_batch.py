"""Large-batch training with state-dependent noise injection (THEORY.md section 6).

Trains, for the same number of epochs and the same learning rate and momentum, on every seed:
small batch b_S; large batch b_L; and large batch plus each noise injection (isotropic,
diagonal Fisher, loss reweighting, PLD). Writes a table (mean and std over seeds of test and
train accuracy, their gap and the sharpness reached) as JSON and a figure, atomically.

    python experiments/large_batch.py            # full run -> figures/large_batch.{json,png}
    python experiments/large_batch.py --quick    # < 1 min smoke run -> results/large_batch_quick/

A killed run loses at most the method in training: each finished method is recorded in
<out>/.large_batch_progress.json, and re-running the same command (same flags, hence the same
calibration, on the same code and number of devices) keeps those and trains the rest; the file
is removed once the table is written, and --fresh ignores it. Seeds fix every random number,
so a resumed table equals an uninterrupted one.

Noise scales left unset ("auto") are calibrated once, at the first seed's initial weights on
512 training examples, from the average diagonal of the empirical Fisher fbar = mean_j F_jj:
isotropic scale^2 = (1/b_S - 1/b_L) fbar (same total variance as the Fisher injection there);
PLD sigma_g = 0 and sigma_h = (1/b_S - 1/b_L) fbar / (L_0 - L_ref) (equal to it at the initial
loss L_0, then shrinking with the loss like SGD's own noise); reweighting s = sqrt(b_L/b_S - 1).

How the defaults were chosen (MNIST-1D, 4000 train / 1000 test, MLP 40-100-100-10, plain SGD,
5 seeds, sharpness on 1000 training examples; test accuracy mean ± std, measured on a 2-core
CPU). The aim: a large batch that still fits the training set (train acc 1.000), so that the
test-accuracy difference is a generalisation gap, not under-fitting, with the same lr, momentum
and epochs for every method.
  b=32, lr 0.3, 300 epochs: train 1.000, test 0.690 ± 0.009 (flat after ~50 epochs)
  b=32 collapses (train acc <= 0.3) at lr 0.5, lr 1.0, and lr 0.1 with momentum 0.9
  b=2000, lr 0.3, 300 epochs: train 0.824 -- under-fits, so not a fair comparison
  b=2000, lr 1.0, 300 epochs: train 1.000, test 0.656 ± 0.010 (but lr differs from b=32's)
  b=1024, lr 0.3, 600 epochs: train 1.000, test 0.628 ± 0.012 vs b=32: 0.689 ± 0.010  <- chosen
The full run takes about 2.5 minutes (130-148 s measured; most of it the 600 small-batch epochs
and the Fisher injection's per-example gradients).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(ROOT))

METHODS = ("small", "large", "large+isotropic", "large+fisher", "large+reweight", "large+pld")
METRICS = ("test_acc", "train_acc", "gap", "sharpness", "test_loss", "train_loss")

# Full-run defaults: see "How the defaults were chosen" in the module docstring.
FULL = dict(dataset="mnist1d", data_path=None, num_samples=5000, model="mlp", width=100, depth=2,
            epochs=600, lr=0.3, momentum=0.0, small_batch=32, large_batch=1024, seeds=5, seed=0,
            iso_scale=None, pld_sigma_g=None, pld_sigma_h=None, pld_loss_ref=0.0,
            reweight_scale=None, fisher_examples=256, sharpness_iters=20, sharpness_examples=1000,
            methods=",".join(METHODS), out=str(ROOT / "figures"))
QUICK = dict(FULL, num_samples=1000, epochs=15, small_batch=50, large_batch=400, width=64,
             fisher_examples=64, sharpness_iters=8, sharpness_examples=400,
             out=str(ROOT / "results" / "large_batch_quick"))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, no usage dump, no traceback
        raise _BadFlags(message)


class _BadFlags(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="large_batch.py", description=__doc__.split("\n\n")[0],
                argument_default=None)
    a = p.add_argument
    a("--dataset", choices=("mnist1d", "teacher_student", "npz"))
    a("--data-path", help=".npz with x_train, y_train, x_test, y_test (dataset npz)")
    a("--num-samples", type=int, help="examples generated (mnist1d, teacher_student), train+test")
    a("--model", choices=("mlp", "cnn"))
    a("--width", type=int, help="hidden units (mlp) / 3x channels (cnn)")
    a("--depth", type=int, help="hidden layers")
    a("--epochs", type=int)
    a("--lr", type=float, help="learning rate, same for every method")
    a("--momentum", type=float, help="heavy-ball momentum in [0, 1), same for every method")
    a("--small-batch", type=int)
    a("--large-batch", type=int)
    a("--seeds", type=int, help="number of seeds (vmapped)")
    a("--seed", type=int, help="first seed; seeds are seed, seed+1, ...")
    a("--iso-scale", type=float, help="isotropic noise std (gradient units); default auto")
    a("--pld-sigma-g", type=float, help="PLD constant variance; default auto (0)")
    a("--pld-sigma-h", type=float, help="PLD variance per nat of loss; default auto")
    a("--pld-loss-ref", type=float, help="PLD reference loss L_ref, nats")
    a("--reweight-scale", type=float, help="loss-reweighting s; default sqrt(b_L/b_S - 1)")
    a("--fisher-examples", type=int, help="per-example gradients per step for the Fisher noise")
    a("--sharpness-iters", type=int, help="Lanczos steps (0: skip sharpness)")
    a("--sharpness-examples", type=int, help="training examples in the sharpness loss")
    a("--methods", help="comma-separated subset of " + ",".join(METHODS))
    a("--quick", action="store_true", help="small, < 1 min run (explicit flags still win)")
    a("--out", help="output folder for large_batch.json and large_batch.png")
    a("--fresh", action="store_true", help="ignore the progress of an interrupted run")
    a("--quiet", action="store_true", help="print only divergence warnings")
    return p


@functools.lru_cache(maxsize=None)
def _optimizer_fn(kind: str, momentum: float, noise_args: tuple):
    """One function object per configuration, so the training loop's compile cache hits."""
    import optax

    from sgdyn import train as T

    def make(lr, key):
        sgd = optax.sgd(lr, momentum=momentum or None)
        if kind == "isotropic":
            return optax.chain(T.add_isotropic_noise(noise_args[0], key), sgd)
        if kind == "fisher":
            return optax.chain(T.add_fisher_noise(*noise_args, key), sgd)
        if kind == "pld":
            g, h, ref = noise_args
            return optax.chain(T.add_pld_noise(g, h, key, loss_ref=ref), sgd)
        return sgd

    return make


def calibrate(model, data, cfg: dict) -> dict:
    """Auto noise scales (see module docstring): fbar and L_0 at the first seed's init."""
    import jax

    from sgdyn import train as T

    params = jax.tree.map(lambda a: a[0], T.init_params(model, [cfg["seed"]], data.x_train))
    x, y = data.x_train[:512], data.y_train[:512]
    g = jax.jit(functools.partial(T.per_example_grads, model))(params, x, y)
    sq = [np.mean(np.asarray(leaf, np.float64) ** 2, axis=0) for leaf in jax.tree.leaves(g)]
    fbar = float(np.concatenate([s.ravel() for s in sq]).mean())
    loss0 = float(T.mean_loss(model, params, x, y))
    factor = T.fisher_factor(cfg["small_batch"], cfg["large_batch"])
    var = factor * fbar
    out = dict(fisher_mean_diag=fbar, initial_loss=loss0, fisher_factor=factor)
    out["iso_scale"] = cfg["iso_scale"] if cfg["iso_scale"] is not None else var ** 0.5
    out["pld_sigma_g"] = cfg["pld_sigma_g"] if cfg["pld_sigma_g"] is not None else 0.0
    out["pld_sigma_h"] = cfg["pld_sigma_h"] if cfg["pld_sigma_h"] is not None else (
        var / max(loss0 - cfg["pld_loss_ref"], 1e-3))
    out["reweight_scale"] = cfg["reweight_scale"] if cfg["reweight_scale"] is not None else (
        T.reweighting_scale(cfg["small_batch"], cfg["large_batch"]))
    return out


def _check(cfg: dict) -> list[str]:
    from sgdyn import _checks

    for k in ("epochs", "small_batch", "large_batch", "seeds", "width", "depth", "fisher_examples"):
        _checks.positive_int(k.replace("_", "-"), cfg[k])
    _checks.positive("lr", cfg["lr"])
    if not 0 <= cfg["seed"] <= 2**32 - cfg["seeds"]:  # train() takes seeds in [0, 2^32)
        raise ValueError(f"seed must be an integer in [0, 2^32 - seeds] = [0, "
                         f"{2**32 - cfg['seeds']}] (the seeds are seed, ..., seed + seeds - 1), "
                         f"got {cfg['seed']}")
    if cfg["num_samples"] is not None:
        _checks.positive_int("num-samples", cfg["num_samples"])
    if cfg["sharpness_examples"] is not None:
        _checks.positive_int("sharpness-examples", cfg["sharpness_examples"])
    if not 0 <= cfg["momentum"] < 1:
        raise ValueError(f"momentum must lie in [0, 1), got {cfg['momentum']}")
    for k in ("iso_scale", "pld_sigma_g", "pld_sigma_h", "reweight_scale"):
        if cfg[k] is not None:
            _checks.nonnegative(k.replace("_", "-"), cfg[k])
    _checks.finite("pld-loss-ref", cfg["pld_loss_ref"])
    if cfg["small_batch"] > cfg["large_batch"]:
        raise ValueError(f"small-batch must be <= large-batch ({cfg['large_batch']}), "
                         f"got {cfg['small_batch']}")
    if cfg["sharpness_iters"] < 0:
        raise ValueError(f"sharpness-iters must be >= 0, got {cfg['sharpness_iters']}")
    if cfg["dataset"] == "npz" and not cfg["data_path"]:
        raise ValueError("data-path is required with --dataset npz")
    if cfg["dataset"] != "npz" and cfg["data_path"]:  # else trained on another data set
        raise ValueError(f"data-path applies to --dataset npz only, not --dataset "
                         f"{cfg['dataset']}")
    methods = [m.strip() for m in cfg["methods"].split(",") if m.strip()]
    for m in methods:
        _checks.choice("methods", m, METHODS)
    if not methods:
        raise ValueError("methods must name at least one of " + ",".join(METHODS))
    return methods


def _summary(res) -> dict:
    """Mean and population std (ddof=0) over the seeds that did not diverge; per-seed values."""
    fin = res.final()
    ok = ~res.diverged
    out = {"n_seeds": int(ok.size), "n_diverged": int((~ok).sum()), "std_ddof": 0,
           "diverged_seeds": res.seeds[~ok].tolist(), "per_seed": {}}
    for k in METRICS:
        v = np.asarray(fin[k], np.float64)
        out[k] = {"mean": float(v[ok].mean()) if ok.any() else float("nan"),
                  "std": float(v[ok].std()) if ok.any() else float("nan")}
        out["per_seed"][k] = v.tolist()
    # per-epoch curves for the figure, rounded: 4 decimals is below the seed-to-seed spread
    curve = lambda a: np.round(a, 4).tolist()  # noqa: E731
    out["curves"] = {k: curve(getattr(res, k)[:, ok].mean(axis=1))
                     for k in ("test_acc", "train_acc")} if ok.any() else {}
    out["curves_std"] = {"test_acc": curve(res.test_acc[:, ok].std(axis=1))} if ok.any() else {}
    out["wall_time_s"] = res.wall_time_s
    return out


def prepare(cfg: dict):
    """Validate the configuration, load the data and calibrate the noise scales: every bad flag
    fails here, before training. Returns (methods, data, model, calibration)."""
    from sgdyn import train as T

    methods = _check(cfg)
    data = T.load_dataset(cfg["dataset"], path=cfg["data_path"], num_samples=cfg["num_samples"])
    for k in ("small_batch", "large_batch"):
        if cfg[k] > data.n_train:
            raise ValueError(f"{k.replace('_', '-')} must be <= the number of training examples "
                             f"({data.n_train}), got {cfg[k]}")
    model = T.make_model(cfg["model"], data.num_classes, width=cfg["width"], depth=cfg["depth"])
    cal = calibrate(model, data, cfg)
    if ("large+pld" in methods and cfg["pld_sigma_h"] is None
            and cal["initial_loss"] - cfg["pld_loss_ref"] < 1e-3):
        # the noise scales with max(L - L_ref, 0): from below L_ref it would never be added
        raise ValueError(f"pld-loss-ref must lie below the initial loss L_0 = "
                         f"{cal['initial_loss']:.4g} to calibrate --pld-sigma-h, got "
                         f"{cfg['pld_loss_ref']}; give --pld-sigma-h, or a lower --pld-loss-ref")
    return methods, data, model, cal


def _finished(progress_file, run_id: dict) -> dict:
    """Summaries of the methods an interrupted run of the same configuration finished."""
    if progress_file is None or not Path(progress_file).exists():
        return {}
    saved = json.loads(Path(progress_file).read_text())
    if saved.get("run") != json.loads(json.dumps(run_id)):
        return {}
    for s in saved["done"].values():  # JSON wrote NaN (every seed diverged) as null
        for k in METRICS:
            s[k] = {stat: float("nan") if v is None else v for stat, v in s[k].items()}
    return saved["done"]


def run_experiment(cfg: dict, prepared=None, log=print, progress_file=None) -> dict:
    """The work: train every method on every seed, return the results payload (no files).

    With ``progress_file``, each finished method's summary is saved there (atomically) and
    methods already saved by an interrupted run of the same flags are not trained again.
    """
    from sgdyn import io
    from sgdyn import train as T

    methods, data, model, cal = prepared if prepared is not None else prepare(cfg)
    import jax

    # same flags, code and device count (the seeds' split over devices moves last digits)
    run_id = {"flags": {k: v for k, v in cfg.items() if k not in ("out", "methods")},
              "calibration": cal, "source": io.source_state(), "devices": jax.device_count()}
    done = _finished(progress_file, run_id)
    seeds = list(range(cfg["seed"], cfg["seed"] + cfg["seeds"]))
    bs, bl, mom = cfg["small_batch"], cfg["large_batch"], cfg["momentum"]
    spec = {  # method -> (batch, optimizer kind, noise args, train() keywords)
        "small": (bs, "plain", (), {}),
        "large": (bl, "plain", (), {}),
        "large+isotropic": (bl, "isotropic", (cal["iso_scale"],), {}),
        "large+fisher": (bl, "fisher", (bs, bl), {"per_example_grads": cfg["fisher_examples"]}),
        "large+reweight": (bl, "plain", (), {"loss_weight_scale": cal["reweight_scale"]}),
        "large+pld": (bl, "pld", (cal["pld_sigma_g"], cal["pld_sigma_h"], cfg["pld_loss_ref"]), {}),
    }
    results = {}
    for name in methods:
        if name in done:
            results[name] = done[name]
            log(f"{name:16s} finished before the interruption: kept")
            continue
        batch, kind, args, kw = spec[name]
        with warnings.catch_warnings():  # reported below, once, with the method's name
            warnings.filterwarnings("ignore", message="seeds .* diverged", category=RuntimeWarning)
            res = T.train(model, data, _optimizer_fn(kind, mom, args), lr=cfg["lr"],
                          batch_size=batch, epochs=cfg["epochs"], seeds=seeds,
                          sharpness_iters=cfg["sharpness_iters"],
                          sharpness_examples=cfg["sharpness_examples"], **kw)
        results[name] = s = _summary(res)
        if s["n_diverged"]:
            print(f"warning: {name}: seeds {s['diverged_seeds']} diverged (non-finite loss); "
                  f"excluded from mean/std", file=sys.stderr, flush=True)  # even with --quiet
        log(f"{name:16s} test {s['test_acc']['mean']:.3f}±{s['test_acc']['std']:.3f}  "
            f"train {s['train_acc']['mean']:.3f}±{s['train_acc']['std']:.3f}  "
            f"sharpness {s['sharpness']['mean']:.3g}±{s['sharpness']['std']:.2g}  "
            f"({res.wall_time_s:.1f}s)")
        if progress_file is not None:
            io.write_json(progress_file, {"run": run_id, "done": {**done, **results}})
    return {"dataset": data.name, "n_train": data.n_train, "n_test": int(data.x_test.shape[0]),
            "seeds": seeds, "calibration": cal, "methods": results}


def plot(payload: dict):
    """Test and train accuracy against epoch (mean ± std band), and test accuracy against the
    sharpness reached (mean ± std bars), one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    sharp_ok = True
    for i, (name, r) in enumerate(payload["methods"].items()):
        c = f"C{i}"
        if r["curves"]:
            m, s = np.array(r["curves"]["test_acc"]), np.array(r["curves_std"]["test_acc"])
            ep = np.arange(1, len(m) + 1)
            ax1.plot(ep, m, color=c, label=name)
            ax1.fill_between(ep, m - s, m + s, color=c, alpha=0.2)
            ax2.plot(ep, r["curves"]["train_acc"], color=c, label=name)
        x = r["sharpness"]["mean"]
        sharp_ok &= bool(np.isfinite(x) and x > 0)
        ax3.errorbar(x, r["test_acc"]["mean"], xerr=r["sharpness"]["std"],
                     yerr=r["test_acc"]["std"], fmt="o", color=c, capsize=3, label=name)
    f = payload["flags"]
    ax1.set(xlabel="epoch", ylabel="test accuracy",
            title=f"{payload['dataset']} {f['model']}: b_S={f['small_batch']}, "
                  f"b_L={f['large_batch']}, lr={f['lr']}, momentum={f['momentum']}")
    ax2.set(xlabel="epoch", ylabel="train accuracy", title="training-set accuracy (mean)")
    ax3.set(xlabel="sharpness: top Hessian eigenvalue of training loss (nats)",
            ylabel="final test accuracy",
            title=f"final, mean ± std over {len(payload['seeds'])} seeds")
    if sharp_ok:
        ax3.set_xscale("log")
    for ax in (ax1, ax2, ax3):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    """Parse flags, run, write ``large_batch.json`` and ``.png`` under --out; return the payload.

    A bad flag prints one line on stderr and exits with status 2 (SystemExit), no traceback.
    """
    t0 = time.perf_counter()
    try:
        ns = _parser().parse_args(argv)
        base = QUICK if ns.quick else FULL
        cfg = {k: (v if getattr(ns, k, None) is None else getattr(ns, k))
               for k, v in base.items()}
        cfg["quick"] = bool(ns.quick)
        if cfg["dataset"] == "npz":  # the file holds its own split: a count would be ignored
            if ns.num_samples is not None:
                raise ValueError("num-samples applies to the generated data sets (mnist1d, "
                                 "teacher_student), not --dataset npz")
            cfg["num_samples"] = None
        fresh, quiet = bool(ns.fresh), bool(ns.quiet)
        prepared = prepare(cfg)
    except (_BadFlags, ValueError, TypeError) as e:
        print(f"large_batch.py: error: {e}".replace("\n", " "), file=sys.stderr)
        raise SystemExit(2) from None
    import matplotlib.pyplot as plt

    from sgdyn import io

    out = Path(cfg["out"])
    files = {"json": str(out / "large_batch.json"), "figure": str(out / "large_batch.png")}
    progress_file = out / ".large_batch_progress.json"
    if fresh:
        progress_file.unlink(missing_ok=True)
    log = (lambda *a, **k: None) if quiet else (lambda *a, **k: print(*a, **k, flush=True))
    results = run_experiment(cfg, prepared, log=log, progress_file=progress_file)
    payload = {"provenance": io.provenance(), "flags": cfg, **results,
               "run_time_s": time.perf_counter() - t0, "outputs": files}
    fig = plot(payload)
    io.save_figure(fig, files["figure"])
    plt.close(fig)
    io.write_json(files["json"], payload)
    progress_file.unlink(missing_ok=True)
    log(f"wrote {files['json']} and {files['figure']} ({payload['run_time_s']:.0f} s)")
    return payload


if __name__ == "__main__":
    from sgdyn.cli import run_main

    sys.exit(run_main(main, resumes="the finished methods are kept"))
