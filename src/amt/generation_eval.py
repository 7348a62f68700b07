"""Prompted-generation evaluation: continue (and accompany) test clips, and measure the results against the
true music and against baselines, without human raters.

Two protocols (`protocol`):
- "paper" (the default) follows the paper's human-evaluation scripts (`humaneval/` in the reference repository):
  - continuation clips as `clip-select.py`: a 20 s clip at a uniformly random start (durations cut at its end),
    at most 15 instruments, at least 10 notes in the 5 s prompt;
  - accompaniment clips as `melody-select.py`: 4-10 instruments besides drums; the melody is the instrument with
    the highest mean pitch, never program 0 (piano), 9 (the reference's list) or 112-127 or drums; it has at
    least 20 notes, starts within the prompt and plays until at least 2 s before the clip's end;
  - sampling as `prompt.py` (continuation from the prompt's last onset, top-p 0.98), `accompany.py`
    (anticipatory and autoregressive accompaniment, top-p 0.95) and `prompt-interarrival.py` (the interarrival
    model, top-p 0.95, `amt.interarrival_sampling`);
  - the retrieval baseline as `accompany.py`'s: a random other 20 s segment of the same song; the true prompt
    (and, for accompaniment, the given melody) is kept and the retrieved part after the prompt is spliced in.
- "ours" is this project's earlier, easier protocol, kept under its name: one clip at a random start with >= 4
  notes in the prompt and after it, melody = the highest pitched instrument with >= 8 notes of any two-instrument
  clip, top-p 0.98 for every task, continuation from the prompt's end.
Retrieval can also be "other-file" (the same part of another test clip: a weaker baseline, ours before); both
retrievals are reported by default (`retrieval`), each under its own name.

Deliberate differences from the paper's scripts: each file gives at most one clip per task (the scripts draw
files with replacement until a clip passes: on a small corpus that repeats files), with up to `tries` random
starts per file, from a seeded generator; clips are drawn from Lakh's test split of `midi`; the retrieved segment
may overlap the true clip, as in `accompany.py` (its start is recorded per clip).

Every system's part after the prompt (from just after it: notes exactly at the prompt's end belong to the
prompt) is compared with the clip's true part: per clip (`amt.clip_metrics.compare`) and, over the set of clips,
by mgeval's overlapping areas (`amt.clip_metrics.set_overlapping_areas`). For accompaniment only the
accompaniment is compared: the given melody, identical in every output, is taken out (and the melody instrument
out of the truth). Accompaniments are also checked: the given melody comes back exactly, the share of it the
model was conditioned on before it stopped, and how many notes a system added to the melody's instrument.
Writes report.md (every metric defined, with its source), report.json (aggregate and per clip), histograms of
each metric, and piano rolls.
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
PROTOCOLS = ("paper", "ours")
RETRIEVALS = ("same-song", "other-file")
# the reference's sampling settings (humaneval/prompt.py, accompany.py, prompt-interarrival.py)
PAPER_TOP_P = {"continuation": 0.98, "accompaniment": 0.95, "interarrival": 0.95}
PAPER_MAX_INSTRUMENTS = 15  # clip-select.py
PAPER_MIN_PROMPT_NOTES = 10  # clip-select.py
PAPER_ENSEMBLE = (4, 10)  # melody-select.py: instruments besides drums
PAPER_MIN_MELODY_NOTES = 20  # melody-select.py
PAPER_NOT_MELODY = {0, 9, *range(112, vocab.MAX_INSTR)}  # melody-select.py's excluded programs (and drums)
PAPER_MELODY_END_MARGIN = 2.0  # seconds: the melody plays until at least this close to the clip's end


@dataclass(frozen=True)
class GenerationEvalConfig:
    """`amt eval generation` / eval/generation.py."""

    checkpoint: str = "runs/amt-tiny/checkpoints"  # Levanter checkpoint (step-N or run folder) or an HF folder
    midi: str = "demo/midi"  # a MIDI source: folder, manifest, .tar.gz or datasets (as `amt preprocess`)
    split: str = "test"  # Lakh's MD5 split to draw clips from (train / validation / test), or "all"
    clips: int = 10  # at most this many clips per task (one per file); the paper's scripts: 10
    clip_seconds: float = 20.0
    prompt_seconds: float = 5.0
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    protocol: str = "paper"  # paper (the reference's humaneval scripts) or ours (the earlier, easier one)
    retrieval: list[str] = field(default_factory=lambda: list(RETRIEVALS))  # same-song (paper), other-file (ours)
    interarrival_checkpoint: str | None = None  # an interarrival model: a continuation system ("interarrival")
    # a model trained without anticipation (augment 1): a continuation system and, with Algorithm 2, an
    # accompaniment system ("autoregressive model"), next to the main model's own Algorithm 2 ("autoregressive")
    autoregressive_checkpoint: str | None = None
    min_melody_notes: int | None = None  # None: the protocol's (paper 20, ours 8)
    top_p: float | None = None  # None: the protocol's (paper 0.98 continuation, 0.95 accompaniment/interarrival)
    tries: int = 10  # random clip starts tried per file
    seed: int = 0  # clip choice, retrieval and sampling
    examples: int = 3  # clips drawn as piano rolls
    out: str = "runs/eval/generation"

    def validate(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"tasks: unknown {unknown}; choose from {list(TASKS)}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol: {self.protocol!r} is not one of {list(PROTOCOLS)}")
        unknown = [r for r in self.retrieval if r not in RETRIEVALS]
        if unknown:
            raise ValueError(f"retrieval: unknown {unknown}; choose from {list(RETRIEVALS)}")
        if self.split not in (*sources.SPLITS, "all"):
            raise ValueError(f"split: {self.split!r} is not one of {[*sources.SPLITS, 'all']}")
        if self.clip_seconds > vocab.MAX_TIME_IN_SECONDS:
            raise ValueError(f"clip_seconds: at most {vocab.MAX_TIME_IN_SECONDS} (the onset vocabulary's span)")
        if not 0 < self.prompt_seconds < self.clip_seconds:
            raise ValueError(f"prompt_seconds ({self.prompt_seconds}) must be in (0, clip_seconds={self.clip_seconds})")

    def top_p_for(self, system: str) -> float:
        """continuation, accompaniment or interarrival."""
        if self.top_p is not None:
            return self.top_p
        return PAPER_TOP_P[system] if self.protocol == "paper" else 0.98

    @property
    def melody_notes(self) -> int:
        if self.min_melody_notes is not None:
            return self.min_melody_notes
        return PAPER_MIN_MELODY_NOTES if self.protocol == "paper" else 8


@dataclass
class TestClip:
    name: str
    events: np.ndarray  # (n, 3), time relative to the clip's start
    melody: int | None  # the accompaniment task's given instrument
    song: np.ndarray | None = None  # the whole file's events (for same-song retrieval)
    start: int = 0  # the clip's start in the song, bins


def melody_instrument(events: np.ndarray, min_notes: int) -> int | None:
    """Ours: the pitched instrument with the highest mean pitch among those with at least `min_notes` notes,
    if the clip has another instrument to generate."""
    instrument, pitch = np.divmod(ops.notes(ops.unpad(events)), vocab.MAX_PITCH)
    candidates = {i: pitch[instrument == i].mean() for i in np.unique(instrument)
                  if i != vocab.DRUMS and (instrument == i).sum() >= min_notes}
    if not candidates or len(np.unique(instrument)) < 2:
        return None
    return int(max(candidates, key=candidates.get))


def cut_clip(song: np.ndarray, start: int, length: int) -> np.ndarray:
    """The reference's clip of a song: events arriving in [start, start + length] bins, durations cut at its end,
    moved to start at 0."""
    return ops.translate(ops.clip(song, start, start + length, clip_duration=True, seconds=False), -start)


def paper_continuation_reason(clip: np.ndarray, prompt_seconds: float) -> str | None:
    """clip-select.py's rules; None if the clip passes."""
    if len(ops.instruments(clip)) > PAPER_MAX_INSTRUMENTS:
        return f"more than {PAPER_MAX_INSTRUMENTS} instruments"
    if len(ops.clip(clip, 0, prompt_seconds, clip_duration=False)) < PAPER_MIN_PROMPT_NOTES:
        return f"fewer than {PAPER_MIN_PROMPT_NOTES} notes in the prompt"
    return None


