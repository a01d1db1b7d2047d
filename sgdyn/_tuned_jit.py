"""``jax.jit`` compiled with XLA options on a CPU, and with XLA's defaults where XLA refuses them.

XLA's CPU options are not a stable interface (an option may be retired), so a program whose
options this XLA answers with "No such compile option" compiles with the defaults instead, and
so does every later program asking for the same options. The runner's exit programs and the
training loop's initialisers use it, each with its own options.
"""

from __future__ import annotations

import jax

_REFUSED: set[frozenset] = set()  # option sets (their names) this XLA has refused


class TunedJit:
    """``jax.jit(fn, **jit_kw)`` compiled with ``options``, or with XLA's defaults once this
    XLA has refused them. Callable like the jitted function; ``_cache_size`` counts both."""

    def __init__(self, fn, options: dict, **jit_kw):
        self.options = frozenset(options)
        self.tuned = jax.jit(fn, compiler_options=options, **jit_kw)
        self.plain = jax.jit(fn, **jit_kw)

    def __call__(self, *args):
        if self.options not in _REFUSED:
            try:
                return self.tuned(*args)
            except RuntimeError as err:  # raised while compiling: nothing ran, nothing donated
                if "No such compile option" not in str(err):
                    raise
                _REFUSED.add(self.options)
        return self.plain(*args)

    def _cache_size(self) -> int:  # as jax.jit's: programs compiled (the recompilation guard)
        return self.tuned._cache_size() + self.plain._cache_size()


def tuned_jit(fn, options: dict, platform: str, **jit_kw):
    """``TunedJit`` on a CPU (``platform`` "cpu"); plain ``jax.jit`` elsewhere."""
    return TunedJit(fn, options, **jit_kw) if platform == "cpu" else jax.jit(fn, **jit_kw)
