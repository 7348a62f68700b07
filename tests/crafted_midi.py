"""Hostile MIDI files from the issue "Preprocessing you can trust at Lakh scale", made byte by byte.

Used by the tests and by benchmarks/preprocess_hostile.py (which imports this file by path).
"""

from __future__ import annotations

import struct

import numpy as np


def varint(value: int) -> bytes:
    """MIDI's variable-length number (any size: mido reads them as Python ints)."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def midi_file(*tracks: bytes, ticks_per_beat: int = 96, format: int = 1) -> bytes:
    header = b"MThd" + struct.pack(">IhhH", 6, format, len(tracks), ticks_per_beat)
    return header + b"".join(b"MTrk" + struct.pack(">I", len(t)) + t for t in tracks)


END_OF_TRACK = b"\x00\xff\x2f\x00"


def overflow_file() -> bytes:
    """44 bytes: tempo 0xFFFFFF, 1 tick per beat, a delta of 2^53 + 1 (once an OverflowError that stopped
    every run of the job: the onset in 10 ms bins does not fit int64)."""
    track = b"\x00\xff\x51\x03\xff\xff\xff" + varint(2**53 + 1) + b"\x90\x3c\x40" + END_OF_TRACK
    data = midi_file(track, ticks_per_beat=1, format=0)
    assert len(data) == 44
    return data


def notes_track(n_pairs: int) -> bytes:
    """n_pairs note-on/note-off pairs, one tick apart, with explicit status bytes (4 bytes a message)."""
    pair = np.frombuffer(b"\x01\x90\x3c\x40\x01\x80\x3c\x00", dtype=np.uint8)
    return np.tile(pair, n_pairs).tobytes()


def system_byte_file(megabytes: float = 50) -> bytes:
    """About `megabytes` MB of notes with one system real-time byte (0xF8, clock) in the middle: that byte
    used to send the whole file to mido (minutes, gigabytes)."""
    pairs = int(megabytes * 1e6) // 16
    body = notes_track(pairs) + b"\x00\xf8" + notes_track(pairs)
    return midi_file(body + END_OF_TRACK)


def long_delta_file(megabytes: float = 1) -> bytes:
    """A delta time written with about `megabytes` MB of continuation bytes (mido's reading is quadratic)."""
    delta = b"\x81" * int(megabytes * 1e6) + b"\x00"
    body = notes_track(200) + delta + b"\x90\x3c\x40" + notes_track(200)
    return midi_file(body + END_OF_TRACK)


def unknown_meta_file(delta: int = 96) -> bytes:
    """An unknown meta event (0x08, program name, unknown to mido 1.3) with a delta between two notes."""
    track = (b"\x00\x90\x3c\x40" + varint(delta) + b"\xff\x08\x02ab" + varint(delta) + b"\x80\x3c\x00"
             + b"\x00\x90\x3e\x40" + varint(delta) + b"\x80\x3e\x00" + END_OF_TRACK)
    return midi_file(track)


CRAFTED = {
    "overflow.mid": overflow_file,
    "system_byte_50mb.mid": system_byte_file,
    "long_delta_1mb.mid": long_delta_file,
}
