"""`amt demo` end to end at a reduced size: caches, a few training steps, perplexity, two generations."""

import contextlib
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


def test_latest_step_is_the_highest_complete_checkpoint(tmp_path):
    from amt.demo import latest_step

    assert latest_step(tmp_path) is None
    for step, complete in ((5, True), (10, True), (12, False)):  # step-12: being written (no metadata.json yet)
        (tmp_path / f"step-{step}").mkdir()
        if complete:
            (tmp_path / f"step-{step}" / "metadata.json").write_text("{}")
    assert latest_step(tmp_path) == "step-10"  # by number ("step-5" sorts after "step-10" by name)


def test_the_configured_soundfont_comes_before_the_environments(tmp_path, monkeypatch):
    from amt.demo import find_soundfont

    configured, environment = tmp_path / "a.sf2", tmp_path / "b.sf2"
    configured.write_bytes(b"sf2")
    environment.write_bytes(b"sf2")
    monkeypatch.setenv("AMT_SOUNDFONT", str(environment))
    assert find_soundfont(str(configured)) == str(configured)
    assert find_soundfont(None) == str(environment)


def test_a_rerun_redoes_exactly_the_stages_whose_inputs_changed(tmp_path, monkeypatch, capsys):
    """demo-state.json at work, with each stage's library call replaced by a stand-in that writes what the stage
    writes (the real calls: test_demo_pipeline_writes_every_artifact): a second run skips every stage; a deleted
    output is made again (and its audio rendered again), the evaluation's too; more steps train again and redo what
    depends on the model, fewer do not; deleted checkpoints or another recipe train again; a damaged state file runs
    every stage; a changed bundled model generates again; a mistake found on the way is one line."""
    import json
    import types

    from amt import cli, demo, perplexity, preprocess

    calls = []
    monkeypatch.setattr(preprocess, "run", lambda config: calls.append("preprocess") or {
        "splits": {"test": {"files_kept": 1, "sequences": 2, "hours_of_music": 0.1}}, "already_built": True})

    def train(overrides):
        option = dict(zip(overrides[::2], overrides[1::2]))
        steps = int(option["--trainer.num_train_steps"])
        calls.append(f"train {steps}")
        step = Path(option["--trainer.checkpointer.base_path"]) / f"step-{steps - 1}"
        step.mkdir(parents=True, exist_ok=True)
        (step / "metadata.json").write_text("{}")

    fake_train = types.SimpleNamespace(TrainConfig=None, compact_console=lambda steps, verbose: contextlib.nullcontext(),
                                       train=train)
    monkeypatch.setitem(sys.modules, "amt.train", fake_train)
    monkeypatch.setitem(sys.modules, "draccus", types.SimpleNamespace(parse=lambda kind, config_path, args: args))

    def evaluate(config):
        calls.append("eval")
        Path(config.out).mkdir(parents=True, exist_ok=True)
        (Path(config.out) / "perplexity.csv").write_text("step\n")
        (Path(config.out) / "perplexity.json").write_text(json.dumps({"results": [{"step": 0}]}))
        return [{"step": 0}]

    monkeypatch.setattr(perplexity, "run", evaluate)
    monkeypatch.setattr(perplexity, "markdown_table", lambda rows: "(table)")

    def generate(argv):
        out = Path(argv[argv.index("-o") + 1])
        calls.append(out.stem)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"MThd")
        out.with_suffix(".png").write_bytes(b"png")
        return 0

    monkeypatch.setattr(cli, "main", generate)
    monkeypatch.setattr(bundle, "about", lambda path: "a bundle")
    monkeypatch.setattr(bundle, "unpack", lambda path, out: Path(out))
    rendered = []

    def render(midi_path, soundfont):
        rendered.append(midi_path.stem)
        midi_path.with_suffix(".wav").write_bytes(b"RIFF")
        return midi_path.with_suffix(".wav")

    monkeypatch.setattr(demo, "render_wav", render)
    monkeypatch.setattr(demo.shutil, "which", lambda name: f"/usr/bin/{name}")
    soundfont, bundled = tmp_path / "gm.sf2", tmp_path / "model.npz"
    soundfont.write_bytes(b"sf2")
    bundled.write_bytes(b"npz")
    recipe = tmp_path / "recipe.yaml"
    shutil.copy(demo.DemoConfig().recipe, recipe)
    out = tmp_path / "demo"

    def run(**options):
        calls.clear()
        rendered.clear()
        config = demo.DemoConfig(**{"out": str(out), "steps": 4, "soundfont": str(soundfont),
                                    "bundled_model": str(bundled), **options})
        return demo.run(config)["skipped"]

    samples = ["continuation", "accompaniment", "continuation-bundled"]
    everything = ["preprocess", "train", "eval", "continuation", "accompaniment", "bundled"]
    assert run() == ["preprocess"] and calls == ["preprocess", "train 4", "eval", *samples]
    assert sorted(rendered) == sorted(samples) and "=== [6/6]" in capsys.readouterr().out
    assert run() == everything and calls == ["preprocess"] and rendered == []
    (out / "samples" / "continuation.png").unlink()
    assert run() == [s for s in everything if s != "continuation"]
    assert calls == ["preprocess", "continuation"] and rendered == ["continuation"]  # its old audio is not kept
    (out / "eval" / "perplexity.json").unlink()  # (what a skipped evaluation reads)
    assert run() == [s for s in everything if s != "eval"] and calls == ["preprocess", "eval"]
    assert run(steps=2) == everything  # trained for more already
    assert run(steps=6) == ["preprocess", "bundled"] and calls == ["preprocess", "train 6", "eval", *samples[:2]]
    shutil.rmtree(out / "checkpoints")
    assert "train" not in run(steps=6) and "train 6" in calls
    assert "train" not in run(steps=6, recipe=str(recipe)) and "train 6" in calls
    (out / demo.STATE_FILE).write_text("{damaged")
    assert run(steps=6, recipe=str(recipe)) == ["preprocess"] and calls[1:] == ["train 6", "eval", *samples]
    bundled.write_bytes(b"npz, another model")
    assert run(steps=6, recipe=str(recipe)) == everything[:-1] and calls == ["preprocess", "continuation-bundled"]

    def mismatch(config):
        raise preprocess.ConfigMismatch(f"{config.out} holds a preprocessing job with other options")

    monkeypatch.setattr(preprocess, "run", mismatch)  # another corpus or --augment into the same --out: one line
    capsys.readouterr()
    assert demo.main(demo.DemoConfig(out=str(out), bundled_model="")) == 2
    assert capsys.readouterr().err == (f"amt demo: error: {out / 'data'} holds a preprocessing job with other options "
                                       "(for the demo: a new --out)\n")
