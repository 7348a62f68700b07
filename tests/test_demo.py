"""`amt demo` end to end at a reduced size: caches, a few training steps, perplexity, two generations."""

import csv
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mido
import pytest

from amt import bundle, midi, ops, sources, vocab

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "midi"


def _small_corpus(folder: Path) -> dict[str, int]:
    """A few demo files: four for training, one each for validation and test (by Lakh's MD5 rule)."""
    wanted = {"train": 4, "validation": 1, "test": 1}
    for path in sorted(DEMO.rglob("*.mid"), key=lambda p: p.stat().st_size):
        name = path.relative_to(DEMO).as_posix()
        split = sources.split_of(sources.content_md5(name, path.read_bytes()))
        if wanted[split] and len(ops.as_triples(midi.midi_to_events(path))) > 400:  # long enough to make sequences
            wanted[split] -= 1
            shutil.copy(path, folder / path.name)
    assert not any(wanted.values())
    return wanted


@pytest.mark.slow
def test_demo_pipeline_writes_every_artifact(tmp_path):
    corpus = tmp_path / "midi"
    corpus.mkdir()
    _small_corpus(corpus)
    fake_bin = tmp_path / "bin"  # FluidSynth stand-in: records its arguments and writes the WAV it is asked for
    fake_bin.mkdir()
    (fake_bin / "fluidsynth").write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/calls"\n'
                                        'while [ "$1" != "-F" ]; do shift; done; echo RIFF > "$2"\n')
    (fake_bin / "fluidsynth").chmod(0o755)
    soundfont = tmp_path / "gm.sf2"
    soundfont.write_bytes(b"sf2")
    out = tmp_path / "demo"
    env = {"HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu", "WANDB_MODE": "offline",
           "PATH": f"{fake_bin}:/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path))}
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "amt.cli", "demo", "--midi", str(corpus), "--out", str(out), "--steps", "3",
               "--augment", "1", "--end-seconds", "6", "--prompt-seconds", "2", "--soundfont", str(soundfont)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    # caches of every split, and the model checkpointed at its last step (numbered from 0)
    for split in ("train", "validation", "test"):
        assert (out / "data" / split / "shard_ledger.json").exists()
    steps = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))
    assert steps[-1] == 2
    # perplexity of every checkpoint on the test split: a barely trained model is near uniform
    with open(out / "eval" / "perplexity.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["step"]) for r in rows] == steps
    assert all(abs(float(r["loss"]) - math.log(vocab.VOCAB_SIZE)) < 1.0 and float(r["bits_per_second"]) > 0 for r in rows)
    assert (out / "eval" / "perplexity.png").stat().st_size > 5_000
    # music: readable MIDI with piano rolls, the accompaniment keeps the given lead, and audio through FluidSynth
    samples = out / "samples"
    for name in ("continuation", "accompaniment", "continuation-bundled"):
        assert mido.MidiFile(samples / f"{name}.mid").length > 0
        assert (samples / f"{name}.png").stat().st_size > 10_000
        assert (samples / f"{name}.wav").read_text().startswith("RIFF")
    lead = {tuple(r) for r in ops.as_triples(midi.midi_to_events(DEMO / "miditok_multitrack" / "Funkytown.mid")).tolist()
            if (r[2] - vocab.NOTE_OFFSET) // vocab.MAX_PITCH == 87 and r[0] < 600}
    assert lead and lead <= {tuple(r) for r in ops.as_triples(midi.midi_to_events(samples / "accompaniment.mid")).tolist()}
    calls = (fake_bin / "calls").read_text().splitlines()
    assert len(calls) == 3 and all(str(soundfont) in call and "-F" in call for call in calls)
    # progress and a summary of where everything is
    assert "=== [6/6]" in done.stdout and "=== done in" in done.stdout
    # one line per logged step, the last once (Levanter's hooks, which log the loss, skip a run's first two steps in
    # marin-levanter 0.2.20, Python 3.11; 0.2.227, Python 3.12, logs all three)
    assert [line.split()[1] for line in done.stdout.splitlines() if line.startswith("  step ")] in (
        ["3/3"], ["1/3", "2/3", "3/3"])
    assert "fray.device_flops" not in done.stdout + done.stderr and "INFO " not in done.stdout + done.stderr
    assert str(samples / "accompaniment.mid") in done.stdout and "levanter.json_logger" not in done.stdout + done.stderr
    assert re.search(r"wrote \S+continuation.mid: \d+ notes generated after 2.0 s \(\+ \d+ from the prompt\); the original has \d+ there",
                     done.stdout)
    # the bundled model continued its prompt (a chorale it never saw), and the demo said which model that is
    assert re.search(r"wrote \S+continuation-bundled.mid: \d+ notes generated after 2.0 s \(\+ \d+ from the prompt\); "
                     r"the original has \d+ there", done.stdout)
    assert "the bundled model: " + bundle.about(REPO / "demo" / "model" / "amt-mini.npz") in done.stdout
    assert (out / "logs" / "demo.log").exists() and not (out / "logs" / "demo.log.log").exists()

    # a second run finds every stage done, says so, and leaves the outputs as they were
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "demo-state.json"}
    again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sum(line.startswith("skipped:") for line in again.stdout.splitlines()) == 6, again.stdout
    assert "already trained for 3 steps" in again.stdout and "  step " not in again.stdout
    assert "(already done, skipped: preprocess, train, eval, continuation, accompaniment, bundled" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in written} == written