def paper_melody(clip: np.ndarray, prompt_seconds: float, clip_seconds: float,
                 min_notes: int = PAPER_MIN_MELODY_NOTES) -> tuple[int | None, str | None]:
    """melody-select.py's rules: (melody instrument, None) if the clip passes, else (None, why not)."""
    counts = ops.instruments(clip)
    ensemble = [i for i in counts if i != vocab.DRUMS]
    if not PAPER_ENSEMBLE[0] <= len(ensemble) <= PAPER_ENSEMBLE[1]:
        return None, f"{len(ensemble)} instruments besides drums (needs {PAPER_ENSEMBLE[0]}-{PAPER_ENSEMBLE[1]})"
    instrument, pitch = np.divmod(ops.notes(clip), vocab.MAX_PITCH)
    means = {i: pitch[instrument == i].mean() for i in counts if i not in PAPER_NOT_MELODY}
    if not means:
        return None, "no instrument may be the melody"
    melody = int(max(means, key=means.get))
    if counts[melody] < min_notes:
        return None, f"melody has fewer than {min_notes} notes"
    if ops.min_time(clip, seconds=True, instrument=melody) > prompt_seconds:
        return None, "the melody does not play in the prompt"
    if ops.max_time(clip, seconds=True, instrument=melody) < clip_seconds - PAPER_MELODY_END_MARGIN:
        return None, "the melody ends early"
    return melody, None


