#!/usr/bin/env bash
# One GPU, one prepared script (each run under 8 minutes: BUDGET, 470 s): Small's training throughput (tokens/s, MFU
# against the card's bf16 peak), sampling speed for Small and Medium with our KV-cached decoder (events/s, seconds
# of music a second at Lakh's 20.6 events a second) and where one event's time goes on the card (a profiler
# trace), then the GPU-relevant tests in the time left.
#
#   bash benchmarks/device_check.sh [STEP...]    # on the GPU machine: the steps named, in that order (default:
#                                                # all, in the order below), the outputs in $OUT (the
#                                                # logs in outputs.tar: a device call returns 8 files)
#   bash benchmarks/device_check.sh --dry [STEP...]   # anywhere (CPU): the same steps at tiny shapes, a few steps
#   bash benchmarks/device_check.sh --install DIR     # install the wheels in DIR (see below) and stop
#   bash benchmarks/device_check.sh --check-requirements [DIR]   # requirements of our set the machine still breaks
#   bash benchmarks/device_check.sh --inventory       # list the machine's packages into $OUT and stop
#
# Steps: train (the GPU recipe as written: cuDNN's fused attention, recomputation), train-gif (the recipe with
# `model.grad_in_forward_token_block_size 4096`: the loss's gradients in its forward pass), train-variant (the
# recipe without gradient checkpointing: worth making the recipe's default on one 80 GB card?), train-unfused (the
# recipe with Levanter's own attention, `model.fused_attention false`: what the fused attention gains),
# train-profile (the recipe with one step profiled: where the card's time goes), sample-medium (ours against
# Hugging Face's KV cache, ours in float32 and in bfloat16, then a trace of 20 events), sample-small (the same,
# no trace),
# sample-medium-nographs (ours again with XLA's CUDA graphs switched off: an event is one graph by default,
# benchmarks/gpu_compile.py; what the graph saves is what host launches would cost), sample-medium-ours (ours
# alone, 8 events a call and 1, with the trace: a later visit's check of a change to our sampler; 100 s did not
# hold it on the H200), sample-medium-while (ours, 8 a call, with loops allowed inside CUDA graphs),
# sample-medium-pipeline (ours, bfloat16, one sample, one event a call, not launched ahead and launching each call ahead of
# the last one's result, then 100 calls dispatched back to back with no read-back: the bound), tests
# (tests/test_train.py then tests/test_sampling.py; tests-train and tests-sampling, each file alone). A device session's 15 minutes hold the install (two calls) and about 12 minutes of steps, the most
# wanted first. The first visits measured the figures (README; train-gif and sample-medium-while on 2026-11-27's
# second H100: train-gif slower than the recipe, the WHILE compile too slow to time; sample-medium-pipeline and
# tests-train on that night's H200: launching ahead made one sample 12.7x real time, now the default there, and the
# training tests all passed); the next, after the install:
#   BUDGET=540 bash benchmarks/device_check.sh tests-sampling train sample-medium-ours
# (the sampling tests have not yet run on a card with launching ahead the default; a step cut short reports nothing
# of its figures, so leave it the time it asks).
# It exits 0 when every step named ran and passed, 3 when some were only skipped or cut short by the budget, else 1.
#
# The GPU machines have Python 3.12, jax 0.11.2 for CUDA 13 and torch, and no network. Our project runs from
# src/ (PYTHONPATH); what else it imports comes as wheels, installed with --no-deps --no-index into folders
# on PYTHONPATH (.device-site/<batch>, one a batch so that namespace packages such as google.* merge;
# git-ignored, kept between calls on a warm machine), for the distributions the machine's Python lacks, and for
# a small JAX library whose version there breaks a requirement of our set (ours then comes first on the path):
# jax is never among them and the machine's own packages are never changed. The wheels are prepared here,
# with network, by `python benchmarks/device_wheels.py` (see its docstring: 2 batches under benchmarks/wheels/,
# each carried by one call with --install, the second call going on to the check).
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
    # the distributions this machine lacks, and ours where its version breaks a requirement of our set
    # (requires.json, written by device_wheels.py)
    install=$("$PY" benchmarks/device_wheels.py --choose "$DIR")
    if [[ -n $install ]]; then
        "$PY" -m pip install --quiet --no-deps --no-index --target "$SITE/$(basename "$DIR")" $install
    fi
    echo "installed $(wc -w <<< "$install") wheel(s) from $DIR; jax $("$PY" -c 'import jax; print(jax.__version__)')"
    exit 0 ;;
  --check-requirements)
    # the requirements of our set that the packages seen here still break (reported, not fixed)
    "$PY" benchmarks/device_wheels.py --check "${2:-benchmarks/wheels}"
    exit 0 ;;
