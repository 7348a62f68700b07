"""`events_to_midi` writes whatever the sampler can produce: up to 15 melodic instruments (plus drums) with
same-pitch overlaps, which need extra channels ("layers") beside one channel per instrument."""

import io

import numpy as np
import pytest

from amt import midi, ops, vocab


def _events(rows):
    return np.asarray([(vocab.TIME_OFFSET + t, vocab.DUR_OFFSET + d, vocab.NOTE_OFFSET + 128 * i + p)
                       for t, d, i, p in rows], dtype=np.int64)


def _round_trip(events):
    file = io.BytesIO()
    midi.events_to_midi(events).save(file=file)
    return ops.as_triples(midi.midi_to_events(file.getvalue()))


def _overlap_then_instruments(count):
    """Instrument 0 plays pitch 60 twice, the second note ending first (a layer), then `count - 1` other
    instruments enter: before the fix the layer took a channel in (instrument, layer) order."""
    rows = [(0, 300, 0, 60), (50, 100, 0, 60)]
    rows += [(400 + 10 * i, 50, instrument, 64) for i, instrument in enumerate(range(1, count))]
    rows += [(600, 20, 128, 36)]  # drums keep channel 10
    return ops.sort(_events(rows))


def test_fifteen_instruments_and_an_overlap_write_and_read_back():
    events = _overlap_then_instruments(15)
    back = _round_trip(events)
    assert len(ops.instruments(back)) == 16  # 15 melodic and drums
    # every note comes back at its onset with its instrument and pitch; no channel is left for the layer, so
    # it shares its instrument's channel and one of the two overlapping durations may move
    np.testing.assert_array_equal(back[:, [0, 2]], events[:, [0, 2]])
    assert (back[:, 1] != events[:, 1]).sum() <= 2


def test_overlaps_round_trip_exactly_while_channels_are_left():
    events = _overlap_then_instruments(14)
    np.testing.assert_array_equal(_round_trip(events), events)


def test_sixteen_melodic_instruments_are_refused_by_name():
    with pytest.raises(ValueError, match=r"16 melodic instruments .* at most 15"):
        midi.events_to_midi(_overlap_then_instruments(16))


def test_a_control_given_before_an_earlier_overlapping_event_keeps_both_durations():
    """Controls come in the stream before events that arrive earlier (up to 5 s): channels (layers) must be
    chosen in time order, or a short control inside a long event of the same pitch closes the event."""
    tokens = [vocab.ANTICIPATE,
              vocab.ATIME_OFFSET + 50, vocab.ADUR_OFFSET + 50, vocab.ANOTE_OFFSET + 60,  # control 0.5-1 s
              vocab.TIME_OFFSET + 0, vocab.DUR_OFFSET + 300, vocab.NOTE_OFFSET + 60]  # event 0-3 s, same pitch
    np.testing.assert_array_equal(_round_trip(tokens), _events([(0, 300, 0, 60), (50, 50, 0, 60)]))


@pytest.mark.parametrize("flag", [vocab.AUTOREGRESS, vocab.ANTICIPATE])
def test_either_flag_is_dropped_and_each_piece_starts_where_the_previous_ends(flag):
    """As the reference's `events_to_compound`: after every SEPARATOR the next piece starts at the end of the
    piece just before it (its own latest end, not the longest so far)."""
    separator = [vocab.SEPARATOR] * 3
    tokens = [flag, *_events([(0, 100, 0, 60)]).ravel(), *separator, *_events([(0, 50, 0, 62)]).ravel(),
              *separator, *_events([(0, 10, 0, 64)]).ravel()]
    expected = _events([(0, 100, 0, 60), (100, 50, 0, 62), (150, 10, 0, 64)])
    np.testing.assert_array_equal(_round_trip(tokens), expected)



def _as_a_synthesizer_plays_it(file: "mido.MidiFile") -> list[tuple[int, int, int, int]]:
    """(start tick, channel, pitch, sounding ticks) of every voice, played as FluidSynth plays a file: a
    note-off releases every sounding voice of its key on its channel."""
    sounding, played, now = {}, [], 0
    for message in file.tracks[0]:
        now += message.time
        if message.type == "note_on" and message.velocity > 0:
            sounding.setdefault((message.channel, message.note), []).append(now)
        elif message.type in ("note_on", "note_off"):
            for start in sounding.pop((message.channel, message.note), []):
                played.append((start, message.channel, message.note, now - start))
    return played


def test_a_note_that_begins_where_one_of_its_pitch_ends_is_heard(real_events):
    """At one tick the notes ending there are released before the notes beginning there are struck, as
    pretty_midi writes: struck first, the new note was released at once by the old one's note-off (a synthesizer
    releases every voice of the key), and 14% of the reference's test files' notes begin where a note of their
    instrument and pitch ends. So are notes of no duration (an on and an off) before a note struck with them.
    Every note that overlaps no other of its instrument and pitch sounds exactly its duration (40 real files),
    and the files still read back exactly."""
    events = ops.sort(_events([(0, 10, 0, 60), (10, 10, 0, 60), (20, 0, 0, 60), (20, 5, 0, 60), (40, 0, 0, 62)]))
    file = midi.events_to_midi(events)
    assert sorted(_as_a_synthesizer_plays_it(file)) == [(0, 0, 60, 10), (10, 0, 60, 10), (20, 0, 60, 0),
                                                        (20, 0, 60, 5), (40, 0, 62, 0)]
    np.testing.assert_array_equal(_round_trip(events), events)
    checked = 0
    for name in sorted(real_events)[:40]:
        events = real_events[name]
        onset, end, note = events[:, 0], events[:, 0] + events[:, 1] - vocab.DUR_OFFSET, events[:, 2]
        played = {}
        for start, channel, pitch, length in _as_a_synthesizer_plays_it(midi.events_to_midi(events)):
            played.setdefault((start, pitch), []).append(length)
        for i in range(len(events)):
            same = (note == note[i]) & (np.arange(len(events)) != i)
            if np.any(same & (onset < end[i]) & (end > onset[i])) or end[i] == onset[i]:
                continue  # overlapping notes of one key cannot all sound as written on one channel
            assert end[i] - onset[i] in played[(onset[i], (note[i] - vocab.NOTE_OFFSET) % 128)], (name, i)
            checked += 1
    assert checked > 10_000
