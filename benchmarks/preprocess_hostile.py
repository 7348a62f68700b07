"""Issue 11's measurement: the preprocessing job on real files, then on the same files plus the crafted hostile
ones (the 44-byte overflow file, a 50 MB file of notes with one 0xF8 byte, a 1 MB long-delta file).

    PYTHONPATH=src python benchmarks/preprocess_hostile.py [--midi ../shared/midi] [--repeats 2]

Prints the wall time of each job (best of the repeats, alternating clean and hostile) and how each crafted
file was skipped. Run twice per folder: with the default 16 MB per-file budget (the 50 MB file is skipped
unread) and with a 64 MB one (it is read on the fast path, then refused by the notes budget).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import tempfile
import time
from pathlib import Path

from amt import midi, preprocess

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("crafted_midi", HERE.parent / "tests" / "crafted_midi.py")
crafted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(crafted)


def _job(source: Path, out: Path, **options) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    stats = preprocess.run(preprocess.PreprocessConfig(source=str(source), out=str(out), progress_bar=False, **options))
    return time.perf_counter() - start, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--midi", default=str(HERE.parent.parent / "shared" / "midi"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clean, hostile = tmp / "clean", tmp / "hostile"
        for path in midi.midi_files(args.midi):
            target = clean / path.relative_to(args.midi)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
        shutil.copytree(clean, hostile)
        for name, make in crafted.CRAFTED.items():
            (hostile / name).write_bytes(make())
        _job(clean, tmp / "warm", workers=args.workers)  # compile and import once
        for budget_mb in (16, 64):
            best = {"clean": float("inf"), "hostile": float("inf")}
            for _ in range(args.repeats):
                for name, folder in (("clean", clean), ("hostile", hostile)):
                    seconds, stats = _job(folder, tmp / f"out_{name}", workers=args.workers, max_file_bytes=budget_mb << 20)
                    best[name] = min(best[name], seconds)
                    if name == "hostile":
                        skips = {s["file"]: f"{s['reason']} ({s['detail']})" for s in stats["skipped_files"]
                                 if s["file"] in crafted.CRAFTED}
            print(f"budget {budget_mb} MB: clean {best['clean']:.2f} s, clean + crafted {best['hostile']:.2f} s "
                  f"(+{best['hostile'] - best['clean']:.2f} s), workers {args.workers}")
            for file, why in sorted(skips.items()):
                print(f"  skipped {file}: {why}")


if __name__ == "__main__":
    main()
