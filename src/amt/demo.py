"""`amt demo`: from the bundled MIDI files to a trained model, its metrics and its music, on a laptop CPU.

The whole path in one process, each stage the same library call as its own command (printed, so that a
newcomer can rerun any stage by hand): preprocess the demo corpus into Levanter caches, train
`recipes/amt-tiny.yaml`, evaluate perplexity on the held-out test split, generate a continuation and an
accompaniment (MIDI + piano-roll PNGs, and WAV where FluidSynth and a General MIDI SoundFont are installed).
Every stage resumes: a second run finds the caches done and training at its last step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # demo/midi and recipes/ live in the checkout
SOUNDFONTS = ("/usr/share/sounds/sf2/TimGM6mb.sf2", "/usr/share/sounds/sf2/FluidR3_GM.sf2",
              "/usr/share/soundfonts/default.sf2", "/usr/share/sounds/sf2/default-GM.sf2")


@dataclass(frozen=True)
class DemoConfig:
    midi: str = str(REPO / "demo" / "midi")
    out: str = "runs/demo"
    recipe: str = str(REPO / "recipes" / "amt-tiny.yaml")
    augment: int = 10  # copies of each training file (the paper: 30 on Lakh)
    steps: int = 100  # training steps (about 3 s each on 2 CPU cores)
    workers: int = 2
    eval_sequences: int | None = None  # the first N test sequences (None: all)
    continuation_prompt: str = str(REPO / "demo" / "midi" / "npm_misc" / "fur-elise.mid")
    accompaniment_prompt: str = str(REPO / "demo" / "midi" / "miditok_multitrack" / "Funkytown.mid")
    accompany: list[int] = field(default_factory=lambda: [87])  # Funkytown's lead synth, kept as controls
    prompt_seconds: float = 5.0
    end_seconds: float = 20.0
    seed: int = 0
    soundfont: str | None = None  # a General MIDI .sf2 (default: $AMT_SOUNDFONT or a Debian/Ubuntu package's)


class _Stages:
    """Numbered stage headers with elapsed times, so progress is visible."""

    def __init__(self, total: int):
        self.total, self.index, self.begin = total, 0, time.perf_counter()
        self.times: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def start(self, title: str, command: str) -> None:
        self.finish()
        self.index += 1
        print(f"\n=== [{self.index}/{self.total}] {title}  (by hand: {command})", flush=True)
        self._current = (title, time.perf_counter())

    def finish(self) -> None:
        if self._current:
            title, begin = self._current
            self.times[title] = time.perf_counter() - begin
            print(f"--- {title}: {self.times[title]:.0f} s", flush=True)
            self._current = None


class _TrainingProgress(logging.Handler):
    """One console line per training step (and per evaluation) from Levanter's json_logger records."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps, self.begin = steps, time.perf_counter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = json.loads(record.getMessage())
        except ValueError:
            return
        metrics = entry.get("metrics", {}) if entry.get("event") == "log" else {}
        elapsed = time.perf_counter() - self.begin
        if "train/loss" in metrics:
            print(f"  step {entry['step'] + 1:>4}/{self.steps}  loss {metrics['train/loss']:.3f}  ({elapsed:.0f} s)",
                  flush=True)
        if "eval/loss" in metrics:
            print(f"  validation loss {metrics['eval/loss']:.3f}", flush=True)


def _console_filter(record: logging.LogRecord) -> bool:
    """The console keeps warnings and our own messages (steps and evaluations print as compact lines);
    the log file keeps everything."""
    return record.levelno >= logging.WARNING or record.name.startswith("amt")


@contextlib.contextmanager
def _quiet_console(steps: int):
    """Levanter replaces the logging handlers when training starts (and prints every metric as JSON): filter
    its console handler once it exists, and print compact progress lines instead."""
    import levanter.utils.logging as levanter_logging

    original = levanter_logging.init_logging
    progress = _TrainingProgress(steps)

    def init_logging(*args, **kwargs):
        original(*args, **kwargs)
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler:
                handler.addFilter(_console_filter)

    levanter_logging.init_logging = init_logging
    logging.getLogger("levanter.json_logger").addHandler(progress)
    try:
        yield
    finally:
        levanter_logging.init_logging = original
        logging.getLogger("levanter.json_logger").removeHandler(progress)


def find_soundfont(configured: str | None = None) -> str | None:
    for candidate in (configured, os.environ.get("AMT_SOUNDFONT"), *SOUNDFONTS):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def render_wav(midi_path: Path, soundfont: str) -> Path:
    """MIDI -> WAV (44.1 kHz) with the FluidSynth command line."""
    wav = midi_path.with_suffix(".wav")
    subprocess.run(["fluidsynth", "-ni", "-g", "0.8", "-r", "44100", "-F", str(wav), soundfont, str(midi_path)],
                   check=True, capture_output=True)
    return wav


