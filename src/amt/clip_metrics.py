"""Metrics of short clips of music (arrival-time events), alone and against a reference clip.

Library choice: muspy (Dong et al., ISMIR 2020) computes the pitch-class entropy and the polyphony, on a
`muspy.Music` built directly from our events (one track per instrument, 100 ticks a second). It has no
two-clip comparisons, so those are here, following their sources:
- pitch-class histogram overlap: sum of min(p, q) over the 12 classes (1 = same histogram);
- inter-onset-interval and duration distributions: overlapping area of the two normalized histograms
  on fixed log-spaced bins (10 ms to 10 s), as in Yang & Lerch's mgeval (which smooths with a Gaussian KDE;
  fixed bins also behave on clips with one distinct value, where a KDE is singular);
- instrument F1: of one clip's instrument set against another's (or the prompt's);
- groove similarity: Wu & Yang's grooving patterns (onset positions on a 16-step grid of each 2 s window;
  our time is in seconds, not bars), compared on aligned windows as shared onset cells over cells with an
  onset in either (their 1 - Hamming distance also counts shared silence, which flatters a silent clip).
Drums count for density, IOIs, durations, instruments and groove, not for pitch classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from amt import ops, vocab

HISTOGRAM_EDGES = np.geomspace(0.01, 10.0, 33)  # seconds: IOI and duration bins
GROOVE_WINDOW_SECONDS = 2.0
GROOVE_STEPS = 16


@dataclass(frozen=True)
class Clip:
    """The notes of a clip (REST events removed), as arrays."""

    onset: np.ndarray  # seconds
    duration: np.ndarray  # seconds
    instrument: np.ndarray  # 0-127 programs, 128 drums
    pitch: np.ndarray
    seconds: float  # the clip's length (density and groove windows are over it)

    @classmethod
    def from_events(cls, events, seconds: float) -> "Clip":
        events = ops.unpad(ops.as_triples(events))
        events = events[events[:, 2] < vocab.REST]
        instrument, pitch = np.divmod(ops.notes(events), vocab.MAX_PITCH)
        return cls(onset=ops.times(events) / vocab.TIME_RESOLUTION,
                   duration=(events[:, 1] - vocab.DUR_OFFSET) / vocab.TIME_RESOLUTION,
                   instrument=instrument, pitch=pitch, seconds=float(seconds))

    def __len__(self) -> int:
        return len(self.onset)

    @property
    def pitched(self) -> np.ndarray:
        return self.instrument != vocab.DRUMS

    def to_muspy(self):
        import muspy

        tracks = []
        for instrument in np.unique(self.instrument):
            rows = np.flatnonzero(self.instrument == instrument)
            notes = [muspy.Note(time=int(round(self.onset[i] * vocab.TIME_RESOLUTION)), pitch=int(self.pitch[i]),
                                duration=max(int(round(self.duration[i] * vocab.TIME_RESOLUTION)), 1), velocity=64)
                     for i in rows]
            tracks.append(muspy.Track(program=int(instrument) % vocab.MAX_PITCH, is_drum=bool(instrument == vocab.DRUMS),
                                      notes=notes))
        return muspy.Music(resolution=vocab.TIME_RESOLUTION, tracks=tracks)


def pitch_class_histogram(clip: Clip) -> np.ndarray:
    counts = np.bincount(clip.pitch[clip.pitched] % 12, minlength=12).astype(float)
    return counts / counts.sum() if counts.sum() else counts


def pitch_class_overlap(a: Clip, b: Clip) -> float:
    """Sum over the 12 classes of min(p, q) (two clips without pitched notes agree)."""
    if not (a.pitched.any() and b.pitched.any()):
        return float(a.pitched.any() == b.pitched.any())
    return float(np.minimum(pitch_class_histogram(a), pitch_class_histogram(b)).sum())


def inter_onset_intervals(clip: Clip) -> np.ndarray:
    """Gaps between successive distinct onsets (any instrument), seconds."""
    return np.diff(np.unique(clip.onset))


def features(clip: Clip) -> dict:
    """One clip's numbers (NaN where a clip has no notes to measure)."""
    import muspy

    pitched = Clip(clip.onset[clip.pitched], clip.duration[clip.pitched], clip.instrument[clip.pitched],
                   clip.pitch[clip.pitched], clip.seconds)
    music = pitched.to_muspy()
    return {
        "notes": len(clip),
        "note_density": len(clip) / clip.seconds if clip.seconds else math.nan,  # notes per second
        "pitch_class_entropy": float(muspy.pitch_class_entropy(music)) if len(pitched) else math.nan,
        "polyphony": float(muspy.polyphony(clip.to_muspy())) if len(clip) else math.nan,
        "instruments": len(set(clip.instrument.tolist())),
    }