def _song_items(config: GenerationEvalConfig, skipped: dict):
    """(name, events) of each readable file of the split, at least a clip long."""
    length = vocab.to_bins(config.clip_seconds)
    for item in sources.iter_items(config.midi):
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
        if len(events) == 0 or ops.max_time(events, seconds=False) < length:
            skipped[item.name] = f"shorter than {config.clip_seconds:g} s"
            continue
        yield item.name, events


def choose_clips(config: GenerationEvalConfig) -> tuple[dict[str, list[TestClip]], dict]:
    """Clips per task (at most one per file and task) and, per task, why the other files gave none."""
    rng = random.Random(config.seed)
    clips = {task: [] for task in config.tasks}
    skipped = {task: {} for task in config.tasks}
    unreadable = {}
    length = vocab.to_bins(config.clip_seconds)
    prompt = vocab.to_bins(config.prompt_seconds)
    for name, song in _song_items(config, unreadable):
        if all(len(c) >= config.clips for c in clips.values()):
            break
        end = ops.max_time(song, seconds=False) - length
        for task in config.tasks:
            if len(clips[task]) >= config.clips:
                continue
            reason = None
            for _ in range(config.tries):
                start = rng.randrange(0, end + 1)
                clip = cut_clip(song, start, length)
                melody = None
                if config.protocol == "paper":
                    if task == "continuation":
                        reason = paper_continuation_reason(clip, config.prompt_seconds)
                    else:
                        melody, reason = paper_melody(clip, config.prompt_seconds, config.clip_seconds,
                                                      config.melody_notes)
                else:
                    t = ops.times(clip)
                    reason = None if (t < prompt).sum() >= 4 and (t >= prompt).sum() >= 4 else "too few notes"
                    if reason is None and task == "accompaniment":
                        melody = melody_instrument(clip, config.melody_notes)
                        reason = None if melody is not None else "no melody and another instrument"
                if reason is None:
                    clips[task].append(TestClip(name, clip, melody, song, start))
                    break
            if reason is not None:
                skipped[task][name] = f"{reason} (in {config.tries} tries)"
    for task in config.tasks:
        skipped[task].update(unreadable)
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


