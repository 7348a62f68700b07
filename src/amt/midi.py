"""MIDI files <-> event tokens, with the paper's reference semantics (token for token).

Reading follows the reference's `midi_to_compound` on mido: the tracks merged by absolute tick (stable, in
track order), each message's delta converted to seconds with the tempo in force before it and summed in
float64, onsets `round(100 * t)`, durations `round(100 * (off - on))` of the first still-open note with the
same (instrument, pitch, channel), channel 10 as drums (instrument 128), other channels taking their latest
program change, velocity-0 note-ons as note-offs, never-closed notes 0.25 s, durations capped at 9.99 s.

The fast path reads bytes with the compiled reader in `amt.midifile`; `reference=True` takes the slow, exact
mido path. Both give identical tokens on every file both read (tests check this on real files and a seeded
fuzz of mutated ones); a note at or past 2^31 time bins (248 days) is refused by both, a deliberate
difference from the reference (whose onsets would not fit int64 there: an OverflowError, not a skip).
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np

from amt import midifile, vocab

MidiSource = str | os.PathLike | bytes


class MidiError(ValueError):
    """A MIDI file that cannot be read; the message names the file."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class MidiNotes:
    """The notes of a MIDI file in note-on order (the reference's compound form, without velocity)."""

    onset: np.ndarray  # time bins (10 ms)
    duration: np.ndarray  # time bins, -1 where the note was never closed
    pitch: np.ndarray
    instrument: np.ndarray  # 0-127 General MIDI program, 128 drums
    interarrival: np.ndarray  # the same file in the interarrival vocabulary
    interarrival_truncations: int  # time shifts longer than 10 s, cut to 9.99 s


def _read_source(source: MidiSource) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    name = os.fspath(source)
    try:
        with open(name, "rb") as file:
            return file.read(), name
    except OSError as error:
        raise MidiError(name, f"cannot open: {error.strerror or error}") from error


def parse_midi(source: MidiSource, *, reference: bool = False, name: str | None = None) -> MidiNotes:
    """Read a MIDI file (path or bytes) into its notes. Raises MidiError naming the file if unreadable."""
    data, default_name = _read_source(source)
    name = name or default_name
    if reference:
        return _parse_midi_with_mido(data, name)
    status, header, kind, tick, channel, value, velocity = midifile.read_messages(data)
    if status == 0:
        status, onset, duration, pitch, instrument, interarrival, truncations = midifile.play(
            kind, tick, channel, value, velocity, int(header[2]), vocab.MAX_INTERARRIVAL,
            vocab.MIDI_START_OFFSET, vocab.MIDI_END_OFFSET,
        )
        if status == 0:
            return MidiNotes(onset, duration, pitch, instrument, interarrival, int(truncations))
    raise MidiError(name, midifile.ERRORS[status])


