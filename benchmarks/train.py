"""Training throughput of a recipe on this machine's accelerator: tokens/s and MFU.

Runs `amt train` for a few steps on a synthetic cache (random tokens: speed does not depend on the data) and
reads Levanter's own throughput log (tokens/s per step). The first steps (compilation) are left out: Levanter
logs from step 2, and the median is taken over the rest. Levanter's watch hook (parameter and gradient norms every
10th step) is switched off: it compiles a second train step (one compilation instead of two; measured on CPU, a
tiny 4-step run took 18 s instead of 31). MFU (model FLOPs utilization) is ours, not Levanter's:
tokens/s x training FLOPs a token (`amt.train.training_flops_per_token`: 6 x parameters + attention,
6 x layers x context x width) / the card's dense bf16 peak (H100 and H200 SXM: 989 TFLOP/s).

`amt train`'s whole output goes to `--log` as it runs (its one line a step shows where a slow run is); with
`--time-limit` the run is stopped after that many seconds and the figure is taken from the steps logged by then.

With `--profile DIR` (and 6 steps or more), Levanter's profiler records one step after compilation (the fifth, or
the one before the last) and its trace (Perfetto JSON: marin-levanter 0.2.20 always writes one, 0.2.227 when
asked, as here) lands in DIR, summarized by `benchmarks/trace_summary.py --whole`: how busy the device is in a
step and which kernels take the time. The profiled step runs slower than the others; the figure is the median of them all.

Usage: python benchmarks/train.py [--recipe recipes/amt-small-gpu.yaml] [--batch N] [--steps 12] [--log FILE]
       [--time-limit SECONDS] [--profile DIR] [-- overrides...]
       (`--batch` replaces the recipe's global batch; without it the recipe's, with its gradient accumulation)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import draccus
import numpy as np
import yaml

# dense bf16 peak FLOP/s by device kind (as jax names them), for MFU
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device_kind: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16.items() if name.lower() in device_kind.lower()), None)


def synthetic_cache(out: Path, rows: int, vocab_size: int) -> None:
    from levanter.store.cache import CacheLedger, CacheMetadata
    from levanter.store.jagged_array import PreparedBatch
    from levanter.store.tree_store import TreeStore

    from amt import vocab

    exemplar = {"input_ids": np.zeros((0,), dtype=np.int32)}  # amt.preprocess.CACHE_EXEMPLAR (no MIDI reader needed)
    tokens = np.random.default_rng(0).integers(0, vocab_size, (rows, vocab.CONTEXT_SIZE), dtype=np.int32)
    for split in ("train", "validation"):
        store = TreeStore.open(exemplar, str(out / split), mode="w")
        ends = np.arange(1, rows + 1) * vocab.CONTEXT_SIZE
        store.extend_with_batch({"input_ids": PreparedBatch(tokens.reshape(-1), ends, None)})
        CacheLedger(total_num_rows=rows, shard_rows={"amt": rows}, is_finished=True, finished_shards=["amt"],
                    field_counts={}, metadata=CacheMetadata({}))._serialize_and_commit(str(out / split))


def throughput_records(logs: Path) -> list[dict]:
    """The per-step throughput records Levanter's json_logger has written so far (not its summary)."""
    records = []
    for log_file in logs.glob("*.log"):
        for line in log_file.read_text(errors="replace").splitlines():  # (its last line may be half written)
            if '"event": "log"' in line and '"throughput/tokens_per_second"' in line:
                try:
                    records.append(json.loads(line[line.index("{"):]))
                except json.JSONDecodeError:  # a line being written
                    pass
    return records


def profiler_overrides(step: int) -> list[str]:
    """Levanter's profiler over step `step` alone, its trace also as Perfetto JSON where this Levanter writes one."""
    from levanter.callbacks.profiler import ProfilerConfig

    args = ["--trainer.profiler.enabled", "true", "--trainer.profiler.start_step", str(step),
            "--trainer.profiler.num_steps", "1"]
    if "create_perfetto_trace" in {field.name for field in dataclasses.fields(ProfilerConfig)}:
        args += ["--trainer.profiler.create_perfetto_trace", "true"]
    return args


def _written(path: Path, wait: float = 30.0) -> None:
    """Wait (up to `wait` s) until `path` stops growing: the profiler writes its trace while the run goes on."""
    size, deadline = -1, time.monotonic() + wait
    while path.stat().st_size != size and time.monotonic() < deadline:
        size = path.stat().st_size
        time.sleep(1.0)


