"""A byte-level Standard MIDI File reader compiled with numba, faithful to mido's reading rules.

Why this exists: the paper's reference reads MIDI with mido, which builds a Python object per message
(about 150 ms a file; 60% of the reference's preprocessing time). Token parity depends on *every* message
(each one splits the float sum of seconds), on mido's stable merge of the tracks, and on exactly which files
mido refuses. So this reader reproduces mido 1.3's reading of the byte stream (running status, sysex,
meta decoding checks, chunk bounds) and yields flat arrays of messages, and `to_compound` replays mido's
playback iteration (tempo in force, end-of-track deltas carried) and the reference's note pairing.

Everything mido accepts is read here too, so no file falls back to mido (whose object per message made one
stray system byte in a 50 MB file cost minutes and gigabytes). mido's quirks are reproduced: system common
and real-time messages (0xF1-0xFE) read by their spec lengths and setting running status; an *unknown* meta
event (mido 1.3 knows 0x00-0x07, 0x09, 0x20, 0x21, 0x2F, 0x51, 0x54, 0x58, 0x59, 0x7F) loses its delta time,
because mido builds it without one.

Deliberate differences from mido (files refused with a reason instead of read): a tick count or variable-length
number past 2^62 (mido's Python ints grow without bound and its reading turns quadratic), and a note at or
past 2^31 time bins (248 days; mido's reading gives onsets that do not fit the token arrays). Such files
would be skipped as too long anyway.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from amt.vocab import DRUM_CHANNEL, DRUMS, MAX_NOTE, MAX_PITCH  # numba compiles these in as constants

# message kinds
OTHER, NOTE_OFF, NOTE_ON, PROGRAM_CHANGE, SET_TEMPO, END_OF_TRACK = 0, 1, 2, 3, 4, 5

# reader status codes (0 = read)
ERRORS = {
    1: "file ends early (EOF inside a chunk)",
    2: "MThd not found: probably not a MIDI file",
    3: "no MTrk header at start of track",
    4: "running status without a previous status byte",
    5: "undefined status byte",
    6: "data byte must be in range 0..127",
    7: "message length exceeds 1,000,000 bytes",
    8: "sysex data byte must be in range 0..127",
    9: "malformed meta message",
    10: "can't merge tracks in a type 2 (asynchronous) file",
    11: "non-positive ticks per beat (SMPTE time division is not supported)",
    12: "a time or length past 2^62 ticks (refused: beyond the reader's integer range)",
    13: "a note at or past 2^31 time bins (248 days; refused: beyond the token range)",
    14: "wrong number of data bytes for a system message",
}
(EOF, NO_MTHD, NO_MTRK, NO_RUNNING_STATUS, UNDEFINED_STATUS, BAD_DATA, TOO_LONG, BAD_SYSEX, BAD_META, TYPE2,
 BAD_DIVISION, TOO_BIG, TOO_LATE, SYSTEM_LENGTH) = range(1, 15)
MAX_MESSAGE_LENGTH = 1_000_000
MAX_TICKS = 1 << 62
MAX_BINS = (1 << 31) - 1  # onsets and durations must stay below this many 10 ms bins
DEFAULT_TEMPO = 500_000

# mido checks a time signature's denominator 2**d with math.log(2**d, 2) == int(...): a few exponents fail
# that float test (e.g. 29) and mido refuses the file. Precomputed here so the compiled reader agrees.
_BAD_DENOMINATOR_EXPONENT = np.array(
    [math.log(2**d, 2) != int(math.log(2**d, 2)) for d in range(256)], dtype=np.bool_
)
# the meta types mido 1.3 decodes; any other is an UnknownMetaMessage, built without its delta time
_KNOWN_META = np.zeros(256, dtype=np.bool_)
_KNOWN_META[[0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x09, 0x20, 0x21, 0x2F, 0x51, 0x54, 0x58, 0x59, 0x7F]] = True


@numba.njit(cache=True)
def _varint(data, pos):
    """(value, new position, status); mido's read_variable_int."""
    n = len(data)
    value = np.int64(0)
    while True:
        if pos >= n:
            return 0, pos, EOF
        byte = data[pos]
        pos += 1
        if value >= (MAX_TICKS >> 7):
            return 0, pos, TOO_BIG  # mido's Python int would keep growing (quadratic time); refused
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos, 0


