"""Training sequences: the reference's packing token for token, the validator, the augmentation mix."""

import numpy as np
import pytest

from amt import cli, midi, ops, sequences, vocab


def test_text_output_is_identical_to_the_reference(parity_dir, tmp_path):
    out = tmp_path / "out"
    status = cli.main(["preprocess", str(parity_dir / "manifest.txt"), "--out", str(out), "--augment", "1",
                       "--workers", "1", "--split", "none", "--text", "--no-progress"])
    assert status == 0
    reference = (parity_dir / "reference_sequences_augment1.txt").read_text()
    assert (out / "train.txt").read_text() == reference
    assert len(reference.splitlines()) == 1139


def _rows(real_events, augment, seed=0):
    packer, rows = sequences.SequencePacker(), []
    for i, name in enumerate(sorted(real_events)):
        for copy in sequences.file_copies(real_events[name], augment, seed, file_key=i):
            rows += packer.add(copy)
    return rows


def test_every_sequence_is_valid_and_the_augmentation_mix_shows(real_events):
    rows = _rows(real_events, augment=10)
    assert len(rows) > 8000
    problems = [p for row in rows for p in sequences.validate_sequence(row)]
    assert problems == []
    flags = np.array([row[0] for row in rows])
    autoregressive = np.mean(flags == vocab.AUTOREGRESS)
    assert 0.07 < autoregressive < 0.13, autoregressive  # 1 plain copy in 10
    body = np.stack([ops.as_triples(row[1:]) for row in rows])
    is_control = (body[..., 2] >= vocab.CONTROL_OFFSET) & (body[..., 2] < vocab.SPECIAL_OFFSET)
    is_note = is_control | (body[..., 2] < vocab.REST)
    per_row = is_control.sum(1) / np.maximum(is_note.sum(1), 1)
    # plain copies have no controls; anticipated copies average about half their notes as controls
    assert np.mean(per_row[flags == vocab.AUTOREGRESS] == 0) > 0.8
    assert 0.3 < per_row[flags == vocab.ANTICIPATE].mean() < 0.6


def test_validator_catches_broken_sequences(real_events):
    row = _rows(real_events, augment=2)[5]
    assert sequences.validate_sequence(row) == []
    triples = ops.as_triples(row[1:])
    late_event = np.flatnonzero((triples[:, 2] < vocab.REST) & (triples[:, 0] > triples[0, 0]))[-1]
    rest = np.flatnonzero(triples[:, 2] == vocab.REST)[0]
    damages = {
        "not a flag": lambda r: r.__setitem__(0, 5),
        "malformed": lambda r: r.__setitem__(2, 11_000),  # a note where a duration belongs
        "goes back": lambda r: r.__setitem__(1 + 3 * late_event, triples[0, 0] - 1 if triples[0, 0] else 0),
        "REST with a non-zero duration": lambda r: r.__setitem__(2 + 3 * rest, vocab.DUR_OFFSET + 1),
    }
    for problem, damage in damages.items():
        bad = row.copy()
        damage(bad)
        assert any(problem in p for p in sequences.validate_sequence(bad)), problem
    assert any("length" in p for p in sequences.validate_sequence(row[:-3]))
    separator_first = np.concatenate([[vocab.SEPARATOR], row[1:]])  # a SEPARATOR is no flag
    assert any("not a flag" in p for p in sequences.validate_sequence(separator_first))
    # a control more than 5 s ahead of the event before it
    events = np.array([[100, 10_010, 11_060]] * 341)
    late = np.concatenate([[vocab.ANTICIPATE], ops.flatten(events)])
    late[4:7] = [vocab.ATIME_OFFSET + 100 + 501, vocab.ADUR_OFFSET, vocab.ANOTE_OFFSET + 60]
    assert any("ahead" in p for p in sequences.validate_sequence(late))


def test_windows_reaching_100_seconds_are_dropped():
    long_gap = np.array([[0, 10_010, 11_060]] * 100 + [[12_000, 10_010, 11_060]] * 300)
    packer = sequences.SequencePacker()
    copy = sequences.Copy(vocab.AUTOREGRESS, np.concatenate([[vocab.SEPARATOR] * 3, ops.flatten(long_gap)]), 0, 0)
    assert packer.add(copy) == [] and packer.dropped == 1