def histogram_overlap(a: np.ndarray, b: np.ndarray, edges: np.ndarray = HISTOGRAM_EDGES) -> float:
    """Overlapping area of two samples' normalized histograms (values clipped into the edges' range)."""
    if len(a) == 0 or len(b) == 0:
        return 1.0 if len(a) == len(b) else 0.0
    ha = np.histogram(np.clip(a, edges[0], edges[-1]), edges)[0].astype(float)
    hb = np.histogram(np.clip(b, edges[0], edges[-1]), edges)[0].astype(float)
    return float(np.minimum(ha / ha.sum(), hb / hb.sum()).sum())


def f1(predicted: set, actual: set) -> float:
    if not predicted and not actual:
        return 1.0
    true_positive = len(predicted & actual)
    return 2 * true_positive / (len(predicted) + len(actual))


def groove_patterns(clip: Clip, window: float = GROOVE_WINDOW_SECONDS, steps: int = GROOVE_STEPS) -> np.ndarray:
    """(windows, steps) booleans: which grid steps of each window have an onset."""
    windows = max(int(math.ceil(clip.seconds / window)), 1)
    patterns = np.zeros((windows, steps), bool)
    index = np.floor(clip.onset / (window / steps)).astype(int)
    index = index[(index >= 0) & (index < windows * steps)]
    patterns.reshape(-1)[index] = True
    return patterns


def groove_similarity(a: Clip, b: Clip) -> float:
    """Shared onset cells over cells with an onset in either clip, on aligned windows (Jaccard). Wu & Yang's
    1 - Hamming / steps counts agreeing empty cells too, which on mostly empty grids rewards a
    near-silent clip; both are 1 for equal clips, and two silent clips agree."""
    pa, pb = groove_patterns(a), groove_patterns(b)
    n = min(len(pa), len(pb))
    union = (pa[:n] | pb[:n]).sum()
    return float((pa[:n] & pb[:n]).sum() / union) if union else 1.0


def compare(generated: Clip, reference: Clip, prompt_instruments: set | None = None) -> dict:
    """How close `generated` is to `reference`: 1 (overlaps, F1, groove) or 0 (differences) when equal."""
    g, r = features(generated), features(reference)
    out = {
        "pitch_class_overlap": pitch_class_overlap(generated, reference),
        "pitch_class_entropy_difference": abs(g["pitch_class_entropy"] - r["pitch_class_entropy"]),
        "note_density_difference": abs(g["note_density"] - r["note_density"]),
        "polyphony_difference": abs(g["polyphony"] - r["polyphony"]),
        "ioi_overlap": histogram_overlap(inter_onset_intervals(generated), inter_onset_intervals(reference)),
        "duration_overlap": histogram_overlap(generated.duration, reference.duration),
        "instrument_f1": f1(set(generated.instrument.tolist()), set(reference.instrument.tolist())),
        "groove_similarity": groove_similarity(generated, reference),
    }
    if prompt_instruments is not None:
        out["instrument_f1_vs_prompt"] = f1(set(generated.instrument.tolist()), set(prompt_instruments))
    return out


PERFECT = {"pitch_class_overlap": 1.0, "pitch_class_entropy_difference": 0.0, "note_density_difference": 0.0,
           "polyphony_difference": 0.0, "ioi_overlap": 1.0, "duration_overlap": 1.0, "instrument_f1": 1.0,
           "groove_similarity": 1.0}
