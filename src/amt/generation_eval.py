"""Prompted-generation evaluation: continue (and accompany) test clips, and measure the results against the
true music and against baselines, without human raters.

For each test file, one clip of `clip_seconds` at a seeded random start (translated to 0). Tasks:
- continuation: the model is prompted with the clip's first `prompt_seconds` and continues to the clip's end;
- accompaniment: the melody (the pitched instrument with the highest mean pitch among those with at least
  `min_melody_notes` notes) is given for the whole clip as controls; the model is prompted with the other
  instruments' first `prompt_seconds` and generates the rest (Algorithm 1), and, as the paper's baseline,
  the same model does it autoregressively (Algorithm 2).
Every system's part after the prompt (from just after it: notes exactly at the prompt's end belong to the
prompt) is compared with the clip's true part (`amt.clip_metrics.compare`); the retrieval baseline is the same
part of another test clip. For accompaniment only the accompaniment is compared: the given melody, identical
in every output, is taken out (and the melody instrument out of the truth); retrieval is the other clip without
its own melody and this clip's melody instrument. Accompaniments are also checked: the given melody comes back
exactly, the share of it the model was conditioned on before it stopped, and how many notes a system added to
the melody's instrument (it was asked to accompany, not to add melody).
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
        if self.clip_seconds > vocab.MAX_TIME_IN_SECONDS:
            raise ValueError(f"clip_seconds: at most {vocab.MAX_TIME_IN_SECONDS} (the onset vocabulary's span)")
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
    instrument, pitch = np.divmod(ops.notes(ops.unpad(events)), vocab.MAX_PITCH)
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
        try:
            data = item.read()
        except OSError as error:
            skipped[item.name] = f"unreadable: {error}"
            continue
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
    # compared: (start, end) exclusive of the start, since the prompt keeps the notes arriving exactly at it
    first, last = start_bin + 1, end_bin

    results = {task: [] for task in config.tasks}
    outputs = {task: [] for task in config.tasks}  # for piano rolls
    for index, clip in enumerate(clips):
        other = clips[partner[index]]
        if "continuation" in config.tasks:
            prompt_instruments = _instruments(ops.clip(clip.events, 0, start, clip_duration=False))
            systems = {"model": sampling.continuation(sampler, clip.events, start, end, options)[0],
                       "retrieval": other.events}
            results["continuation"].append(_measure(clip.name, clip.events, systems, first, last, prompt_instruments))
            outputs["continuation"].append((clip, systems))
        if "accompaniment" in config.tasks and clip.melody is not None:
            # measured: the accompaniment alone (the given melody, identical in every system, is taken out of
            # the outputs, and the melody instrument out of the truth)
            others, given = augment.extract_instruments(clip.events, [clip.melody])
            given = ops.from_controls(given)
            drop = [clip.melody] + ([other.melody] if other.melody is not None else [])
            retrieved_others = augment.extract_instruments(other.events, drop)[0]
            systems, context = {}, {}
            for name, anticipatory in (("model", True), ("autoregressive", False)):
                systems[name] = sampling.accompany(sampler, clip.events, [clip.melody], start, end, options,
                                                   anticipatory=anticipatory)[0]
                context[name] = sampler.last_sequences[0]
            systems["retrieval"] = ops.sort(np.concatenate([given, retrieved_others]))
            prompt_instruments = _instruments(ops.clip(others, 0, start, clip_duration=False))
            row = _measure(clip.name, others, {name: _without(events, given) for name, events in systems.items()},
                           first, last, prompt_instruments)
            row["melody"] = clip.melody
            for name, events in systems.items():
                row["vs_truth"][name].update(_accompaniment_checks(events, given, context.get(name), clip.melody, first))
            results["accompaniment"].append(row)
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


def _measure(name: str, truth: np.ndarray, systems: dict, first: int, last: int, prompt_instruments: set) -> dict:
    """Features of the truth's and each system's [first, last) part, and each system against the truth."""
    truth_part = _part(truth, first, last)
    parts = {system: _part(events, first, last) for system, events in systems.items()}
    return {"clip": name,
            "features": {"truth": clip_metrics.features(truth_part),
                         **{system: clip_metrics.features(part) for system, part in parts.items()}},
            "vs_truth": {system: clip_metrics.compare(part, truth_part, prompt_instruments)
                         for system, part in parts.items()}}


def _without(events: np.ndarray, given: np.ndarray) -> np.ndarray:
    """The rows of `events` that are not given rows."""
    given_rows = set(map(tuple, ops.as_triples(given).tolist()))
    events = ops.as_triples(events)
    return events[[tuple(row) not in given_rows for row in events.tolist()]].reshape(-1, 3)


def _accompaniment_checks(events: np.ndarray, given: np.ndarray, context: np.ndarray | None, melody: int,
                          first: int) -> dict:
    """controls_kept: every given melody note is in the output unchanged (the sampler's promise, checked);
    controls_in_context: the share of given notes the model was actually conditioned on (inserted as controls
    in Algorithm 1, played as events in Algorithm 2) before it stopped (None for retrieval: no model);
    new_notes_in_melody_instrument: notes the system added to the melody's instrument."""
    rows = set(map(tuple, ops.as_triples(events).tolist()))
    given_rows = set(map(tuple, ops.as_triples(given).tolist()))
    in_context = None
    if context is not None:
        triples = ops.as_triples(np.asarray(context)[1:])
        seen = set(map(tuple, ops.combine(*ops.split(triples)).tolist()))
        in_context = len(given_rows & seen) / len(given_rows) if given_rows else 1.0
    added = ops.as_triples(_without(events, given))
    instrument = ops.notes(added) // vocab.MAX_PITCH
    return {"controls_kept": float(given_rows <= rows), "controls_in_context": in_context,
            "new_notes_in_melody_instrument": int(((instrument == melody) & (ops.times(added) >= first)).sum())}


def summarize(rows: list[dict]) -> dict:
    """Per system: the mean of every comparison metric and feature over clips, and under "undefined" how many
    clips gave none for a metric (e.g. no pitched notes to take an entropy of): those are left out of its mean."""
    values = {}
    for row in rows:
        for system, metrics in row["vs_truth"].items():
            for name, value in metrics.items():
                values.setdefault(system, {}).setdefault(name, []).append(value)
        for system, features in row["features"].items():
            for name, value in features.items():
                values.setdefault(system, {}).setdefault(f"feature:{name}", []).append(value)
    summary = {}
    for system, metrics in values.items():
        summary[system] = {name: _mean(v) for name, v in metrics.items()}
        undefined = {name: sum(1 for x in v if x is None or math.isnan(x)) for name, v in metrics.items()}
        summary[system]["undefined"] = {name: n for name, n in undefined.items() if n}
    return summary


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else None


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value)}")


COMPARISON_COLUMNS = ("pitch_class_overlap", "pitch_class_entropy_difference", "note_density_difference",
                      "polyphony_difference", "ioi_overlap", "duration_overlap", "instrument_f1",
                      "instrument_f1_vs_prompt", "groove_similarity", "controls_kept", "controls_in_context",
                      "new_notes_in_melody_instrument")
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
    undefined = [f"{task} / {system}: {name.replace('_', ' ')} on {n} clip(s)"
                 for task, summary in report["summary"].items() for system, values in summary.items()
                 for name, n in values.get("undefined", {}).items() if name != "controls_in_context"]
    if undefined:
        lines += ["Undefined (e.g. no pitched notes after the prompt), left out of the means: " + "; ".join(undefined), ""]
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