def same_song_retrieval(clip: TestClip, prompt_seconds: float, clip_seconds: float, rng: random.Random,
                        drop: list[int] = ()) -> tuple[np.ndarray, int]:
    """accompany.py's retrieval: a random 20 s segment of the same song (any start, as the reference's), its
    part after the prompt (without the `drop` instruments) spliced after the true prompt; and its start. One
    difference: the segment's notes exactly at the prompt's end are left out (accompany.py keeps them beside
    the true prompt's own notes there); no metric sees them (measured from the bin after the prompt), only the
    written clips and piano rolls."""
    length = vocab.to_bins(clip_seconds)
    start = rng.randrange(0, ops.max_time(clip.song, seconds=False) - length + 1)
    retrieved = cut_clip(clip.song, start, length)
    if drop:
        retrieved = augment.extract_instruments(retrieved, list(drop))[0]
    true_prompt = ops.clip(clip.events, 0, prompt_seconds, clip_duration=False)
    if drop:
        true_prompt = augment.extract_instruments(true_prompt, list(drop))[0]
    after = ops.clip(retrieved, prompt_seconds, clip_seconds)
    after = after[ops.times(after) > vocab.to_bins(prompt_seconds)]  # the prompt's own notes stay
    return ops.sort(np.concatenate([true_prompt, after])), start


