"""Operations on events and controls, with the names of the paper's reference (`ops.py`).

Every function takes and returns (n, 3) integer arrays of triples (onset, duration, note) in the arrival-time
vocabulary; a triple is a *control* when its note token is in the control block, a SEPARATOR triple is three
SEPARATOR tokens. `as_triples` / `flatten` convert from / to flat token streams. Times are in 10 ms bins
unless `seconds=True`. All functions are pure: inputs are never modified.
"""

from __future__ import annotations

import numpy as np

from amt import vocab


def as_triples(tokens) -> np.ndarray:
    """Flat tokens (3 per event) as an (n, 3) int64 array."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim == 2 and tokens.shape[1] == 3:
        return tokens
    if tokens.ndim != 1 or len(tokens) % 3:
        raise ValueError(f"expected a flat stream of triples or an (n, 3) array; got shape {tokens.shape}")
    return tokens.reshape(-1, 3)


def flatten(triples: np.ndarray) -> np.ndarray:
    return np.asarray(triples, dtype=np.int64).reshape(-1)


def is_control(triples: np.ndarray) -> np.ndarray:
    notes = as_triples(triples)[:, 2]
    return (notes >= vocab.CONTROL_OFFSET) & (notes < vocab.SPECIAL_OFFSET)


def is_separator(triples: np.ndarray) -> np.ndarray:
    return as_triples(triples)[:, 2] == vocab.SEPARATOR


def times(triples: np.ndarray) -> np.ndarray:
    """Arrival time (bins) of each triple, whether event or control (SEPARATOR triples give garbage)."""
    triples = as_triples(triples)
    return triples[:, 0] - np.where(is_control(triples), vocab.ATIME_OFFSET, vocab.TIME_OFFSET)


def notes(triples: np.ndarray) -> np.ndarray:
    """Note (128 * instrument + pitch) of each triple, whether event or control."""
    triples = as_triples(triples)
    return triples[:, 2] - np.where(is_control(triples), vocab.ANOTE_OFFSET, vocab.NOTE_OFFSET)


def _scale(bins, seconds: bool):
    return bins / float(vocab.TIME_RESOLUTION) if seconds else int(bins)


def min_time(triples: np.ndarray, seconds: bool = True, instrument: int | None = None):
    """Earliest arrival time before the first SEPARATOR (0 if none), as the reference computes it."""
    triples = as_triples(triples)
    separators = np.flatnonzero(is_separator(triples))
    head = triples[: separators[0]] if len(separators) else triples
    t = times(head)
    if instrument is not None:
        t = t[notes(head) // vocab.MAX_PITCH == instrument]
    return _scale(t.min() if len(t) else 0, seconds)


def max_time(triples: np.ndarray, seconds: bool = True, instrument: int | None = None):
    """Latest arrival time over all non-SEPARATOR triples (0 if none), as the reference computes it."""
    triples = as_triples(triples)
    keep = ~is_separator(triples)
    if instrument is not None:
        keep &= notes(triples) // vocab.MAX_PITCH == instrument
    t = times(triples[keep])
    return _scale(max(int(t.max()), 0) if len(t) else 0, seconds)


def instruments(triples: np.ndarray) -> dict[int, int]:
    """Instrument -> number of notes (events and controls; REST and special tokens are not notes)."""
    triples = as_triples(triples)
    keep = triples[:, 2] < vocab.SPECIAL_OFFSET
    keep &= triples[:, 2] != vocab.REST
    found, counts = np.unique(notes(triples[keep]) // vocab.MAX_PITCH, return_counts=True)
    return dict(zip(found.tolist(), counts.tolist()))


def sort(triples: np.ndarray) -> np.ndarray:
    """Stable sort by arrival time (of events or of controls, not a mix)."""
    triples = as_triples(triples)
    return triples[np.argsort(times(triples), kind="stable")]


def split(triples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(events, controls) of an interleaved sequence (SEPARATOR and REST triples stay with the events)."""
    triples = as_triples(triples)
    control = is_control(triples)
    return triples[~control], triples[control]


def to_controls(events: np.ndarray) -> np.ndarray:
    """Events as controls (anticipated copies in the control block)."""
    return as_triples(events) + vocab.CONTROL_OFFSET


def from_controls(controls: np.ndarray) -> np.ndarray:
    """Controls as the events they stand for (the inverse of `to_controls`)."""
    return as_triples(controls) - vocab.CONTROL_OFFSET


def combine(events: np.ndarray, controls: np.ndarray) -> np.ndarray:
    """Controls turned back into events and merged with the events, in time order."""
    return sort(np.concatenate([as_triples(events), from_controls(controls)]))


