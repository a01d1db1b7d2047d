"""Sharp versus flat minima: escape time against sharpness for SGD, the PLD, Langevin and
Hessian noise on one reparametrised finite-sum problem (THEORY.md section 4).

    python experiments/sharp_flat.py            # full run -> figures/sharp_flat.{png,json}
    python experiments/sharp_flat.py --quick    # seconds-long smoke run -> results/
    python experiments/sharp_flat.py --help     # every parameter is a flag
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgdyn.cli import run_main  # noqa: E402
from sgdyn.experiments.common import script_main  # noqa: E402


def main(argv=None) -> dict:
    return script_main("sharp_flat", argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
