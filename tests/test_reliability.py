"""Interruption, reproducibility and argument checking across the library."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import sgdyn as sg
from sgdyn.checkpoint import Checkpoint, fingerprint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "escape_time.py"
ARGS = ["--landscape", "kramers", "--h-min", "4", "--h-saddle", "4", "--barrier", "0.3",
        "--dynamics", "langevin", "--sigma2", "2", "--dt", "0.01", "--particles", "16000",
        "--chunk-size", "2000", "--seed", "3"]
NUMBERS = ("mean_exit_time", "ci95", "n_escaped", "n_censored", "n_diverged", "t_max",
           "exact_mean_exit_time")


def _numbers(path):
    res = json.loads(Path(path).read_text())
    return {k: res[k] for k in NUMBERS}


def test_kill_minus_nine_then_rerun_resumes_with_identical_numbers(tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "resumed.json"
    cmd = [sys.executable, str(SCRIPT), *ARGS, "--checkpoint", str(ckpt), "--json", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and len(list(ckpt.glob("*.npz"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(ckpt.glob("*.npz")))
    assert 2 <= done_before < 8 and not out.exists()
    assert not list(ckpt.glob("*.partial"))  # no half-written checkpoint survives the kill

    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    fresh = tmp_path / "fresh.json"
    subprocess.run([sys.executable, str(SCRIPT), *ARGS, "--json", str(fresh)], check=True,
                   capture_output=True, timeout=300)
    assert _numbers(out) == _numbers(fresh)


def test_checkpoint_keys_change_with_every_input():
    land = sg.KramersWell.make(2.0, 2.0, 0.5)
    a = sg.EulerMaruyama.make(sg.SDE.make(land, sg.Isotropic.make(1.0), 0.1, 1), 0.01)
    b = sg.EulerMaruyama.make(sg.SDE.make(land, sg.Isotropic.make(1.1), 0.1, 1), 0.01)
    k = jax.random.key(0)
    assert fingerprint(k, a) == fingerprint(k, a)
    assert fingerprint(k, a) != fingerprint(k, b)
    assert fingerprint(k, a) != fingerprint(jax.random.key(1), a)


def test_checkpoint_round_trip(tmp_path):
    c = Checkpoint(tmp_path)
    c.save("x", {"a": np.arange(3), "b": np.ones(2, bool)})
    got = c.load("x")
    assert np.array_equal(got["a"], np.arange(3)) and got["b"].dtype == bool
    assert c.load("missing") is None and len(c) == 1


def test_same_command_same_json_numbers(tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}.json"
        args = [a if a != "16000" else "3000" for a in ARGS]
        subprocess.run([sys.executable, str(SCRIPT), *args, "--json", str(out)], check=True,
                       capture_output=True, timeout=300)
        outs.append(_numbers(out))
    assert outs[0] == outs[1]
    prov = json.loads((tmp_path / "run0.json").read_text())["provenance"]
    for key in ("command", "versions", "commit", "machine"):
        assert key in prov
    assert prov["versions"]["jax"] and prov["versions"]["sgdyn"]


def test_provenance_names_sgdyn_run_from_a_source_checkout(monkeypatch):
    """Not pip-installed (the package on PYTHONPATH, as on a lent GPU machine): the version
    comes from the module itself instead of reading None."""
    import importlib.metadata as md

    import sgdyn
    from sgdyn.io import provenance

    real = md.version

    def version(pkg):
        if pkg == "sgdyn":
            raise md.PackageNotFoundError(pkg)
        return real(pkg)

    monkeypatch.setattr(md, "version", version)
    assert provenance()["versions"]["sgdyn"] == sgdyn.__version__


def test_result_files_are_written_atomically_and_readable(tmp_path):
    from sgdyn.io import write_json

    path = write_json(tmp_path / "r.json", {"x": np.float32(1.5), "arr": np.arange(2),
                                             "nan": np.float64("nan"), "inf": np.float32("inf"),
                                             "gaps": np.array([np.nan, 1.0, -np.inf])})
    assert json.loads(path.read_text()) == {"x": 1.5, "arr": [0, 1], "nan": None, "inf": "inf",
                                            "gaps": [None, 1.0, "-inf"]}
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)
    assert not list(tmp_path.glob("*.partial"))


def _plotted(path):
    res = json.loads(Path(path).read_text())
    return {k: v for k, v in res.items() if k not in ("provenance", "run_time_s", "outputs")}


def test_reproduce_resumes_after_kill_with_the_same_numbers(tmp_path):
    script = ROOT / "experiments" / "reproduce.py"
    out = tmp_path / "resumed"
    cmd = [sys.executable, str(script), "--quick", "--quiet", "--only", "barrier,tails",
           "--out", str(out)]
    marker = out / ".reproduce_progress.json"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.05)
    assert proc.poll() is None, "reproduce finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(json.loads(marker.read_text())["done"]) == ["barrier"]
    first_barrier = (out / "barrier.json").stat().st_mtime_ns
    assert not (out / "tails.json").exists()

    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    assert (out / "barrier.json").stat().st_mtime_ns == first_barrier  # kept, not recomputed
    assert not marker.exists()  # a complete run clears its progress
    fresh = tmp_path / "fresh"
    subprocess.run([*cmd[:-1], str(fresh)], check=True, capture_output=True, timeout=300)
    for name in ("barrier", "tails"):
        assert _plotted(out / f"{name}.json") == _plotted(fresh / f"{name}.json")


def test_reproduce_keeps_an_interrupted_result_only_from_the_same_code(tmp_path):
    """A progress file from a run on other code (a pulled commit, edited defaults) is ignored:
    the experiment runs again instead of keeping a stale result."""
    import importlib.util

    from sgdyn.io import source_state, write_json

    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "experiments" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    argv = ["--quick", "--quiet", "--only", "barrier", "--out", str(tmp_path)]
    run_id = {"quick": True, "names": ["barrier"]}
    # kept only from the same code, and only while the file is the one that run wrote (not
    # one a run of the script on its own wrote since, with other flags)
    for source, rewritten, kept in ((source_state(), False, True),
                                    ({"commit": "0" * 40, "dirty": False}, False, False),
                                    (source_state(), True, False)):
        path = tmp_path / "barrier.json"
        write_json(path, {"stale": True})
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        if rewritten:
            write_json(path, {"stale": True, "flags": {"seed": 5}})
        write_json(tmp_path / ".reproduce_progress.json",
                   {"run": {**run_id, "source": source}, "done": {"barrier": sha}})
        result = reproduce.main(argv)["results"]["barrier"]
        assert ("stale" in result) == kept
        assert ("stale" in json.loads(path.read_text())) == kept


def test_the_flat_api_lists_every_public_name():
    """sgdyn.__all__ is the flat public API: every listed name exists, and every public name
    imported into the package (modules aside, theory included) is listed."""
    import types

    import sgdyn

    public = {n for n, v in vars(sgdyn).items() if not n.startswith("_")
              and (not isinstance(v, types.ModuleType) or n == "theory")}
    assert set(sgdyn.__all__) == public and len(sgdyn.__all__) == len(set(sgdyn.__all__))


def test_the_cache_is_off_where_asked_or_unwritable(tmp_path, monkeypatch):
    from sgdyn import cache

    for word in ("off", "false", "No", "disable"):
        monkeypatch.setenv("SGDYN_CACHE_DIR", word)
        assert cache.cache_dir() is None  # "false" once made a folder named so
    folder = tmp_path / "cache"
    folder.mkdir()

    def refuse(*a, **kw):
        raise PermissionError("read-only")

    monkeypatch.setattr(cache.tempfile, "TemporaryFile", refuse)
    # a folder that exists but takes no file: JAX would warn once per kernel
    assert cache.enable_compilation_cache(folder) is None


def test_an_interrupt_says_whether_a_rerun_resumes(capsys):
    from sgdyn.cli import run_main

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_main(interrupted) == 130
    assert "a re-run starts over" in capsys.readouterr().err
    run_main(interrupted, resumes="the finished methods are kept")
    assert "resume (the finished methods are kept)" in capsys.readouterr().err


def test_a_checkpoint_that_is_a_file_is_refused_naming_it(tmp_path):
    (tmp_path / "ck").write_text("")
    with pytest.raises(ValueError, match="checkpoint must be a folder"):
        Checkpoint(tmp_path / "ck")


def test_a_class_without_a_readable_source_file_does_not_break_a_checkpoint(monkeypatch):
    """A landscape defined in a script read from stdin reports the file "<stdin>" (a module in
    a zip, one inside it): the code tag skips it rather than fail the run."""
    import types

    from sgdyn import checkpoint
    from sgdyn._pytree import pytree_dataclass

    module = types.ModuleType("from_stdin")
    module.__file__, module.__loader__ = "<stdin>", object()  # as python - < script.py has
    monkeypatch.setitem(sys.modules, "from_stdin", module)

    @pytree_dataclass
    class Piped:
        h: object

    Piped.__module__ = "from_stdin"
    assert checkpoint.code_tag(Piped(np.float32(1.0))) == checkpoint.code_tag()


def test_an_untracked_script_counts_as_a_change_whatever_its_name(tmp_path):
    """A new script not yet added to git makes numbers as much as an edited one: it marks the
    checkout dirty, and its content moves the hash, even under a name that is not UTF-8 (read
    strictly, git's output once failed to decode and the checkout read as clean)."""
    from sgdyn.io import source_state

    if source_state()["commit"] is None:
        pytest.skip("not run from a git checkout of sgdyn")
    path = os.path.join(os.fsencode(ROOT / "experiments"), b"probe_\xe9_untracked.py")
    try:
        hashes = []
        for content in (b"x = 1\n", b"x = 2\n"):
            try:
                with open(path, "wb") as f:
                    f.write(content)
            except OSError:  # a file system that takes UTF-8 names only
                pytest.skip("non-UTF-8 file names are refused here")
            state = source_state()
            assert state["dirty"]
            hashes.append(state["diff_sha256"])
        assert hashes[0] != hashes[1]
    finally:
        if os.path.exists(path):
            os.remove(path)
