"""sgdyn: simulate how SGD, Langevin dynamics and the power-law dynamic move on loss landscapes."""

__version__ = "0.1.0"
