"""The benchmarks' own arithmetic: what they report must follow from what they measured."""

import gzip
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import pytest  # noqa: E402
import trace_summary  # noqa: E402


def write_trace(path: Path, calls: int, kernels_per_call: int, kernel_us: float, call_us: float, tags=True,
                device=True, graph_updates=0) -> None:
    """A trace as jax writes one on a GPU: two nested PjitFunction events a call on the host; on the device, a
    stream line of kernels tagged with their XLA module, running 300 us behind the host, another module's
    kernels between them, a busier line of copies and a derived line ('XLA Ops') repeating the kernels. With
    `graph_updates`, each call also launches a CUDA graph (0.2 ms), the first `graph_updates` calls after
    re-recording it (0.3 ms)."""
    events = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 2, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7(Compute)"}},
        {"ph": "M", "pid": 2, "tid": 8, "name": "thread_name", "args": {"name": "Stream #8(MemcpyH2D)"}},
        {"ph": "M", "pid": 2, "tid": 9, "name": "thread_name", "args": {"name": "XLA Ops"}},
    ]
    for call in range(calls):
        t = 1000.0 + call * call_us
        events.append({"ph": "X", "pid": 1, "tid": 1, "name": "PjitFunction(_event)", "ts": t, "dur": 50.0})
        events.append({"ph": "X", "pid": 1, "tid": 1, "name": "PjitFunction(_event)", "ts": t + 1, "dur": 40.0})
        if graph_updates:
            if call < graph_updates:
                events.append({"ph": "X", "pid": 1, "tid": 1, "name": "command_buffer::update", "ts": t + 2,
                               "dur": 300.0})
            events.append({"ph": "X", "pid": 1, "tid": 1, "name": "cuGraphLaunch (CudaGraph:3)", "ts": t + 5,
                           "dur": 200.0})
        if not device:
            continue
        for k in range(kernels_per_call):
            start = t + 300 + k * (kernel_us + 1)
            name = "gemv" if k % 2 else f"loop_fusion_{k}"
            for line in (7, 9):  # the stream, and a derived line of the same ops (older exports add one)
                events.append({"ph": "X", "pid": 2, "tid": line, "name": name, "ts": start, "dur": kernel_us,
                               "args": {"hlo_module": "jit__event"} if tags else {}})
        events.append({"ph": "X", "pid": 2, "tid": 7, "name": "write_fusion", "ts": t + 250, "dur": 5.0,
                       "args": {"hlo_module": "jit__stage"} if tags else {}})
        for k in range(kernels_per_call + 10):
            events.append({"ph": "X", "pid": 2, "tid": 8, "name": "MemcpyH2D", "ts": t + 2 + k, "dur": 0.5})
    with gzip.open(path / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events + [{}]}, f)


def test_trace_summary_counts_a_calls_kernels_and_busy_time(tmp_path):
    write_trace(tmp_path, calls=5, kernels_per_call=40, kernel_us=10.0, call_us=2000.0)
    lines = trace_summary.summarize(tmp_path, "_event")
    assert lines[0].startswith("5 calls of _event: 2.00 ms a call"), lines[0]
    assert "0.05 ms in each call's dispatch" in lines[0]
    # 40 kernels of 10 us a call (the copies and the other module's kernel apart): 400 us busy of 2,000
    assert lines[1].startswith("device: 40 kernels a call (tagged jit__event; on Stream #7(Compute)), busy 0.40 ms "
                               "a call (20% of the wall time), 10.0 us a kernel; 50.0 memcpy/memset"), lines[1]
    assert "0.200 ms a call   20.0x  gemv" in lines[3], lines[3]
    assert lines[-1] == "other module jit__stage: 1 kernels, 0.01 ms a call of _event", lines[-1]


def test_trace_summary_says_how_often_the_host_re_records_the_events_graph(tmp_path):
    write_trace(tmp_path, calls=5, kernels_per_call=4, kernel_us=10.0, call_us=2000.0, graph_updates=2)
    lines = trace_summary.summarize(tmp_path, "_event")
    assert lines[1] == "CUDA graphs, on the host: 1.0 launches a call (0.20 ms), 0.4 updates (0.12 ms)", lines[1]
    assert lines[2].startswith("device: 4 kernels a call"), lines[2]