@numba.njit(cache=True)
def _payload_length(data, pos):
    """(length, new position, status) of a meta or sysex payload: mido's read_variable_int, then its checks
    that the length is at most 1,000,000 bytes and that the bytes are there."""
    length, pos, status = _varint(data, pos)
    if status != 0:
        return 0, pos, status
    if length > MAX_MESSAGE_LENGTH:
        return 0, pos, TOO_LONG
    if len(data) - pos < length:
        return 0, pos, EOF
    return length, pos, 0


@numba.njit(cache=True)
def _read(data, bad_denominator_exponent):
    n = len(data)
    capacity = n // 2 + 2  # every message takes at least two bytes
    tick = np.empty(capacity, np.int64)
    kind = np.empty(capacity, np.int8)
    channel = np.empty(capacity, np.int8)
    value = np.empty(capacity, np.int32)  # note, program or tempo
    velocity = np.empty(capacity, np.int8)
    count = 0
    header = np.zeros(3, np.int64)  # format, number of tracks, ticks per beat (signed, as mido reads them)

    if n < 8:
        return EOF, 0, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
    if not (data[0] == 77 and data[1] == 84 and data[2] == 104 and data[3] == 100):  # b"MThd"
        return NO_MTHD, 0, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
    size = (np.int64(data[4]) << 24) | (np.int64(data[5]) << 16) | (np.int64(data[6]) << 8) | np.int64(data[7])
    pos = 8
    if n - pos < 6 or size < 6:
        return EOF, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
    for i in range(3):
        v = (np.int64(data[pos + 2 * i]) << 8) | np.int64(data[pos + 2 * i + 1])
        header[i] = v - 65536 if v >= 32768 else v
    pos += min(size, n - pos)

    for _ in range(header[1]):
        if n - pos < 8:
            return EOF, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
        if not (data[pos] == 77 and data[pos + 1] == 84 and data[pos + 2] == 114 and data[pos + 3] == 107):
            return NO_MTRK, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
        size = (
            (np.int64(data[pos + 4]) << 24) | (np.int64(data[pos + 5]) << 16)
            | (np.int64(data[pos + 6]) << 8) | np.int64(data[pos + 7])
        )
        pos += 8
        start = pos
        last_status = -1
        now = np.int64(0)
        while pos - start != size:
            delta, pos, st = _varint(data, pos)
            if st != 0:
                return st, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
            now += delta  # both below 2^62: no overflow
            if now >= MAX_TICKS:
                return TOO_BIG, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
            if pos >= n:
                return EOF, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
            status = np.int64(data[pos])
            pos += 1
            peek = -1
            if status < 0x80:
                if last_status < 0:
                    return NO_RUNNING_STATUS, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
                peek = status
                status = last_status
            elif status != 0xFF:
                last_status = status

            k = OTHER
            ch = 0
            val = 0
            vel = 0
            if status == 0xFF:  # meta message
                if pos >= n:
                    return EOF, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
                meta_type = data[pos]
                pos += 1
                length, pos, st = _payload_length(data, pos)
                if st != 0:
                    return st, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
                bad = False
                if meta_type == 0x00:  # sequence number: 0 or >= 2 bytes
                    bad = length == 1
                elif meta_type == 0x20:  # channel prefix
                    bad = length < 1
                elif meta_type == 0x2F:
                    k = END_OF_TRACK
                elif not _KNOWN_META[meta_type]:
                    now -= delta  # mido builds an unknown meta without its delta: later messages move earlier
                elif meta_type == 0x51:  # set tempo
                    if length < 3:
                        bad = True
                    else:
                        k = SET_TEMPO
                        val = (np.int32(data[pos]) << 16) | (np.int32(data[pos + 1]) << 8) | np.int32(data[pos + 2])
                elif meta_type == 0x54:  # SMPTE offset: frame rate code, minutes, seconds, sub-frames checked
                    bad = length < 5 or (data[pos] >> 5) > 3 or data[pos + 1] > 59 or data[pos + 2] > 59 or data[pos + 4] > 99
                elif meta_type == 0x58:  # time signature: denominator 2**d must pass mido's float check
                    bad = length < 4 or bad_denominator_exponent[data[pos + 1]]
                elif meta_type == 0x59:  # key signature: -7..7 sharps, major or minor
                    if length < 2:
                        bad = True
                    else:
                        key = np.int64(data[pos])
                        key = key - 256 if key >= 128 else key
                        bad = key < -7 or key > 7 or data[pos + 1] > 1
                if bad:
                    return BAD_META, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
                pos += length
            elif status == 0xF0 or status == 0xF7:  # sysex (a running-status data byte is dropped, as in mido)
                length, pos, st = _payload_length(data, pos)
                if st != 0:
                    return st, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
                first = pos
                last = pos + length
                if last > first and data[first] == 0xF0:
                    first += 1
                if last > first and data[last - 1] == 0xF7:
                    last -= 1
                for j in range(first, last):
                    if data[j] > 127:
                        return BAD_SYSEX, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
                pos += length
            elif status >= 0xF0:  # system common / real-time: mido reads the spec's length, checks the bytes
                if status == 0xF4 or status == 0xF5 or status == 0xF9 or status == 0xFD:
                    return UNDEFINED_STATUS, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
                extra = 1 if (status == 0xF1 or status == 0xF3) else 2 if status == 0xF2 else 0
                if peek >= 0:
                    extra -= 1
                    if extra < 0:  # a running-status data byte after a one-byte message
                        return SYSTEM_LENGTH, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
                for j in range(extra):
                    if pos >= n:
                        return EOF, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
                    if data[pos] > 127:
                        return BAD_DATA, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
                    pos += 1
            else:  # channel voice message
                high = status & 0xF0
                ch = status & 0x0F
                nbytes = 1 if (high == 0xC0 or high == 0xD0) else 2
                b1 = peek
                b2 = 0
                if peek < 0:
                    if pos >= n:
                        return EOF, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
                    b1 = np.int64(data[pos])
                    pos += 1
                if nbytes == 2:
                    if pos >= n:
                        return EOF, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
                    b2 = np.int64(data[pos])
                    pos += 1
                if b1 > 127 or b2 > 127:
                    return BAD_DATA, pos, header, tick[:0], kind[:0], channel[:0], value[:0], velocity[:0]
                if high == 0x80:
                    k = NOTE_OFF
                elif high == 0x90:
                    k = NOTE_ON
                elif high == 0xC0:
                    k = PROGRAM_CHANGE
                val = b1
                vel = b2
            tick[count] = now
            kind[count] = k
            channel[count] = ch
            value[count] = val
            velocity[count] = vel
            count += 1
    return 0, pos, header, tick[:count], kind[:count], channel[:count], value[:count], velocity[:count]


