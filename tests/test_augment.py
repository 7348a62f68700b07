"""The paper's augmentation mix, reproducible from (seed, file, copy)."""

import numpy as np

from amt import augment, ops, reference, sequences, vocab


def test_mix_of_copies_is_the_papers():
    kinds = [augment.augmentation_for_copy(k) for k in range(30)]
    counts = {kind: kinds.count(kind) for kind in augment.Augmentation}
    assert counts == {augment.Augmentation.NONE: 3, augment.Augmentation.SPAN: 3,
                      augment.Augmentation.RANDOM: 12, augment.Augmentation.INSTRUMENT: 12}
    assert [augment.flag_for_copy(k) for k in (0, 1, 10, 19)] == [vocab.AUTOREGRESS, vocab.ANTICIPATE,
                                                                   vocab.AUTOREGRESS, vocab.ANTICIPATE]


def test_each_augmentation_chooses_controls_as_the_paper_says(real_events):
    events = real_events[sorted(real_events)[3]]
    rng = np.random.default_rng(0)
    kept, controls = augment.extract_instruments(events, [int(next(iter(ops.instruments(events))))])
    assert set(ops.instruments(controls)) == {next(iter(ops.instruments(events)))}
    assert not set(ops.instruments(controls)) & set(ops.instruments(kept))
    fractions = [len(augment.extract_random(events, r, rng)[1]) / len(events) for r in (1, 5, 9)]
    assert np.allclose(fractions, [0.1, 0.5, 0.9], atol=0.06)
    kept, controls = augment.extract_spans(events, augment.SPAN_RATE, np.random.default_rng(3))
    assert len(controls) + len(kept) == len(events) and len(controls) > 0
    # controls form spans: each span covers less than 5 s from its first control, and no event lies inside one
    times, event_times = ops.times(controls), ops.times(kept)
    span_start = times[0]
    for t in times:
        if t - span_start >= augment.SPAN_LENGTH:
            span_start = t
        assert t - span_start < augment.SPAN_LENGTH
    gaps = np.flatnonzero(np.diff(times) > 0)
    for a, b in zip(times[gaps], times[gaps + 1]):
        if b - a < 100:  # consecutive controls inside one span: no event strictly between them
            assert not np.any((event_times > a) & (event_times < b))


def test_copies_are_reproducible_and_independent_of_order(real_events):
    events = real_events[sorted(real_events)[5]]
    first = [c.tokens for c in sequences.file_copies(events, 10, seed=7, file_key=123)]
    again = [c.tokens for c in sequences.file_copies(events, 10, seed=7, file_key=123)]
    other_seed = [c.tokens for c in sequences.file_copies(events, 10, seed=8, file_key=123)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other_seed))
    # copy k depends only on (seed, file, k): drawing copy 7 alone gives the same controls
    alone = augment.augment(events, 7, augment.copy_rng(7, 123, 7))
    together = ops.split(ops.as_triples(first[7][3:]))[1]
    np.testing.assert_array_equal(alone[1], together)
    # and copies draw independently: the four random copies (2-5) and the four instrument copies (6-9) each
    # choose their own controls, and the same copy of another file (same events, another MD5) draws anew
    controls = [ops.split(ops.as_triples(tokens[3:]))[1] for tokens in first]
    for kind in ((2, 3, 4, 5), (6, 7, 8, 9)):
        assert len({controls[k].tobytes() for k in kind}) == 4, kind
    other_file = [c.tokens for c in sequences.file_copies(events, 10, seed=7, file_key=124)]
    for k in range(1, 10):
        assert not np.array_equal(first[k], other_file[k]), k


# --- the reference's tokenize at augmentation > 1, as its per-event loops have it (drawing from our generators) -
def _reference_spans(tokens, rate, rng):
    """The reference's extract_spans, event by event."""
    events, controls = [], []
    span, next_span, end_span = True, vocab.TIME_OFFSET, vocab.TIME_OFFSET
    for time, dur, note in zip(tokens[0::3], tokens[1::3], tokens[2::3]):
        if span and time >= end_span:
            span = False
            next_span = time + int(vocab.TIME_RESOLUTION * rng.exponential(1.0 / rate))
        if not span and time >= next_span:
            span = True
            end_span = time + vocab.DELTA * vocab.TIME_RESOLUTION
        if span:
            controls.extend([vocab.CONTROL_OFFSET + time, vocab.CONTROL_OFFSET + dur, vocab.CONTROL_OFFSET + note])
        else:
            events.extend([time, dur, note])
    return events, controls


