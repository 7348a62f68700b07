"""MIDI -> events with the reference's semantics, token for token, and events -> MIDI."""

import io
import struct

import mido
import numpy as np
import pytest

from amt import midi, ops, vocab
from crafted_midi import END_OF_TRACK, midi_file, varint


def _bytes(midifile: mido.MidiFile) -> bytes:
    buffer = io.BytesIO()
    midifile.save(file=buffer)
    return buffer.getvalue()


def _agree(data: bytes):
    """Fast and reference (mido) paths give the same notes, or both refuse the file."""
    try:
        fast = midi.parse_midi(data)
    except midi.MidiError:
        fast = None
    try:
        slow = midi.parse_midi(data, reference=True)
    except midi.MidiError:
        slow = None
    assert (fast is None) == (slow is None), "one path read the file and the other refused it"
    if fast is not None:
        for field in ("onset", "duration", "pitch", "instrument", "interarrival"):
            np.testing.assert_array_equal(getattr(fast, field), getattr(slow, field), err_msg=field)
        assert fast.interarrival_truncations == slow.interarrival_truncations
    return fast


def test_events_match_the_reference_token_for_token(reference_events):
    compared = 0
    for path, status, tokens in reference_events:
        if status == "parse_error":
            with pytest.raises(midi.MidiError, match=path.name):
                midi.midi_to_events(path)
            continue
        np.testing.assert_array_equal(midi.midi_to_events(path), tokens, err_msg=str(path))
        compared += 1
    assert compared == 188


@pytest.mark.slow
def test_fast_reader_agrees_with_mido_on_every_shared_file(midi_dir):
    files = midi.midi_files(midi_dir)
    assert len(files) >= 189
    for path in files:
        _agree(path.read_bytes())


def test_fast_reader_agrees_with_mido_on_damaged_files(midi_dir):
    """Truncated and byte-flipped real files: both paths refuse the same ones and agree on the rest."""
    rng = np.random.default_rng(0)
    small = sorted(midi.midi_files(midi_dir), key=lambda p: p.stat().st_size)[5:45:5]
    outcomes = {"read": 0, "refused": 0}
    for path in small:
        data = path.read_bytes()
        for cut in rng.integers(0, len(data), 8):
            outcomes["read" if _agree(data[:cut]) is not None else "refused"] += 1
        for _ in range(12):
            damaged = bytearray(data)
            for position in rng.integers(14, len(data), 3):
                damaged[position] = rng.integers(0, 256)
            outcomes["read" if _agree(bytes(damaged)) is not None else "refused"] += 1
    assert outcomes["read"] > 10 and outcomes["refused"] > 10, outcomes


def _file(*tracks, ticks_per_beat=50, type=1):
    return mido.MidiFile(type=type, ticks_per_beat=ticks_per_beat, tracks=[mido.MidiTrack(t) for t in tracks])


def test_reference_semantics_on_a_constructed_file():
    on = lambda note, t, ch=0, vel=80: mido.Message("note_on", note=note, velocity=vel, time=t, channel=ch)  # noqa: E731
    off = lambda note, t, ch=0: mido.Message("note_off", note=note, time=t, channel=ch)  # noqa: E731
    conductor = [mido.MetaMessage("set_tempo", tempo=500_000, time=0),
                 mido.MetaMessage("set_tempo", tempo=250_000, time=400)]  # 10 ms a tick, from 4 s 5 ms
    melody = [
        mido.Message("program_change", program=40, time=0),
        on(60, 0), on(60, 50), off(60, 50), off(60, 50),  # overlapping same pitch: first in, first out
        mido.Message("program_change", program=41, time=0),
        on(62, 0), on(62, 100, vel=0),  # velocity 0 closes the note
        on(64, 200),  # tick 450: 4 s + 50 ticks at the new tempo; never closed
        on(65, 0), off(65, 8000),  # 40 s long: capped
    ]
    drums = [on(36, 100, ch=9), off(36, 10, ch=9)]
    events = ops.as_triples(midi.midi_to_events(_bytes(_file(conductor, melody, drums))))
    expected = [
        (0, 100, 40 * 128 + 60),  # closed by the first note-off (first in, first out)
        (50, 100, 40 * 128 + 60),  # closed by the second
        (100, 10, 128 * 128 + 36),  # channel 10: drums
        (150, 100, 41 * 128 + 62),  # program changed mid-track; closed by a velocity-0 note-on
        (425, 25, 41 * 128 + 64),  # never closed: 0.25 s
        (425, 999, 41 * 128 + 65),  # capped at 9.99 s
    ]
    got = [(o - vocab.TIME_OFFSET, d - vocab.DUR_OFFSET, n - vocab.NOTE_OFFSET) for o, d, n in events]
    assert sorted(got) == sorted(expected)
    _agree(_bytes(_file(conductor, melody, drums)))


