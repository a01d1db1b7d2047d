"""experiments/large_batch.py: the --quick run end to end, and one-line errors for bad flags."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "large_batch.py"


def _module():
    spec = importlib.util.spec_from_file_location("large_batch", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_writes_table_and_figure(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--quiet", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "", proc.stdout  # --quiet
    payload = json.loads((tmp_path / "large_batch.json").read_text())
    png = (tmp_path / "large_batch.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"provenance", "flags", "run_time_s", "calibration"} <= set(payload)
    assert payload["flags"]["quick"] is True and len(payload["seeds"]) >= 5
    methods = payload["methods"]
    assert set(methods) == set(_module().METHODS)
    for name, r in methods.items():
        for metric in ("test_acc", "train_acc", "gap", "sharpness"):
            for stat in ("mean", "std"):
                v = r[metric][stat]
                assert isinstance(v, float) and math.isfinite(v), (name, metric, stat, v)
        assert r["n_diverged"] == 0, name
    assert not list(tmp_path.glob("*.partial"))  # atomic writes leave no temporaries


@pytest.mark.parametrize("argv, word", [
    (["--lr", "-1"], "lr"),
    (["--model", "resnet"], "model"),
    (["--epochs", "ten"], "epochs"),
    (["--small-batch", "4096", "--large-batch", "1024"], "small-batch"),
    (["--quick", "--large-batch", "100000"], "large-batch"),
    (["--methods", "small,bogus"], "methods"),
    (["--dataset", "npz"], "path"),
    (["--data-path", "mine.npz"], "data-path"),  # once trained on MNIST-1D, its flags said mine
    (["--dataset", "npz", "--data-path", "d.npz", "--num-samples", "10"], "num-samples"),
    (["--no-such-flag"], "no-such-flag"),
    (["--quick", "--seed", str(2**32 - 1), "--seeds", "2"], "seed"),  # 2^32 would wrap to 0
    (["--quick", "--pld-loss-ref", "5"], "pld-loss-ref"),  # above L_0: no PLD noise, ever
])
def test_bad_flags_one_line_and_nonzero_exit(argv, word, capsys):
    with pytest.raises(SystemExit) as exc:
        _module().main(argv)
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and word in err and "Traceback" not in err


def test_a_pld_reference_above_the_initial_loss_matters_only_to_the_pld_method():
    mod = _module()
    cfg = dict(mod.QUICK, pld_loss_ref=5.0, methods="small,large", quick=True)
    methods, _, _, cal = mod.prepare(cfg)  # no PLD run: nothing to refuse
    assert methods == ["small", "large"] and cal["initial_loss"] < 5.0
    with pytest.raises(ValueError, match="pld-loss-ref"):
        mod.prepare(dict(cfg, methods="small,large+pld"))


def test_bad_flag_in_a_subprocess_has_no_traceback():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--seeds", "0"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "seeds" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_killed_run_resumes_without_retraining_finished_methods(tmp_path, monkeypatch):
    import sgdyn.train

    mod = _module()
    argv = ["--quick", "--methods", "small,large", "--seeds", "2", "--epochs", "2",
            "--sharpness-iters", "0"]
    trained, real = [], sgdyn.train.train

    def train(*a, **kw):
        trained.append(kw["batch_size"])
        if len(trained) == 2 and kill:  # the second method is killed mid-run
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(sgdyn.train, "train", train)
    kill = True
    with pytest.raises(KeyboardInterrupt):
        mod.main(argv + ["--out", str(tmp_path / "run")])
    assert (tmp_path / "run" / ".large_batch_progress.json").exists()
    assert not (tmp_path / "run" / "large_batch.json").exists()
    kill, trained[:] = False, []
    resumed = mod.main(argv + ["--out", str(tmp_path / "run")])
    assert trained == [400]  # only the large batch was trained again
    assert not (tmp_path / "run" / ".large_batch_progress.json").exists()
    whole = mod.main(argv + ["--out", str(tmp_path / "whole")])
    for name in ("small", "large"):
        a, b = resumed["methods"][name], whole["methods"][name]
        for k in (*mod.METRICS, "curves"):  # bit-identical to an uninterrupted run
            np.testing.assert_equal(a[k], b[k], err_msg=f"{name} {k}")
