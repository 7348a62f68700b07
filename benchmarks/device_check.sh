#!/usr/bin/env bash
# One GPU, one prepared script (under 8 minutes): the GPU-relevant tests, Small training throughput (tokens/s,
# MFU against the card's bf16 peak) and sampling speed for Small and Medium with our KV-cached decoder
# (events/s, seconds of music a second at Lakh's 20.6 events a second).
#
#   bash benchmarks/device_check.sh            # on the GPU machine: tests + measurements, figures in $OUT
#   bash benchmarks/device_check.sh --dry      # anywhere (CPU): the same steps at tiny shapes, a few steps
#   bash benchmarks/device_check.sh --install DIR   # install the wheels in DIR (see below) and stop
#   bash benchmarks/device_check.sh --inventory     # list the machine's packages into $OUT and stop
#
# The GPU machines have Python 3.12, jax 0.11.2 for CUDA 13 and torch, and no network. Our project runs from
# src/ (PYTHONPATH); what else it imports comes as wheels, installed with --no-deps --no-index into folders
# on PYTHONPATH (.device-site/<batch>, one a batch so that namespace packages such as google.* merge;
# git-ignored, kept between calls on a warm machine), only for distributions the machine's Python lacks: jax is
# never among them and the machine's own packages are never touched. The wheels are prepared here,
# with network, by `python benchmarks/device_wheels.py` (see its docstring: batches of <= 58 MiB under
# benchmarks/wheels/, each carried by one call with --install, the measuring call last).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/device-check-out}
mkdir -p "$OUT"
SITE=$REPO/.device-site
PY=${PYTHON:-python3}
mkdir -p "$SITE"
PYTHONPATH=$REPO/src
for folder in "$SITE"/*/; do [[ -d $folder ]] && PYTHONPATH=$PYTHONPATH:${folder%/}; done
export PYTHONPATH HF_HUB_OFFLINE=1 WANDB_MODE=disabled TF_CPP_MIN_LOG_LEVEL=2

case "${1:-}" in
  --inventory)
    "$PY" -m pip list --format=freeze 2>/dev/null | tee "$OUT/device-packages.txt" | wc -l
    "$PY" -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/device-packages.txt"
    exit 0 ;;
  --install)
    DIR=${2:?--install DIR}
    # only the distributions this machine does not have yet (a wheel's name: dist-version-...)
    missing=$("$PY" - "$DIR" <<'EOF'
import importlib.metadata as md, pathlib, re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
have = {norm(d.metadata["Name"]) for d in md.distributions()}
print(" ".join(str(w) for w in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")) if norm(w.name.split("-")[0]) not in have))
EOF
)
    if [[ -n $missing ]]; then
        "$PY" -m pip install --quiet --no-deps --no-index --target "$SITE/$(basename "$DIR")" $missing
    fi
    echo "installed $(wc -w <<< "$missing") wheel(s) from $DIR; jax $("$PY" -c 'import jax; print(jax.__version__)')"
    exit 0 ;;
  --dry|"") ;;
  *) echo "usage: $0 [--dry | --install DIR | --inventory]" >&2; exit 2 ;;
esac

DRY=${1:-}
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/device-check.log"; }
begin=$SECONDS
{
    echo "# device check $(date -u +%FT%TZ) ${DRY:-(full)}"
    "$PY" -m pip show marin-levanter marin-haliax jax 2>/dev/null | grep -E "^(Name|Version)"
    "$PY" -c "import jax; print('devices:', jax.devices())"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    fi
} 2>&1 | tee "$OUT/device-check.log"

if [[ -n $DRY ]]; then
    export JAX_PLATFORMS=cpu
    TESTS=(tests/test_train.py::test_dry_run_prints_the_parameter_count "tests/test_sampling.py::test_cached_logits_equal_the_full_forward_pass_at_every_position")
    TRAIN=(--recipe recipes/amt-tiny.yaml --batch 2 --steps 4 -- --model.max_seq_len 256 --model.hidden_dim 32 --model.num_heads 2)
    SMALL=(--layers 2 --width 32 --heads 2 --events 4 --batch 2 --reference-tokens 1 --hf-tokens 2)
    MEDIUM=("${SMALL[@]}")
else
    # the tests whose numbers a GPU can change: the KV-cached decoder against the full forward pass, sampling's
    # constraints, training (loss falls, checkpoint, resume after kill -9, HF export and back)
    TESTS=(tests/test_sampling.py tests/test_train.py)
    TRAIN=(--recipe recipes/amt-small-gpu.yaml --steps 8)
    SMALL=(--layers 12 --width 768 --heads 12)
    MEDIUM=(--layers 24 --width 1024 --heads 16)
fi

log "tests: ${TESTS[*]}"
set +e
timeout 300 "$PY" -m pytest -q -x -p no:cacheprovider "${TESTS[@]}" 2>&1 | tail -15 | tee -a "$OUT/device-check.log"
tests_status=${PIPESTATUS[0]}
set -e
log "tests exit $tests_status ($((SECONDS - begin)) s so far)"

log "training throughput: ${TRAIN[*]}"
timeout 240 "$PY" benchmarks/train.py --json "$OUT/train.json" "${TRAIN[@]}" 2>&1 | tail -3 | tee -a "$OUT/device-check.log"

for model in SMALL MEDIUM; do
    declare -n shape=$model
    log "sampling, ${model,,}: ${shape[*]}"
    timeout 150 "$PY" benchmarks/sample.py "${shape[@]}" 2>&1 | tail -8 | tee -a "$OUT/device-check.log"
done
log "done in $((SECONDS - begin)) s; tests exit $tests_status"
exit "$tests_status"
