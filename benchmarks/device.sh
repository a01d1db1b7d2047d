#!/usr/bin/env bash
# The benchmark on a lent GPU machine, within a fixed time:  OUT=dir BUDGET=seconds bash benchmarks/device.sh
#
# Each section runs in its own process under its own cap, so one slow or failing section leaves
# time for the rest; results merge into $OUT/gpu.json as each section ends (a killed run keeps
# what finished). Then, in the time left, the engine, training, property and reliability tests
# on the GPU (on an H200: 183 s for the sections but cache, 165 s for those tests; the cache section starts one process per tool and run, 12 on a GPU). Sections
# can be narrowed with SECTIONS="exit sweep". Wheels in .whl/ are installed first if present
# (mnist1d, for training: pip download --no-deps --python-version 3.12 -d .whl mnist1d).
set -u
OUT=${OUT:-/tmp/sgdyn-device}
BUDGET=${BUDGET:-480}
SECTIONS=${SECTIONS:-"ceilings throughput training exit cache sweep memory"}
TESTS=${TESTS:-"tests/test_engine.py tests/test_train_loop.py tests/test_train_noise.py tests/test_properties.py tests/test_reliability.py"}
mkdir -p "$OUT"
log="$OUT/log.txt"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
left() { echo $((BUDGET - SECONDS)); }

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import jax, diffrax, flax, optax, sgdyn; print('jax', jax.__version__, jax.devices(),
'diffrax', diffrax.__version__, 'flax', flax.__version__, 'optax', optax.__version__)"
} 2>&1 | tee "$log"

declare -A CAP=([ceilings]=60 [throughput]=120 [training]=90 [exit]=150 [cache]=150 [sweep]=200
             [memory]=60)
for s in $SECTIONS; do
    cap=${CAP[$s]:-120}
    [ "$(left)" -lt "$cap" ] && cap=$(left)
    if [ "$cap" -lt 20 ]; then echo "== $s skipped: budget spent" | tee -a "$log"; continue; fi
    t0=$SECONDS
    timeout "$cap" python3 benchmarks/run.py --only "$s" --merge --out "$OUT/gpu.json" >>"$log" 2>&1
    echo "== $s: rc $? in $((SECONDS - t0)) s (cap $cap)" | tee -a "$log"
done

if [ "$(left)" -gt 30 ]; then
    JAX_PLATFORMS=cuda timeout "$(left)" python3 -m pytest -q -rfE -p no:cacheprovider $TESTS \
        >"$OUT/tests.txt" 2>&1
    echo "== tests ($TESTS): rc $?" | tee -a "$log"
    tail -3 "$OUT/tests.txt"
fi
[ -f "$OUT/gpu.json" ] && python3 benchmarks/run.py --report "$OUT/gpu.json" 2>&1 | tail -60
echo "total $SECONDS s"
