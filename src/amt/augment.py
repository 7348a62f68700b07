"""The paper's augmentations: which events of a file become anticipated controls.

Out of every 10 copies of a training file (copy index k): k % 10 == 0 plain (no controls, AUTOREGRESS flag),
1 span, 2-5 random, 6-9 instrument (ANTICIPATE flag). Every random choice comes from the generator passed in,
which callers seed from (seed, file, copy) so that runs are reproducible in any order and on any worker.
"""

from __future__ import annotations

import enum

import numpy as np

from amt import ops, vocab

ANTICIPATION_RATES = 10  # random augmentation: each event becomes a control with probability r / 10, r in 1..9
SPAN_RATE = 0.05  # span augmentation: spans start after exponential gaps of mean 1 / 0.05 = 20 s
SPAN_LENGTH = vocab.DELTA * vocab.TIME_RESOLUTION  # each anticipated span lasts 5 s


class Augmentation(enum.Enum):
    NONE = "none"
    SPAN = "span"
    RANDOM = "random"
    INSTRUMENT = "instrument"


def augmentation_for_copy(copy: int) -> Augmentation:
    """The paper's 1/1/4/4 mix over copies 0..9, repeating."""
    k = copy % 10
    if k == 0:
        return Augmentation.NONE
    if k == 1:
        return Augmentation.SPAN
    return Augmentation.RANDOM if k < 6 else Augmentation.INSTRUMENT


def flag_for_copy(copy: int) -> int:
    return vocab.AUTOREGRESS if copy % 10 == 0 else vocab.ANTICIPATE


def copy_rng(seed: int, file_key: int, copy: int) -> np.random.Generator:
    """The generator for one copy of one file: independent of processing order and worker."""
    return np.random.default_rng([seed, file_key, copy])


def _split_by(events: np.ndarray, control: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return events[~control], ops.to_controls(events[control])


def extract_spans(events: np.ndarray, rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Controls = the events inside 5 s spans that start after exponential gaps (the reference's rule)."""
    events = ops.as_triples(events)
    t = events[:, 0] - vocab.TIME_OFFSET
    control = np.zeros(len(events), dtype=bool)
    in_span, end_span, next_span, i = True, 0, 0, 0
    while i < len(events):
        if in_span and t[i] >= end_span:
            in_span = False
            next_span = t[i] + int(vocab.TIME_RESOLUTION * rng.exponential(1.0 / rate))
        if not in_span and t[i] >= next_span:
            in_span = True
            end_span = t[i] + SPAN_LENGTH
        # jump to the next event where the state can change (times are sorted)
        boundary = end_span if in_span else next_span
        j = max(i + 1, int(np.searchsorted(t, boundary, side="left")))
        control[i:j] = in_span
        i = j
    return _split_by(events, control)


def extract_random(events: np.ndarray, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Controls = each event independently with probability rate / 10."""
    events = ops.as_triples(events)
    return _split_by(events, rng.random(len(events)) < rate / float(ANTICIPATION_RATES))


def extract_instruments(events: np.ndarray, instruments) -> tuple[np.ndarray, np.ndarray]:
    """Controls = every event of the given instruments."""
    events = ops.as_triples(events)
    instrument = (events[:, 2] - vocab.NOTE_OFFSET) // vocab.MAX_PITCH
    return _split_by(events, np.isin(instrument, np.asarray(list(instruments), dtype=np.int64)))


def infill_context(events: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """What an infill of the span [t0, t1) seconds is given: every event before it and after it (the events at t0
    are regenerated). Beside `extract_instruments` so that `amt.sampling` and `amt generate`'s plan (which must not
    import jax) take the same events."""
    events = ops.as_triples(events)
    t = ops.times(events)
    return events[(t < vocab.to_bins(t0)) | (t >= vocab.to_bins(t1))]


def accompaniment_inputs(events: np.ndarray, instruments, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    """What an accompaniment of `instruments` from `start` to `end` seconds is given: (the prompt: the other
    instruments' events up to `start`, the controls: the instruments' notes in [0, end), as controls)."""
    others, given = extract_instruments(ops.as_triples(events), instruments)
    prompt = ops.clip(others, 0, start, clip_duration=False)
    return prompt, given[ops.times(given) < vocab.to_bins(end)]


def augment(events: np.ndarray, copy: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(events, controls) for copy `copy` of a file's events, by the paper's mix."""
    events = ops.as_triples(events)
    kind = augmentation_for_copy(copy)
    if kind is Augmentation.SPAN:
        return extract_spans(events, SPAN_RATE, rng)
    if kind is Augmentation.RANDOM:
        return extract_random(events, int(rng.integers(1, ANTICIPATION_RATES)), rng)
    if kind is Augmentation.INSTRUMENT:
        present = np.asarray(sorted(ops.instruments(events)), dtype=np.int64)
        if len(present) > 1:  # at least one instrument, but not all
            subset = rng.choice(present, 1 + int(rng.integers(len(present) - 1)), replace=False)
            return extract_instruments(events, subset)
    return events.copy(), events[:0].copy()
