"""`amt demo`: from the bundled MIDI files to a trained model, its metrics and its music, on a laptop CPU.

The whole path in one process, each stage the same library call as its own command (printed, so that a
newcomer can rerun any stage by hand): preprocess the demo corpus into Levanter caches, train
`recipes/amt-tiny.yaml`, evaluate perplexity on the held-out test split, generate a continuation and an
accompaniment (MIDI + piano-roll PNGs, and WAV where FluidSynth and a General MIDI SoundFont are installed).
A model trained for minutes has not learned that time runs forward (it plays a note or two), so a last stage
continues a held-out Bach chorale with the model bundled in the repository (`demo/model/`, `amt.bundle`): the
same code trained for hours on a larger corpus (README, "Table 1 in miniature").
Every stage resumes: a second run finds the caches done and training at its last step.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # demo/midi and recipes/ live in the checkout
SOUNDFONTS = ("/usr/share/sounds/sf2/TimGM6mb.sf2", "/usr/share/sounds/sf2/FluidR3_GM.sf2",
              "/usr/share/soundfonts/default.sf2", "/usr/share/sounds/sf2/default-GM.sf2")


def _option(default, help: str, **kwargs):
    """A DemoConfig field with its help line (the command line is built from these)."""
    if callable(default):
        return field(default_factory=default, metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass(frozen=True)
class DemoConfig:
    midi: str = _option(str(REPO / "demo" / "midi"), "MIDI corpus to train on")
    out: str = _option("runs/demo", "output folder: data/, checkpoints/, logs/, eval/, samples/")
    recipe: str = _option(str(REPO / "recipes" / "amt-tiny.yaml"), "training recipe")
    augment: int = _option(10, "copies of each training file (the paper: 30 on Lakh)")
    steps: int = _option(100, "training steps (about 3 s each on 2 CPU cores)")
    workers: int = _option(2, "preprocessing processes")
    eval_sequences: int | None = _option(None, "evaluate perplexity on the first N test sequences (default: all)")
    continuation_prompt: str = _option(str(REPO / "demo" / "midi" / "npm_misc" / "fur-elise.mid"),
                                       "MIDI file whose beginning is continued")
    accompaniment_prompt: str = _option(str(REPO / "demo" / "midi" / "miditok_multitrack" / "Funkytown.mid"),
                                        "MIDI file to accompany")
    accompany: list[int] = _option(lambda: [87], "instruments of the accompaniment prompt kept as controls, "
                                   "comma-separated (87: Funkytown's lead synth)")
    prompt_seconds: float = _option(5.0, "seconds of each prompt given before generating")
    end_seconds: float = _option(20.0, "generate up to this time (seconds)")
    seed: int = _option(0, "seed of augmentation and sampling")
    bundled_model: str | None = _option(str(REPO / "demo" / "model" / "amt-mini.npz"),
                                        "a trained model shipped with the repository (amt.bundle), whose continuation "
                                        "is the last stage; '' for none")
    bundled_prompt: str = _option(str(REPO / "demo" / "model" / "bwv411.mid"),
                                  "MIDI file the bundled model continues (default: a Bach chorale of the test split, "
                                  "which it never saw)")
    soundfont: str | None = _option(None, "a General MIDI .sf2 for WAV audio (default: $AMT_SOUNDFONT or a "
                                    "Debian/Ubuntu package's)")

    def validate(self) -> None:
        """Cheap checks (no jax), so that a mistake is one line before minutes of work."""
        for name in ("augment", "steps", "workers", "eval_sequences"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
        if not math.isfinite(self.end_seconds):  # (amt generate refuses it: after minutes of training)
            raise ValueError(f"--end-seconds: {self.end_seconds:g} is not a time")
        if not 0 < self.prompt_seconds < self.end_seconds:
            raise ValueError(f"--prompt-seconds {self.prompt_seconds:g} must be in (0, --end-seconds "
                             f"{self.end_seconds:g})")
        if not self.accompany or not all(0 <= i <= 128 for i in self.accompany):
            raise ValueError(f"--accompany: {self.accompany} are not instruments (0-127 General MIDI, 128 drums)")
        for name in ("midi", "recipe", "continuation_prompt", "accompaniment_prompt", "soundfont", "bundled_model",
                     "bundled_prompt"):
            path = getattr(self, name)
            if path and not os.path.exists(path):
                raise ValueError(f"--{name.replace('_', '-')}: {path} not found"
                                 + (" (amt demo runs from a checkout of the repository)" if name != "soundfont" else ""))


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None


def add_arguments(parser) -> None:
    """One kebab-case option per DemoConfig field, with its help line and default (the underscore spelling,
    `--prompt_seconds`, is accepted too: the demo's flags were draccus's before)."""
    for f in fields(DemoConfig):
        kind = f.type.replace(" | None", "")
        convert = {"int": int, "float": float, "str": str, "list[int]": _int_list}[kind]
        default = f.default_factory() if f.default is MISSING else f.default
        metavar = "N" if kind in ("int", "float") else ("I,J" if kind == "list[int]" else "PATH")
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=convert, default=default,
                            help=f.metadata["help"], metavar=metavar)
        if "_" in f.name:  # the old spelling, accepted but not listed
            parser.add_argument(f"--{f.name}", dest=f.name, type=convert, default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)


def config_from_args(args) -> DemoConfig:
    config = DemoConfig(**{f.name: getattr(args, f.name) for f in fields(DemoConfig)})
    config.validate()
    return config


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


STATE_FILE = "demo-state.json"  # what each finished stage was run with, so that a second run skips it


def _load_state(out: Path) -> dict:
    try:
        return json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _save_state(out: Path, state: dict) -> None:
    path = out / STATE_FILE
    path.with_suffix(".tmp").write_text(json.dumps(state, indent=1))
    path.with_suffix(".tmp").replace(path)


def latest_step(checkpoints: Path) -> str | None:
    """The latest complete checkpoint's folder name (one Levanter resumes from: it has metadata.json), found
    without importing Levanter (amt.checkpoints' discovery does), so that a finished demo reruns in a second."""
    steps = [p for p in checkpoints.glob("step-*")
             if p.name.split("-")[-1].isdigit() and (p / "metadata.json").exists()]
    return max(steps, key=lambda p: int(p.name.split("-")[-1])).name if steps else None


def run(config: DemoConfig, verbose: bool = False) -> dict:
    """Run every stage, skipping those already done with the same options (recorded in OUT/demo-state.json);
    returns the paths written and the perplexity rows."""
    from amt import cli, perplexity, preprocess

    config.validate()
    logging.getLogger("jax").setLevel(logging.WARNING)  # checkpoint serialization narrates every write at INFO
    out = Path(config.out)
    data, checkpoints, samples = out / "data", out / "checkpoints", out / "samples"
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out)
    bundled = Path(config.bundled_model) if config.bundled_model else None
    stages = _Stages(total=5 + bool(bundled))
    skipped = []

    def done(stage: str, key: dict, *outputs: Path) -> bool:
        if state.get(stage) == key and all(p.exists() for p in outputs):
            print(f"skipped: already done with these options ({', '.join(map(str, outputs))})", flush=True)
            skipped.append(stage)
            return True
        return False

    def record(stage: str, key: dict) -> None:
        state[stage] = key
        _save_state(out, state)

    stages.start("preprocess the demo corpus into Levanter caches",
                 f"amt preprocess {config.midi} --out {data} --augment {config.augment}")
    try:
        stats = preprocess.run(preprocess.PreprocessConfig(source=config.midi, out=str(data), augment=config.augment,
                                                           workers=config.workers, seed=config.seed))
    except preprocess.ConfigMismatch as error:
        raise ValueError(f"{error} (for the demo: a new --out)") from None
    for split, s in stats["splits"].items():
        print(f"{split:>10}: {s['files_kept']} files, {s['sequences']} sequences, {s['hours_of_music']:.2f} h of music")
    if stats.get("already_built"):
        print(f"skipped: {data} was already built and verified", flush=True)
        skipped.append("preprocess")

    overrides = ["--data.cache_dir", str(data), "--trainer.checkpointer.base_path", str(checkpoints),
                 "--trainer.log_dir", str(out / "logs"), "--trainer.num_train_steps", str(config.steps),
                 "--optimizer.warmup", "0.1",  # a fraction of the steps (the recipe's 10 of 100)
                 "--trainer.steps_per_eval", str(max(config.steps // 2, 1)),
                 "--trainer.checkpointer.keep", f"[{{every: {max(config.steps // 2, 1)}}}]", "--trainer.id", "demo"]
    stages.start(f"train {Path(config.recipe).name} for {config.steps} steps",
                 shlex.join(["amt", "train", "--config_path", config.recipe, *overrides]))
    data_key = {"midi": config.midi, "augment": config.augment, "seed": config.seed, "recipe": config.recipe}
    trained, latest = state.get("train", {}), latest_step(checkpoints)
    if ({k: v for k, v in trained.items() if k != "steps"} == data_key and trained.get("steps", 0) >= config.steps
            and latest):
        print(f"skipped: already trained for {trained['steps']} steps ({checkpoints / latest})", flush=True)
        skipped.append("train")
    else:
        if latest:
            print(f"resuming from {checkpoints / latest}", flush=True)
        import draccus  # (Levanter: seconds to import, only when there is training to do)

        from amt.train import TrainConfig, compact_console, train

        with compact_console(config.steps, verbose):
            train(draccus.parse(TrainConfig, config_path=config.recipe, args=overrides))
        trained = {**data_key, "steps": config.steps}
        record("train", trained)

    stages.start("perplexity on the held-out test split (every checkpoint)",
                 f"amt eval perplexity --checkpoint {checkpoints} --cache {data / 'test'} --out {out / 'eval'}")
    rows = []
    eval_key = {"trained": trained, "eval_sequences": config.eval_sequences}
    if not stats["splits"].get("test", {}).get("sequences", 0):
        print(f"skipped: no file of {config.midi} falls in the test split (Lakh's rule: MD5 starting with f)")
    elif done("eval", eval_key, out / "eval" / "perplexity.csv", out / "eval" / "perplexity.json"):
        rows = json.loads((out / "eval" / "perplexity.json").read_text())["results"]
    else:
        rows = perplexity.run(perplexity.PerplexityConfig(checkpoints=[str(checkpoints)], cache=str(data / "test"),
                                                          out=str(out / "eval"), max_sequences=config.eval_sequences))
        record("eval", eval_key)
    if rows:
        print(perplexity.markdown_table(rows))

    continuation = samples / "continuation.mid"
    generate = ["generate", "--checkpoint", str(checkpoints), "--prompt", config.continuation_prompt,
                "--start", str(config.prompt_seconds), "--end", str(config.end_seconds), "--seed", str(config.seed),
                "-o", str(continuation)]
    stages.start(f"continue the first {config.prompt_seconds:g} s of {Path(config.continuation_prompt).name}",
                 shlex.join(["amt", *generate]))
    key = {"trained": trained, "command": generate}
    if not done("continuation", key, continuation, continuation.with_suffix(".png")):
        if cli.main(generate + ["--verbose"] * verbose) != 0:
            raise RuntimeError("generating the continuation failed")
        continuation.with_suffix(".wav").unlink(missing_ok=True)  # rendered again below
        record("continuation", key)

    accompaniment = samples / "accompaniment.mid"
    generate = ["generate", "--checkpoint", str(checkpoints), "--prompt", config.accompaniment_prompt,
                "--accompany", ",".join(map(str, config.accompany)), "--start", str(config.prompt_seconds),
                "--end", str(config.end_seconds), "--seed", str(config.seed), "-o", str(accompaniment)]
    stages.start(f"accompany instrument(s) {config.accompany} of {Path(config.accompaniment_prompt).name}",
                 shlex.join(["amt", *generate]))
    key = {"trained": trained, "command": generate}
    if not done("accompaniment", key, accompaniment, accompaniment.with_suffix(".png")):
        if cli.main(generate + ["--verbose"] * verbose) != 0:
            raise RuntimeError("generating the accompaniment failed")
        accompaniment.with_suffix(".wav").unlink(missing_ok=True)
        record("accompaniment", key)

    continuations = [continuation]
    if bundled:
        from amt import bundle

        unpacked, continuation_bundled = out / "bundled-model", samples / "continuation-bundled.mid"
        generate = ["generate", "--checkpoint", str(unpacked), "--prompt", config.bundled_prompt,
                    "--start", str(config.prompt_seconds), "--end", str(config.end_seconds), "--seed", str(config.seed),
                    "-o", str(continuation_bundled)]
        stages.start(f"continue the first {config.prompt_seconds:g} s of {Path(config.bundled_prompt).name} with the "
                     f"bundled model", shlex.join(["amt", *generate]) + f"  (the model unpacked from {bundled})")
        print(f"the bundled model: {bundle.about(bundled)}", flush=True)
        key = {"bundle": {"path": str(bundled), "bytes": bundled.stat().st_size}, "command": generate}
        if not done("bundled", key, continuation_bundled, continuation_bundled.with_suffix(".png")):
            bundle.unpack(bundled, unpacked)
            if cli.main(generate + ["--verbose"] * verbose) != 0:
                raise RuntimeError("generating with the bundled model failed")
            continuation_bundled.with_suffix(".wav").unlink(missing_ok=True)
            record("bundled", key)
        continuations.append(continuation_bundled)
    stages.finish()

    written = {"caches": data, "checkpoints": checkpoints, "training log": out / "logs"}
    if rows:
        written.update({"perplexity": out / "eval" / "perplexity.csv", "perplexity plot": out / "eval" / "perplexity.png"})
    for path in (*continuations, accompaniment):
        written[path.stem] = path
        written[f"{path.stem} piano roll"] = path.with_suffix(".png")
    soundfont = find_soundfont(config.soundfont)
    if soundfont and shutil.which("fluidsynth"):
        for path in (*continuations, accompaniment):
            wav = path.with_suffix(".wav")
            written[f"{path.stem} audio"] = wav if wav.exists() else render_wav(path, soundfont)
        audio_note = f"audio rendered with FluidSynth and {soundfont}"
    else:
        audio_note = ("no audio: install FluidSynth and a General MIDI SoundFont (Debian/Ubuntu: sudo apt install "
                      "fluidsynth timgm6mb-soundfont; macOS: brew install fluid-synth and set AMT_SOUNDFONT to an "
                      ".sf2) and run amt demo again, or open the .mid files in any MIDI player")
    total = time.perf_counter() - stages.begin
    summary = ", ".join(f"{k}: {v:.0f} s" for k, v in stages.times.items())
    print(f"\n=== done in {total / 60:.1f} min ({summary})")
    if skipped:
        print(f"    (already done, skipped: {', '.join(skipped)}; a new --out, or other options, runs them again)")
    width = max(map(len, written))
    for name, path in written.items():
        print(f"  {name:<{width}}  {path}")
    print(f"  ({audio_note})")
    return {"written": written, "perplexity": rows, "seconds": total, "stage_seconds": stages.times,
            "skipped": skipped}


def main(config: DemoConfig, verbose: bool = False) -> int:
    try:
        run(config, verbose)
    except ValueError as error:  # a mistake in the options or the corpus, said in one line
        print(f"amt demo: error: {error}", file=sys.stderr)
        return 2
    return 0
