"""Prompted-generation evaluation: continue (and accompany) test clips, and measure the results against the
true music and against baselines, without human raters.

For each test file, one clip of `clip_seconds` at a seeded random start (translated to 0). Tasks:
- continuation: the model is prompted with the clip's first `prompt_seconds` and continues to the clip's end;
- accompaniment: the melody (the pitched instrument with the highest mean pitch among those with at least
  `min_melody_notes` notes) is given for the whole clip as controls; the model is prompted with the other
  instruments' first `prompt_seconds` and generates the rest (Algorithm 1), and, as the paper's baseline,
  the same model does it autoregressively (Algorithm 2).
Every system's part after the prompt is compared with the clip's true part (`amt.clip_metrics.compare`);
the retrieval baseline is the same part of another test clip (for accompaniment: its other instruments,
with this clip's melody). Accompaniments are also checked: the given melody comes back exactly, and how many
new notes fall in the melody's instrument (the model was asked to accompany, not to add melody).
Writes report.md, report.json (aggregate and per clip), histograms of each metric, and piano rolls.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from amt import augment, clip_metrics, midi, ops, sources, vocab

logger = logging.getLogger("amt.generation_eval")
TASKS = ("continuation", "accompaniment")


@dataclass(frozen=True)
class GenerationEvalConfig:
    """`amt eval generation` / eval/generation.py."""

    checkpoint: str = "runs/amt-tiny/checkpoints"  # Levanter checkpoint (step-N or run folder) or an HF folder
    midi: str = "demo/midi"  # a MIDI source: folder, manifest, .tar.gz or datasets (as `amt preprocess`)
    split: str = "test"  # Lakh's MD5 split to draw clips from (train / validation / test), or "all"
    clips: int = 8  # at most this many clips (one per file)
    clip_seconds: float = 20.0
    prompt_seconds: float = 5.0
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    min_melody_notes: int = 8
    top_p: float = 0.98
    seed: int = 0  # clip choice, retrieval pairing and sampling
    examples: int = 3  # clips drawn as piano rolls
    out: str = "runs/eval/generation"

    def validate(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"tasks: unknown {unknown}; choose from {list(TASKS)}")
        if self.split not in (*sources.SPLITS, "all"):
            raise ValueError(f"split: {self.split!r} is not one of {[*sources.SPLITS, 'all']}")
        if not 0 < self.prompt_seconds < self.clip_seconds:
            raise ValueError(f"prompt_seconds ({self.prompt_seconds}) must be in (0, clip_seconds={self.clip_seconds})")


@dataclass
class TestClip:
    name: str
    events: np.ndarray  # (n, 3), time relative to the clip's start
    melody: int | None  # the accompaniment task's given instrument


def melody_instrument(events: np.ndarray, min_notes: int) -> int | None:
    """The pitched instrument with the highest mean pitch among those with at least `min_notes` notes,
    if the clip has another instrument to generate."""
    instrument, pitch = np.divmod(ops.unpad(events)[:, 2] - vocab.NOTE_OFFSET, vocab.MAX_PITCH)
    candidates = {i: pitch[instrument == i].mean() for i in np.unique(instrument)
                  if i != vocab.DRUMS and (instrument == i).sum() >= min_notes}
    if not candidates or len(np.unique(instrument)) < 2:
        return None
    return int(max(candidates, key=candidates.get))


def choose_clips(config: GenerationEvalConfig) -> tuple[list[TestClip], dict]:
    """One clip per usable file of the split; returns the clips and why other files gave none."""
    rng = random.Random(config.seed)
    clips, skipped = [], {}
    length = int(vocab.TIME_RESOLUTION * config.clip_seconds)
    prompt = int(vocab.TIME_RESOLUTION * config.prompt_seconds)
    for item in sources.iter_items(config.midi):
        if len(clips) >= config.clips:
            break
        data = item.read()
        if config.split != "all" and sources.split_of(sources.content_md5(item.name, data)) != config.split:
            continue
        try:
            events = ops.as_triples(midi.midi_to_events(data))
        except midi.MidiError as error:
            skipped[item.name] = f"unreadable: {error}"
            continue
        end = ops.max_time(events, seconds=False) if len(events) else 0
        if end < length:
            skipped[item.name] = f"shorter than {config.clip_seconds:g} s"
            continue
        for _ in range(10):  # a start whose prompt and continuation both have notes
            start = rng.randrange(0, end - length + 1)
            t = ops.times(events)
            clip = events[(t >= start) & (t < start + length)].copy()
            clip[:, 0] -= start
            t = ops.times(clip)
            if (t < prompt).sum() >= 4 and (t >= prompt).sum() >= 4:
                clips.append(TestClip(item.name, clip, melody_instrument(clip, config.min_melody_notes)))
                break
        else:
            skipped[item.name] = "no clip with notes in both the prompt and the continuation"
    return clips, skipped


def _part(events: np.ndarray, start: int, end: int) -> clip_metrics.Clip:
    """The notes of [start, end) bins as a clip starting at 0."""
    events = ops.as_triples(events)
    t = ops.times(events)
    part = events[(t >= start) & (t < end)].copy()
    part[:, 0] -= start
    return clip_metrics.Clip.from_events(part, (end - start) / vocab.TIME_RESOLUTION)


def _instruments(events: np.ndarray) -> set:
    return set(ops.instruments(ops.unpad(ops.as_triples(events))))


def run(config: GenerationEvalConfig) -> dict:
    """Generate for every clip and task, measure, and write the report; returns the report's content."""
    from levanter.utils.tree_utils import inference_mode

    from amt import sampling
    from amt.checkpoints import load_model

    config.validate()
    clips, skipped = choose_clips(config)
    if len(clips) < 2:
        raise ValueError(f"{config.midi}: only {len(clips)} usable clip(s) in split {config.split!r} (need 2 for "
                         f"the retrieval baseline); skipped: {skipped}")
    logger.info("%d clips from %s (%s split), %d files skipped", len(clips), config.midi, config.split, len(skipped))
    model, _ = load_model(config.checkpoint)
    sampler = sampling.Sampler(inference_mode(model, True))
    options = sampling.SamplingOptions(top_p=config.top_p, seed=config.seed)
    start, end = config.prompt_seconds, config.clip_seconds
    start_bin, end_bin = int(vocab.TIME_RESOLUTION * start), int(vocab.TIME_RESOLUTION * end)
    random.Random(config.seed).shuffle(clips)  # so that retrieval pairs unrelated files, not folder neighbours
    partner = list(range(1, len(clips))) + [0]  # retrieval: the next clip (never the clip itself)

    results = {task: [] for task in config.tasks}
    outputs = {task: [] for task in config.tasks}  # for piano rolls
    for index, clip in enumerate(clips):
        other = clips[partner[index]]
        prompt_instruments = _instruments(ops.clip(clip.events, 0, start, clip_duration=False))
        truth = _part(clip.events, start_bin, end_bin)
        if "continuation" in config.tasks:
            systems = {
                "model": sampling.continuation(sampler, clip.events, start, end, options)[0],
                "retrieval": other.events,
            }
            rows = {name: clip_metrics.compare(_part(events, start_bin, end_bin), truth, prompt_instruments)
                    for name, events in systems.items()}
            results["continuation"].append({"clip": clip.name, **_features(truth, systems, start_bin, end_bin), "vs_truth": rows})
            outputs["continuation"].append((clip, systems))
        if "accompaniment" in config.tasks and clip.melody is not None:
            others, given = augment.extract_instruments(clip.events, [clip.melody])
            given = ops.from_controls(given)
            retrieved_others, _ = augment.extract_instruments(other.events, [clip.melody])
            systems = {
                "model": sampling.accompany(sampler, clip.events, [clip.melody], start, end, options)[0],
                "autoregressive": sampling.accompany(sampler, clip.events, [clip.melody], start, end, options,
                                                     anticipatory=False)[0],
                "retrieval": ops.sort(np.concatenate([given, retrieved_others])),
            }
            prompt_instruments = _instruments(ops.clip(others, 0, start, clip_duration=False)) | {clip.melody}
            rows = {}
            for name, events in systems.items():
                rows[name] = clip_metrics.compare(_part(events, start_bin, end_bin), truth, prompt_instruments)
                rows[name].update(_accompaniment_checks(events, given, clip.melody, start_bin))
            results["accompaniment"].append({"clip": clip.name, "melody": clip.melody,
                                             **_features(truth, systems, start_bin, end_bin), "vs_truth": rows})
            outputs["accompaniment"].append((clip, systems))
        logger.info("clip %d/%d done: %s", index + 1, len(clips), clip.name)

    report = {"config": asdict(config), "clips": len(clips), "skipped_files": skipped,
              "summary": {task: summarize(rows) for task, rows in results.items()}, "per_clip": results}
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "report.md").write_text(markdown_report(report))
    for task, rows in results.items():
        if rows:
            plot_histograms(rows, out / f"{task}-metrics.png", title=task)
            for clip, systems in outputs[task][: config.examples]:
                _piano_rolls(clip, systems, task, config, out)
    return report


