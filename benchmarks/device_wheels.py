"""Prepare the wheels `benchmarks/device_check.sh` installs on a GPU machine (Python 3.12, no network).

Run here, with network:
    python benchmarks/device_wheels.py [--have device-packages.txt] [--batch-mib 60]

It downloads, for CPython 3.12 on manylinux x86_64 and without dependencies, every distribution listed in
`benchmarks/device-requirements.txt` (what the device check imports, pinned: the minimal set, found by adding
wheels to a bare Python 3.12 venv of jax 0.11.2, numpy, scipy and torch only where an import failed; its header
says how and why each heavy one is there; 117 distributions, 296.8 MiB) into `benchmarks/wheels/`
(git-ignored), leaving out those the machine already has (`--have`: the `pip list --format=freeze` that
`device_check.sh --inventory` writes into $OUT), and splits them into folders
`batch-1`, `batch-2`, ... of at most 58 MiB (a device call carries at most 64 MiB, the working tree included):
6 batches (5 with `--batch-mib 60`, if the working tree stays under 3 MiB), so 7 device calls in all (installing a
batch took about 20 s on a loaded 2-core CPU here). Then, on the device:

    run: bash benchmarks/device_check.sh --inventory                      (optional: what the machine has)
    run: bash benchmarks/device_check.sh --install benchmarks/wheels/batch-K   carry [benchmarks/wheels/batch-K]
    ... one call per batch (.device-site stays on the warm machine between calls) ...
    run: bash benchmarks/device_check.sh                                   (tests and figures, under 8 minutes)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_34_x86_64"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--have", default=None, help="the device's `pip list --format=freeze` (skip those)")
    parser.add_argument("--out", default=str(HERE / "wheels"))
    parser.add_argument("--batch-mib", type=float, default=58.0)
    args = parser.parse_args()
    requirements = [line.strip() for line in (HERE / "device-requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    if args.have:
        have = {norm(line.split("==")[0]) for line in Path(args.have).read_text().splitlines() if "==" in line}
        requirements = [r for r in requirements if norm(r.split("==")[0]) not in have]
    out = Path(args.out)
    download = out / "all"
    download.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
                    "--abi", "none", *platforms, "-d", str(download), *requirements], check=True)
    wanted = {norm(r.split("==")[0]) for r in requirements}
    wheels = sorted((w for w in download.glob("*.whl") if norm(w.name.split("-")[0]) in wanted),
                    key=lambda w: -w.stat().st_size)
    limit = args.batch_mib * 2**20
    batches: list[list[Path]] = []
    for wheel in wheels:  # first fit, largest first
        size = wheel.stat().st_size
        if size > limit:
            raise SystemExit(f"{wheel.name}: {size / 2**20:.1f} MiB, more than a batch ({args.batch_mib} MiB)")
        for batch in batches:
            if sum(w.stat().st_size for w in batch) + size <= limit:
                batch.append(wheel)
                break
        else:
            batches.append([wheel])
    for old in out.glob("batch-*"):
        shutil.rmtree(old)
    for i, batch in enumerate(batches, 1):
        folder = out / f"batch-{i}"
        folder.mkdir()
        for wheel in batch:
            shutil.copy2(wheel, folder / wheel.name)
        print(f"{folder}: {len(batch)} wheels, {sum(w.stat().st_size for w in batch) / 2**20:.1f} MiB")
    print(f"{len(wheels)} wheels for {len(requirements)} requirements in {len(batches)} batch(es)")


if __name__ == "__main__":
    main()
