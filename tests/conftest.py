import os

# Tests run on the CPU whatever the machine has; two host devices let the sharding code be
# exercised on a laptop or CI runner.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