def run(config: GenerationEvalConfig) -> dict:
    """Generate for every clip and task, measure, and write the report; returns the report's content."""
    from levanter.utils.tree_utils import inference_mode

    from amt import interarrival_sampling, sampling
    from amt.checkpoints import load_model

    config.validate()
    for name in ("checkpoint", "autoregressive_checkpoint", "interarrival_checkpoint"):  # before the clips are read
        path = getattr(config, name)
        if path and "://" not in str(path) and not Path(path).exists():
            raise FileNotFoundError(f"{name}: checkpoint not found: {path}")
    sources.describe_source(config.midi)  # raises, naming it, if the MIDI source is not there
    clips, skipped = choose_clips(config)
    counts = {task: len(c) for task, c in clips.items()}
    if "other-file" in config.retrieval and any(n == 1 for n in counts.values()):
        raise ValueError(f"{config.midi}: only one usable clip for a task ({counts}) in split {config.split!r}: the "
                         f"other-file retrieval needs 2 (use --retrieval same-song); skipped: {skipped}")
    if not any(counts.values()):
        raise ValueError(f"{config.midi}: no usable clip in split {config.split!r} under the {config.protocol} "
                         f"protocol; skipped: {skipped}")
    logger.info("clips from %s (%s split, %s protocol): %s", config.midi, config.split, config.protocol,
                ", ".join(f"{n} for {task}" for task, n in counts.items()))
    model, _ = load_model(config.checkpoint)
    sampler = sampling.Sampler(inference_mode(model, True))
    ia_sampler = None
    if config.interarrival_checkpoint:
        ia_model, _ = load_model(config.interarrival_checkpoint)
        ia_sampler = interarrival_sampling.InterarrivalSampler(inference_mode(ia_model, True))
    ar_sampler = None
    if config.autoregressive_checkpoint:
        ar_model, _ = load_model(config.autoregressive_checkpoint)
        ar_sampler = sampling.Sampler(inference_mode(ar_model, True))
    start, end = config.prompt_seconds, config.clip_seconds
    start_bin, end_bin = vocab.to_bins(start), vocab.to_bins(end)
    # compared: (start, end) exclusive of the start, since the prompt keeps the notes arriving exactly at it
    first, last = start_bin + 1, end_bin
    retrieval_rng = random.Random(config.seed + 1)

    results = {task: [] for task in config.tasks}
    outputs = {task: [] for task in config.tasks}  # for piano rolls
    for task in config.tasks:
        task_clips = list(clips[task])
        random.Random(config.seed).shuffle(task_clips)  # other-file retrieval pairs unrelated files
        for index, clip in enumerate(task_clips):
            other = task_clips[(index + 1) % len(task_clips)]
            if task == "continuation":
                prompt = ops.clip(clip.events, 0, start, clip_duration=False)
                prompt_instruments = _instruments(prompt)
                # prompt.py continues from the prompt's last onset; ours from the prompt's end
                from_time = ops.max_time(prompt) if config.protocol == "paper" and len(prompt) else start
                options = sampling.SamplingOptions(top_p=config.top_p_for("continuation"), seed=config.seed + index)
                systems = {"model": sampler.generate(from_time, end, inputs=prompt, options=options)[0]}
                if ar_sampler is not None:
                    systems["autoregressive model"] = ar_sampler.generate(from_time, end, inputs=prompt,
                                                                          options=options)[0]
                if ia_sampler is not None:
                    ia_options = interarrival_sampling.InterarrivalOptions(top_p=config.top_p_for("interarrival"),
                                                                           seed=config.seed + index)
                    systems["interarrival"] = ia_sampler.continuation(clip.events, start, end, ia_options)[0][0]
                retrieved_at = None
                if "same-song" in config.retrieval:
                    systems["retrieval (same song)"], retrieved_at = same_song_retrieval(clip, start, end, retrieval_rng)
                if "other-file" in config.retrieval:
                    systems["retrieval (other file)"] = other.events
                row = _measure(clip.name, clip.events, systems, first, last, prompt_instruments)
            else:
                # measured: the accompaniment alone (the given melody, identical in every system, is taken out of
                # the outputs, and the melody instrument out of the truth)
                others, given = augment.extract_instruments(clip.events, [clip.melody])
                given = ops.from_controls(given)
                options = sampling.SamplingOptions(top_p=config.top_p_for("accompaniment"), seed=config.seed + index)
                systems, context = {}, {}
                runs = [("anticipatory", sampler, True), ("autoregressive", sampler, False)]
                if ar_sampler is not None:
                    runs.append(("autoregressive model", ar_sampler, False))
                for name, system_sampler, anticipatory in runs:
                    systems[name] = sampling.accompany(system_sampler, clip.events, [clip.melody], start, end, options,
                                                       anticipatory=anticipatory)[0]
                    context[name] = system_sampler.last_sequences[0]
                retrieved_at = None
                if "same-song" in config.retrieval:
                    accompaniment, retrieved_at = same_song_retrieval(clip, start, end, retrieval_rng, [clip.melody])
                    systems["retrieval (same song)"] = ops.sort(np.concatenate([given, accompaniment]))
                if "other-file" in config.retrieval:
                    drop = [clip.melody] + ([other.melody] if other.melody is not None else [])
                    retrieved_others = augment.extract_instruments(other.events, drop)[0]
                    systems["retrieval (other file)"] = ops.sort(np.concatenate([given, retrieved_others]))
                prompt_instruments = _instruments(ops.clip(others, 0, start, clip_duration=False))
                row = _measure(clip.name, others, {name: _without(events, given) for name, events in systems.items()},
                               first, last, prompt_instruments)
                row["melody"] = clip.melody
                for name, events in systems.items():
                    row["vs_truth"][name].update(_accompaniment_checks(events, given, context.get(name), clip.melody, first,
                                                                       last))
            row["clip_start_seconds"] = clip.start / vocab.TIME_RESOLUTION
            if retrieved_at is not None:
                row["same_song_retrieval_start_seconds"] = retrieved_at / vocab.TIME_RESOLUTION
            results[task].append(row)
            outputs[task].append((clip, systems))
            logger.info("%s clip %d/%d done: %s", task, index + 1, len(task_clips), clip.name)

    report = {"config": asdict(config), "clips": counts, "skipped_files": skipped,
              "summary": {task: summarize(rows) for task, rows in results.items()},
              "set_overlapping_areas": {task: set_metrics(rows) for task, rows in results.items()},
              "per_clip": {task: [{k: v for k, v in row.items() if k != "parts"} for row in rows]
                           for task, rows in results.items()}}
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


