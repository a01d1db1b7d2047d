"""Library side of the experiment scripts in ``experiments/`` (THEORY.md sections 3-5).

One module per experiment, each with ``FULL`` (the committed figure's parameters), ``QUICK``
(overrides for a seconds-long smoke run), ``HELP`` (one line per flag), ``run(cfg, progress)``
returning the JSON payload and ``plot(payload)`` returning the figure:

- ``sharp_flat``:     escape time against sharpness 1/h (SGD, PLD, Langevin, Hessian noise);
- ``barrier``:        escape time against the barrier height (PLD and Langevin);
- ``tails``:          stationary laws, tail index and the d-dimensional ergodicity limit;
- ``discretization``: the chain at dt = lr against the continuous dynamic, and its stability.

``common`` holds flag parsing, the output writer and plotting helpers shared by all four.
"""

EXPERIMENTS = ("sharp_flat", "barrier", "tails", "discretization")