def _parse_midi_with_mido(data: bytes, name: str) -> MidiNotes:
    """The reference's conversion loop on mido's messages (slow; exact by construction)."""
    try:
        midi = mido.MidiFile(file=io.BytesIO(data))
        messages = list(midi)
    except Exception as error:  # mido raises OSError, EOFError, ValueError, KeyError, IndexError, TypeError...
        raise MidiError(name, f"{type(error).__name__}: {error}") from error

    onset, duration, pitch, instrument, onset_seconds = [], [], [], [], []
    interarrival, truncations = [], 0
    open_notes = defaultdict(list)
    programs = defaultdict(int)
    now = since_note = 0
    for message in messages:
        if message.time < 0:
            raise MidiError(name, midifile.ERRORS[midifile.BAD_DIVISION])
        now += message.time
        since_note += message.time
        if message.type == "program_change":
            programs[message.channel] = message.program
        elif message.type in ("note_on", "note_off"):
            if vocab.TIME_RESOLUTION * now >= midifile.MAX_BINS:
                raise MidiError(name, midifile.ERRORS[midifile.TOO_LATE])
            instr = vocab.DRUMS if message.channel == vocab.DRUM_CHANNEL else programs[message.channel]
            shift = min(round(vocab.TIME_RESOLUTION * since_note), vocab.MAX_INTERARRIVAL - 1)
            truncations += shift != round(vocab.TIME_RESOLUTION * since_note)
            if shift > 0:
                interarrival.append(vocab.MIDI_TIME_OFFSET + shift)
            since_note = 0
            note = vocab.MAX_PITCH * instr + message.note
            key = (instr, message.note, message.channel)
            if message.type == "note_on" and message.velocity > 0:
                interarrival.append(vocab.MIDI_START_OFFSET + note)
                open_notes[key].append(len(onset))
                onset.append(round(vocab.TIME_RESOLUTION * now))
                onset_seconds.append(now)
                duration.append(-1)
                pitch.append(message.note)
                instrument.append(instr)
            else:
                interarrival.append(vocab.MIDI_END_OFFSET + note)
                if open_notes[key]:
                    index = open_notes[key].pop(0)
                    duration[index] = round(vocab.TIME_RESOLUTION * (now - onset_seconds[index]))
    as_array = lambda values: np.asarray(values, dtype=np.int64)  # noqa: E731
    return MidiNotes(
        as_array(onset), as_array(duration), as_array(pitch), as_array(instrument), as_array(interarrival),
        truncations,
    )


def notes_to_events(notes: MidiNotes) -> tuple[np.ndarray, int]:
    """The reference's `compound_to_events`: flat arrival-time tokens and the count of capped durations."""
    duration = notes.duration
    truncations = int(np.count_nonzero(duration >= vocab.MAX_DUR))
    duration = np.where(duration == -1, vocab.UNCLOSED_NOTE_DURATION, np.minimum(duration, vocab.MAX_DUR - 1))
    tokens = np.empty((len(duration), 3), dtype=np.int64)
    tokens[:, 0] = vocab.TIME_OFFSET + notes.onset
    tokens[:, 1] = vocab.DUR_OFFSET + duration
    tokens[:, 2] = vocab.NOTE_OFFSET + vocab.MAX_PITCH * notes.instrument + notes.pitch
    return tokens.ravel(), truncations


def midi_to_events(source: MidiSource, *, reference: bool = False) -> np.ndarray:
    """A MIDI file as flat arrival-time event tokens (onset, duration, note; 3 per event), in note-on order."""
    return notes_to_events(parse_midi(source, reference=reference))[0]


def midi_to_interarrival(source: MidiSource, *, reference: bool = False) -> np.ndarray:
    """A MIDI file in the interarrival ("MIDI-like") baseline vocabulary."""
    return parse_midi(source, reference=reference).interarrival


# --- writing ---------------------------------------------------------------------------------------------
_TICKS_PER_BEAT = vocab.TIME_RESOLUTION // 2  # at the default 120 bpm one tick is one 10 ms time bin
_VELOCITY = 72  # the reference's default velocity
_MELODIC_CHANNELS = [c for c in range(16) if c != vocab.DRUM_CHANNEL]