esac

DRY=
if [[ ${1:-} == --dry ]]; then DRY=--dry; shift; fi
ALL_STEPS=(train train-gif train-variant train-unfused train-profile sample-medium sample-small sample-medium-nographs
           sample-medium-ours sample-medium-while sample-medium-pipeline tests tests-sampling tests-train)
STEPS=("$@")
(( ${#STEPS[@]} )) || STEPS=("${ALL_STEPS[@]}")
for name in "${STEPS[@]}"; do
    if [[ " ${ALL_STEPS[*]} " != *" $name "* ]]; then
        echo "usage: $0 [--dry] [STEP...] | --install DIR | --check-requirements [DIR] | --inventory" >&2
        echo "unknown step '$name'; the steps: ${ALL_STEPS[*]}" >&2
        exit 2
    fi
done
# (before anything runs: without this a Python lacking the project ended the check silently after its header)
if ! error=$("$PY" -c "import amt.sampling, levanter" 2>&1 >/dev/null); then
    echo "device_check: $PY cannot import amt and levanter (${error##*$'\n'}): activate the project's venv or set" \
         "PYTHON (on the GPU machine: install the wheels first, --install DIR)" >&2
    exit 2
fi
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/device-check.log"; }
begin=$SECONDS
{
    echo "# device check $(date -u +%FT%TZ) ${DRY:-(full)}: ${STEPS[*]}"
    "$PY" -m pip show marin-levanter marin-haliax jax 2>/dev/null | grep -E "^(Name|Version)" || true
    "$PY" -c "import jax; print('devices:', jax.devices())"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    fi
} 2>&1 | tee "$OUT/device-check.log"

if [[ -n $DRY ]]; then
    export JAX_PLATFORMS=cpu
    TESTS=(tests/test_train.py::test_dry_run_prints_the_parameter_count "tests/test_sampling.py::test_cached_logits_equal_the_full_forward_pass_at_every_position")
    TRAIN=(--recipe recipes/amt-tiny.yaml --batch 2 --steps 6 -- --model.max_seq_len 256 --model.hidden_dim 32 --model.num_heads 2)
    SMALL=(--layers 2 --width 32 --heads 2 --events 4 --batch 2 --reference-tokens 1 --hf-tokens 2
           --dtypes float32,bfloat16)
    MEDIUM=("${SMALL[@]}")
    TRACE_EVENTS=16  # two device calls of 8 events: the trace summary needs two or more
    BACK_TO_BACK=10 PIPELINE_EVENTS=4
    TEST_PLATFORMS=cpu
    BUDGET=${BUDGET:-1200}  # no lease on a CPU: room for every step on a busy 2-core machine (470 s cut the tests)
else
    # the tests whose numbers a GPU can change: the KV-cached decoder against the full forward pass, sampling's
    # constraints, training (loss falls, checkpoint, resume after kill -9, HF export and back)
    # (training's first: the sampling tests passed on an H200, and a step cut short loses the tests it had not reached)
    TESTS=(tests/test_train.py tests/test_sampling.py)
    TRAIN=(--recipe recipes/amt-small-gpu.yaml --steps 10)
    # ours in float32 (the others' precision) and with bfloat16 weights and cache (amt generate --dtype bfloat16)
    SMALL=(--layers 12 --width 768 --heads 12 --dtypes float32,bfloat16)
    MEDIUM=(--layers 24 --width 1024 --heads 16 --dtypes float32,bfloat16)
    TRACE_EVENTS=20
    BACK_TO_BACK=100 PIPELINE_EVENTS=60  # (the sampler's figure at batch 1 is timed twice: --batch 1)
    # the GPU first, the CPU beside it: Levanter puts a dataset's examples and checkpoint reads on the CPU device,
    # so `JAX_PLATFORMS=cuda` alone failed every `amt train` run of the H100 visit's tests ("unknown backend cpu")
    TEST_PLATFORMS=cuda,cpu
fi
# the variant: no activation recomputation (GPT-2 Small at 32 sequences of 1,024 a micro-step fits an 80 GB card
# without it, `python benchmarks/gpu_compile.py train -- ...`; estimated slower, the saved activations moving more
# bytes than the recomputation: README)
VARIANT=(--model.gradient_checkpointing false)
# Levanter's own attention: without Transformer Engine its GPU default falls back to its JAX "flash" attention in
# one 1,024-wide block, the whole score matrix written out (the recipe's until the H100 visit: 16.4% MFU against
# 26.3% fused)
UNFUSED=(--model.fused_attention false)
# the loss's gradients in its forward pass, 4,096 positions a block (fewer where a micro-step has fewer: the dry run's 512)
GIF=(--model.grad_in_forward_token_block_size 4096)
# what goes between TRAIN and more overrides: nothing where TRAIN holds overrides already (the dry run's), else --
SEP=(--)
[[ " ${TRAIN[*]} " == *" -- "* ]] && SEP=()

# the figures first (they are what a short lease is for), the tests in the time left of BUDGET seconds (the whole
# check stays within BUDGET: leave a device call's 600 s room for the install before it)
BUDGET=${BUDGET:-470}
# step NAME LIMIT COMMAND...: its whole output in NAME.log (in $OUT/outputs.tar once it ends), its last lines in
# device-check.log; at most LIMIT seconds and never past BUDGET (skipped when under 30 s are left); a failed step
# is reported and the next one runs
KILL_AFTER=20  # a step still running this long after its interrupt is killed (counted in BUDGET)
capped() {  # LIMIT -> LIMIT, or what is left of BUDGET (less the kill's grace) if that is less
    local left=$((BUDGET - (SECONDS - begin) - KILL_AFTER))
    echo $(( left < $1 ? left : $1 ))
}
step() {
    local name=$1 limit
    limit=$(capped "$2"); shift 2
    if (( limit < 30 )); then
        log "$name: skipped, $((BUDGET - (SECONDS - begin))) s of the ${BUDGET} s budget left"
        return 3
    fi
    log "$name (${limit} s at most): ${*:2}"
    # at the limit an interrupt (SIGINT, to the step's whole process group), not a kill: pytest then still prints
    # the failures it has seen (the H100 visit's tests, stopped by SIGTERM, left "........FFEEEEF" and no reason),
    # a benchmark its Python traceback; a kill KILL_AFTER s later if that did not end it
    local started=$SECONDS
    timeout -s INT -k "$KILL_AFTER" "$limit" "$@" >"$OUT/$name.log" 2>&1
    local status=$?
    # 137: killed; by timeout after its interrupt (past the limit), or else by something else (the OOM killer)
    (( status == 137 && SECONDS - started >= limit )) && status=124
    tail -n "${TAIL:-8}" "$OUT/$name.log" | tee -a "$OUT/device-check.log"
    (( status == 124 )) && log "$name: stopped at its ${limit} s"
    (( status == 0 )) || log "$name failed (exit $status)"
    return "$status"
}
# the steps, each a function (run_<name>), run in the order named
# a training run stops itself 50 s before its step's limit (the budget may have cut it; half of it if that is short):
# its figure is taken from the steps logged by then, and it has time to say so
train_step() {  # NAME LIMIT ARGS...
    local name=$1 limit
    limit=$(capped "$2"); shift 2
    TAIL=${TAIL:-3} step "$name" "$limit" "$PY" benchmarks/train.py --json "$OUT/$name.json" --log "$OUT/$name-amt.log" \
        --time-limit $(( limit > 100 ? limit - 50 : limit / 2 )) "$@"
}
run_train() {
    train_step train 180 "${TRAIN[@]}"
    local status=$?
    if (( status != 0 )) && [[ -z $DRY ]] && grep -qiE "resource_exhausted|out of memory" "$OUT/train.log"; then
        # it ran out of memory (a smaller card): half the sequences a micro-step, twice the micro-steps
        train_step train-pdp16 150 "${TRAIN[@]}" -- --trainer.per_device_parallelism 16
        status=$?
    fi
    return "$status"
}
run_train-gif() {
    # the recipe with the loss's gradients taken in its forward pass (Levanter's grad-in-forward kernel: 3 products
    # of the 55,028-way head instead of 4; floor 1.07 -> 0.98 s on an H100, gpu_compile.py): compare with `train`,
    # same machine. Needs the kernel (marin-levanter 0.2.227): skipped where the Levanter here lacks it
    local have
    have=$("$PY" -c "from amt.train import _weighted_sum_kernel; print(_weighted_sum_kernel() is not None)" 2>&1 | tail -1)
    if [[ $have == False ]]; then
        log "train-gif: skipped, this Levanter has no grad-in-forward loss kernel"
        return 3
    elif [[ $have != True ]]; then
        log "train-gif failed: amt.train does not import: $have"
        return 1
    fi
    train_step train-gif 150 "${TRAIN[@]}" "${SEP[@]}" "${GIF[@]}"
}
run_train-variant() {
    train_step train-variant 150 "${TRAIN[@]}" "${SEP[@]}" "${VARIANT[@]}"
}
run_train-unfused() {
    train_step train-unfused 150 "${TRAIN[@]}" "${SEP[@]}" "${UNFUSED[@]}"
}
run_train-profile() {
    # the recipe again, one step after compilation under Levanter's profiler: how busy the card is in a step, the
    # matrix products' share, the kernels that take the time (summary in the log; the trace comes back beside
    # outputs.tar where it is under the 16 MiB a returned file may have)
    TAIL=18 train_step train-profile 150 --profile "$OUT/train-profile" "${TRAIN[@]}"
    local status=$?
    find "$OUT/train-profile" -name "*.json.gz" -size +15M -delete 2>/dev/null
    return "$status"
}
# (sampling and the tests: JAX and torch share the card, so JAX takes memory as it needs it, not 75% up front)
traced_medium() {  # NAME TRACE LIMIT [ARGS...]: Medium's sampling (more arguments for sample.py), then a trace into
    # $OUT/TRACE, the step at most LIMIT s
    local name=$1 trace=$OUT/$2 limit=$3 status
    shift 3
    XLA_PYTHON_CLIENT_PREALLOCATE=false TAIL=30 step "$name" "$limit" "$PY" benchmarks/sample.py "${MEDIUM[@]}" "$@" \
        --trace "$trace" --trace-events "$TRACE_EVENTS"
    status=$?
    # what comes back: the summary (in the log) and the Perfetto JSON (benchmarks/trace_summary.py reads it again)
    find "$trace" \( -name "*.xplane.pb" -o -name "*.trace.json.gz" \) -delete 2>/dev/null
    return "$status"
}
run_sample-medium() {
    traced_medium sample-medium trace-medium 150
}
run_sample-medium-ours() {
    # ours alone (both precisions, 8 events a device call and 1, as before it could take more): a later visit's check
    # of a change to our sampler, the others' figures known
    traced_medium sample-medium-ours trace-medium-ours 200 --only-ours --events-per-call 8,1
}
run_sample-small() {
    XLA_PYTHON_CLIENT_PREALLOCATE=false step sample-small 100 "$PY" benchmarks/sample.py "${SMALL[@]}"
}
run_sample-medium-nographs() {
    # ours again without XLA's CUDA graphs (command buffers: none; an event is one graph by default, counted by
    # benchmarks/gpu_compile.py): the difference is what launching each kernel from the host would cost, i.e. how
    # launch-bound one sample's step is (the flag parses on CPU too, where it does nothing)
    XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_FLAGS="--xla_gpu_enable_command_buffer=" \
        step sample-medium-nographs 150 "$PY" benchmarks/sample.py "${MEDIUM[@]}" --only-ours --events-per-call 8,1
}
run_sample-medium-while() {
    # ours with XLA's command buffers allowed to hold loops and conditionals too (WHILE, CONDITIONAL: CUDA graphs'
    # conditional nodes): a call of 8 events is then one graph launch instead of one a loop iteration
    # (gpu_compile.py, compiling for the card's driver, CUDA 13.0: `1 CommandBuffer`; with the default flags a graph
    # and a loop run from the host). Compare with sample-medium-ours's 8 a call, same machine.
    XLA_PYTHON_CLIENT_PREALLOCATE=false \
        XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL" \
        step sample-medium-while 100 "$PY" benchmarks/sample.py "${MEDIUM[@]}" --only-ours --events-per-call 8
}
run_sample-medium-pipeline() {
    # one sample (bfloat16: the 10x goal's best case), one event a call: not launched ahead (one event, wait for
    # the result, replay it, the next), the same launching each call before the last one's result is read
    # (SamplingOptions.launch_ahead, the default for one sample on a GPU since this measured it), then 100 calls
    # back to back, each on the last one's outputs, no read-back between them, with one executable and alternating
    # two: the bound launching ahead can reach (README)
    # (4 compiles of Medium's call: ~180 s; each figure is printed as it is timed)
    XLA_PYTHON_CLIENT_PREALLOCATE=false step sample-medium-pipeline 180 "$PY" benchmarks/sample.py "${MEDIUM[@]}" \
        --dtypes bfloat16 --only-ours --events-per-call 1 --batch 1 --events "$PIPELINE_EVENTS" --launch-ahead \
        --back-to-back "$BACK_TO_BACK"
}
tests_step() {  # NAME PATH...: pytest on those tests (in the dry run, the dry run's tests among them)
    local name=$1 selected=() test path
    shift
    for test in "${TESTS[@]}"; do
        for path in "$@"; do [[ $test == "$path"* ]] && selected+=("$test") && break; done
    done
    if (( ! ${#selected[@]} )); then  # (pytest with no path would run the whole suite)
        log "$name: skipped, no test of $* in this mode"
        return 3
    fi
    # the `amt train` and `amt generate` runs the tests start compute on the GPU too (AMT_TEST_JAX_PLATFORMS, the
    # GPU first; on CPU by default); every test reports, none stops the rest. Each test's name and outcome as it
    # ends (-v), and the stacks of a test still running after 90 s (faulthandler): the H100's step was killed
    # inside a compile, deaf to its interrupt, and left only dots
    AMT_TEST_JAX_PLATFORMS=$TEST_PLATFORMS XLA_PYTHON_CLIENT_PREALLOCATE=false TAIL=20 \
        step "$name" "$BUDGET" "$PY" -m pytest -v -p no:cacheprovider -o faulthandler_timeout=90 --tb=short \
        --durations=5 "${selected[@]}"
}
run_tests() { tests_step tests tests/; }
# the two files apart: the sampling tests first where training's would take the whole budget
run_tests-sampling() { tests_step tests-sampling tests/test_sampling.py; }
run_tests-train() { tests_step tests-train tests/test_train.py; }

# what comes back from a device call is at most 8 files: after each step its outputs go into one archive,
# $OUT/outputs.tar (device-check.log, the running summary, and the figures' JSON stay beside it)
pack() {
    local files=()
    mapfile -d '' files < <(cd "$OUT" && find . -type f ! -name device-check.log ! -name outputs.tar \
        ! -name '*.json' ! -path './train-profile/*' -print0)
    (( ${#files[@]} )) || return 0
    tar -C "$OUT" -rf "$OUT/outputs.tar" --remove-files "${files[@]}"
    find "$OUT" -mindepth 1 -type d -empty -delete
}

set +e
failed=()
for name in "${STEPS[@]}"; do
    "run_$name"
    status=$?
    pack
    # 124 would read as the device call's own time-out: a step cut short by its limit counts as skipped (3)
    (( status == 124 )) && status=3
    (( status == 0 )) || failed+=("$name:$status")
done
log "done in $((SECONDS - begin)) s; ${#failed[@]} of ${#STEPS[@]} step(s) failed or skipped${failed:+: ${failed[*]}}"
# exit 0 when every step ran and passed, 3 when the only trouble is steps skipped or cut by the budget, else 1
code=0
for entry in "${failed[@]}"; do
    if [[ ${entry##*:} == 3 ]]; then (( code == 0 )) && code=3; else code=1; fi
done
exit "$code"