def _features(truth: clip_metrics.Clip, systems: dict, start: int, end: int) -> dict:
    return {"features": {"truth": clip_metrics.features(truth),
                         **{name: clip_metrics.features(_part(e, start, end)) for name, e in systems.items()}}}


def _accompaniment_checks(events: np.ndarray, given: np.ndarray, melody: int, start: int) -> dict:
    """Whether every given melody note is in the output unchanged, and new notes in the melody's instrument."""
    rows = set(map(tuple, ops.as_triples(events).tolist()))
    given_rows = set(map(tuple, ops.as_triples(given).tolist()))
    instrument = (ops.as_triples(events)[:, 2] - vocab.NOTE_OFFSET) // vocab.MAX_PITCH
    new_in_melody = sum(1 for row, i in zip(ops.as_triples(events).tolist(), instrument)
                        if i == melody and row[0] >= start and tuple(row) not in given_rows)
    return {"controls_kept": float(given_rows <= rows), "new_notes_in_melody_instrument": new_in_melody}


def summarize(rows: list[dict]) -> dict:
    """Per system: the mean (and count) of every comparison metric and feature over clips (NaN skipped)."""
    summary = {}
    for row in rows:
        for system, metrics in row["vs_truth"].items():
            for name, value in metrics.items():
                summary.setdefault(system, {}).setdefault(name, []).append(value)
        for system, features in row["features"].items():
            for name, value in features.items():
                summary.setdefault(system, {}).setdefault(f"feature:{name}", []).append(value)
    return {system: {name: _mean(values) for name, values in metrics.items()} for system, metrics in summary.items()}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else None


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value)}")


