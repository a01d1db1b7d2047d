"""Shared plumbing for the experiment scripts: clean errors, timing, progress lines."""

from __future__ import annotations

import sys
import time

from .cache import enable_compilation_cache


def run_main(main, argv=None, *, resumes: str | None = None) -> int:
    """Run ``main(argv)`` with the persistent compilation cache on (``sgdyn.cache``); a bad
    argument prints one line to stderr and exits with status 2. ``resumes`` says what a re-run
    of an interrupted command keeps (None: nothing, it starts over)."""
    enable_compilation_cache()
    try:
        main(argv)
    # FloatingPointError: a quadrature of sgdyn.theory that did not converge (extreme noise)
    except (ValueError, TypeError, OverflowError, FloatingPointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: " + (f"re-run the same command to resume ({resumes})" if resumes
                                 else "this script runs whole, a re-run starts over "
                                      "(experiments/reproduce.py keeps finished experiments)"),
              file=sys.stderr)
        return 130
    return 0


class Progress:
    """Per-stage progress lines with elapsed time, on stderr (quiet=True silences them)."""

    def __init__(self, total: int, label: str, quiet: bool = False):
        self.total, self.label, self.quiet = total, label, quiet
        self.done, self.start = 0, time.time()

    def step(self, what: str = "") -> None:
        self.done += 1
        if not self.quiet:
            el = time.time() - self.start
            print(f"[{self.label}] {self.done}/{self.total} {what} ({el:.1f}s)", file=sys.stderr,
                  flush=True)


import argparse  # noqa: E402


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends each flag with its default, unless its text already names one (or it
    has none: None, False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or (
                action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)".strip()


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits with status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")
