"""Seeded fuzz of the MIDI readers: thousands of deterministic mutations of real files (bounded in time).

Asserts, for every mutated file: the fast reader and mido's path raise nothing but `MidiError` (the readers'
own refusal, naming the file); where both read the file, their notes are identical; the fast reader refuses
a file mido reads only for its documented integer limits; onsets are never negative.
"""

import time

import numpy as np
import pytest

from amt import midi, midifile
from crafted_midi import varint

SEED = 11
MUTATIONS = 3000
TIME_LIMIT_S = 30.0  # CI bound: stop early (deterministically a prefix of the same sequence) past this
MIN_MUTATIONS = 800
LIMIT_REASONS = {midifile.ERRORS[midifile.TOO_BIG], midifile.ERRORS[midifile.TOO_LATE]}


def _constructs(rng) -> bytes:
    """One message (with its delta) of a kind that the readers handle specially."""
    delta = varint(int(rng.choice([0, 1, 7, 96, 480, 2**21, 2**53 + 1, 2**62 - 1])))
    choice = int(rng.integers(12))
    if choice == 0:  # unknown meta (mido drops its delta)
        meta = int(rng.choice([0x08, 0x0A, 0x10, 0x4B, 0x60, 0x7E]))
        return delta + bytes([0xFF, meta, 2]) + b"ab"
    if choice == 1:  # tempo at the limits
        tempos = [[0, 0, 0], [0, 0, 1], [255, 255, 255], [7, 161, 32]]
        return delta + b"\xff\x51\x03" + bytes(tempos[int(rng.integers(len(tempos)))])
    if choice == 2:  # system real-time
        return delta + bytes([int(rng.choice([0xF6, 0xF8, 0xFA, 0xFB, 0xFC, 0xFE]))])
    if choice == 3:  # system common with data
        return delta + bytes([int(rng.choice([0xF1, 0xF3])), int(rng.integers(128))])
    if choice == 4:
        return delta + bytes([0xF2, int(rng.integers(128)), int(rng.integers(128))])
    if choice == 5:  # undefined status
        return delta + bytes([int(rng.choice([0xF4, 0xF5, 0xF9, 0xFD]))])
    if choice == 6:  # a long variable-length number (9-12 bytes, small or huge value)
        lead = 0x80 if rng.random() < 0.5 else 0x81
        return bytes([lead] * int(rng.integers(8, 12))) + b"\x00" + b"\x90\x3c\x40"
    if choice == 7:  # real-time then a running-status data byte (mido: wrong number of bytes)
        return delta + b"\xf8" + b"\x00\x40"
    if choice == 8:  # a note with a huge delta
        return delta + bytes([0x90 | int(rng.integers(16)), int(rng.integers(128)), int(rng.integers(1, 128))])
    if choice == 9:  # sysex
        return delta + b"\xf0\x03\x7e\x01\xf7"
    if choice == 10:  # known metas with odd payloads
        odd = [[0xFF, 0x21, 0], [0xFF, 0x00, 0], [0xFF, 0x58, 4, 4, 29, 24, 8], [0xFF, 0x59, 2, 8, 0]]
        return delta + bytes(odd[int(rng.integers(len(odd)))])
    return delta + bytes([0x80 | int(rng.integers(16)), 60, 0])


def _insert_into_track(data: bytes, rng) -> bytes:
    """Insert constructs at the start of a track (a message boundary), fixing the chunk's length."""
    starts = [i for i in range(len(data) - 8) if data[i:i + 4] == b"MTrk"]
    if not starts:
        return data
    at = starts[int(rng.integers(len(starts)))]
    payload = b"".join(_constructs(rng) for _ in range(int(rng.integers(1, 4))))
    length = int.from_bytes(data[at + 4:at + 8], "big") + len(payload)
    return data[:at + 4] + (length % 2**32).to_bytes(4, "big") + payload + data[at + 8:]


