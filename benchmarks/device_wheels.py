"""Prepare the wheels `benchmarks/device_check.sh` installs on a GPU machine (Python 3.12, no network).

Run here, with network:
    python benchmarks/device_wheels.py [--have benchmarks/device-have.txt] [--batch-mib 53]

It downloads, for CPython 3.12 on manylinux x86_64 and without dependencies, every distribution listed in
`benchmarks/device-requirements.txt` (what the device check imports, pinned: the minimal set, found by adding
wheels to a bare Python 3.12 venv of jax 0.11.2, numpy, scipy and torch only where an import failed; its header
says how and why each heavy one is there; 117 distributions, 296.8 MiB) into `benchmarks/wheels/all`
(git-ignored), and keeps those the machine lacks (`--have`: the machine's packages, `benchmarks/device-have.txt`
by default, or the `pip list --format=freeze` that `device_check.sh --inventory` writes into $OUT), plus the
small JAX libraries in OVERRIDABLE, which `device_check.sh --install` puts first on the path only where the
machine's version breaks a requirement of our set (`requires.json`, written into every batch). They are split
into folders `batch-1`, `batch-2`, ... of at most 53 MiB (a device call carries at most 64 MiB, the working tree
of about 6 MiB included): on 2026-11-26 and -27, 63 wheels, 104 MiB, 2 batches, so 2 device calls (18 s to
prepare here; the install took 4 and 11 s there; the H100s of 2026-11-27 started in 31-36 s). The next visit:

    run: bash benchmarks/device_check.sh --install benchmarks/wheels/batch-1     carry [benchmarks/wheels/batch-1]
    run: bash benchmarks/device_check.sh --install benchmarks/wheels/batch-2 &&
         BUDGET=540 bash benchmarks/device_check.sh tests-sampling tests-train   carry [benchmarks/wheels/batch-2]
    run: BUDGET=<the device time left, less 40 s> bash benchmarks/device_check.sh sample-medium-pipeline   (at once)
(.device-site stays on the warm machine between calls: each next call must come within its 30 s.)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Carried even where the machine has them (small, pure Python): the JAX libraries Levanter and Haliax are
# sensitive to. `device_check.sh --install` puts ours in only where the machine's version breaks a requirement
# of our set (requires.json); others it reports and leaves (e.g. the machine's transformers needs its own
# safetensors).
OVERRIDABLE = ["absl-py", "chex", "equinox", "jaxtyping", "optax", "wadler-lindig"]
MARKER_ENV = {"extra": "", "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython"}
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_34_x86_64"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements_of(wheels: list[Path]) -> dict[str, list[str]]:
    """{distribution: [version specifier, ...]} that the wheels' Requires-Dist ask of it (Python 3.12, Linux)."""
    from packaging.requirements import Requirement

    wanted: dict[str, set[str]] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            lines = archive.read(metadata).decode().splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            requirement = Requirement(line.split(":", 1)[1].strip())
            if requirement.specifier and (requirement.marker is None or requirement.marker.evaluate(MARKER_ENV)):
                wanted.setdefault(norm(requirement.name), set()).add(f"{str(requirement.specifier)} "
                                                                     f"({norm(wheel.name.split('-')[0])})")
    return {name: sorted(specs) for name, specs in sorted(wanted.items())}


# --- on the device: which wheels to install, and what stays unmet (device_check.sh --install, --check-requirements)
def installed_versions() -> dict[str, str]:
    """{distribution: version} as this Python imports them (sys.path order: the first found wins)."""
    import importlib.metadata

    have: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        have.setdefault(norm(dist.metadata["Name"]), dist.version)
    return have


def broken_by(version: str, wanted: list[str]) -> list[str]:
    """The requirements of our set (requires.json entries: "<specifier> (<who wants it>)") `version` breaks."""
    from packaging.specifiers import SpecifierSet

    return [r for r in wanted if not SpecifierSet(r.split(" (")[0]).contains(version, prereleases=True)]