def set_metrics(rows: list[dict]) -> dict:
    """mgeval's overlapping areas per system and feature, over the task's clips (`clip_metrics`)."""
    if not rows:
        return {}
    truth = [row["parts"]["truth"] for row in rows]
    return {system: clip_metrics.set_overlapping_areas([row["parts"][system] for row in rows], truth)
            for system in rows[0]["parts"] if system != "truth"}


def _measure(name: str, truth: np.ndarray, systems: dict, first: int, last: int, prompt_instruments: set) -> dict:
    """Features of the truth's and each system's [first, last) part, and each system against the truth."""
    truth_part = _part(truth, first, last)
    parts = {system: _part(events, first, last) for system, events in systems.items()}
    return {"clip": name, "parts": {"truth": truth_part, **parts},
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
                          first: int, last: int) -> dict:
    """controls_kept: every given melody note before `last` (the end of generation) is in the output unchanged
    (the sampler's promise, checked); controls_in_context: the share of those the model was actually
    conditioned on (inserted as controls in Algorithm 1, played as events in Algorithm 2) before it stopped
    (None for retrieval: no model); new_notes_in_melody_instrument: notes the system added to the melody's
    instrument. (The reference's clips keep a note arriving exactly at their end, cut to duration 0; the
    samplers, theirs and ours, generate up to the end, not at it.)"""
    rows = set(map(tuple, ops.as_triples(events).tolist()))
    given = ops.as_triples(given)
    given_rows = set(map(tuple, given[ops.times(given) < last].tolist()))
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
                      "polyphony_difference", "ioi_histogram_intersection", "duration_histogram_intersection",
                      "instrument_f1", "instrument_f1_vs_prompt", "onset_grid_jaccard", "controls_kept",
                      "controls_in_context", "new_notes_in_melody_instrument")
FEATURE_COLUMNS = ("notes", "note_density", "pitch_class_entropy", "polyphony", "instruments")
# one line each: what the number is, and where it comes from
DEFINITIONS = {
    "pitch_class_overlap": "sum over the 12 pitch classes of min(p, q), the clip's and the truth's pitch-class "
                           "histograms (pitched notes); 1 = same histogram. Ours (a per-clip histogram intersection).",
    "pitch_class_entropy_difference": "|H(p) - H(q)| of the pitch-class histograms' entropies (bits); muspy's "
                                      "pitch_class_entropy (Dong et al. 2020).",
    "note_density_difference": "|notes per second - the truth's|. Ours.",
    "polyphony_difference": "|mean notes sounding at onsets - the truth's|; muspy's polyphony.",
    "ioi_histogram_intersection": "sum of min of the two clips' normalized histograms of inter-onset intervals "
                                  "(32 log bins, 10 ms-10 s); 1 = same. Ours (not mgeval's overlapping area).",
    "duration_histogram_intersection": "the same for note durations. Ours.",
    "instrument_f1": "F1 of the clip's instrument set against the truth's. Ours.",
    "instrument_f1_vs_prompt": "F1 of the clip's instrument set against the prompt's. Ours.",
    "onset_grid_jaccard": "onsets on a 16-step grid per 2 s window, shared cells / cells with an onset in "
                          "either clip. Ours (the grid of Wu & Yang's grooving patterns, not their grooving consistency).",
    "controls_kept": "1 if every given melody note is in the output unchanged. Ours (a check).",
    "controls_in_context": "share of the given melody the model was conditioned on before it stopped. Ours (a check).",
    "new_notes_in_melody_instrument": "notes a system added to the melody's instrument after the prompt. Ours (a check).",
    "set overlapping area": "per feature, the overlapping area (integral of min) of the Gaussian KDEs (scipy) of "
                            "the intra-set pairwise distances of the true clips and the inter-set distances "
                            "(each system clip vs each true clip); 1 = as close to the truths as they are to each "
                            "other. Yang & Lerch 2020 (mgeval), integrated over the distances' range widened by 3 "
                            "KDE bandwidths (mgeval: their range only, so identical sets score below 1 there; not "
                            "comparable with mgeval's published figures). Features: pitch count, pitch range, "
                            "pitch-class histogram, note count, mean IOI, note-length histogram (log bins in seconds).",
}