def test_trace_summary_without_module_tags_takes_the_kernels_between_the_calls(tmp_path):
    write_trace(tmp_path, calls=5, kernels_per_call=40, kernel_us=10.0, call_us=2000.0, tags=False)
    lines = trace_summary.summarize(tmp_path, "_event")
    # 4 calls' worth of window: 41 kernels each (the write's among them), 405 us busy
    assert lines[1].startswith("device: 41 kernels a call (in the window of the calls (no module tags)"), lines[1]
    assert "busy 0.41 ms a call (20% of the wall time)" in lines[1], lines[1]


def test_trace_summary_says_when_there_are_no_device_events(tmp_path):
    write_trace(tmp_path, calls=3, kernels_per_call=0, kernel_us=1.0, call_us=100.0, device=False)
    lines = trace_summary.summarize(tmp_path)
    assert len(lines) == 2 and "no device events" in lines[1]


@pytest.mark.slow
def test_train_benchmark_measures_the_steps_and_stops_before_the_final_evaluation(tmp_path):
    """benchmarks/train.py: a tiny recipe for 6 steps; the figure comes from Levanter's per-step throughput after
    compilation, and the run is stopped once the last step is logged (no final evaluation or checkpoint)."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    log, result = tmp_path / "amt-train.log", tmp_path / "train.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "offline"}
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "train.py"), "--recipe",
                          str(root / "recipes" / "amt-tiny.yaml"), "--batch", "2", "--steps", "6", "--log", str(log),
                          "--json", str(result), "--", "--model.max_seq_len", "128", "--model.hidden_dim", "32",
                          "--model.num_heads", "2"], env=env, capture_output=True, text=True, check=True, cwd=tmp_path)
    measured = json.loads(result.read_text())
    assert measured["steps_logged"] >= 4 and measured["steps_after_compilation"] >= 3, measured  # (from step 2)
    assert not measured["stopped_on_time"] and measured["tokens_per_second"] > 0
    assert "6 steps in" in out.stdout, out.stdout
    text = log.read_text()
    assert "step    6/6" in text and "validation loss" not in text and "Saving checkpoint" not in text
    assert text.count("Tracing train_step") == 1  # one compiled step: the watch hook's second one is off


HLO = """HloModule jit__event, entry_computation_layout={(f32[4]{0})->(f32[4]{0}, s32[])}

%fused_add (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %add.1 = f32[4]{0} add(%p, %p)
}

%body (state: (f32[4], s32[])) -> (f32[4], s32[]) {
  %state = (f32[4]{0}, s32[]) parameter(0)
  ROOT %t = (f32[4]{0}, s32[]) tuple(%a, %b)
}

