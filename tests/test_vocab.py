import numpy as np
import pytest

from amt import vocab


def test_arrival_time_vocabulary_layout_is_the_papers():
    assert (vocab.TIME_OFFSET, vocab.DUR_OFFSET, vocab.NOTE_OFFSET, vocab.REST) == (0, 10_000, 11_000, 27_512)
    assert (vocab.CONTROL_OFFSET, vocab.ADUR_OFFSET, vocab.ANOTE_OFFSET) == (27_513, 37_513, 38_513)
    assert (vocab.SEPARATOR, vocab.AUTOREGRESS, vocab.ANTICIPATE, vocab.VOCAB_SIZE) == (55_025, 55_026, 55_027, 55_028)
    assert vocab.ANOTE_OFFSET + vocab.MAX_NOTE - 1 == 55_024  # last control id
    assert vocab.CONTEXT_SIZE == 1 + 3 * vocab.M == 1024 and vocab.DELTA == 5


def test_interarrival_vocabulary_layout():
    assert (vocab.MIDI_START_OFFSET, vocab.MIDI_END_OFFSET, vocab.MIDI_SEPARATOR) == (1_000, 17_512, 34_024)
    assert vocab.MIDI_VOCAB_SIZE == 34_025


@pytest.mark.parametrize(
    "token, name",
    [
        (127, "onset 1.27s"),
        (10_025, "dur 0.25s"),
        (11_000 + 60, "note Acoustic Grand Piano C4"),
        (11_000 + 128 * 128 + 36, "note Drums C2"),
        (27_513 + 11_000 + 128 * 40 + 69, "ctrl note Violin A4"),
        (27_513 + 300, "ctrl onset 3.00s"),
        (vocab.REST, "REST"),
        (vocab.ANTICIPATE, "ANTICIPATE"),
    ],
)
def test_token_names(token, name):
    assert vocab.token_name(token) == name


def test_token_name_rejects_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="55028"):
        vocab.token_name(55_028)


def test_interarrival_token_names():
    assert vocab.interarrival_token_name(250) == "shift 2.50s"
    assert vocab.interarrival_token_name(vocab.MIDI_START_OFFSET + 60) == "on Acoustic Grand Piano C4"
    assert vocab.interarrival_token_name(vocab.MIDI_END_OFFSET + 128 * 128 + 38) == "off Drums D2"


def test_describe_prints_flag_events_and_controls():
    tokens = [vocab.ANTICIPATE, 100, 10_050, 11_060, vocab.ATIME_OFFSET + 150, vocab.ADUR_OFFSET + 10,
              vocab.ANOTE_OFFSET + 62, 200, 10_000, vocab.REST]
    lines = vocab.describe(np.array(tokens)).splitlines()
    assert lines[0] == "ANTICIPATE"
    assert "onset 1.00s" in lines[1] and "note Acoustic Grand Piano C4" in lines[1]
    assert "ctrl note Acoustic Grand Piano D4" in lines[2]
    assert lines[3].endswith("REST")