def markdown_report(report: dict) -> str:
    config = report["config"]
    protocol = ("the paper's (humaneval/clip-select.py, melody-select.py, prompt.py, accompany.py, "
                "prompt-interarrival.py)" if config["protocol"] == "paper" else "ours (the earlier, easier one)")
    top_p = config["top_p"] if config["top_p"] is not None else (
        "0.98 continuation, 0.95 accompaniment and interarrival" if config["protocol"] == "paper" else 0.98)
    lines = [f"# Prompted generation: {config['checkpoint']}", "",
             f"Protocol: {protocol}. Clips of {config['clip_seconds']:g} s from {config['midi']} ({config['split']} "
             f"split): {', '.join(f'{n} for {task}' for task, n in report['clips'].items())}; prompt "
             f"{config['prompt_seconds']:g} s, top-p {top_p}, seed {config['seed']}"
             + (f", interarrival model {config['interarrival_checkpoint']}" if config.get("interarrival_checkpoint") else "")
             + (f", autoregressive model {config['autoregressive_checkpoint']} (continuation; accompaniment with "
                "Algorithm 2)" if config.get("autoregressive_checkpoint") else "")
             + ". Each system's part after the prompt against the true part; means over clips.", ""]
    for task, summary in report["summary"].items():
        if not summary:
            lines += [f"## {task}", "", "no clip passed the protocol's rules", ""]
            continue
        columns = [c for c in COMPARISON_COLUMNS if any(c in s for s in summary.values())]
        lines += [f"## {task} ({len(report['per_clip'][task])} clips)", "",
                  "Per clip, against the true part (means over clips):", "",
                  "| system | " + " | ".join(c.replace("_", " ") for c in columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]
        for system, values in summary.items():
            if system != "truth":
                lines.append(f"| {system} | " + " | ".join(_fmt(values.get(c)) for c in columns) + " |")
        areas = report.get("set_overlapping_areas", {}).get(task, {})
        if areas:
            features = list(next(iter(areas.values())))
            lines += ["", "Set overlapping areas (mgeval), the system's clips against the true clips:", "",
                      "| system | " + " | ".join(f.replace("_", " ") for f in features) + " |",
                      "|---" * (len(features) + 1) + "|"]
            for system, values in areas.items():
                lines.append(f"| {system} | " + " | ".join(_fmt(values.get(f)) for f in features) + " |")
            if all(v is None for values in areas.values() for v in values.values()):
                lines += ["", "(undefined: a KDE needs at least 2 distinct intra-set distances, i.e. at least 3 true clips)"]
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
    lines += ["## Definitions", ""] + [f"- {name.replace('_', ' ')}: {text}" for name, text in DEFINITIONS.items()] + [""]
    for task, skipped in report["skipped_files"].items():
        if skipped:
            lines += [f"Files without {'an' if task[0] in 'aeiou' else 'a'} {task} clip: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()), ""]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


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
        file = name.replace(" (", "-").replace(")", "").replace(" ", "-")
        save_pianoroll(events, out / f"{task}-{stem}-{file}.png", given=given,
                       title=f"{task}, {clip.name}: {name} (prompt: first {config.prompt_seconds:g} s)")