@numba.njit(cache=True)
def _play(kind, tick, channel, value, velocity, ticks_per_beat, max_interarrival, start_offset, end_offset, head, tail):
    """Replay the merged messages as mido's iteration and the reference's conversions do.

    Returns the status, the compound notes (onset bin, duration bin or -1 if never closed, pitch,
    instrument) in note-on order, and the interarrival tokens (time shift = bins, note-on =
    start_offset + note, note-off = end_offset + note) with their count of truncated shifts.
    """
    n = len(kind)
    onset = np.empty(n, np.int64)
    onset_seconds = np.empty(n, np.float64)
    duration = np.empty(n, np.int64)
    pitch = np.empty(n, np.int64)
    instrument = np.empty(n, np.int64)
    interarrival = np.empty(2 * n, np.int64)
    # first-in first-out queues of open notes per (instrument, pitch, channel), as linked lists; head and
    # tail come in all -1 (scratch reused across files: clearing 264k keys per file would dominate) and the
    # keys touched are put back to -1 before returning
    following = np.empty(n, np.int64)
    touched = np.empty(n, np.int64)
    touches = 0
    programs = np.zeros(16, np.int64)

    now = 0.0  # seconds since the start: the reference's running float sum
    since_note = 0.0  # seconds since the last note message: the interarrival encoding's own float sum
    tempo = DEFAULT_TEMPO
    previous_tick = 0
    notes = 0
    tokens = 0
    truncations = 0
    for i in range(n):
        k = kind[i]
        if k == END_OF_TRACK:
            continue  # mido drops it and carries its delta into the next message
        delta_ticks = tick[i] - previous_tick
        previous_tick = tick[i]
        if delta_ticks > 0:
            # mido's tick2second; it divides by zero on 0 ticks per beat, and the reference refuses a negative
            # time (negative ticks per beat, unless the tempo is 0: then the time is -0.0)
            delta = delta_ticks * (tempo * 1e-6 / ticks_per_beat) if ticks_per_beat != 0 else -1.0
            if delta < 0:
                for j in range(touches):
                    head[touched[j]] = -1
                    tail[touched[j]] = -1
                return BAD_DIVISION, onset[:0], duration[:0], pitch[:0], instrument[:0], interarrival[:0], 0
            now += delta
            since_note += delta
        if (k == NOTE_ON or k == NOTE_OFF) and 100.0 * now >= MAX_BINS:
            for j in range(touches):
                head[touched[j]] = -1
                tail[touched[j]] = -1
            return TOO_LATE, onset[:0], duration[:0], pitch[:0], instrument[:0], interarrival[:0], 0
        if k == PROGRAM_CHANGE:
            programs[channel[i]] = value[i]
        elif k == SET_TEMPO:
            tempo = value[i]
        elif k == NOTE_ON or k == NOTE_OFF:
            ch = channel[i]
            instr = DRUMS if ch == DRUM_CHANNEL else programs[ch]
            shift = np.int64(np.rint(100.0 * since_note))
            if shift > max_interarrival - 1:
                shift = max_interarrival - 1
                truncations += 1
            if shift > 0:
                interarrival[tokens] = shift
                tokens += 1
            note = MAX_PITCH * instr + value[i]
            key = note * 16 + ch
            touched[touches] = key
            touches += 1
            since_note = 0.0
            if k == NOTE_ON and velocity[i] > 0:
                interarrival[tokens] = start_offset + note
                tokens += 1
                onset[notes] = np.int64(np.rint(100.0 * now))
                onset_seconds[notes] = now
                duration[notes] = -1
                pitch[notes] = value[i]
                instrument[notes] = instr
                following[notes] = -1
                if tail[key] < 0:
                    head[key] = notes
                else:
                    following[tail[key]] = notes
                tail[key] = notes
                notes += 1
            else:
                interarrival[tokens] = end_offset + note
                tokens += 1
                first = head[key]
                if first >= 0:
                    head[key] = following[first]
                    if head[key] < 0:
                        tail[key] = -1
                    duration[first] = np.int64(np.rint(100.0 * (now - onset_seconds[first])))
    for j in range(touches):
        head[touched[j]] = -1
        tail[touched[j]] = -1
    # mido's last message is an end of track carrying the deltas of the end-of-track messages after the last
    # other message: its time goes through the same division and sign check
    trailing = tick[n - 1] - previous_tick if n > 0 else 0
    if trailing > 0 and (ticks_per_beat == 0 or trailing * (tempo * 1e-6 / ticks_per_beat) < 0):
        return BAD_DIVISION, onset[:0], duration[:0], pitch[:0], instrument[:0], interarrival[:0], 0
    return 0, onset[:notes], duration[:notes], pitch[:notes], instrument[:notes], interarrival[:tokens], truncations