def _playable_events(tokens: np.ndarray) -> np.ndarray:
    """(n, 3) events (onset bin, duration bin, note) from arrival-time tokens for synthesis.

    Drops a leading flag, REST padding; plays controls as notes; SEPARATOR starts the next piece after
    the end of the previous one (as the reference's `events_to_compound`).
    """
    tokens = np.asarray(tokens, dtype=np.int64).ravel()
    if len(tokens) % 3 == 1 and tokens[0] in (vocab.AUTOREGRESS, vocab.ANTICIPATE):
        tokens = tokens[1:]
    if len(tokens) % 3:
        raise ValueError(f"arrival-time tokens come in triples; got {len(tokens)} tokens")
    triples = tokens.reshape(-1, 3)
    is_control = (triples[:, 2] >= vocab.CONTROL_OFFSET) & (triples[:, 2] != vocab.SEPARATOR)
    triples = np.where(is_control[:, None], triples - vocab.CONTROL_OFFSET, triples)
    offset, piece_end, rows = 0, 0, []
    for onset, duration, note in triples:
        if note == vocab.SEPARATOR:
            offset += piece_end
            piece_end = 0
            continue
        if note == vocab.REST:
            continue
        onset, duration = onset - vocab.TIME_OFFSET, duration - vocab.DUR_OFFSET
        if not (0 <= onset and 0 <= duration < vocab.MAX_DUR and 0 <= note - vocab.NOTE_OFFSET < vocab.MAX_NOTE):
            raise ValueError(f"not an event triple: {(int(onset), int(duration), int(note))}")
        piece_end = max(piece_end, onset + duration)
        rows.append((onset + offset, duration, note - vocab.NOTE_OFFSET))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def _assign_channels(events: np.ndarray) -> np.ndarray:
    """A MIDI channel for every note such that re-reading pairs each note-off with its own note-on.

    Readers pair a note-off with the oldest open note of the same (instrument, pitch, channel). Where notes
    of one instrument and pitch overlap so that a later one ends first, they go to another channel with the
    same program (a "layer"). Every instrument gets its own channel first (so that any sequence the sampler
    can produce, at most 15 melodic instruments plus drums, can be written); the layers then take the
    channels left, and beyond them share their instrument's channel. Drums have only channel 10. So only files
    with drum overlaps or with more layers than free channels may not round-trip exactly (a duration moves).
    More than 15 melodic instruments cannot be written: MIDI has 16 channels and channel 10 is drums; the
    sampler never adds a 16th instrument (`amt.sampling.MAX_SAMPLED_INSTRUMENTS`), so only a prompt could.
    """
    instrument = events[:, 2] // vocab.MAX_PITCH
    end = events[:, 0] + events[:, 1]
    layer = np.zeros(len(events), dtype=np.int64)
    last_end: dict[tuple[int, int, int], int] = {}
    for i in np.lexsort((np.arange(len(events)), events[:, 0])):
        key = (int(instrument[i]), int(events[i, 2]))
        k = 0
        while instrument[i] != vocab.DRUMS and last_end.get((*key, k), -1) > end[i]:
            k += 1
        layer[i] = k
        last_end[(*key, k)] = int(end[i])
    channel = np.full(len(events), vocab.DRUM_CHANNEL, dtype=np.int64)
    melodic = {(int(instrument[i]), int(layer[i])) for i in range(len(events)) if instrument[i] != vocab.DRUMS}
    instruments = sorted(instr for instr, k in melodic if k == 0)
    if len(instruments) > len(_MELODIC_CHANNELS):
        raise ValueError(f"{len(instruments)} melodic instruments ({instruments}) do not fit in MIDI's "
                         f"{len(_MELODIC_CHANNELS)} melodic channels (channel 10 is drums); at most "
                         f"{len(_MELODIC_CHANNELS)} can be written")
    assigned = dict(zip(((instr, 0) for instr in instruments), _MELODIC_CHANNELS))
    free = iter(_MELODIC_CHANNELS[len(instruments):])
    for instr, k in sorted((key for key in melodic if key[1] > 0), key=lambda key: (key[1], key[0])):
        assigned[(instr, k)] = next(free, assigned[(instr, 0)])  # no channel left: share the instrument's own
    for i in np.flatnonzero(instrument != vocab.DRUMS):
        channel[i] = assigned[(int(instrument[i]), int(layer[i]))]
    return channel


