"""Training throughput of a recipe (default GPT-2 Small, seq 1024, bf16) on this machine's accelerator.

Runs `amt train` for a few steps on a synthetic cache (random tokens: speed does not depend on the data) and
reads Levanter's own throughput log: tokens/s and MFU (model FLOPs utilization, against the device's peak,
which Levanter knows for TPUs and NVIDIA GPUs). The first steps (compilation) are left out. The ratio printed
is MFU against the 40% target of the training issue.

Usage: python benchmarks/train.py [--recipe recipes/amt-small.yaml] [--batch 16] [--steps 30] [--extra ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

TARGET_MFU = 40.0


def synthetic_cache(out: Path, rows: int) -> None:
    from levanter.store.cache import CacheLedger, CacheMetadata
    from levanter.store.jagged_array import PreparedBatch
    from levanter.store.tree_store import TreeStore

    from amt import preprocess, vocab

    tokens = np.random.default_rng(0).integers(0, vocab.VOCAB_SIZE, (rows, vocab.CONTEXT_SIZE), dtype=np.int32)
    for split in ("train", "validation"):
        store = TreeStore.open(preprocess.CACHE_EXEMPLAR, str(out / split), mode="w")
        ends = np.arange(1, rows + 1) * vocab.CONTEXT_SIZE
        store.extend_with_batch({"input_ids": PreparedBatch(tokens.reshape(-1), ends, None)})
        CacheLedger(total_num_rows=rows, shard_rows={"amt": rows}, is_finished=True, finished_shards=["amt"],
                    field_counts={}, metadata=CacheMetadata({}))._serialize_and_commit(str(out / split))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/amt-small.yaml")
    parser.add_argument("--batch", type=int, default=16, help="sequences a step (on one device: its batch)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("extra", nargs="*", help="more `amt train` overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic_cache(tmp / "cache", rows=args.batch * (args.steps + 2))
        recipe = yaml.safe_load(Path(args.recipe).read_text())
        recipe["trainer"]["tracker"] = {"type": "json_logger"}  # read back below; no wandb needed
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        command = [sys.executable, "-m", "amt.cli", "train", "--config_path", str(tmp / "recipe.yaml"),
                   "--data.cache_dir", str(tmp / "cache"), "--trainer.train_batch_size", str(args.batch),
                   "--trainer.per_device_parallelism", "-1", "--trainer.num_train_steps", str(args.steps),
                   "--trainer.steps_per_eval", str(10 * args.steps), "--optimizer.warmup", "0.1",
                   "--trainer.checkpointer.base_path", str(tmp / "ckpt"), "--trainer.log_dir", str(tmp / "logs"),
                   "--trainer.id", "bench", *args.extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        records = []
        for log in (tmp / "logs").glob("*.log"):
            for line in log.read_text().splitlines():
                if '"throughput/tokens_per_second"' in line:
                    records.append(json.loads(line[line.index("{"):]))
    steady = [r["metrics"] for r in records if r.get("step", -1) >= 5]
    tokens = np.median([m["throughput/tokens_per_second"] for m in steady])
    mfu = [m["throughput/mfu"] for m in steady if "throughput/mfu" in m]
    device = next((r["summary"]["throughput/device_kind"] for r in records if "throughput/device_kind" in r.get("summary", {})), "?")
    print(f"{args.recipe}, batch {args.batch} x 1024, {args.steps} steps on {device}: {tokens:,.0f} tokens/s")
    if mfu:
        print(f"MFU {np.median(mfu):.1f}% (target {TARGET_MFU:.0f}%: ratio {np.median(mfu) / TARGET_MFU:.2f})")
    else:
        print("MFU: Levanter does not know this device's peak FLOP/s (e.g. a CPU)")


if __name__ == "__main__":
    main()
