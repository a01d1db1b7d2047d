"""Result files: atomic writes and provenance.

Every result file is written to a temporary name in the same folder and renamed into place, so a
run killed at any moment leaves either the previous file or the complete new one, never half of
one. Every JSON result carries ``provenance()``: command, versions, commit, machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def jsonable(obj: Any) -> Any:
    """``obj`` with NumPy and JAX values as Python ones, NaN as None and +-inf as "inf" /
    "-inf": what ``write_json`` writes."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return jsonable(obj.item())  # a NaN or inf scalar becomes a float: converted below
    if hasattr(obj, "shape") and hasattr(obj, "tolist"):  # numpy / jax arrays
        return jsonable(np.asarray(obj).tolist())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; result files are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as indented JSON, atomically. Arrays become lists."""
    text = json.dumps(jsonable(payload), indent=2, sort_keys=False, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def read_json(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)


def save_figure(fig, path: str | os.PathLike, **kwargs) -> Path:
    """Save a matplotlib figure atomically (rendered to memory, then renamed into place)."""
    import io

    buf = io.BytesIO()
    fmt = Path(path).suffix.lstrip(".") or "png"
    fig.savefig(buf, format=fmt, **{"dpi": 130, "bbox_inches": "tight", **kwargs})
    return atomic_write_bytes(path, buf.getvalue())


def _git(*args) -> str | None:
    try:
        here = Path(__file__).resolve().parent
        # surrogateescape: a file name or diff line that is not UTF-8 must not read as "clean"
        out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                             errors="surrogateescape", timeout=5)
        return out.stdout if out.returncode == 0 else None
    except Exception:
        return None


# what makes the numbers: the library, the scripts and the declared dependencies (not the
# figures and results the scripts write, nor docs and tests)
_SOURCE = ("sgdyn", "experiments", "pyproject.toml")


def source_state() -> dict:
    """The checkout this sgdyn runs from: ``commit``, and whether its code differs from it
    (``dirty``: ``git diff HEAD`` over the library, the scripts and pyproject.toml, and any
    untracked file there, hashed in ``diff_sha256``); None where sgdyn does not run from a git
    checkout of its own (no git, or a copy inside another project's repository)."""
    top = _git("rev-parse", "--show-toplevel")
    root = Path(__file__).resolve().parent.parent
    if not top or Path(top.strip()).resolve() != root:
        return {"commit": None, "dirty": None}
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"commit": None, "dirty": None}
    paths = [f":(top){p}" for p in _SOURCE]
    diff = _git("diff", "HEAD", "--", *paths) or ""
    # a new module or script, not yet added, makes numbers as much as an edited one
    untracked = _git("ls-files", "-z", "--others", "--exclude-standard", "--full-name", "--",
                     *paths)
    for name in filter(None, (untracked or "").split("\0")):  # -z: names unquoted
        try:
            diff += f"\nuntracked {name}\n" + (root / name).read_text(errors="surrogateescape")
        except OSError:
            diff += f"\nuntracked {name} (unreadable)\n"
    state = {"commit": commit.strip(), "dirty": bool(diff)}
    if diff:
        state["diff_sha256"] = hashlib.sha256(diff.encode(errors="surrogateescape")).hexdigest()
    return state


def provenance() -> dict:
    """Command line, package versions, git commit (and whether the checkout differed from it)
    and machine: enough to re-run a result."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("sgdyn", "jax", "jaxlib", "flax", "optax", "numpy", "scipy", "matplotlib"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # run from a source checkout: the module knows
            versions[pkg] = getattr(sys.modules.get(pkg), "__version__", None)
    try:
        import jax

        backend = jax.default_backend()
        devices = [str(d) for d in jax.devices()]
    except Exception:  # pragma: no cover
        backend, devices = None, []
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
        "versions": versions,
        **source_state(),
        "python": platform.python_version(),
        "machine": platform.platform(),
        "backend": backend,
        "devices": devices,
    }
