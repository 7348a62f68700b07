"""Training throughput of a recipe on this machine's accelerator: tokens/s and MFU.

Runs `amt train` for a few steps on a synthetic cache (random tokens: speed does not depend on the data) and
reads Levanter's own throughput log (tokens/s per step). The first steps (compilation) are left out: Levanter
logs from step 2, and the median is taken over the rest. MFU (model FLOPs utilization) is ours, not Levanter's:
tokens/s x training FLOPs a token (`amt.train.training_flops_per_token`: 6 x parameters + attention,
6 x layers x context x width) / the card's dense bf16 peak (H100 and H200 SXM: 989 TFLOP/s).

Usage: python benchmarks/train.py [--recipe recipes/amt-small-gpu.yaml] [--batch N] [--steps 12] [-- overrides...]
       (`--batch` replaces the recipe's global batch; without it the recipe's, with its gradient accumulation)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import draccus
import numpy as np
import yaml

# dense bf16 peak FLOP/s by device kind (as jax names them), for MFU
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device_kind: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16.items() if name.lower() in device_kind.lower()), None)


def synthetic_cache(out: Path, rows: int) -> None:
    from levanter.store.cache import CacheLedger, CacheMetadata
    from levanter.store.jagged_array import PreparedBatch
    from levanter.store.tree_store import TreeStore

    from amt import vocab

    exemplar = {"input_ids": np.zeros((0,), dtype=np.int32)}  # amt.preprocess.CACHE_EXEMPLAR (no MIDI reader needed)
    tokens = np.random.default_rng(0).integers(0, vocab.VOCAB_SIZE, (rows, vocab.CONTEXT_SIZE), dtype=np.int32)
    for split in ("train", "validation"):
        store = TreeStore.open(exemplar, str(out / split), mode="w")
        ends = np.arange(1, rows + 1) * vocab.CONTEXT_SIZE
        store.extend_with_batch({"input_ids": PreparedBatch(tokens.reshape(-1), ends, None)})
        CacheLedger(total_num_rows=rows, shard_rows={"amt": rows}, is_finished=True, finished_shards=["amt"],
                    field_counts={}, metadata=CacheMetadata({}))._serialize_and_commit(str(out / split))


def measure(recipe: str, steps: int, batch: int | None = None, overrides: list[str] = ()) -> dict:
    """Train `steps` steps of `recipe` on random tokens; tokens/s (median of the steps after compilation), MFU."""
    from amt.train import TrainConfig, training_flops_per_token

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = yaml.safe_load(Path(recipe).read_text())
        config["trainer"]["tracker"] = {"type": "json_logger"}  # read back below; no wandb needed
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(config))
        args = ["--data.cache_dir", str(tmp / "cache"), "--trainer.num_train_steps", str(steps),
                "--trainer.steps_per_eval", str(10 * steps), "--optimizer.warmup", "0.1",
                "--trainer.checkpointer.base_path", str(tmp / "ckpt"), "--trainer.checkpointer.save_interval", "1000h",
                "--trainer.log_dir", str(tmp / "logs"), "--trainer.id", "bench"]
        if batch is not None:
            args += ["--trainer.train_batch_size", str(batch), "--trainer.per_device_parallelism", "-1"]
        args += list(overrides)
        parsed = draccus.parse(TrainConfig, config_path=str(tmp / "recipe.yaml"), args=args)
        synthetic_cache(tmp / "cache", rows=parsed.trainer.train_batch_size * (steps + 1) + 8)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
        run = subprocess.run([sys.executable, "-m", "amt.cli", "train", "--config_path", str(tmp / "recipe.yaml"), *args],
                             env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"amt train failed (exit {run.returncode}):\n{run.stderr[-4000:]}")
        records = [json.loads(line[line.index("{"):]) for log in (tmp / "logs").glob("*.log")
                   for line in log.read_text().splitlines() if '"throughput/tokens_per_second"' in line]
    steady = [r["metrics"]["throughput/tokens_per_second"] for r in records if r.get("step", -1) >= 3] or \
        [r["metrics"]["throughput/tokens_per_second"] for r in records]
    import jax

    kind = jax.devices()[0].device_kind  # this process's view; the training subprocess sees the same devices
    tokens = float(np.median(steady))
    flops = training_flops_per_token(parsed.model)
    peak = peak_flops(kind)
    return {"recipe": recipe, "device": kind, "devices": jax.device_count(), "steps": steps,
            "batch": parsed.trainer.train_batch_size, "context": parsed.model.max_seq_len,
            "tokens_per_second": tokens, "flops_per_token": flops,
            "mfu": tokens * flops / (peak * jax.device_count()) if peak else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/amt-small-gpu.yaml")
    parser.add_argument("--batch", type=int, default=None, help="global batch in sequences (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("overrides", nargs="*", help="more `amt train` overrides (after --)")
    args = parser.parse_args()
    result = measure(args.recipe, args.steps, args.batch, args.overrides)
    mfu = f"MFU {100 * result['mfu']:.1f}% of bf16 peak" if result["mfu"] is not None else \
        f"MFU: no bf16 peak known for {result['device']}"
    print(f"train {result['recipe']}: batch {result['batch']} x {result['context']}, {result['steps']} steps on "
          f"{result['devices']} x {result['device']}: {result['tokens_per_second']:,.0f} tokens/s; {mfu}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
