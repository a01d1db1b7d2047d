"""Escape time against barrier height for the PLD and Langevin (THEORY.md section 4).

    python experiments/barrier.py            # full run -> figures/barrier.{png,json}
    python experiments/barrier.py --quick    # seconds-long smoke run -> results/
    python experiments/barrier.py --help     # every parameter is a flag
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgdyn.cli import run_main  # noqa: E402
from sgdyn.experiments.common import script_main  # noqa: E402


def main(argv=None) -> dict:
    return script_main("barrier", argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
