"""Shared fixtures: the real MIDI files and reference outputs in ../shared (tests skip cleanly without them)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
PARITY = SHARED / "parity"
MIDI = SHARED / "midi"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available (the ../shared folder beside the checkout)")
    return path


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return _need(PARITY)


@pytest.fixture(scope="session")
def midi_dir() -> Path:
    return _need(MIDI)


@pytest.fixture(scope="session")
def reference_events(parity_dir) -> list[tuple[Path, str, list[int]]]:
    """(path, status, tokens) for every file of the parity manifest."""
    rows = []
    for line in (parity_dir / "reference_events.tsv").read_text().splitlines():
        path, status, tokens = line.split("\t")
        rows.append((parity_dir / path, status, [int(t) for t in tokens.split()]))
    return rows


@pytest.fixture(scope="session")
def real_events(reference_events):
    """Events of the files that pass the paper's filters (from our parser), keyed by file name."""
    from amt import midi, ops

    return {p.name: ops.as_triples(midi.midi_to_events(p)) for p, status, _ in reference_events if status == "ok"}
