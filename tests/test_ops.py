"""Our array operations agree with a direct port of the reference's list code, on real files."""

import numpy as np
import pytest

from amt import augment, ops, vocab
from amt import reference as ref


@pytest.fixture(scope="module")
def some_files(real_events):
    names = sorted(real_events)
    return [real_events[n] for n in names[::8]]  # 20 real files


def test_pad_matches_the_reference_and_unpad_inverts_it(some_files):
    for events in some_files:
        end = ops.max_time(events, seconds=False)
        for end_time in (None, end, end + 777):
            padded = ops.pad(events, end_time)
            assert ops.flatten(padded).tolist() == ref.pad(ops.flatten(events).tolist(), end_time)
            np.testing.assert_array_equal(ops.unpad(padded), events)
        gaps = np.diff(np.concatenate([[0], ops.times(ops.pad(events))]))
        assert gaps.max() <= vocab.REST_DENSITY


def test_anticipate_matches_the_reference_under_every_augmentation(some_files):
    for i, events in enumerate(some_files):
        for copy in range(10):
            kept, controls = augment.augment(events, copy, augment.copy_rng(0, i, copy))
            padded = ops.pad(kept, ops.max_time(events, seconds=False))
            tokens, left = ops.anticipate(padded, controls)
            expected, expected_left = ref.anticipate(ops.flatten(padded).tolist(), ops.flatten(controls).tolist())
            assert ops.flatten(tokens).tolist() == expected
            assert ops.flatten(left).tolist() == list(expected_left) == []
            # splitting the interleaved stream gives back the events and the controls
            back_events, back_controls = ops.split(tokens)
            np.testing.assert_array_equal(back_events, padded)
            np.testing.assert_array_equal(back_controls, controls)


def test_anticipate_returns_controls_beyond_the_events():
    events = np.array([[0, 10_010, 11_060], [100, 10_010, 11_062]])
    controls = ops.to_controls(np.array([[50, 10_010, 11_064], [900, 10_010, 11_065]]))
    tokens, left = ops.anticipate(events, controls)
    assert ops.flatten(tokens).tolist() == ref.anticipate(ops.flatten(events).tolist(), ops.flatten(controls).tolist())[0]
    np.testing.assert_array_equal(left, controls[1:])


def test_time_helpers_translate_and_clip_match_the_reference(some_files):
    rng = np.random.default_rng(1)
    for events in some_files:
        kept, controls = augment.extract_random(events, 5, rng)
        tokens, _ = ops.anticipate(ops.pad(kept, ops.max_time(events, seconds=False)), controls)
        window = np.concatenate([tokens[:200], np.full((1, 3), vocab.SEPARATOR), tokens[200:341]])
        flat = ops.flatten(window).tolist()
        assert ops.min_time(window, seconds=False) == ref.min_time(flat, seconds=False)
        assert ops.max_time(window, seconds=False) == ref.max_time(flat, seconds=False)
        shift = -ops.min_time(window, seconds=False)
        assert ops.flatten(ops.translate(window, shift)).tolist() == ref.translate(flat, shift)
        start, end = ops.times(tokens)[[len(tokens) // 4, 3 * len(tokens) // 4]]
        assert ops.flatten(ops.clip(tokens, start, end, seconds=False)).tolist() == ref.clip(ops.flatten(tokens).tolist(), start, end)


def test_sort_split_combine_and_instruments(some_files):
    events = some_files[0]
    kept, controls = augment.extract_random(events, 3, np.random.default_rng(2))
    combined = ops.combine(kept, controls)
    assert np.all(np.diff(ops.times(combined)) >= 0)
    canonical = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731  (ties in time may come in either order)
    np.testing.assert_array_equal(canonical(combined), canonical(events))
    assert ops.instruments(events) == ops.instruments(np.concatenate([kept, controls]))
    assert sum(ops.instruments(events).values()) == len(events)
    assert ops.min_time(events, seconds=True) == ops.times(events).min() / 100


def test_translate_refuses_negative_times():
    with pytest.raises(ValueError, match="negative"):
        ops.translate(np.array([[5, 10_000, 11_000]]), -10)


def test_a_time_in_seconds_that_is_a_whole_bin_is_that_bin():
    """Seconds become bins as the reference truncates them (4.015 s is bin 401), except where floating point
    lands a whole bin just under itself: 100 * 4.02 is 401.99999999999994, which int() made bin 401, so a prompt
    cut at its last onset (ops.max_time in seconds, 4.02) lost the notes at 4.02 s to the future. 4,586 of the
    first 100,000 bins did that."""
    assert [b for b in range(100_000) if vocab.to_bins(b / vocab.TIME_RESOLUTION) != b] == []
    assert (vocab.to_bins(4.015), vocab.to_bins(4.0199), vocab.to_bins(0), vocab.to_bins(20)) == (401, 401, 0, 2000)
    events = np.array([[0, 10_050, 11_060], [402, 10_050, 11_062], [403, 10_050, 11_064]])
    assert ops.clip(events, 0, ops.max_time(events[:2]), clip_duration=False).tolist() == events[:2].tolist()
    assert ops.translate(events, 4.02, seconds=True)[0, 0] == 402


def test_token_predicates_and_ordering_at_their_edges():
    """The edges a mutation sweep found unguarded: a SEPARATOR triple is no control; min_time reads only the
    window before the first SEPARATOR (the reference's rule; a window holds several pieces); REST is no
    instrument; sort keeps the given order of triples at one time (the order events of a chord were read in,
    which the tokens and the written MIDI keep), on arrays large enough for numpy to choose another sort; a
    translation may reach time 0 but not below."""
    separator = [vocab.SEPARATOR] * 3
    assert ops.is_control(np.array([separator, [vocab.ATIME_OFFSET, vocab.ADUR_OFFSET, vocab.ANOTE_OFFSET]])).tolist() == [False, True]
    windows = np.array([[300, 10_010, 11_060], separator, [100, 10_010, 11_062], separator, [50, 10_010, 11_064]])
    assert ops.min_time(windows, seconds=False) == 300
    assert ops.instruments(np.array([[0, 10_100, vocab.REST], [0, 10_010, 11_000 + 128 * 5]])) == {5: 1}
    rng = np.random.default_rng(0)
    chord = np.stack([np.repeat(np.arange(40), 50), np.full(2000, 10_010), 11_000 + rng.permutation(2000) % 128], 1)
    shuffled = chord[rng.permutation(len(chord))]
    expected = np.concatenate([shuffled[shuffled[:, 0] == t] for t in range(40)])
    np.testing.assert_array_equal(ops.sort(shuffled), expected)
    assert ops.times(ops.translate(np.array([[5, 10_010, 11_000]]), -5))[0] == 0
    with pytest.raises(ValueError, match="negative"):
        ops.translate(np.array([[5, 10_010, 11_000]]), -6)