def events_to_midi(tokens, path: str | os.PathLike | None = None) -> mido.MidiFile:
    """Arrival-time tokens (events, controls, REST, SEPARATOR, a flag) as a playable MIDI file.

    A type 0 file at 120 bpm with 50 ticks a beat (one tick = one 10 ms bin), velocity 72, a program change
    per channel. Reading it back with `midi_to_events` gives the same events in the same order.
    Saved to `path` when given.
    """
    events = _playable_events(tokens)
    channel = _assign_channels(events)
    instrument = events[:, 2] // vocab.MAX_PITCH
    pitch = events[:, 2] % vocab.MAX_PITCH
    # At one tick: the note-offs of notes that end there, then the note-ons in the order the notes began, a
    # note of no duration's off right after its on; so first-in first-out pairing finds every note (a note of
    # no duration shares its channel only with notes of its key that end by then: `_assign_channels`). Offs
    # first: a note that begins where a note of its key ends, or after a note of no duration, would otherwise
    # be released at once by that note's off (synthesizers such as FluidSynth release every voice of the key;
    # pretty_midi writes offs first for this reason). The reference writes every on first: 14% of its test
    # files' notes begin where a note of their instrument and pitch ends. The ons keep their order, so the file
    # reads back as the same events in the same order.
    order = np.arange(len(events))
    silent = (events[:, 1] == 0).astype(np.int64)
    on = np.stack([events[:, 0], np.ones_like(order), order, np.zeros_like(order), np.ones_like(order)], axis=1)
    off = np.stack([events[:, 0] + events[:, 1], silent, order, silent, np.zeros_like(order)], axis=1)
    timeline = np.concatenate([on, off])
    timeline = timeline[np.lexsort((timeline[:, 3], timeline[:, 2], timeline[:, 1], timeline[:, 0]))]

    track = mido.MidiTrack()
    track.append(mido.MetaMessage("track_name", name="amt", time=0))
    for ch in sorted(set(channel.tolist())):
        program = 0 if ch == vocab.DRUM_CHANNEL else int(instrument[channel == ch][0])
        track.append(mido.Message("program_change", channel=ch, program=program, time=0))
    now = 0
    for tick, _, i, _, is_on in timeline:
        kind = "note_on" if is_on else "note_off"
        track.append(mido.Message(kind, channel=int(channel[i]), note=int(pitch[i]),
                                  velocity=_VELOCITY if is_on else 0, time=int(tick - now)))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    midi = mido.MidiFile(type=0, ticks_per_beat=_TICKS_PER_BEAT, tracks=[track])
    if path is not None:
        midi.save(os.fspath(path))
    return midi


def interarrival_to_midi(tokens, path: str | os.PathLike | None = None) -> mido.MidiFile:
    """Interarrival tokens as a MIDI file (the reference's `interarrival_to_midi`, one track per instrument)."""
    midi = mido.MidiFile(ticks_per_beat=_TICKS_PER_BEAT)
    tracks: dict[int, tuple[mido.MidiTrack, int, int]] = {}  # instrument -> (track, last tick, channel)
    free = iter(_MELODIC_CHANNELS)
    now = 0
    for token in np.asarray(tokens, dtype=np.int64).ravel():
        if token == vocab.MIDI_SEPARATOR:
            continue
        if token < vocab.MIDI_START_OFFSET:
            now += int(token) - vocab.MIDI_TIME_OFFSET
            continue
        is_on = token < vocab.MIDI_END_OFFSET
        note = int(token) - (vocab.MIDI_START_OFFSET if is_on else vocab.MIDI_END_OFFSET)
        instr, pitch = divmod(note, vocab.MAX_PITCH)
        if instr not in tracks:
            if not is_on:
                continue  # an offset without an onset
            ch = vocab.DRUM_CHANNEL if instr == vocab.DRUMS else next(free, None)
            if ch is None:
                raise ValueError("more than 15 melodic instruments do not fit in MIDI's channels")
            track = mido.MidiTrack()
            midi.tracks.append(track)
            track.append(mido.Message("program_change", channel=ch, program=0 if instr == vocab.DRUMS else instr))
            tracks[instr] = (track, 0, ch)
        track, last, ch = tracks[instr]
        track.append(mido.Message("note_on" if is_on else "note_off", channel=ch, note=pitch,
                                  velocity=_VELOCITY if is_on else 0, time=now - last))
        tracks[instr] = (track, now, ch)
    if path is not None:
        midi.save(os.fspath(path))
    return midi


def midi_files(folder: str | os.PathLike) -> list[Path]:
    """MIDI files under a folder, recursively (.mid, .midi, .kar, any case), sorted by path."""
    suffixes = {".mid", ".midi", ".kar"}
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in suffixes and p.is_file())