def test_a_stream_that_ends_on_a_window_boundary_writes_that_window_at_once():
    """Copies of exactly 341 triples (SEPARATOR + 340 events) fill one window each: each add writes it and
    leaves nothing behind (the reference writes a window as soon as 1,023 tokens are there)."""
    events = np.array([[10 * i, 10_010, 11_060] for i in range(vocab.M - 1)])
    copy = sequences.Copy(vocab.ANTICIPATE, np.concatenate([[vocab.SEPARATOR] * 3, ops.flatten(events)]), 0, 0)
    packer = sequences.SequencePacker()
    for _ in range(3):
        rows = packer.add(copy)
        assert len(rows) == 1 and packer.leftover_tokens == 0
        assert rows[0][0] == vocab.ANTICIPATE and rows[0][1:4].tolist() == [vocab.SEPARATOR] * 3


@pytest.mark.parametrize("last, kept", [(9_999, True), (10_000, False)])
def test_a_window_is_dropped_exactly_when_its_relative_time_reaches_100_seconds(last, kept):
    """The reference drops a window when max_time >= MAX_TIME (10,000 bins), relative to its earliest time."""
    start = 500  # the window's earliest onset: time is made relative to it
    events = np.array([[start, 10_010, 11_060]] * 340 + [[start + last, 10_010, 11_060]])
    tokens = np.concatenate([[vocab.SEPARATOR] * 3, ops.flatten(events)])  # the next window starts with these 3
    packer = sequences.SequencePacker()
    rows = packer.add(sequences.Copy(vocab.AUTOREGRESS, np.concatenate([tokens[3:], tokens[:3]]), 0, 0))
    assert (len(rows), packer.dropped) == ((1, 0) if kept else (0, 1))
    if kept:
        assert rows[0][1] == 0 and rows[0][-3] == last  # relative times: 0 .. last


@pytest.mark.parametrize("name, events, reason", [
    ("few", np.array([[i * 20, 10_010, 11_060] for i in range(99)]), "short"),
    ("brief", np.array([[i, 10_010, 11_060] for i in range(200)]), "short"),
    ("long", np.array([[i * 4000, 10_010, 11_060] for i in range(101)]), "long"),
    ("crowded", np.array([[i * 20, 10_010, 11_000 + 128 * (i % 17)] for i in range(200)]), "too_many_instruments"),
    ("fine", np.array([[i * 20, 10_010, 11_000 + 128 * (i % 16)] for i in range(200)]), None),
    # the reference's boundaries (its max_time: the latest onset): 10 s and 1 h exactly are kept
    ("just under 10 s", np.array([[i * 10, 10_010, 11_060] for i in range(99)] + [[999, 10_010, 11_060]]), "short"),
    ("10 s exactly", np.array([[i * 10, 10_010, 11_060] for i in range(99)] + [[1000, 10_010, 11_060]]), None),
    ("1 h exactly", np.array([[i * 10, 10_010, 11_060] for i in range(99)] + [[360_000, 10_010, 11_060]]), None),
    ("just over 1 h", np.array([[i * 10, 10_010, 11_060] for i in range(99)] + [[360_001, 10_010, 11_060]]), "long"),
])
def test_file_filters(name, events, reason):
    assert sequences.FileFilter().reason_to_skip(events) == reason


def test_interarrival_packing(reference_events):
    packer, rows = sequences.InterarrivalPacker(), []
    for path, status, _ in reference_events:
        if status == "ok":
            rows += packer.add(midi.midi_to_interarrival(path))
    assert rows and all(len(r) == vocab.CONTEXT_SIZE and r.max() < vocab.MIDI_VOCAB_SIZE for r in rows)
    assert rows[0][0] == vocab.MIDI_SEPARATOR


@pytest.mark.slow
def test_the_reference_port_reproduces_the_reference_sequences(parity_dir, reference_events):
    """The list-based port that benchmarks use as their baseline is itself faithful."""
    from amt import reference

    kept = []
    for path, status, _ in reference_events:
        try:
            events = reference.midi_to_events(path)
        except midi.MidiError:
            continue
        assert (reference.maybe_tokenize(events) or "ok") == status
        if status == "ok":
            kept.append(events)
    expected = [line.split() for line in (parity_dir / "reference_sequences_augment1.txt").read_text().splitlines()]
    assert [[str(t) for t in s] for s in reference.tokenize(kept)] == expected