def measure(recipe: str, steps: int, batch: int | None = None, overrides: list[str] = (), log: str | None = None,
            time_limit: float | None = None, profile: str | None = None) -> dict:
    """Train `steps` steps of `recipe` on random tokens; tokens/s (median of the steps after compilation), MFU.
    With `profile`, the profiler's trace of one step is copied there."""
    from amt import vocab
    from amt.train import TrainConfig, training_flops_per_token

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = yaml.safe_load(Path(recipe).read_text())
        config["trainer"]["tracker"] = {"type": "json_logger"}  # read back below; no wandb needed
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(config))
        args = ["--data.cache_dir", str(tmp / "cache"), "--trainer.num_train_steps", str(steps),
                "--trainer.steps_per_eval", str(10 * steps), "--optimizer.warmup", "0.1",
                "--trainer.checkpointer.base_path", str(tmp / "ckpt"), "--trainer.checkpointer.save_interval", "1000h",
                "--trainer.log_dir", str(tmp / "logs"), "--trainer.id", "bench",
                # no parameter/gradient norms: their steps (every 10th) are a second compiled train step, which
                # would double the compilation a short run waits for (the other steps run the same either way)
                "--trainer.watch.interval", "0"]
        if batch is not None:
            args += ["--trainer.train_batch_size", str(batch), "--trainer.per_device_parallelism", "-1"]
        if profile:  # (Levanter's hooks first fire after step 2: the profiler can start on the fourth at the earliest)
            args += profiler_overrides(min(4, steps - 2))
        args += list(overrides)
        parsed = draccus.parse(TrainConfig, config_path=str(tmp / "recipe.yaml"), args=args)
        synthetic_cache(tmp / "cache", rows=parsed.trainer.train_batch_size * (steps + 1) + 8,
                        vocab_size=parsed.data.vocab_size or vocab.VOCAB_SIZE)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
        log_path = Path(log) if log else tmp / "amt-train.log"
        begin = time.monotonic()
        with open(log_path, "w") as out:
            verbose = ["--verbose"] if log else []  # every library's INFO lines (compilation, kernel tuning) in the log
            run = subprocess.Popen([sys.executable, "-m", "amt.cli", "train", *verbose, "--config_path",
                                    str(tmp / "recipe.yaml"), *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   text=True)
            # stopped once the last step's throughput is logged (what follows, the final evaluation with its own
            # compilation and the checkpoint, is not measured), or on time (the steps logged so far count)
            returncode = None
            try:
                while returncode is None and not (time_limit and time.monotonic() - begin > time_limit):
                    if any(r.get("step", -1) >= steps - 1 for r in throughput_records(tmp / "logs")) and (
                            not profile or any((tmp / "logs").rglob("perfetto_trace.json.gz"))):
                        break  # (a profile's trace is written after its step: a short run can end first)
                    try:  # (every 0.1 s: a tiny model's final evaluation, its step compiled, takes under 1 s)
                        returncode = run.wait(timeout=0.1)
                    except subprocess.TimeoutExpired:
                        pass
                if returncode is None:
                    run.terminate()
                    try:
                        run.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        run.kill()
                        run.wait()
            finally:
                if run.poll() is None:  # interrupted (Ctrl-C): the run does not outlive us
                    run.kill()
                    run.wait()
        seconds = time.monotonic() - begin
        if returncode not in (0, None):
            raise RuntimeError(f"amt train failed (exit {returncode}):\n{log_path.read_text()[-4000:]}")
        records = throughput_records(tmp / "logs")
        if profile:  # the Perfetto JSON only: the profiler's own .xplane.pb is several times larger
            Path(profile).mkdir(parents=True, exist_ok=True)
            for found in (tmp / "logs").rglob("perfetto_trace.json.gz"):
                _written(found)
                shutil.copy(found, Path(profile) / found.name)
        if not records:
            raise RuntimeError(f"amt train logged no step in {seconds:.0f} s; its output ends:\n"
                               f"{log_path.read_text()[-4000:]}")
    steady = [r["metrics"]["throughput/tokens_per_second"] for r in records if r.get("step", -1) >= 3]
    after_compilation = len(steady)
    steady = steady or [r["metrics"]["throughput/tokens_per_second"] for r in records]  # (then compilation counts)
    import jax

    kind = jax.devices()[0].device_kind  # this process's view; the training subprocess sees the same devices
    tokens = float(np.median(steady))
    flops = training_flops_per_token(parsed.model, parsed.data.vocab_size or vocab.VOCAB_SIZE)
    peak = peak_flops(kind)
    return {"recipe": recipe, "device": kind, "devices": jax.device_count(), "steps": steps,
            "steps_logged": len(records), "steps_after_compilation": after_compilation,
            "stopped_on_time": not any(r.get("step", -1) >= steps - 1 for r in records), "seconds": round(seconds, 1),
            "batch": parsed.trainer.train_batch_size, "context": parsed.model.max_seq_len,
            "tokens_per_second": tokens, "flops_per_token": flops,
            "mfu": tokens * flops / (peak * jax.device_count()) if peak else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/amt-small-gpu.yaml")
    parser.add_argument("--batch", type=int, default=None, help="global batch in sequences (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--log", default=None, help="write amt train's output here as it runs")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="stop the run after this many seconds and measure the steps logged by then")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="profile one step after compilation into DIR and say where the device's time goes")
    parser.add_argument("overrides", nargs="*", help="more `amt train` overrides (after --)")
    args = parser.parse_args()
    if args.profile and args.steps < 6:
        parser.error(f"--profile needs --steps 6 or more (the profiled step comes after compilation), not {args.steps}")
    result = measure(args.recipe, args.steps, args.batch, args.overrides, args.log, args.time_limit, args.profile)
    mfu = f"MFU {100 * result['mfu']:.1f}% of bf16 peak" if result["mfu"] is not None else \
        f"MFU: no bf16 peak known for {result['device']}"
    ran = (f"stopped after {result['seconds']:.0f} s with {result['steps_logged']} of {result['steps']} steps logged"
           if result["stopped_on_time"] else f"{result['steps']} steps in {result['seconds']:.0f} s")
    if not result["steps_after_compilation"]:
        ran += " (no step after compilation: the figure includes it)"
    print(f"train {result['recipe']}: batch {result['batch']} x {result['context']}, {ran}, on "
          f"{result['devices']} x {result['device']}: {result['tokens_per_second']:,.0f} tokens/s; {mfu}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.profile:
        from trace_summary import device_time

        traces = sorted(Path(args.profile).glob("perfetto_trace.json.gz"))
        print(f"profile of one step, in {args.profile}:")
        print("\n".join(device_time(traces[-1]) if traces else
                        ["no Perfetto trace: the profiler wrote none before the run ended (see --log)"]))


if __name__ == "__main__":
    main()