ENTRY %main.7 (x.1: f32[4]) -> (f32[4], s32[]) {
  %x.1 = f32[4]{0} parameter(0)
  %c = s32[] constant(0)
  %loop_add_fusion.3 = f32[4]{0} fusion(%x.1), kind=kLoop, calls=%fused_add.12, metadata={op_name="jit(_event)/add"}
  %gemm = (f32[4]{0}, s8[64]{0}) custom-call(%x.1, %x.1), custom_call_target="__cublas$gemm"
  %gte = f32[4]{0} get-tuple-element(%gemm), index=0
  %b = f32[2,2]{1,0} bitcast(%gte)
  %w = (f32[4]{0}, s32[]) while(%t0), condition=%cond, body=%body
  %triton = (f32[4]{0}, u32[2]{0}) fusion(%gte), kind=kCustom, calls=%gemm_fusion_dot.579_computation.2
  ROOT %out = (f32[4]{0}, s32[]) tuple(%loop_add_fusion.3, %c)
}
"""


def test_gpu_compile_counts_the_entry_computations_launches():
    """What runs is the entry computation's fusions, library calls and loops, in order; parameters, constants,
    tuples and bitcasts are no kernels, and the other computations (fusion bodies, a loop's body) are not the
    entry's."""
    import gpu_compile

    launches = gpu_compile.entry_launches(HLO)
    assert launches == [("fusion", "kLoop fused_add"), ("custom-call", "__cublas$gemm"), ("while", "while"),
                        ("fusion", "kCustom gemm_fusion_dot_computation")]
    total, host_loops, by_what = gpu_compile.summary(launches)
    assert (total, host_loops, by_what["kLoop fused_add"]) == (4, 1, 1)


STEP_HLO = """HloModule jit_pure

%gemm_computation (a: bf16[8,16], b: bf16[16,32]) -> f32[8,32] {
  %a = bf16[8,16]{1,0} parameter(0)
  %b = bf16[16,32]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,32]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_slice (stack: f32[12,8,32], i: s32[]) -> f32[1,8,32] {
  %stack = f32[12,8,32]{2,1,0} parameter(0)
  %i = s32[] parameter(1)
  %z = s32[] constant(0)
  ROOT %ds = f32[1,8,32]{2,1,0} dynamic-slice(%stack, %i, %z, %z), dynamic_slice_sizes={1,8,32}
}

%fused_update (stack.1: f32[12,8,32], row: f32[1,8,32], j: s32[]) -> f32[12,8,32] {
  %stack.1 = f32[12,8,32]{2,1,0} parameter(0)
  %row = f32[1,8,32]{2,1,0} parameter(1)
  %j = s32[] parameter(2)
  %z.1 = s32[] constant(0)
  ROOT %dus = f32[12,8,32]{2,1,0} dynamic-update-slice(%stack.1, %row, %j, %z.1, %z.1)
}

%fused_scatter (stack.2: f32[12,8,32], at: s32[1,1], row.1: f32[1,8,32]) -> f32[12,8,32] {
  %stack.2 = f32[12,8,32]{2,1,0} parameter(0)
  %at = s32[1,1]{1,0} parameter(1)
  %row.1 = f32[1,8,32]{2,1,0} parameter(2)
  ROOT %sc = f32[12,8,32]{2,1,0} scatter(%stack.2, %at, %row.1), update_window_dims={1,2}, inserted_window_dims={0}, scatter_dims_to_operand_dims={0}, index_vector_dim=1, to_apply=%add
}

%body.2 (state: (bf16[8,16], bf16[16,32], f32[12,8,32], s32[])) -> (bf16[8,16], bf16[16,32], f32[12,8,32], s32[]) {
  %state = (bf16[8,16]{1,0}, bf16[16,32]{1,0}, f32[12,8,32]{2,1,0}, s32[]) parameter(0)
  %x = bf16[8,16]{1,0} get-tuple-element(%state), index=0
  %w = bf16[16,32]{1,0} get-tuple-element(%state), index=1
  %s = f32[12,8,32]{2,1,0} get-tuple-element(%state), index=2
  %k = s32[] get-tuple-element(%state), index=3
  %g = f32[8,32]{1,0} fusion(%x, %w), kind=kCustom, calls=%gemm_computation, metadata={op_name="jit(pure)/while/body/transpose(jvp(GptTransformer))/GptMlp/Linear/dot_general"}
  %r = f32[1,8,32]{2,1,0} fusion(%s, %k), kind=kLoop, calls=%fused_slice, metadata={op_name="jit(pure)/while/body/dynamic_slice"}
  %u = f32[12,8,32]{2,1,0} fusion(%s, %r, %k), kind=kLoop, calls=%fused_update, metadata={op_name="jit(pure)/while/body/checkpoint/rematted_computation/dynamic_update_slice"}
  %at.1 = s32[1,1]{1,0} constant({ {0} })
  %v = f32[12,8,32]{2,1,0} fusion(%u, %at.1, %r), kind=kInput, calls=%fused_scatter, metadata={op_name="jit(pure)/while/body/transpose(jvp(Embedding))/scatter-add"}
  ROOT %t = (bf16[8,16]{1,0}, bf16[16,32]{1,0}, f32[12,8,32]{2,1,0}, s32[]) tuple(%x, %w, %v, %k)
}

%cheap (c: f32[8]) -> f32[8] {
  %c = f32[8]{0} parameter(0)
  ROOT %n = f32[8]{0} fusion(%c), kind=kLoop, calls=%fused_add, metadata={op_name="jit(pure)/cond/branch_0_fun/neg"}
}

%costly (c.1: f32[8]) -> f32[8] {
  %c.1 = f32[8]{0} parameter(0)
  %e = f32[8]{0} fusion(%c.1), kind=kLoop, calls=%fused_add, metadata={op_name="jit(pure)/cond/branch_1_fun/exp"}
  ROOT %e.2 = f32[8]{0} fusion(%e), kind=kLoop, calls=%fused_add, metadata={op_name="jit(pure)/cond/branch_1_fun/exp"}
}

%fused_add (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %add.1 = f32[8]{0} add(%p, %p)
}

%wrapped (p.1: f32[8]) -> f32[8] {
  %p.1 = f32[8]{0} parameter(0)
  ROOT %f = f32[8]{0} fusion(%p.1), kind=kLoop, calls=%fused_add
}

%spin (v.1: f32[8]) -> f32[8] {
  %v.1 = f32[8]{0} parameter(0)
  ROOT %l = f32[8]{0} fusion(%v.1), kind=kLoop, calls=%fused_add, metadata={op_name="jit(pure)/while/body/log"}
}

ENTRY %main (q: bf16[2,64,4,16], st: (bf16[8,16], bf16[16,32], f32[12,8,32], s32[]), a: bf16[64,32], b: bf16[32,16], v: f32[8], i: s32[]) -> bf16[2,64,4,16] {
  %a = bf16[64,32]{1,0} parameter(2)
  %b = bf16[32,16]{1,0} parameter(3)
  %v = f32[8]{0} parameter(4)
  %i = s32[] parameter(5)
  %gemm = (bf16[64,16]{1,0}, s8[4194304]{0}) custom-call(%a, %b), custom_call_target="__cublas$gemm", metadata={op_name="jit(pure)/GptMlp/Linear/dot_general"}, backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  %branch = f32[8]{0} conditional(%i, %v, %v), branch_computations={%cheap, %costly}
  %start = ((f32[8]{0}), f32[8]{0}, s32[]) async-start(%v), calls=%wrapped, metadata={op_name="jit(pure)/async/add"}
  %done = f32[8]{0} async-done(%start)
  %unknown = f32[8]{0} while(%v), condition=%cond, body=%spin
  %q = bf16[2,64,4,16]{3,2,1,0} parameter(0)
  %st = (bf16[8,16]{1,0}, bf16[16,32]{1,0}, f32[12,8,32]{2,1,0}, s32[]) parameter(1)
  %loop = (bf16[8,16]{1,0}, bf16[16,32]{1,0}, f32[12,8,32]{2,1,0}, s32[]) while(%st), condition=%cond, body=%body.2, backend_config={"known_trip_count":{"n":"16"}}
  %fmha = (bf16[2,64,4,16]{3,2,1,0}, u8[0]{0}) custom-call(%q, %q, %q), custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="jit(pure)/GptAttention/dot_product_attention_fwd"}, backend_config={"cudnn_fmha_backend_config": {"mask_type": "CAUSAL"}}
  ROOT %o = bf16[2,64,4,16]{3,2,1,0} get-tuple-element(%fmha), index=0
}
"""


def test_gpu_compile_roofline_weighs_each_kernel_by_its_loops_bytes_and_products(capsys):
    """A loop's body runs its known trip count of times; a matrix product costs 2 x M x N x K; a fusion that
    slices a stacked buffer reads the slice, one that updates it in place (a dynamic update, a scatter) moves the
    update, not the buffer;
    cuDNN's causal attention costs half of 4 x batch x heads x S^2 x head forward."""
    import gpu_compile

    listed = gpu_compile.kernel_costs(STEP_HLO)
    costs = {cost.what: cost for cost in listed}
    assert set(costs) == {"backward: GptMlp/Linear/dot_general", "forward: dynamic_slice",
                          "recomputed: dynamic_update_slice", "forward: GptAttention/dot_product_attention_fwd",
                          "backward: transpose(jvp(Embedding))/scatter-add", "forward: GptMlp/Linear/dot_general",
                          "forward: exp", "forward: async/add", "forward: log"}
    # a cuBLAS product: its flops from its dimension numbers, its workspace no traffic
    cublas = costs["forward: GptMlp/Linear/dot_general"]
    assert (cublas.flops, cublas.bytes) == (2 * 64 * 16 * 32, (64 * 32 + 32 * 16 + 64 * 16) * 2)
    # of a conditional's branches the costlier (two kernels, not the other's one); an async op once, at its start
    assert [c.what for c in listed].count("forward: exp") == 2
    assert costs["forward: async/add"].bytes == 2 * 8 * 4
    # a loop whose trip count XLA does not know: counted once, and said
    assert costs["forward: log"].runs == 1 and "without a known trip count" in capsys.readouterr().err
    product = costs["backward: GptMlp/Linear/dot_general"]
    assert (product.runs, product.flops, product.bytes) == (16, 2 * 8 * 32 * 16, 8 * 16 * 2 + 16 * 32 * 2 + 8 * 32 * 4)
    row = 8 * 32 * 4
    assert costs["forward: dynamic_slice"].bytes == 2 * row + 4  # the slice read and written, the index
    assert costs["recomputed: dynamic_update_slice"].bytes == row + 4 + row  # the row read, the index, the row written
    assert costs["backward: transpose(jvp(Embedding))/scatter-add"].bytes == 4 + row + row
    attention = costs["forward: GptAttention/dot_product_attention_fwd"]
    assert (attention.runs, attention.flops) == (1, 4 * 2 * 4 * 64 ** 2 * 16 * 0.5)
    assert attention.bytes == 4 * 2 * 64 * 4 * 16 * 2  # three inputs and the output

    floor, ranked = gpu_compile.roofline(list(costs.values()), bandwidth=1e9, peak_flops=1e9)
    assert [seconds for seconds, *_ in ranked] == sorted((seconds for seconds, *_ in ranked), reverse=True)
    assert floor == pytest.approx(sum(c.runs * max(c.bytes, c.flops) / 1e9 for c in costs.values()))


THUNKS = """000: kCommandBuffer [source | sink]
    001: kCustomKernel [source       | next=002 (1)] input_reduce_fusion_55 grid: [157, 1, 1]
    002: kCustomKernel [prev=001 (1) | sink] fusion_879 grid: [79, 1, 1]
001: kWhile         [prev=000 (1) | next=002 (1)]
    000: kCommandBuffer [source | sink]
        001: kCustomKernel [source | sink] loop_select_fusion grid: [1172, 1, 1]
002: kCommandBuffer [prev=001 (1) | sink]
    003: kCustomKernel [source | sink] loop_add_fusion grid: [1, 1, 1]
"""


def test_gpu_compile_reads_how_xla_runs_a_program_from_its_thunk_sequence(tmp_path):
    """Only top-level thunks count (a graph's kernels and a loop's body are nested); the newest dump is read."""
    import gpu_compile

    assert gpu_compile.top_level_thunks(THUNKS) == {"kCommandBuffer": 2, "kWhile": 1}
    assert gpu_compile.described(gpu_compile.top_level_thunks(THUNKS)) == "2 CommandBuffer, 1 While"
    old = tmp_path / "module_0001.jit__event.thunk_sequence_after_thunk_passes.txt"
    new = tmp_path / "module_0042.jit__event.thunk_sequence_after_thunk_passes.txt"
    old.write_text(THUNKS)
    (tmp_path / "module_0042.jit__event.thunk_sequence.txt").write_text("000: kKernel\n001: kKernel\n")
    new.write_text("000: kCommandBuffer [source | sink]\n")
    for path in tmp_path.iterdir():
        os.utime(path, ns=(1, 1) if path == old else (2, 2))
    assert gpu_compile.top_level_thunks(gpu_compile.newest_thunk_sequence(tmp_path, "jit__event")) == {
        "kCommandBuffer": 1}
    # with command buffers off, XLA writes only the sequence as emitted
    new.unlink()
    assert gpu_compile.top_level_thunks(gpu_compile.newest_thunk_sequence(tmp_path, "jit__event")) == {"kKernel": 2}
    assert gpu_compile.newest_thunk_sequence(tmp_path, "jit__stage") == ""


def test_device_time_over_a_whole_trace_counts_every_kernel_and_the_products_share(tmp_path):
    """`trace_summary.py --whole` (a train step's profile): all the device's kernels, whichever module."""
    write_trace(tmp_path, calls=5, kernels_per_call=40, kernel_us=10.0, call_us=2000.0)
    lines = trace_summary.device_time(tmp_path)
    # 5 x (40 kernels of 10 us + the other module's of 5 us), from the first (1,250 us) to the last end (9,739 us)
    assert lines[0] == "device: 205 kernels over 8.5 ms, busy 2.0 ms (24%), 9.9 us a kernel; 250 memcpy/memset (0.1 ms)", \
        lines[0]
    assert lines[1] == "matrix products: 100 kernels, 1.0 ms (49% of the busy time); the rest 105 kernels, 1.0 ms", lines[1]
    assert "    1.0 ms  49.4%    100x  gemv" in lines[3], lines[3]


DEVICE_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.sh"


def test_device_check_names_its_steps_and_refuses_what_it_cannot_run(tmp_path):
    """Every step the device check lists has its function; an unknown step is refused naming it, and a Python that
    cannot import the project is refused in one line before any step (it used to end the check silently after
    its header), both with exit status 2 and nothing left to time."""
    import re
    import subprocess

    script = DEVICE_CHECK.read_text()
    steps = re.search(r"ALL_STEPS=\(([^)]*)\)", script).group(1).split()
    assert "sample-medium-pipeline" in steps and "tests" in steps
    missing = [name for name in steps if not re.search(rf"^run_{re.escape(name)}\(\) {{", script, re.MULTILINE)]
    assert not missing, f"steps without a run_ function: {missing}"
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    unknown = subprocess.run(["bash", str(DEVICE_CHECK), "--dry", "tests", "no-such-step"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown step 'no-such-step'" in unknown.stderr
    bare = tmp_path / "bare-python"
    bare.write_text("#!/bin/sh\necho 'Traceback (most recent call last):' >&2\n"
                    "echo \"ModuleNotFoundError: No module named 'levanter'\" >&2\nexit 1\n")
    bare.chmod(0o755)
    refused = subprocess.run(["bash", str(DEVICE_CHECK), "--dry", "tests"], env=dict(env, PYTHON=str(bare)),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"device_check: {bare} cannot import amt and levanter (ModuleNotFoundError: No module named 'levanter'): "
        "activate the project's venv or set PYTHON (on the GPU machine: install the wheels first, --install DIR)"]
    assert not (tmp_path / "out" / "device-check.log").exists()


def test_sample_benchmark_times_calls_back_to_back(tmp_path):
    """`benchmarks/sample.py --launch-ahead --back-to-back N` (the device check's sample-medium-pipeline) runs at a
    full context on a tiny model: ours launching ahead timed beside ours not launched ahead (and its music compared
    with theirs), then what a call costs back to back, with one executable and alternating two."""
    import re
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(root / "src"))
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "sample.py"), "--layers", "1", "--width", "32",
                           "--heads", "2", "--events", "3", "--batch", "1", "--only-ours", "--events-per-call", "1",
                           "--launch-ahead", "--back-to-back", "4"], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ours (JAX, KV cache, float32, 1 a call, launched ahead): " in done.stdout, done.stdout
    assert ("ours (float32, 1 a call, launched ahead) against (float32): batch 1: the same, token for token; "
            "batch 1: the same, token for token") in done.stdout, done.stdout
    line = [line for line in done.stdout.splitlines() if "back to back" in line]
    assert len(line) == 1 and re.search(r"4 calls back to back with no read-back between them: [\d.]+ ms a call with "
                                        r"one executable, [\d.]+ ms a call with two alternating$", line[0]), line