def run(config: DemoConfig) -> dict:
    """Run every stage; returns the paths written and the perplexity rows."""
    import draccus

    from amt import cli, perplexity, preprocess
    from amt.train import TrainConfig, train

    for path in (config.midi, config.recipe, config.continuation_prompt, config.accompaniment_prompt):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found (amt demo runs from a checkout of the repository)")
    logging.getLogger("jax").setLevel(logging.WARNING)  # checkpoint serialization narrates every write at INFO
    out = Path(config.out)
    data, checkpoints, samples = out / "data", out / "checkpoints", out / "samples"
    stages = _Stages(total=5)

    stages.start("preprocess the demo corpus into Levanter caches",
                 f"amt preprocess {config.midi} --out {data} --augment {config.augment}")
    stats = preprocess.run(preprocess.PreprocessConfig(source=config.midi, out=str(data), augment=config.augment,
                                                       workers=config.workers, seed=config.seed))
    for split, s in stats["splits"].items():
        print(f"{split:>10}: {s['files_kept']} files, {s['sequences']} sequences, {s['hours_of_music']:.2f} h of music")

    overrides = ["--data.cache_dir", str(data), "--trainer.checkpointer.base_path", str(checkpoints),
                 "--trainer.log_dir", str(out / "logs"), "--trainer.num_train_steps", str(config.steps),
                 "--optimizer.warmup", "0.1",  # a fraction of the steps (the recipe's 10 of 100)
                 "--trainer.steps_per_eval", str(max(config.steps // 2, 1)),
                 "--trainer.checkpointer.keep", f"[{{every: {max(config.steps // 2, 1)}}}]", "--trainer.id", "demo"]
    stages.start(f"train {Path(config.recipe).name} for {config.steps} steps",
                 shlex.join(["amt", "train", "--config_path", config.recipe, *overrides]))
    with _quiet_console(config.steps):
        train(draccus.parse(TrainConfig, config_path=config.recipe, args=overrides))

    stages.start("perplexity on the held-out test split (every checkpoint)",
                 f"amt eval perplexity --checkpoint {checkpoints} --cache {data / 'test'} --out {out / 'eval'}")
    rows = []
    if stats["splits"].get("test", {}).get("sequences", 0):
        rows = perplexity.run(perplexity.PerplexityConfig(checkpoints=[str(checkpoints)], cache=str(data / "test"),
                                                          out=str(out / "eval"), max_sequences=config.eval_sequences))
        print(perplexity.markdown_table(rows))
    else:
        print(f"skipped: no file of {config.midi} falls in the test split (Lakh's rule: MD5 starting with f)")

    continuation = samples / "continuation.mid"
    generate = ["generate", "--checkpoint", str(checkpoints), "--prompt", config.continuation_prompt,
                "--start", str(config.prompt_seconds), "--end", str(config.end_seconds), "--seed", str(config.seed),
                "-o", str(continuation)]
    stages.start(f"continue the first {config.prompt_seconds:g} s of {Path(config.continuation_prompt).name}",
                 shlex.join(["amt", *generate]))
    if cli.main(generate) != 0:
        raise RuntimeError("generating the continuation failed")

    accompaniment = samples / "accompaniment.mid"
    generate = ["generate", "--checkpoint", str(checkpoints), "--prompt", config.accompaniment_prompt,
                "--accompany", ",".join(map(str, config.accompany)), "--start", str(config.prompt_seconds),
                "--end", str(config.end_seconds), "--seed", str(config.seed), "-o", str(accompaniment)]
    stages.start(f"accompany instrument(s) {config.accompany} of {Path(config.accompaniment_prompt).name}",
                 shlex.join(["amt", *generate]))
    if cli.main(generate) != 0:
        raise RuntimeError("generating the accompaniment failed")
    stages.finish()

    written = {"caches": data, "checkpoints": checkpoints, "training log": out / "logs"}
    if rows:
        written.update({"perplexity": out / "eval" / "perplexity.csv", "perplexity plot": out / "eval" / "perplexity.png"})
    for path in (continuation, accompaniment):
        written[path.stem] = path
        written[f"{path.stem} piano roll"] = path.with_suffix(".png")
    soundfont = find_soundfont(config.soundfont)
    if soundfont and shutil.which("fluidsynth"):
        for path in (continuation, accompaniment):
            written[f"{path.stem} audio"] = render_wav(path, soundfont)
        audio_note = f"audio rendered with FluidSynth and {soundfont}"
    else:
        audio_note = ("no audio: install FluidSynth and a General MIDI SoundFont (Debian/Ubuntu: sudo apt install "
                      "fluidsynth timgm6mb-soundfont; macOS: brew install fluid-synth and set AMT_SOUNDFONT to an "
                      ".sf2) and run amt demo again, or open the .mid files in any MIDI player")
    total = time.perf_counter() - stages.begin
    print(f"\n=== done in {total / 60:.1f} min ({', '.join(f'{k}: {v:.0f} s' for k, v in stages.times.items())})")
    width = max(map(len, written))
    for name, path in written.items():
        print(f"  {name:<{width}}  {path}")
    print(f"  ({audio_note})")
    return {"written": written, "perplexity": rows, "seconds": total, "stage_seconds": stages.times}


def main(argv: list[str] | None = None) -> int:
    import draccus

    config = draccus.parse(DemoConfig, args=argv if argv is not None else sys.argv[1:])
    run(config)
    return 0
