"""Training sequences: the paper's file filters, one file's anticipatory tokens, and packing into windows.

Packing follows the reference's `tokenize` exactly: each copy of a file becomes SEPARATOR x 3 followed by its
REST-padded events with controls interleaved; copies are concatenated into one stream and cut into windows
of 341 triples; time is made relative to each window (up to its first SEPARATOR); windows whose time reaches
100 s are dropped; the AUTOREGRESS / ANTICIPATE flag goes first, making 1,024 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from amt import augment, ops, vocab

MIN_TRACK_EVENTS = 100  # files with fewer events are skipped
MIN_TRACK_TIME_IN_SECONDS = 10
MAX_TRACK_TIME_IN_SECONDS = 3600
MAX_TRACK_INSTR = 16  # no more instruments than MIDI has channels

WINDOW_TOKENS = vocab.EVENT_SIZE * vocab.M  # 1,023 tokens after the flag


@dataclass(frozen=True)
class FileFilter:
    """The paper's filters on whole files (in the reference's order of checks)."""

    min_events: int = MIN_TRACK_EVENTS
    min_seconds: float = MIN_TRACK_TIME_IN_SECONDS
    max_seconds: float = MAX_TRACK_TIME_IN_SECONDS
    max_instruments: int = MAX_TRACK_INSTR

    def reason_to_skip(self, events: np.ndarray) -> str | None:
        """None if the file is kept, else 'short', 'long' or 'too_many_instruments'."""
        events = ops.as_triples(events)
        if len(events) < self.min_events:
            return "short"
        end_time = ops.max_time(events, seconds=False)
        if end_time < vocab.TIME_RESOLUTION * self.min_seconds:
            return "short"
        if end_time > vocab.TIME_RESOLUTION * self.max_seconds:
            return "long"
        if len(ops.instruments(events)) > self.max_instruments:
            return "too_many_instruments"
        return None


@dataclass(frozen=True)
class Copy:
    """One augmented copy of a file, ready to pack: SEPARATOR x 3 then the interleaved tokens."""

    flag: int
    tokens: np.ndarray  # flat
    rests: int  # REST events added by padding
    controls: int


def file_copies(events: np.ndarray, augment_factor: int, seed: int, file_key: int) -> Iterator[Copy]:
    """The `augment_factor` copies of one file's events, in the paper's augmentation mix."""
    events = ops.as_triples(events)
    end_time = ops.max_time(events, seconds=False)
    separator = np.full(3, vocab.SEPARATOR, dtype=np.int64)
    for k in range(augment_factor):
        rng = augment.copy_rng(seed, file_key, k)
        copy_events, controls = augment.augment(events, k, rng)
        padded = ops.pad(copy_events, end_time)
        tokens, unconsumed = ops.anticipate(padded, controls)
        if len(unconsumed):  # cannot happen after padding to the file's end; kept as a guard
            raise RuntimeError(f"{len(unconsumed)} controls were not interleaved")
        yield Copy(
            flag=augment.flag_for_copy(k),
            tokens=np.concatenate([separator, ops.flatten(tokens)]),
            rests=len(padded) - len(copy_events),
            controls=len(controls),
        )


def relativize_windows(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make each 1,023-token window's time relative, by the reference's rule; also say which to keep.

    As the reference's `translate(seq, -min_time(seq))`: the earliest arrival time before the window's first
    SEPARATOR is subtracted from the triples before that SEPARATOR (the next file already starts near 0).
    A window is kept when its latest arrival time (over all triples) stays under 100 s.
    """
    triples = windows.reshape(len(windows), vocab.M, vocab.EVENT_SIZE).copy()
    note = triples[:, :, 2]
    separator = note == vocab.SEPARATOR
    first_separator = np.where(separator.any(axis=1), separator.argmax(axis=1), vocab.M)
    before = np.arange(vocab.M)[None, :] < first_separator[:, None]
    time = triples[:, :, 0] - np.where(note >= vocab.CONTROL_OFFSET, vocab.ATIME_OFFSET, vocab.TIME_OFFSET)
    earliest = np.where(before, time, np.iinfo(np.int64).max).min(axis=1)
    earliest = np.where(before.any(axis=1), earliest, 0)
    shift = np.where(before, earliest[:, None], 0)
    triples[:, :, 0] -= shift
    latest = np.where(separator, 0, time - shift).max(axis=1)
    return triples.reshape(len(windows), WINDOW_TOKENS), np.maximum(latest, 0) < vocab.MAX_TIME