def test_absurd_tempos_are_read_like_the_reference():
    notes = [mido.Message("note_on", note=60, velocity=64, time=10), mido.Message("note_off", note=60, time=10)] * 50
    for tempo in (0, 1, 0xFFFFFF):
        data = _bytes(_file([mido.MetaMessage("set_tempo", tempo=tempo, time=0), *notes]))
        assert _agree(data) is not None


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "ends early"),
        (b"RIFF\x00\x00\x00\x04abcd", "not a MIDI file"),
        (b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x00\x60MTrk\x00\x00\x00\x10\x00\x90", "ends early"),
        (b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x00\x60MTrk\x00\x00\x00\x04\x00\x40\x40\x40", "running status"),
    ],
)
def test_bad_bytes_raise_an_error_naming_the_file(tmp_path, data, reason):
    path = tmp_path / "bad.mid"
    path.write_bytes(data)
    with pytest.raises(midi.MidiError, match=f"bad.mid: .*{reason}"):
        midi.midi_to_events(path)
    _agree(data)


_NOTE = b"\x00\x90\x3c\x40\x60\x80\x3c\x00"  # C4 from tick 0 to tick 96 (0.5 s at 96 a beat, 120 bpm)


@pytest.mark.parametrize(
    "data, durations",
    [
        # a header chunk longer than 6 bytes: mido reads the 6 it knows and skips the rest
        (b"MThd" + struct.pack(">IhhH", 8, 0, 1, 96) + b"\x00\x00" + b"MTrk" + struct.pack(">I", 12)
         + _NOTE + END_OF_TRACK, [50]),
        # a sysex whose payload repeats the F0: mido drops it (and a trailing F7) before checking the bytes
        (midi_file(b"\x00\xf0\x03\xf0\x01\xf7" + _NOTE + END_OF_TRACK), [50]),
        # a sequence number of 1 byte: mido cannot decode it and refuses the file
        (midi_file(b"\x00\xff\x00\x01\x05" + _NOTE + END_OF_TRACK), None),
        # a meta payload of exactly mido's maximum length is read; one byte more is refused
        (midi_file(b"\x00\xff\x01" + varint(10**6) + b"a" * 10**6 + _NOTE + END_OF_TRACK), [50]),
        (midi_file(b"\x00\xff\x01" + varint(10**6 + 1) + b"a" * (10**6 + 1) + _NOTE + END_OF_TRACK), None),
        # 0 ticks per beat: mido divides only for a positive delta, so a file with none is read
        (midi_file(b"\x00\x90\x3c\x40\x00\x80\x3c\x00" + END_OF_TRACK, ticks_per_beat=0), [0]),
        # SMPTE division (negative ticks per beat) where only the end of track has a delta: mido's last
        # message then has a negative time, which the reference refuses
        (midi_file(b"\x00\x90\x3c\x40\x00\x80\x3c\x00\x60\xff\x2f\x00", ticks_per_beat=0xE728), None),
        # an end of track at tick 1 in another track carries its delta into the note-off (one float addition
        # of 7 ticks: 0.035000000000000004 s, 4 bins), it does not split it (0.005 + 0.03 s: 3 bins)
        (midi_file(b"\x01\xff\x2f\x00", b"\x00\x90\x3c\x40\x07\x80\x3c\x00" + END_OF_TRACK,
                   ticks_per_beat=100), [4]),
    ],
    ids=["long_header", "sysex_f0_payload", "short_sequence_number", "meta_at_max_length", "meta_over_max_length",
         "zero_ticks_per_beat", "smpte_trailing_delta", "end_of_track_carries_delta"],
)
def test_odd_headers_and_messages_are_read_like_mido(data, durations):
    """Legal or borderline constructs that real files carry: both paths read (or refuse) them as mido does."""
    notes = _agree(data)
    assert (None if notes is None else notes.duration.tolist()) == durations


def test_missing_file_and_type_2_file_are_named(tmp_path):
    with pytest.raises(midi.MidiError, match="nowhere.mid: cannot open"):
        midi.midi_to_events(tmp_path / "nowhere.mid")
    type2 = _bytes(_file([mido.Message("note_on", note=60, time=0)], type=2))
    with pytest.raises(midi.MidiError, match="type 2"):
        midi.midi_to_events(type2)
    _agree(type2)


