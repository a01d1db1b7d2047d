import os
import tempfile

# Tests run on the CPU whatever the machine has; two host devices let the sharding code be
# exercised on a laptop or CI runner.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Scripts cache compiled kernels (sgdyn.cache); keep the tests' cache out of the user's home.
os.environ.setdefault("SGDYN_CACHE_DIR", tempfile.mkdtemp(prefix="sgdyn-test-cache-"))