def translate(triples: np.ndarray, dt, seconds: bool = False) -> np.ndarray:
    """Shift arrival times by dt, up to the first SEPARATOR (the reference stops translating there)."""
    triples = as_triples(triples).copy()
    dt = vocab.to_bins(dt) if seconds else int(dt)
    separators = np.flatnonzero(is_separator(triples))
    stop = separators[0] if len(separators) else len(triples)
    if len(triples[:stop]) and times(triples[:stop]).min() + dt < 0:
        raise ValueError(f"translating by {dt} bins would make a time negative")
    triples[:stop, 0] += dt
    return triples


def clip(triples: np.ndarray, start, end, clip_duration: bool = True, seconds: bool = True) -> np.ndarray:
    """Triples arriving in [start, end]; with clip_duration, notes are cut off at `end`."""
    triples = as_triples(triples)
    if seconds:
        start, end = vocab.to_bins(start), vocab.to_bins(end)
    t = times(triples)
    kept = triples[(t >= start) & (t <= end)].copy()
    if clip_duration and len(kept):
        control = is_control(kept)
        onset = times(kept)
        duration = kept[:, 1] - np.where(control, vocab.ADUR_OFFSET, vocab.DUR_OFFSET)
        kept[:, 1] -= np.maximum(onset + duration - end, 0)
    return kept


def pad(events: np.ndarray, end_time: int | None = None, density: int = vocab.REST_DENSITY) -> np.ndarray:
    """Insert REST events so that an event arrives at least every `density` bins, from 0 up to end_time.

    Events only (pad before anticipation). As the reference, a falsy end_time means the events' max time.
    """
    events = as_triples(events)
    if np.any(is_control(events)):
        raise ValueError("pad() takes events only: pad before adding controls")
    end_time = end_time if end_time else max_time(events, seconds=False)
    onset = events[:, 0] - vocab.TIME_OFFSET
    previous = np.concatenate([[0], onset])
    # RESTs before each event and after the last: previous + density, + 2 density, ... while < next time
    targets = np.concatenate([onset, [end_time]])
    gaps = np.maximum((targets - previous - 1) // density, 0)
    total = int(gaps.sum())
    if total == 0:
        return events.copy()
    slot = np.repeat(np.arange(len(targets)), gaps)  # before which event each REST goes
    rank = np.arange(total) - np.repeat(np.cumsum(gaps) - gaps, gaps)  # 0, 1, ... within a gap
    rests = np.empty((total, 3), dtype=np.int64)
    rests[:, 0] = vocab.TIME_OFFSET + previous[slot] + (rank + 1) * density
    rests[:, 1] = vocab.DUR_OFFSET
    rests[:, 2] = vocab.REST
    # place the RESTs of gap i just before event i (gap len(events) goes after the last event)
    position = np.arange(len(events)) + np.cumsum(gaps[:-1])
    out = np.empty((len(events) + total, 3), dtype=np.int64)
    is_event = np.zeros(len(out), dtype=bool)
    is_event[position] = True
    out[is_event] = events
    out[~is_event] = rests
    return out


def unpad(triples: np.ndarray) -> np.ndarray:
    """Remove REST events."""
    triples = as_triples(triples)
    return triples[triples[:, 2] != vocab.REST]


def anticipate(events: np.ndarray, controls: np.ndarray, delta: int = vocab.DELTA_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Interleave controls with events, each control `delta` bins ahead of the events it precedes.

    As the reference: a control is placed before the first event whose *preceding* event (time 0 before
    the first) arrives no earlier than control time - delta. Returns (tokens, controls not consumed).
    """
    events, controls = as_triples(events), as_triples(controls)
    if len(controls) == 0:
        return events.copy(), controls.copy()
    preceding = np.concatenate([[0], events[:-1, 0] - vocab.TIME_OFFSET])  # time seen before each event
    thresholds = controls[:, 0] - vocab.ATIME_OFFSET - delta
    # the reference's while-loop consumes controls in order, so a control never goes before an earlier one
    before = np.searchsorted(np.maximum.accumulate(preceding), np.maximum.accumulate(thresholds), side="left")
    consumed = before < len(events)
    before = before[consumed]
    out = np.empty((len(events) + len(before), 3), dtype=np.int64)
    control_rows = before + np.arange(len(before))
    is_control_row = np.zeros(len(out), dtype=bool)
    is_control_row[control_rows] = True
    out[is_control_row] = controls[consumed]
    out[~is_control_row] = events
    return out, controls[~consumed]