def _reference_copy(all_events, k, rng):
    """(events, controls) of copy k by the reference's tokenize: 1 plain, 1 span (rate 0.05), 4 random
    (r = randint(1, 10)), 4 instrument (1 + randint(n - 1) of the n instruments, without replacement);
    instruments in sorted order (the reference lists them in order of appearance: only the draw differs)."""
    as_control = lambda t: [vocab.CONTROL_OFFSET + x for x in t]  # noqa: E731
    if k % 10 == 0:
        return list(all_events), []
    if k % 10 == 1:
        return _reference_spans(all_events, 0.05, rng)
    triples = [all_events[i:i + 3] for i in range(0, len(all_events), 3)]
    if k % 10 < 6:
        r = int(rng.integers(1, 10))
        chosen = [rng.random() < r / 10.0 for _ in triples]
    else:
        instruments = sorted(reference.get_instruments(all_events))
        if len(instruments) <= 1:
            return list(all_events), []
        subset = rng.choice(instruments, 1 + int(rng.integers(len(instruments) - 1)), replace=False)
        chosen = [(t[2] - vocab.NOTE_OFFSET) // vocab.MAX_PITCH in subset for t in triples]
    events = [x for t, c in zip(triples, chosen) if not c for x in t]
    controls = [x for t, c in zip(triples, chosen) if c for x in as_control(t)]
    return events, controls


def _reference_tokenize(files, augment_factor, seed):
    """The reference's tokenize loop (padding, interleaving, packing, relative time, its flag bookkeeping)."""
    sequences_out, concatenated, z = [], [], vocab.AUTOREGRESS
    for key, all_events in files:
        end_time = reference.max_time(all_events, seconds=False)
        for k in range(augment_factor):
            events, controls = _reference_copy(all_events, k, augment.copy_rng(seed, key, k))
            if len(concatenated) == 0:
                z = vocab.ANTICIPATE if k % 10 != 0 else vocab.AUTOREGRESS
            tokens, left = reference.anticipate(reference.pad(events, end_time), controls)
            assert len(left) == 0
            concatenated.extend([vocab.SEPARATOR] * 3 + list(tokens))
            while len(concatenated) >= vocab.EVENT_SIZE * vocab.M:
                seq = concatenated[: vocab.EVENT_SIZE * vocab.M]
                concatenated = concatenated[vocab.EVENT_SIZE * vocab.M:]
                seq = reference.translate(seq, -reference.min_time(seq, seconds=False))
                if reference.max_time(seq, seconds=False) >= vocab.MAX_TIME:
                    continue
                sequences_out.append([z] + seq)
                z = vocab.ANTICIPATE if k % 10 != 0 else vocab.AUTOREGRESS
    return sequences_out


def test_augmented_copies_and_their_packing_follow_the_reference_loops(real_events):
    """Augment 10 on real files: every copy's controls (span, random, instrument rules) and every packed
    sequence (its flag included: the reference's bookkeeping) equal the reference's per-event loops, given
    the same generator for each (seed, file, copy)."""
    names = sorted(real_events)[::12]
    files = [(i, ops.flatten(real_events[name]).tolist()) for i, name in enumerate(names)]
    expected = _reference_tokenize(files, augment_factor=10, seed=3)
    packer, rows = sequences.SequencePacker(), []
    for key, tokens in files:
        for copy in sequences.file_copies(np.asarray(tokens), 10, seed=3, file_key=key):
            rows += packer.add(copy)
    assert len(rows) == len(expected) > 100
    flags = [row[0] for row in rows]
    assert flags == [seq[0] for seq in expected]
    assert 0 < flags.count(vocab.AUTOREGRESS) < len(flags)
    for i, (row, seq) in enumerate(zip(rows, expected)):
        assert row.tolist() == seq, f"sequence {i} differs"
