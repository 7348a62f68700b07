"""Pack a trained checkpoint into a bundle small enough for the repository (`amt.bundle`), and measure what
packing costs: loss, onset perplexity and onset masses of the checkpoint and of the unpacked bundle on the same
test sequences.

    python experiments/bundle_model.py --checkpoint runs/table1-long/anticipatory/checkpoints/step-2000 \\
        --training-cache data/mini-a10/train --test-cache data/mini-a1/test --out demo/model/amt-mini.npz
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python experiments/bundle_model.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a Levanter step-N folder or a Hugging Face folder")
    parser.add_argument("--training-cache", required=True, help="the cache the model was trained on (OUT/train)")
    parser.add_argument("--test-cache", required=True, help="a test cache of the same encoding, for the comparison")
    parser.add_argument("--out", type=Path, required=True, help="the bundle (.npz)")
    parser.add_argument("--about", default="", help="what the model is and how it was trained (kept in the bundle)")
    parser.add_argument("--sequences", type=int, default=64, help="test sequences compared")
    args = parser.parse_args(argv)
    for name in ("checkpoint", "training_cache", "test_cache"):
        if not os.path.exists(getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')}: {getattr(args, name)} not found")

    from amt import bundle, perplexity

    bundle.pack(args.checkpoint, args.training_cache, args.out, about=args.about)
    print(f"packed {args.checkpoint} into {args.out}: {args.out.stat().st_size / 2**20:.2f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        unpacked = bundle.unpack(args.out, Path(tmp) / "unpacked")
        rows = perplexity.run(perplexity.PerplexityConfig(checkpoints=[args.checkpoint, str(unpacked)],
                                                          cache=args.test_cache, out=str(Path(tmp) / "eval"),
                                                          max_sequences=args.sequences))
    rows[1]["checkpoint"] = f"{args.out} (unpacked)"
    print(perplexity.markdown_table(rows))


if __name__ == "__main__":
    main()