def read_requires(folders: list[Path]) -> dict[str, list[str]]:
    requires: dict[str, list[str]] = {}
    for folder in folders:
        if (folder / "requires.json").exists():
            requires.update(json.loads((folder / "requires.json").read_text()))
    return requires


def choose(folder: Path) -> list[Path]:
    """The wheels of `folder` to install: those this machine lacks, and ours where its version breaks a
    requirement of our set (said on stderr)."""
    requires, have, chosen = read_requires([folder]), installed_versions(), []
    for wheel in sorted(folder.glob("*.whl")):
        name, version = norm(wheel.name.split("-")[0]), wheel.name.split("-")[1]
        if name not in have:
            chosen.append(wheel)
        elif broken := broken_by(have[name], requires.get(name, [])):
            chosen.append(wheel)
            print(f"ours over the machine's: {name} {have[name]} -> {version} (wanted: {'; '.join(broken)})",
                  file=sys.stderr)
    return chosen


def check(wheels: Path) -> None:
    """Report the requirements of our set that the packages seen here still break (not fixed)."""
    requires, have = read_requires(sorted(p for p in wheels.iterdir() if p.is_dir())), installed_versions()
    unmet = [f"{name} {have[name]} (wanted: {r})" for name, wanted in sorted(requires.items()) if name in have
             for r in broken_by(have[name], wanted)]
    missing = sorted(name for name in requires if name not in have)
    print(f"requirements of our set: {len(requires)} distributions; unmet {len(unmet)}; not installed {len(missing)}")
    for line in unmet:
        print("  unmet:", line)
    if missing:
        print("  not installed (fine where nothing imports them):", " ".join(missing))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--choose", metavar="BATCH", default=None,
                        help="on the device: print the wheels of BATCH to install (device_check.sh --install)")
    parser.add_argument("--check", metavar="WHEELS", default=None,
                        help="on the device: report requirements still unmet (device_check.sh --check-requirements)")
    parser.add_argument("--have", default=str(HERE / "device-have.txt"),
                        help="the device's packages, `name==version` lines (not carried); '' for none")
    parser.add_argument("--out", default=str(HERE / "wheels"))
    parser.add_argument("--batch-mib", type=float, default=53.0)
    args = parser.parse_args()
    if args.choose:
        print(" ".join(str(wheel) for wheel in choose(Path(args.choose))))
        return
    if args.check:
        check(Path(args.check))
        return
    requirements = [line.strip() for line in (HERE / "device-requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    everything = requirements
    if args.have:
        have = {norm(line.split("==")[0]) for line in Path(args.have).read_text().splitlines()
                if "==" in line and not line.startswith("#")}
        requirements = [r for r in requirements
                         if norm(r.split("==")[0]) not in have or norm(r.split("==")[0]) in OVERRIDABLE]
    out = Path(args.out)
    download = out / "all"
    download.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
                    "--abi", "none", *platforms, "-d", str(download), *everything], check=True)
    from packaging.version import Version

    pins = {norm(r.split("==")[0]): Version(r.split("==")[1]) for r in everything}

    def pinned(wheel: Path) -> bool:  # this very version (the folder keeps earlier downloads)
        name, version = wheel.name.split("-")[:2]
        return pins.get(norm(name)) == Version(version)

    wanted = {norm(r.split("==")[0]) for r in requirements}
    requires = requirements_of([w for w in download.glob("*.whl") if pinned(w)])
    wheels = sorted((w for w in download.glob("*.whl") if pinned(w) and norm(w.name.split("-")[0]) in wanted),
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
        (folder / "requires.json").write_text(json.dumps(requires, indent=0))
        print(f"{folder}: {len(batch)} wheels, {sum(w.stat().st_size for w in batch) / 2**20:.1f} MiB")
    print(f"{len(wheels)} wheels for {len(requirements)} requirements in {len(batches)} batch(es)")


if __name__ == "__main__":
    main()
