"""The paper's augmentation mix, reproducible from (seed, file, copy)."""

import numpy as np

from amt import augment, ops, sequences, vocab


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
