"""Discretization: exit times of the chain at dt = lr against the continuous dynamic, and the
chains' stability as lr grows (THEORY.md sections 1 and 5).

    python experiments/discretization.py            # full run -> figures/discretization.{png,json}
    python experiments/discretization.py --quick    # seconds-long smoke run -> results/
    python experiments/discretization.py --help     # every parameter is a flag
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgdyn.cli import run_main  # noqa: E402
from sgdyn.experiments.common import script_main  # noqa: E402


def main(argv=None) -> dict:
    return script_main("discretization", argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
