"""Stationary distribution and tails of SGD and the PLD, and the d-dimensional ergodicity limit
(THEORY.md section 3).

    python experiments/tails.py            # full run -> figures/tails.{png,json}
    python experiments/tails.py --quick    # seconds-long smoke run -> results/
    python experiments/tails.py --help     # every parameter is a flag
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgdyn.cli import run_main  # noqa: E402
from sgdyn.experiments.common import script_main  # noqa: E402


def main(argv=None) -> dict:
    return script_main("tails", argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