@dataclass
class SequencePacker:
    """Concatenates copies and cuts 1,024-token sequences, with the reference's choice of flag.

    The flag of a sequence is the flag of the copy being added when the previous sequence was written (or
    when the stream was last empty): the reference's bookkeeping, kept for token parity.
    """

    buffer: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    flag: int = vocab.AUTOREGRESS
    dropped: int = 0  # windows reaching 100 s

    def add(self, copy: Copy) -> list[np.ndarray]:
        if len(self.buffer) == 0:
            self.flag = copy.flag
        stream = np.concatenate([self.buffer, copy.tokens])
        complete = len(stream) // WINDOW_TOKENS
        self.buffer = stream[complete * WINDOW_TOKENS :]
        if complete == 0:
            return []
        windows, keep = relativize_windows(stream[: complete * WINDOW_TOKENS].reshape(complete, WINDOW_TOKENS))
        windows = windows[keep]
        self.dropped += int(complete - keep.sum())
        if len(windows) == 0:
            return []
        flags = np.full((len(windows), 1), copy.flag, dtype=np.int64)
        flags[0] = self.flag  # the first keeps the flag in force; every written window sets it to this copy's
        self.flag = copy.flag
        return list(np.concatenate([flags, windows], axis=1))

    @property
    def leftover_tokens(self) -> int:
        """Tokens of an unfinished window (dropped at the end of a stream)."""
        return len(self.buffer)


@dataclass
class InterarrivalPacker:
    """The baseline: files' interarrival tokens, each after a SEPARATOR, cut into 1,024-token rows."""

    buffer: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    dropped: int = 0

    def add(self, tokens: np.ndarray) -> list[np.ndarray]:
        stream = np.concatenate([self.buffer, [vocab.MIDI_SEPARATOR], tokens])
        complete = len(stream) // vocab.CONTEXT_SIZE
        self.buffer = stream[complete * vocab.CONTEXT_SIZE :]
        return [stream[i * vocab.CONTEXT_SIZE : (i + 1) * vocab.CONTEXT_SIZE] for i in range(complete)]

    @property
    def leftover_tokens(self) -> int:
        return len(self.buffer)


def validate_sequence(sequence, delta: int = vocab.DELTA_BINS, length: int | None = vocab.CONTEXT_SIZE) -> list[str]:
    """Problems with one arrival-time sequence (empty list = valid).

    Checks the grammar: `length` ids (1,024 for training; None: any) in the vocabulary; a flag first; then triples typed by position (event:
    onset, duration, note or REST; control: the same in the control block; or SEPARATOR x 3); event times
    non-decreasing between separators; each control at most `delta` ahead of the event before it.
    """
    seq = np.asarray(sequence, dtype=np.int64).ravel()
    problems = []
    if length is not None and len(seq) != length:
        problems.append(f"length {len(seq)} != {length}")
    if len(seq) == 0 or (seq.min() < 0 or seq.max() >= vocab.VOCAB_SIZE):
        return problems + ["token outside the vocabulary"]
    if seq[0] not in (vocab.AUTOREGRESS, vocab.ANTICIPATE):
        problems.append(f"first token {seq[0]} is not a flag")
    body = seq[1:]
    if len(body) % 3:
        return problems + ["body is not made of triples"]
    t, d, n = ops.as_triples(body).T
    separator = (t == vocab.SEPARATOR) & (d == vocab.SEPARATOR) & (n == vocab.SEPARATOR)
    event = (t < vocab.DUR_OFFSET) & (d >= vocab.DUR_OFFSET) & (d < vocab.NOTE_OFFSET) & (n >= vocab.NOTE_OFFSET) & (n <= vocab.REST)
    control = (
        (t >= vocab.ATIME_OFFSET) & (t < vocab.ADUR_OFFSET) & (d >= vocab.ADUR_OFFSET) & (d < vocab.ANOTE_OFFSET)
        & (n >= vocab.ANOTE_OFFSET) & (n < vocab.SPECIAL_OFFSET)
    )
    bad = np.flatnonzero(~(separator | event | control))
    if len(bad):
        problems.append(f"{len(bad)} malformed triples (first at triple {bad[0]})")
    rest = event & (n == vocab.REST)
    if np.any(d[rest] != vocab.DUR_OFFSET):
        problems.append("REST with a non-zero duration")
    segment = np.cumsum(separator)
    last_event_time = -1
    current_segment = -1
    for i in np.flatnonzero(event | control):  # sequential but short: 341 triples
        if segment[i] != current_segment:
            current_segment, last_event_time = segment[i], -1
        if event[i]:
            if t[i] < last_event_time:
                problems.append(f"event time goes back at triple {i}")
                break
            last_event_time = t[i]
        elif last_event_time >= 0 and t[i] - vocab.ATIME_OFFSET - last_event_time > delta:
            problems.append(f"control at triple {i} is more than {delta} bins ahead of the event before it")
            break
    return problems