COMPARISON_COLUMNS = ("pitch_class_overlap", "pitch_class_entropy_difference", "note_density_difference",
                      "polyphony_difference", "ioi_overlap", "duration_overlap", "instrument_f1",
                      "instrument_f1_vs_prompt", "groove_similarity", "controls_kept", "new_notes_in_melody_instrument")
FEATURE_COLUMNS = ("notes", "note_density", "pitch_class_entropy", "polyphony", "instruments")


def markdown_report(report: dict) -> str:
    config = report["config"]
    lines = [f"# Prompted generation: {config['checkpoint']}", "",
             f"{report['clips']} clips of {config['clip_seconds']:g} s from {config['midi']} ({config['split']} split), "
             f"prompt {config['prompt_seconds']:g} s, top-p {config['top_p']}, seed {config['seed']}. Each system's "
             "part after the prompt against the true part: overlaps, F1 and groove similarity are 1 when equal, "
             "differences 0. Means over clips.", ""]
    for task, summary in report["summary"].items():
        if not summary:
            lines += [f"## {task}", "", "no clip had a melody and another instrument", ""]
            continue
        columns = [c for c in COMPARISON_COLUMNS if any(c in s for s in summary.values())]
        lines += [f"## {task} ({len(report['per_clip'][task])} clips)", "",
                  "| system | " + " | ".join(c.replace("_", " ") for c in columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]
        for system, values in summary.items():
            if system != "truth":
                lines.append(f"| {system} | " + " | ".join(_fmt(values.get(c)) for c in columns) + " |")
        lines += ["", "Features of the part after the prompt:", "",
                  "| system | " + " | ".join(c.replace("_", " ") for c in FEATURE_COLUMNS) + " |",
                  "|---" * (len(FEATURE_COLUMNS) + 1) + "|"]
        for system, values in summary.items():
            lines.append(f"| {system} | " + " | ".join(_fmt(values.get(f"feature:{c}")) for c in FEATURE_COLUMNS) + " |")
        lines.append("")
    if report["skipped_files"]:
        lines += ["Files without a clip: " + "; ".join(f"{k}: {v}" for k, v in report["skipped_files"].items()), ""]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3f}"


def plot_histograms(rows: list[dict], path: Path, title: str) -> None:
    """One panel per comparison metric: its per-clip values, a histogram per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(rows[0]["vs_truth"])
    names = [c for c in COMPARISON_COLUMNS if c in rows[0]["vs_truth"][systems[0]]]
    columns = 4
    fig, axes = plt.subplots(math.ceil(len(names) / columns), columns, figsize=(16, 3 * math.ceil(len(names) / columns)))
    for ax, name in zip(axes.ravel(), names):
        for system in systems:
            values = [row["vs_truth"][system][name] for row in rows]
            values = [v for v in values if v is not None and not math.isnan(v)]
            ax.hist(values, bins=10, alpha=0.5, label=system)
        ax.set_title(name.replace("_", " "), fontsize=9)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=8)
    fig.suptitle(f"{title}: per-clip metrics against the true continuation")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _piano_rolls(clip: TestClip, systems: dict, task: str, config: GenerationEvalConfig, out: Path) -> None:
    from amt.pianoroll import save_pianoroll

    stem = Path(clip.name).stem.replace(" ", "_")
    given = ops.from_controls(augment.extract_instruments(clip.events, [clip.melody])[1]) if task == "accompaniment" else None
    for name, events in {"truth": clip.events, **systems}.items():
        save_pianoroll(events, out / f"{task}-{stem}-{name}.png", given=given,
                       title=f"{task}, {clip.name}: {name} (prompt: first {config.prompt_seconds:g} s)")
