"""Result files: atomic writes and provenance.

Every result file is written to a temporary name in the same folder and renamed into place, so a
run killed at any moment leaves either the previous file or the complete new one, never half of
one. Every JSON result carries ``provenance()``: command, versions, commit, machine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return _to_jsonable(obj.item())  # a NaN or inf scalar becomes a float: converted below
    if hasattr(obj, "shape") and hasattr(obj, "tolist"):  # numpy / jax arrays
        return _to_jsonable(np.asarray(obj).tolist())
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
    text = json.dumps(_to_jsonable(payload), indent=2, sort_keys=False, allow_nan=False)
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


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except Exception:
        return None


def provenance() -> dict:
    """Command line, package versions, git commit and machine: enough to re-run a result."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("sgdyn", "jax", "jaxlib", "flax", "optax", "numpy", "scipy"):
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
        "commit": _git_commit(),
        "python": platform.python_version(),
        "machine": platform.platform(),
        "backend": backend,
        "devices": devices,
    }