def mutate(data: bytes, rng) -> bytes:
    choice = int(rng.integers(6))
    if choice <= 2:
        return _insert_into_track(data, rng)
    damaged = bytearray(data)
    if choice == 3:  # flip bytes past the header
        for position in rng.integers(14, len(data), int(rng.integers(1, 4))):
            damaged[position] = int(rng.integers(256))
        return bytes(damaged)
    if choice == 4:  # a system or status byte somewhere
        damaged[int(rng.integers(22, len(data)))] = int(rng.integers(0xF0, 0x100))
        return bytes(damaged)
    # ticks per beat at the limits, or a truncation
    if rng.random() < 0.5:
        damaged[12:14] = int(rng.choice([1, 2, 0x7FFF, 0x8000, 0])).to_bytes(2, "big")
        return _insert_into_track(bytes(damaged), rng)
    return data[: int(rng.integers(14, len(data)))]


def _parse(data, reference):
    try:
        return midi.parse_midi(data, reference=reference), None
    except midi.MidiError as error:
        return None, error.reason


def test_fuzzed_files_fast_reader_equals_mido(midi_dir):
    files = sorted(p for p in midi.midi_files(midi_dir) if 200 < p.stat().st_size < 3000)
    assert len(files) >= 20
    originals = [p.read_bytes() for p in files]
    rng = np.random.default_rng(SEED)
    counts = {"both_read": 0, "both_refused": 0, "fast_refused_at_limits": 0}
    start = time.perf_counter()
    done = 0
    for done in range(1, MUTATIONS + 1):
        data = mutate(originals[int(rng.integers(len(originals)))], rng)
        fast, fast_reason = _parse(data, reference=False)
        slow, slow_reason = _parse(data, reference=True)
        if fast is not None:
            assert slow is not None, f"mutation {done}: mido refused ({slow_reason}) what the fast reader read"
            for field in ("onset", "duration", "pitch", "instrument", "interarrival"):
                np.testing.assert_array_equal(getattr(fast, field), getattr(slow, field), err_msg=f"{done}: {field}")
            assert fast.interarrival_truncations == slow.interarrival_truncations
            assert (fast.onset >= 0).all() and (fast.duration >= -1).all()
            counts["both_read"] += 1
        elif slow is not None:
            assert fast_reason in LIMIT_REASONS, f"mutation {done}: fast refused ({fast_reason}), mido read it"
            counts["fast_refused_at_limits"] += 1
        else:
            counts["both_refused"] += 1
        if time.perf_counter() - start > TIME_LIMIT_S:
            break
    print(f"fuzz: {done} mutations in {time.perf_counter() - start:.1f} s: {counts}")
    assert done >= MIN_MUTATIONS, f"only {done} mutations ran within {TIME_LIMIT_S} s"
    assert counts["both_read"] > done // 5 and counts["both_refused"] > done // 10, counts


@pytest.mark.parametrize("meta", [0x08, 0x0A, 0x60])
def test_unknown_meta_loses_its_delta_as_in_mido(meta):
    """mido 1.3 builds an unknown meta without its delta time, so the notes after it move earlier."""
    from crafted_midi import END_OF_TRACK, midi_file

    track = b"\x00\x90\x3c\x40" + b"\x60" + bytes([0xFF, meta, 2]) + b"ab" + b"\x60\x80\x3c\x00" + END_OF_TRACK
    data = midi_file(track)
    fast, slow = midi.parse_midi(data), midi.parse_midi(data, reference=True)
    assert fast.duration.tolist() == slow.duration.tolist() == [50]  # 96 ticks at 96 a beat, 120 bpm: 0.5 s


def test_crafted_hostile_files_are_refused_fast_with_reasons():
    from crafted_midi import long_delta_file, overflow_file

    start = time.perf_counter()
    with pytest.raises(midi.MidiError, match="2\\^31 time bins"):
        midi.parse_midi(overflow_file())
    with pytest.raises(midi.MidiError, match="2\\^31 time bins"):
        midi.parse_midi(overflow_file(), reference=True)
    with pytest.raises(midi.MidiError, match="2\\^62"):
        midi.parse_midi(long_delta_file(1))
    assert time.perf_counter() - start < 5