def read_messages(data: bytes | np.ndarray):
    """Read a Standard MIDI File's bytes into merged message arrays, as mido's merged track orders them.

    Returns (status, header, kind, tick, channel, value, velocity) where status is 0 when read, an error
    code of ERRORS; header = (format, tracks, ticks per beat).
    """
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    status, _, header, tick, kind, channel, value, velocity = _read(buffer, _BAD_DENOMINATOR_EXPONENT)
    if status != 0:
        return status, header, None, None, None, None, None
    if header[0] == 2:
        return TYPE2, header, None, None, None, None, None
    order = np.argsort(tick, kind="stable")  # tracks are concatenated in order: a stable sort is mido's merge
    return 0, header, kind[order], tick[order], channel[order], value[order], velocity[order]


_QUEUE_HEAD = np.full(MAX_NOTE * 16, -1, np.int64)  # one queue per (note, channel)
_QUEUE_TAIL = np.full(MAX_NOTE * 16, -1, np.int64)


def play(kind, tick, channel, value, velocity, ticks_per_beat: int, max_interarrival: int, start_offset: int, end_offset: int):
    """See `_play`."""
    return _play(
        kind, tick, channel, value, velocity, np.int64(ticks_per_beat), np.int64(max_interarrival),
        np.int64(start_offset), np.int64(end_offset), _QUEUE_HEAD, _QUEUE_TAIL,
    )
