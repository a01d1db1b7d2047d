"""A persistent compilation cache: compile each kernel once per machine, not once per process.

Every experiment script calls ``enable_compilation_cache()`` (through ``sgdyn.cli.run_main``),
so the second run of a script with the same shapes loads its compiled XLA programs from disk
instead of compiling them again (about half a second per exit-time kernel on a CPU). It is
JAX's own cache (``jax_compilation_cache_dir``); a library import never turns it on.

The folder is ``$SGDYN_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/sgdyn/jax`` or
``~/.cache/sgdyn/jax``; ``SGDYN_CACHE_DIR=off`` (or ``0``, ``none``, ``false``, ``no``,
``disable``) disables it. Deleting the folder is safe.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax

OFF = ("off", "0", "none", "", "false", "no", "disable", "disabled")


def cache_dir() -> Path | None:
    """The cache folder the environment asks for, or None when it is switched off."""
    value = os.environ.get("SGDYN_CACHE_DIR")
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "sgdyn" / "jax"


def enable_compilation_cache(directory: str | Path | None = None) -> Path | None:
    """Store compiled programs in ``directory`` (default ``cache_dir()``) and reuse them in
    later processes. Returns the folder used, or None when disabled or not writable."""
    folder = Path(directory).expanduser() if directory is not None else cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # a folder that exists but takes no file: JAX would warn once per compiled kernel
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # cache every kernel of a run, not only those that took more than a second to compile
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