def test_events_to_midi_round_trip(reference_events):
    """MIDI -> events -> MIDI -> events is exact, except where one drum pitch overlaps itself so that a
    later hit ends first after rounding (MIDI has one drum channel): there only such durations move 1 bin."""
    exact = 0
    readable = [(p, t) for p, status, t in reference_events if status != "parse_error" and t]
    for path, tokens in readable:
        events = ops.as_triples(tokens)
        again = ops.as_triples(midi.midi_to_events(_bytes(midi.events_to_midi(events))))
        if np.array_equal(events, again):
            exact += 1
            continue
        different = np.flatnonzero((events != again).any(axis=1))
        np.testing.assert_array_equal(events[:, [0, 2]], again[:, [0, 2]])
        assert np.all(np.abs(events[different, 1] - again[different, 1]) == 1)
        assert np.all((events[different, 2] - vocab.NOTE_OFFSET) // vocab.MAX_PITCH == vocab.DRUMS)
    assert exact >= len(readable) - 3, (exact, len(readable))


def test_events_to_midi_plays_controls_and_concatenates_pieces(tmp_path):
    piece = [(0, 50, 60), (100, 50, 64)]
    tokens = [vocab.ANTICIPATE]
    for onset, dur, note in piece:
        tokens += [onset, vocab.DUR_OFFSET + dur, vocab.NOTE_OFFSET + note]
    tokens += [vocab.ATIME_OFFSET + 120, vocab.ADUR_OFFSET + 10, vocab.ANOTE_OFFSET + 128 * 33 + 40]
    tokens += [200, vocab.DUR_OFFSET, vocab.REST] + [vocab.SEPARATOR] * 3 + [0, vocab.DUR_OFFSET + 10, vocab.NOTE_OFFSET + 67]
    path = tmp_path / "out.mid"
    midi.events_to_midi(tokens, path)
    back = ops.as_triples(midi.midi_to_events(path))
    assert back.tolist() == [[0, 10_050, 11_060], [100, 10_050, 11_064], [120, 10_010, 11_000 + 128 * 33 + 40],
                             [150, 10_010, 11_067]]
    assert mido.MidiFile(path).length == pytest.approx(1.6)


def test_interarrival_encoding_round_trip(reference_events):
    path = next(p for p, status, _ in reference_events if status == "ok")
    tokens = midi.midi_to_interarrival(path)
    assert tokens.max() < vocab.MIDI_VOCAB_SIZE and tokens.min() >= 0
    again = midi.midi_to_interarrival(_bytes(midi.interarrival_to_midi(tokens)))
    # the same notes switch on and off, at the same total time
    for block in ((vocab.MIDI_START_OFFSET, vocab.MIDI_END_OFFSET), (vocab.MIDI_END_OFFSET, vocab.MIDI_SEPARATOR)):
        np.testing.assert_array_equal(np.sort(tokens[(tokens >= block[0]) & (tokens < block[1])]),
                                      np.sort(again[(again >= block[0]) & (again < block[1])]))
    shifts = lambda t: t[t < vocab.MIDI_START_OFFSET].sum()  # noqa: E731
    assert shifts(again) == shifts(tokens)


def test_interarrival_to_midi_skips_an_offset_before_any_onset_and_reads_the_lowest_note_off():
    """Token MIDI_END_OFFSET is the note-off of piano pitch 0 (not a note-on); an offset whose instrument has
    not sounded yet is dropped (the reference's 'IGNORING bad offset')."""
    on, off = vocab.MIDI_START_OFFSET, vocab.MIDI_END_OFFSET
    tokens = np.array([off + 0, off + 128 * 5 + 40, on + 0, 10, off + 0])
    assert midi.midi_to_interarrival(_bytes(midi.interarrival_to_midi(tokens))).tolist() == [on + 0, 10, off + 0]


def test_capped_durations_are_counted_from_ten_seconds_as_the_reference():
    """`compound_to_events` counts a duration as truncated when it is >= 1,000 bins (then writes 999);
    a never-closed note (-1) gets 0.25 s and is not counted."""
    duration = np.array([998, 999, 1000, 1001, -1])
    zeros = np.zeros(len(duration), dtype=np.int64)
    notes = midi.MidiNotes(zeros, duration, zeros + 60, zeros, np.zeros(0, dtype=np.int64), 0)
    tokens, truncations = midi.notes_to_events(notes)
    assert truncations == 2
    assert (ops.as_triples(tokens)[:, 1] - vocab.DUR_OFFSET).tolist() == [998, 999, 999, 999, 25]


def test_midi_files_finds_every_midi_suffix_in_any_case(tmp_path):
    for name in ("a.MID", "b.Midi", "sub/c.kar", "d.mid", "e.txt", "f.mid.bak"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in midi.midi_files(tmp_path)]
    assert found == ["a.MID", "b.Midi", "d.mid", "sub/c.kar"]
