"""The KV-cached sampler on its production path: a 1,024-token context whose windows move, batches whose samples
finish at different times, top-p < 1; logits equal the full forward pass; Algorithms 1 and 2 keep their
constraints and put the given controls where the reference puts them; the constraint masks equal the
reference's token by token on real files."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import mido
import numpy as np
import pytest

from amt import augment, checkpoints, decoder, midi, ops, reference, sampling, sequences, vocab

REPO = Path(__file__).resolve().parents[1]
# src/ and the device check's wheels (.device-site) where they are on the path, not installed
PYTHONPATH = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
# where `amt generate` runs in these tests: the CPU, unless AMT_TEST_JAX_PLATFORMS names another (the device check:
# cuda,cpu)
CLI_ENV = {"HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": os.environ.get("AMT_TEST_JAX_PLATFORMS", "cpu"),
           "PATH": "/usr/bin:/bin", **PYTHONPATH}
DEMO = REPO / "demo" / "midi"


@pytest.fixture(autouse=True)
def full_precision_on_gpus():
    """On a GPU, float32 matrix products at full precision (its default is TF32, ~1e-3 relative: above the 1e-4 these
    tests hold the cached decoder to against the full forward pass and a prefill); elsewhere as they are."""
    if jax.default_backend() == "gpu":
        with jax.default_matmul_precision("highest"):
            yield
    else:
        yield


@pytest.fixture(scope="module")
def tiny_model(make_tiny_model):
    return make_tiny_model(seq_len=1024)  # the production context: windows move after 341 events


@pytest.fixture(scope="module")
def scaled_model(tiny_model):
    """The tiny model with LayerNorms that scale and shift and with nonzero biases (a new model's LayerNorms are 1
    and 0 and its biases 0, under which the decoder's folding of each LayerNorm into the product after it, or a
    bias it dropped, would pass unseen)."""
    import equinox as eqx

    def parameters(m):
        blocks = m.transformer.blocks.stacked
        return [blocks.ln_1.weight, blocks.ln_1.bias, blocks.ln_2.weight, blocks.ln_2.bias, m.transformer.ln_f.weight,
                m.transformer.ln_f.bias, blocks.attn.c_attn.bias, blocks.attn.c_proj.bias, blocks.mlp.c_fc.bias,
                blocks.mlp.c_proj.bias]

    keys = jax.random.split(jax.random.PRNGKey(7), len(parameters(tiny_model)))
    scaled = [a.array * 0 + (1.0 if index in (0, 2, 4) else 0.0) + 0.5 * jax.random.normal(key, a.array.shape)
              for index, (a, key) in enumerate(zip(parameters(tiny_model), keys))]
    return eqx.tree_at(lambda m: [a.array for a in parameters(m)], tiny_model, scaled)


@pytest.fixture(scope="module")
def sampler(tiny_model):
    return sampling.Sampler(tiny_model)


class Steered(sampling.Sampler):
    """A sampler whose onsets are forced (a random model can't be steered in time): row r's next onset is
    `steps[r]` bins after the current time (None: sampled), and from its `jumps[r]`-th event on, `jump` bins (only
    that event's, for the rows in `once`)."""

    steps: dict = {}
    jumps: dict = {}
    once: set = set()
    jump_bins: dict = {}  # a row's own jump, instead of `jump`
    jump = vocab.MAX_TIME - 1
    record_inputs = True

    def _step(self, s, sampled, end, options, anticipatory):
        if s.pending:  # a given triple played is fed at its time in the window (not before the window's start)
            time = s.pending[0][0] - (vocab.ATIME_OFFSET if anticipatory else vocab.TIME_OFFSET)
            assert 0 <= time - s.offset < vocab.MAX_TIME, (s.row, s.pending[0], s.offset)
        return super()._step(s, sampled, end, options, anticipatory)

    def forced_step(self, s):
        jump = self.jump_bins.get(s.row, self.jump)
        if s.row in self.once and s.sampled == self.jumps[s.row]:
            return jump, 1
        if s.row in self.jumps and s.sampled >= self.jumps[s.row] and s.row not in self.once:
            return jump, 10 ** 9  # (for the rest)
        before = s.row in self.jumps and s.sampled < self.jumps[s.row]
        steps = self.jumps[s.row] - s.sampled if before else 10 ** 6  # until the jump
        return self.steps.get(s.row), steps


def steered(model, steps, jumps=None, start=0, dtype="float32", once=()):
    out = Steered(model, dtype)
    out.steps, out.jumps, out.start, out.once = steps, jumps or {}, start, set(once)
    return out


def check_outputs(sampler, max_instruments=sampling.MAX_SAMPLED_INSTRUMENTS):
    """Every window the model saw is a valid sequence in its vocabulary; time never goes backwards in what was
    sampled; at most the allowed instruments (the reference's count, REST included). Returns the window
    moves per sample (a window that got shorter)."""
    moves = []
    for sequence, inputs, generated in zip(sampler.last_sequences, sampler.last_inputs, sampler.last_generated):
        assert inputs, "nothing was sampled"
        for k, (_, window) in enumerate(inputs):
            if k % 10 and k + 1 < len(inputs) and len(inputs[k + 1][1]) > len(window):
                continue  # (every 10th window, the last and those before a move: the validator is slow)
            assert len(window) <= 1024 and window[0] == sequence[0]
            assert sequences.validate_sequence(np.asarray(window), length=None) == [], window[:12]
        events = ops.as_triples(sequence[1:])[~ops.is_control(ops.as_triples(sequence[1:]))]
        assert np.all(np.diff(ops.times(events)) >= 0)
        assert len(generated) == 0 or np.all(np.diff(ops.times(generated)) >= 0)
        assert len(sampling.instruments_in(ops.as_triples(sequence[1:]))) <= max_instruments
        moves.append(sum(len(b) < len(a) for (_, a), (_, b) in zip(inputs, inputs[1:])))
    return moves


# bfloat16 weights and cache (for accelerators): the products' inputs rounded to 8 bits of mantissa; the tiny
# model's logits spread ~3.7e-3 with its LayerNorms and biases set (`scaled_model`), a trained model's ~2.6 (0.05 off)
@pytest.mark.parametrize("dtype, atol", [("float32", 1e-4), ("bfloat16", 5e-4)])
def test_cached_logits_equal_the_full_forward_pass_at_every_position(scaled_model, dtype, atol):
    tiny_model = scaled_model
    tokens = ops.flatten(ops.as_triples(midi.midi_to_events(DEMO / "npm_misc" / "fur-elise.mid")))[:255]
    tokens = np.concatenate([[vocab.AUTOREGRESS], tokens])
    expected = checkpoints.logits(tiny_model, tokens)
    weights = decoder.decoder_weights(tiny_model, dtype)
    np.testing.assert_allclose(np.asarray(decoder.full_logits(weights, jnp.asarray(tokens[None], jnp.int32)))[0],
                               expected, atol=atol)
    hidden, cache = decoder.prefill(weights, jnp.asarray(decoder.pad_window(tokens[None, :40], 1024)), 40)
    np.testing.assert_allclose(np.asarray(decoder.unembed(hidden, weights.lm_head))[0], expected[39], atol=atol)
    step = jax.jit(decoder.forward)
    for start in range(40, 256, 3):  # as the sampler: three tokens (an event) at a time, then into the cache
        recent = decoder.empty_cache(weights, 1, 0)
        for position in range(start, min(start + 3, 256)):
            hidden, recent = step(weights, cache, recent, jnp.asarray(tokens[None, position:position + 1], jnp.int32),
                                  jnp.asarray(start))
            if position < 255:
                np.testing.assert_allclose(np.asarray(decoder.unembed(hidden, weights.lm_head))[0, 0], expected[position],
                                           atol=atol, err_msg=str(position))
        cache = decoder.write_into(cache, recent, jnp.asarray(start))
    # rows of a batch at different lengths: each its own sequence
    rows = np.stack([tokens[:128], np.concatenate([tokens[:40], np.zeros(88, np.int64)])])
    hidden, cache = decoder.prefill(weights, jnp.asarray(rows, jnp.int32), jnp.asarray([100, 40]))
    np.testing.assert_allclose(np.asarray(decoder.unembed(hidden, weights.lm_head)), expected[[99, 39]], atol=atol)
    recent = decoder.empty_cache(weights, 2, 0)
    hidden, _ = step(weights, cache, recent, jnp.asarray(tokens[[100, 40]][:, None], jnp.int32), jnp.asarray([100, 40]))
    np.testing.assert_allclose(np.asarray(decoder.unembed(hidden, weights.lm_head))[:, 0], expected[[100, 40]],
                               atol=atol)


def test_a_step_reads_the_cache_only_before_each_rows_start_and_writes_only_the_rows_asked(tiny_model):
    """`forward` attends to the cache's positions before each row's `start` only: what lies at and after it (a
    prefill's padding, an earlier window's keys) is never read, so noise there moves no hidden state (a random
    model's attention is near uniform: one position more or less among ~100 moves its logits by less than the 1e-4
    the test above allows). `write_into` puts `recent` at each row's own start, only into the rows asked; `set_row`
    replaces the one row asked."""
    weights = decoder.decoder_weights(tiny_model)
    tokens = np.concatenate([[vocab.AUTOREGRESS],
                             ops.flatten(ops.as_triples(midi.midi_to_events(DEMO / "npm_misc" / "fur-elise.mid")))])[:128]
    start = np.asarray([100, 40])
    _, cache = decoder.prefill(weights, jnp.asarray(np.stack([tokens, tokens]), jnp.int32), jnp.asarray(start))
    after = np.arange(weights.shape[3])[None] >= start[:, None]  # (batch, context)
    keys = jax.random.split(jax.random.PRNGKey(0), 2 * len(cache.keys))

    def noisy(a, key, axis):  # noise at every row's positions from its start on (positions along `axis`)
        at = after.reshape([2 if i == 0 else a.shape[i] if i == axis else 1 for i in range(a.ndim)])
        return jnp.where(at, 30 * jax.random.normal(key, a.shape, a.dtype), a)

    garbled = decoder.KVCache(tuple(noisy(a, k, 2) for a, k in zip(cache.keys, keys)),
                              tuple(noisy(a, k, 3) for a, k in zip(cache.values, keys[len(cache.keys):])))
    step = jnp.asarray(tokens[start][:, None], jnp.int32)
    hidden, recent = decoder.forward(weights, cache, decoder.empty_cache(weights, 2, 0), step, jnp.asarray(start))
    hidden_garbled, _ = decoder.forward(weights, garbled, decoder.empty_cache(weights, 2, 0), step, jnp.asarray(start))
    np.testing.assert_allclose(np.asarray(hidden_garbled), np.asarray(hidden), atol=1e-6)

    recent = jax.tree.map(lambda a: a + 1.0, decoder.empty_cache(weights, 2, 3))  # 3 positions of ones
    written = decoder.write_into(cache, recent, jnp.asarray([5, 9]), jnp.asarray([True, False]))
    for before, after_, axis in [(a, b, 2) for a, b in zip(cache.keys, written.keys)] + [
            (a, b, 3) for a, b in zip(cache.values, written.values)]:
        expected = np.array(before)
        np.moveaxis(expected, axis, 1)[0, 5:8] = 1.0  # row 0's positions 5-7; row 1 not asked
        np.testing.assert_array_equal(np.asarray(after_), expected)
    row = jax.tree.map(lambda a: a[:1] + 1.0, cache)  # a moved window for row 1 (`set_row` donates the cache: a copy)
    moved = decoder.set_row(jax.tree.map(jnp.copy, cache), row, 1)
    for before, new, after_ in zip(cache.keys + cache.values, row.keys + row.values, moved.keys + moved.values):
        np.testing.assert_array_equal(np.asarray(after_), np.stack([np.asarray(before[0]), np.asarray(new[0])]))


def test_a_window_is_padded_to_a_multiple_of_128_tokens_within_the_context():
    """Prefills compile for a few lengths: a window's columns rounded up to a multiple of 128, but never past the
    context (an interarrival test model's is 64 tokens), zeros after its tokens."""
    window = np.arange(1, 101, dtype=np.int64).reshape(2, 50)
    for context, columns in ((1024, 128), (64, 64), (50, 50)):
        padded = decoder.pad_window(window, context)
        assert padded.shape == (2, columns) and padded.dtype == np.int32
        np.testing.assert_array_equal(padded[:, :50], window)
        assert not padded[:, 50:].any()
    assert decoder.pad_window(np.ones((1, 129), np.int32), 1024).shape == (1, 256)
    assert decoder.pad_window(np.ones((1, 1024), np.int32), 1024).shape == (1, 1024)


def _dot_input_dtypes(jaxpr):
    """The operand dtypes of every matrix product in a jaxpr, nested calls (jit, einsum) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield tuple(str(v.aval.dtype) for v in eqn.invars)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _dot_input_dtypes(inner)


def test_bfloat16_weights_keep_the_matrices_the_cache_and_the_products_inputs_in_bfloat16(tiny_model):
    """decoder_weights(model, bfloat16): the matrices, embeddings and cache in bfloat16 (half the bytes a step
    reads), the biases, column sums and final LayerNorm in float32, every matrix product of a step on bfloat16
    operands (accumulated in float32); another dtype is refused."""
    with pytest.raises(ValueError, match="float16 is not float32 or bfloat16"):
        decoder.decoder_weights(tiny_model, jnp.float16)
    weights = decoder.decoder_weights(tiny_model, jnp.bfloat16)
    layer = weights.layers[1]
    assert {str(a.dtype) for a in (weights.wte, weights.lm_head, weights.wpe, layer.attn_w, layer.attn_proj_w,
                                   layer.fc_w, layer.proj_w)} == {"bfloat16"}
    assert {str(a.dtype) for a in (layer.attn_b, layer.attn_sum, layer.attn_proj_b, layer.fc_b, layer.fc_sum,
                                   layer.proj_b, weights.lnf_w, weights.lnf_b)} == {"float32"}
    hidden, cache = decoder.prefill(weights, jnp.zeros((2, 128), jnp.int32), 5)
    assert str(hidden.dtype) == "float32" and {str(a.dtype) for a in cache.keys + cache.values} == {"bfloat16"}
    for batch in (1, 2):  # (one row: the LayerNorms folded into the products; more: normalized first)
        jaxpr = jax.make_jaxpr(decoder.forward)(weights, jax.tree.map(lambda a: a[:batch], cache),
                                                decoder.empty_cache(weights, batch, 0), jnp.zeros((batch, 1), jnp.int32),
                                                jnp.zeros(batch, jnp.int32))
        dtypes = list(_dot_input_dtypes(jaxpr.jaxpr))
        assert len(dtypes) >= 2 * 6 and set(dtypes) == {("bfloat16", "bfloat16")}, dtypes


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batch_rows_keep_their_own_windows(tiny_model, dtype):
    """The reported crash: sample 0 one bin at a time (the context fills, the window moves several times),
    sample 1 jumping past the end at its 50th event; 2 samples, context 1,024. Also with bfloat16 weights
    and cache (`amt generate --dtype bfloat16`)."""
    sampler = steered(tiny_model, {0: 1, 1: 1}, {1: 49}, dtype=dtype)
    outputs = sampler.generate(0, 5, options=sampling.SamplingOptions(num_samples=2, top_p=0.9, window_chunk=64))
    assert sampler.last_stops == ["end", "end"]
    assert [len(g) for g in sampler.last_generated] == [499, 49]
    assert np.array_equal(ops.times(sampler.last_generated[0]), np.arange(1, 500))
    assert [len(o) for o in outputs] == [499, 49]
    moves = check_outputs(sampler)
    assert moves[0] >= 3 and moves[1] == 0, moves


def test_a_batch_whose_samples_finish_at_different_times(tiny_model):
    """Four samples after a dense real prompt, top-p < 1: three steered (ending at their 40th, 100th and 400th
    event), one sampled freely; each keeps its own length and window."""
    prompt = ops.as_triples(midi.midi_to_events(DEMO / "npm_misc" / "the-entertainer.mid"))
    start = ops.times(prompt)[299] / vocab.TIME_RESOLUTION  # ~300 events: the context is nearly full
    sampler = steered(tiny_model, {0: 2, 1: 1, 2: 3}, {0: 40, 1: 400, 2: 100}, start=int(start * 100))
    sampler.jump = 10 * vocab.TIME_RESOLUTION
    outputs = sampling.continuation(sampler, prompt, start, start + 9, sampling.SamplingOptions(num_samples=4, top_p=0.8))
    assert sampler.last_stops == ["end"] * 4
    assert [len(g) for g in sampler.last_generated[:3]] == [40, 400, 100]
    moves = check_outputs(sampler)
    assert moves[1] >= 2 and moves[0] <= 1, moves
    kept = ops.clip(prompt, 0, start, clip_duration=False)
    for output, generated in zip(outputs, sampler.last_generated):
        assert len(output) == len(kept) + len(generated)  # the prompt comes back unchanged, and the new notes
        assert len(generated) == 0 or ops.times(generated).min() >= int(start * 100)


def test_windows_move_instead_of_stopping_at_100_seconds(tiny_model, caplog):
    """Sparse music (an event every 7, 9 or 9.1 s): time within a window nears the vocabulary's 100 s, the window
    moves (to its latest 50 s) and generation goes on to the end time. No window the model sees reaches 90 s (the
    900-bin row's 10th event lands on it exactly; the 910-bin row's passes it, and with a later limit its next
    onset would not fit the vocabulary); each move keeps exactly the triples of the latest 50 s."""
    sampler = steered(tiny_model, {0: 900, 1: 700, 2: 910})
    sampler.generate(0, 400, options=sampling.SamplingOptions(num_samples=3))
    assert sampler.last_stops == ["end"] * 3
    for row, step in enumerate((900, 700, 910)):
        assert np.array_equal(ops.times(sampler.last_generated[row]), np.arange(step, 40000, step))
    moves = check_outputs(sampler)  # (the windows' relative times stay in the vocabulary)
    assert min(moves) >= 3, moves
    for sequence, inputs in zip(sampler.last_sequences, sampler.last_inputs):
        times = ops.times(ops.as_triples(sequence[1:]))
        for (length, window), (_, before) in zip(inputs[1:], inputs):
            assert ops.times(ops.as_triples(window[1:])).max(initial=0) < 90 * vocab.TIME_RESOLUTION
            if len(window) < len(before):  # moved (for time: the context never fills here)
                first, now = length // 3 - (len(window) - 1) // 3, times[length // 3 - 1]
                assert times[first - 1] < now - 50 * vocab.TIME_RESOLUTION <= times[first]
    with caplog.at_level(logging.WARNING, logger="amt.sampling"):
        sampling.Sampler.generate(sampler, 0, 400, options=sampling.SamplingOptions(num_samples=2, max_events=5))
    assert sampler.last_stops == ["max_events"] * 2
    assert [len(generated) for generated in sampler.last_generated] == [5, 5]  # no more, no fewer
    assert "max_events=5" in caplog.text


def test_empty_prompt_gets_the_references_relative_time(tiny_model):
    """From 0 s with no prompt, the model's inputs before every sampled event are what the reference's
    add_token builds: the latest 1,017 tokens, time minus their earliest time, recomputed each time."""
    piece = ops.as_triples(midi.midi_to_events(DEMO / "miditok_multitrack" / "Funkytown.mid"))
    melody = max(ops.instruments(piece), key=lambda i: ops.instruments(piece)[i] if i != vocab.DRUMS else -1)
    cases = [(steered(tiny_model, {0: 13}), None), (steered(tiny_model, {0: 17}), [melody])]
    offsets = set()
    for sampler, instruments in cases:
        options = sampling.SamplingOptions(num_samples=2, seed=2, max_events=60)
        if instruments is None:
            sampler.generate(0, 60, options=options)
        else:
            sampling.accompany(sampler, piece, instruments, 0, 20, options)
        compared = 0
        for sequence, inputs in zip(sampler.last_sequences, sampler.last_inputs):
            for length, window in inputs:
                history = [int(t) for t in sequence[1:1 + length]]
                history = history[max(len(history) - 1017, 0):]
                offset = reference.min_time(history, seconds=False)
                offsets.add(offset)
                assert window == [int(sequence[0])] + reference.translate(history, -offset)
                compared += 1
        assert compared >= 60
        first = sampler.last_generated[1]  # (sampled freely)
        if instruments is not None and len(first):  # the reference's bound: onset >= the window's earliest time
            due = ops.as_triples(sampler.last_sequences[1][1:])
            assert ops.times(first)[0] >= ops.times(due[:1])[0] > 0
    assert len(offsets) > 2  # the offset moved (it was not left at 0)


def test_top_p_keeps_the_references_nucleus():
    """Top-p by a search on the threshold's bits keeps what the reference's sorted-cumsum nucleus keeps (no
    exact ties here)."""
    rng = np.random.default_rng(0)
    differ = 0
    for scale, top_p in [(1.0, 0.9), (3.0, 0.98), (0.3, 0.5), (8.0, 0.95)]:
        logits = (scale * rng.standard_normal((64, 16513))).astype(np.float32)
        ours = np.asarray(sampling._nucleus(jax.nn.softmax(jnp.asarray(logits), axis=-1), top_p))
        for row, kept in zip(logits, ours):
            expected = reference.nucleus(row.astype(np.float64), top_p)
            differ += int(not np.array_equal(kept, expected))
            assert np.sum(kept != expected) <= 1  # a last-ulp cumsum, at most one token at the edge
    assert differ <= 3, differ


def test_sampling_divides_the_logits_by_the_temperature_under_the_note_slots_rules():
    """`constrained_sample` draws from softmax(logits / temperature) over the allowed tokens: at temperature 0.5
    the frequencies of 4,000 draws are those probabilities (a temperature that multiplied would give others);
    REST only where allowed (after a zero duration), whatever instruments are allowed (REST is not an
    instrument's note); a disallowed instrument's notes never."""
    low, high = sampling.SLOTS[2]
    logits = np.full((1, high - low), -1e9, np.float32)
    candidates = np.array([60, 128 + 64, vocab.REST - vocab.NOTE_OFFSET, 3 * 128 + 1])  # instruments 0, 1, REST, 3
    logits[0, candidates + vocab.NOTE_OFFSET - low] = [1.0, 0.2, 0.6, 5.0]
    allowed = np.zeros((1, vocab.MAX_INSTR), bool)
    allowed[0, [0, 1]] = True

    def draws(temperature, rest_allowed, instrument_allowed=allowed, n=4000):
        keys = jax.random.split(jax.random.PRNGKey(0), n)
        sample = jax.jit(jax.vmap(lambda key: sampling.constrained_sample(
            jnp.asarray(logits), key[None], phase=2, min_onset=jnp.zeros(1, jnp.int32),
            instrument_allowed=jnp.asarray(instrument_allowed), rest_allowed=jnp.asarray([rest_allowed]), top_p=1.0,
            temperature=jnp.float32(temperature))[0]))
        return np.asarray(sample(keys)) - vocab.NOTE_OFFSET

    tokens = draws(0.5, True)
    assert set(tokens) <= set(candidates[:3])  # instrument 3 not allowed
    expected = np.exp(np.array([1.0, 0.2, 0.6]) / 0.5)
    frequencies = np.array([np.mean(tokens == c) for c in candidates[:3]])
    np.testing.assert_allclose(frequencies, expected / expected.sum(), atol=0.025)
    assert set(draws(0.5, False)) <= set(candidates[:2])  # no REST after a nonzero duration
    assert vocab.REST - vocab.NOTE_OFFSET not in set(draws(1.0, False, np.ones((1, vocab.MAX_INSTR), bool), 500))


def controls_of(piece, instruments, end):
    _, given = augment.extract_instruments(piece, instruments)
    given = ops.clip(given, 0, end, clip_duration=False)
    return given[ops.times(given) < end * vocab.TIME_RESOLUTION]


@pytest.mark.parametrize("anticipatory", [True, False])
def test_accompaniment_conditions_on_the_given_notes_across_windows(tiny_model, anticipatory):
    piece = ops.as_triples(midi.midi_to_events(DEMO / "miditok_multitrack" / "Funkytown.mid"))
    melody = max(ops.instruments(piece), key=lambda i: ops.instruments(piece)[i] if i != vocab.DRUMS else -1)
    given = controls_of(piece, [melody], 24)
    sampler = steered(tiny_model, {0: 5, 1: 7, 2: None}, start=200)
    outputs = sampling.accompany(sampler, piece, [melody], 2, 24, sampling.SamplingOptions(num_samples=3, seed=1),
                                 anticipatory=anticipatory)
    moves = check_outputs(sampler, max_instruments=16)
    assert moves[0] >= 1 and moves[1] >= 1, moves
    assert len(given) > 60
    for output, sequence, stop in zip(outputs, sampler.last_sequences, sampler.last_stops):
        assert sequence[0] == (vocab.ANTICIPATE if anticipatory else vocab.AUTOREGRESS)
        assert np.any(ops.is_control(ops.as_triples(sequence[1:]))) == anticipatory
        assert sampling.misplaced_controls(sequence, given, anticipatory=anticipatory) == []
        rows = set(map(tuple, output.tolist()))
        assert all(tuple(r) in rows for r in (given - vocab.CONTROL_OFFSET).tolist())
    # the check can fail: a sampler that withholds the melody (anticipation interval -1e6; Algorithm 2 without it)
    if anticipatory:
        sampling.accompany(sampler, piece, [melody], 2, 24,
                           sampling.SamplingOptions(num_samples=2, seed=1, delta=-10**6))
    else:
        others, _ = augment.extract_instruments(piece, [melody])
        sampling.continuation(sampler, others, 2, 24, sampling.SamplingOptions(num_samples=2, seed=1),
                              anticipatory=False)
    for sequence in sampler.last_sequences:
        problems = sampling.misplaced_controls(sequence, given, anticipatory=anticipatory)
        assert len(problems) > 30 and all(why == "missing" for _, why in problems)


@pytest.mark.parametrize("anticipatory", [True, False])
def test_infilling_conditions_on_the_music_after_the_span(tiny_model, anticipatory):
    piece = ops.as_triples(midi.midi_to_events(DEMO / "npm_misc" / "maple-leaf-rag.mid"))
    sampler = steered(tiny_model, {0: 3}, start=500)
    outputs = sampling.infill(sampler, piece, 5, 20, sampling.SamplingOptions(num_samples=1, seed=3),
                              anticipatory=anticipatory)
    moves = check_outputs(sampler)
    assert moves[0] >= 1
    outside = piece[(ops.times(piece) < 500) | (ops.times(piece) >= 2000)]
    rows = set(map(tuple, outputs[0].tolist()))
    assert all(tuple(r) in rows for r in outside.tolist())
    after = ops.to_controls(outside[ops.times(outside) > 500])
    sequence = sampler.last_sequences[0]
    assert sequence[0] == (vocab.ANTICIPATE if anticipatory else vocab.AUTOREGRESS)
    assert sampling.misplaced_controls(sequence, after, anticipatory=anticipatory) == []
    inside = ops.times(sampler.last_generated[0])
    assert len(inside) > 400 and inside.min() >= 500 and inside.max() < 2000


def test_constraint_masks_equal_the_references_on_real_files(midi_dir):
    """Teacher-forced on real files (some with a melody as anticipated controls): the tokens our sampler
    allows for each onset, duration and note equal what the reference's add_token allows, except the listed
    deliberate differences, which are counted."""
    files = sorted(p for p in midi_dir.rglob("*.mid") if "corrupted" not in str(p))
    sampler = sampling.Sampler.__new__(sampling.Sampler)
    sampler.context = 1024
    full, sliding = 341, 341 - sampling.SamplingOptions().window_chunk
    checked, counts = 0, {"REST outside the note slot": 0, "REST after a nonzero duration": 0,
                          "window moved in chunks": 0}
    cases = []
    for path in files:
        try:
            events = ops.as_triples(midi.midi_to_events(path))
        except Exception:
            continue
        if len(events) < 300 or len(ops.instruments(events)) < 2:
            continue
        events = ops.pad(events)[: 450 if not cases else 250]
        controls = np.zeros((0, 3), np.int64)
        if len(cases) % 2:  # a melody as controls: the sequence interleaves them as generate does
            instrument = max(ops.instruments(events), key=ops.instruments(events).get)
            events, controls = augment.extract_instruments(events, [instrument])
        cases.append((path.name, events, controls))
        if len(cases) == 5:
            break
    assert len(cases) == 5
    # and one with more than 15 instruments (no file here has them): a real file's notes moved to a new
    # program every 15 events, so the instrument limit (REST counted) applies
    name, events, _ = cases[0]
    events = events.copy()
    notes = events[:, 2] != vocab.REST
    program = (ops.notes(events[notes]) // vocab.MAX_PITCH + 3 * (np.flatnonzero(notes) // 15)) % 128
    events[notes, 2] = vocab.NOTE_OFFSET + program * vocab.MAX_PITCH + ops.notes(events[notes]) % vocab.MAX_PITCH
    cases.append((name + " (programs moved)", events, np.zeros((0, 3), np.int64)))
    limited = 0
    for name, events, controls in cases:
        tokens, _ = ops.anticipate(events, controls)
        flag = vocab.ANTICIPATE if len(controls) else vocab.AUTOREGRESS
        s = sampling._Sample(row=0, tokens=[], controls=[], current_time=0)
        sampler._window(s, flag, 0, 0)
        states, targets, histories = [], [], []
        for triple in tokens.tolist():
            if triple[2] >= vocab.CONTROL_OFFSET:
                s.append(triple)
                continue
            first = sampler._moves_to(s, s.current_time, sliding, vocab.ATIME_OFFSET)
            if first is not None:
                sampler._window(s, flag, first, s.current_time)
            states.append(sampler._constraints(s, s.current_time) + (s.offset,))
            targets.append(triple)
            histories.append((list(s.tokens), s.current_time))
            s.append(triple)
            s.current_time = triple[0] - vocab.TIME_OFFSET
        min_onset = np.array([m for m, _, _ in states])
        instruments = np.stack([a for _, a, _ in states])
        rest = np.array([t[1] == vocab.DUR_OFFSET for t in targets])
        ours = [np.asarray(sampling.allowed_tokens(phase, min_onset, instruments, rest)) for phase in range(3)]
        for k, ((history, now), triple) in enumerate(zip(histories, targets)):
            for phase in range(3):
                expected, offset = reference.add_token_masks(history, triple[:phase], now, z=flag)
                mine = np.zeros(vocab.VOCAB_SIZE, dtype=bool)
                low, high = sampling.SLOTS[phase]
                mine[low:high] = ours[phase][k]
                differ = np.flatnonzero(mine != expected)
                checked += 1
                if len(differ) == 0:
                    continue
                if phase < 2 and list(differ) == [vocab.REST]:
                    counts["REST outside the note slot"] += 1
                elif phase == 2 and list(differ) == [vocab.REST] and triple[1] != vocab.DUR_OFFSET:
                    counts["REST after a nonzero duration"] += 1
                elif phase == 0 and offset != states[k][2] and len(history) > 3 * 339:
                    counts["window moved in chunks"] += 1  # (the reference slides by one event)
                else:
                    raise AssertionError(f"{name} event {k} slot {phase}: masks differ at {differ[:5]} "
                                         f"(offset {offset} vs {states[k][2]})")
        limited += int(np.sum(~instruments.all(axis=1)))
    assert checked >= 3000 and limited > 100, (checked, limited)
    print(checked, limited, counts)
    assert counts["REST outside the note slot"] > 0 and counts["window moved in chunks"] > 0


def test_generate_command_writes_midi_and_pianoroll(tmp_path, tiny_model):
    from amt.checkpoints import (
        export_hf,  # noqa: F401  (the CLI loads HF folders; make one from the tiny model)
        single_device_mesh,
    )

    with single_device_mesh():
        tiny_model.config.hf_checkpoint_converter().save_pretrained(tiny_model, str(tmp_path / "hf"), save_tokenizer=False)
    out = tmp_path / "out" / "acc.mid"
    done = subprocess.run([sys.executable, "-m", "amt.cli", "generate", "--checkpoint", str(tmp_path / "hf"), "--prompt",
                           str(DEMO / "miditok_multitrack" / "Funkytown.mid"), "--accompany", "87", "--start", "2",
                           "--end", "8", "--num-samples", "2", "--dtype", "bfloat16", "-o", str(out)],
                          capture_output=True, text=True, env=CLI_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    lead = {tuple(r) for r in ops.as_triples(midi.midi_to_events(DEMO / "miditok_multitrack" / "Funkytown.mid")).tolist()
            if (r[2] - vocab.NOTE_OFFSET) // vocab.MAX_PITCH == 87 and r[0] < 800}
    for path in (out, out.with_name("acc-2.mid")):
        assert mido.MidiFile(path).length > 0
        assert path.with_suffix(".png").stat().st_size > 10_000
        assert lead <= {tuple(r) for r in ops.as_triples(midi.midi_to_events(path)).tolist()}  # the given part
    absent = subprocess.run([sys.executable, "-m", "amt.cli", "generate", "--checkpoint", str(tmp_path / "hf"),
                             "--prompt", str(DEMO / "miditok_multitrack" / "Funkytown.mid"), "--accompany", "33",
                             "-o", str(out)], check=False, capture_output=True, text=True,
                            env=CLI_ENV)
    assert absent.returncode == 2 and "instrument(s) [33] do not play" in absent.stderr


def test_pianoroll_marks_the_prompt_and_the_infilled_span(tmp_path):
    pytest.importorskip("matplotlib")
    from amt.pianoroll import save_pianoroll

    piece = ops.as_triples(midi.midi_to_events(DEMO / "npm_misc" / "fur-elise.mid"))[:200]
    plain, marked = tmp_path / "plain.png", tmp_path / "marked.png"
    save_pianoroll(piece, plain)
    save_pianoroll(piece, marked, prompt_end=3.0, span=(5.0, 8.0))
    assert marked.stat().st_size > 10_000 and marked.read_bytes() != plain.read_bytes()


def test_pianoroll_draws_each_note_where_and_when_it_sounds(tmp_path, monkeypatch):
    """The piano roll's drawing, read back from its figure: one bar per note (RESTs none) from its onset for its
    duration (at least 0.05 s, to be seen) at its pitch, the given notes outlined and no others, the infilled span
    shaded and in view past the last note, and a legend naming the instruments, the span, the prompt's end and the
    given notes."""
    pytest.importorskip("matplotlib")
    import matplotlib.colors
    import matplotlib.figure

    from amt.pianoroll import save_pianoroll

    figures = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig) or save(fig, *a, **k))
    piece = ops.as_triples(midi.midi_to_events(DEMO / "miditok_multitrack" / "Funkytown.mid"))[:120]
    piece[0, 1] = vocab.DUR_OFFSET + 1  # 10 ms: drawn 0.05 s wide
    instrument, pitch = np.divmod(piece[:, 2] - vocab.NOTE_OFFSET, vocab.MAX_PITCH)
    assert len(set(instrument.tolist())) >= 3 and 87 in instrument and ops.max_time(piece) < 20
    rest = [[vocab.TIME_OFFSET + 50, vocab.DUR_OFFSET + 10, vocab.REST]]
    save_pianoroll(np.concatenate([piece, rest]), tmp_path / "roll.png", given=piece[instrument == 87],
                   prompt_end=2.0, span=(3.0, 30.0))
    ax = figures[-1].axes[0]
    bars = [p for p in ax.patches if p.get_height() == 0.8]
    drawn = sorted((round(b.get_x(), 4), round(b.get_y() + 0.4, 4), round(b.get_width(), 4), b.get_linewidth() > 0)
                   for b in bars)
    onset = (piece[:, 0] - vocab.TIME_OFFSET) / 100
    width = np.maximum((piece[:, 1] - vocab.DUR_OFFSET) / 100, 0.05)
    assert drawn == sorted(zip(np.round(onset, 4).tolist(), pitch.tolist(), np.round(width, 4).tolist(),
                               (instrument == 87).tolist()))
    gold = matplotlib.colors.to_rgba("gold", 0.15)
    shaded = [p for p in ax.patches if p not in bars and np.allclose(p.get_facecolor(), gold)]
    assert len(shaded) == 1 and np.allclose(shaded[0].get_extents().x1 - shaded[0].get_extents().x0,
                                            ax.transData.transform((30, 0))[0] - ax.transData.transform((3, 0))[0])
    assert ax.get_xlim() == (0, 30.0)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [vocab.GM_INSTRUMENTS[i] for i in sorted(set(instrument.tolist()))] + [
        "infilled 3-30 s", "prompt ends (2 s)", "given (controls)"]


def test_a_calls_buffers_keep_their_addresses_from_one_call_to_the_next(tiny_model, monkeypatch):
    """On a GPU a call is a CUDA graph (or a loop of them), and XLA re-records a graph whose buffers moved (on an
    H200 that cost the host 4.6 ms of Medium's 16.2 ms an event under the profiler). So the cache, hidden state,
    inputs, keys and output a call reads must be where the previous call left them: donated and written in place.
    Checked here on the CPU, which honours donation too: 2 samples, 40 events a bin apart (no window move), 4 a
    call; and launched ahead, one a call, where each of the two executables keeps its own `out`, the rest shared."""
    addresses = []
    events = sampling._events

    def recording(weights, unembed, cache, hidden, rows, keys, out, temperature, **static):
        addresses.append((static.get("copy", 0), [leaf.unsafe_buffer_pointer() for leaf in
                                                  jax.tree.leaves((cache, hidden, rows, keys, out, temperature))]))
        return events(weights, unembed, cache, hidden, rows, keys, out, temperature, **static)

    monkeypatch.setattr(sampling, "_events", recording)
    sampler = steered(tiny_model, {0: 1, 1: 1})
    sampler.generate(0, 5, options=sampling.SamplingOptions(num_samples=2, max_events=40, events_per_call=4))
    assert [len(g) for g in sampler.last_generated] == [40, 40]
    assert len(addresses) == 11  # the first call stops after an event: the empty window's earliest time moved
    moved = [(i, [j for j, (a, b) in enumerate(zip(addresses[i][1], addresses[1][1])) if a != b])
             for i in range(2, 11) if addresses[i] != addresses[1]]
    assert not moved, f"a call's buffers moved at calls {moved}"
    addresses.clear()
    sampler.generate(0, 5, options=sampling.SamplingOptions(num_samples=2, max_events=40, events_per_call=1,
                                                            launch_ahead=True))
    assert [len(g) for g in sampler.last_generated] == [40, 40]
    # one call an event, and two more: the one launched before the host saw the first event's window had to move
    # (the empty window's earliest time moved: the row idles in it), and the one in flight when both samples ended
    # (the host foresees its own work: a call launched after a row needs the host would idle too)
    assert {copy for copy, _ in addresses} == {0, 1} and len(addresses) == 42
    first = {copy: leaves for copy, leaves in reversed(addresses[2:])}  # (the first of each copy after the start's)
    moved = [i for i, (copy, leaves) in enumerate(addresses[2:], 2) if leaves != first[copy]]
    assert not moved, f"launched ahead, a call's buffers moved at calls {moved}"
    outs = {copy: leaves[-2] for copy, leaves in first.items()}  # (`out`, then the temperature)
    assert outs[0] != outs[1] and first[0][:-2] == first[1][:-2]


def check_cache_holds_the_windows(sampler):
    """Each sample's row of the cache holds the keys and values of the tokens the host says the model saw (its
    window, `last_windows`): the device fed what the host recorded (a prefill of the window, f32, within 1e-4; a
    token fed otherwise moves them by ~0.1)."""
    for row, window in enumerate(sampler.last_windows):
        _, cache = sampler._prefill([window])
        for ours, fresh in zip(sampler.last_cache.keys + sampler.last_cache.values, cache.keys + cache.values):
            ours, fresh = np.asarray(ours[row]), np.asarray(fresh[0])
            seen = (slice(None), slice(0, len(window))) if ours.shape[1] == sampler.context else (Ellipsis, slice(0, len(window)))
            np.testing.assert_allclose(ours[seen], fresh[seen], atol=1e-4, err_msg=f"sample {row}")


def _music(sampler, task, events_per_call, launch_ahead=False, **options):
    """The task's samples, what they were conditioned on and why they stopped; the cache checked. Launched ahead,
    also that the host foresees its own work (a window to move, a queue to refill, events to allow): a live row
    idles in the call launched before the host knew, never in two running (each a call's time wasted)."""
    reads = []  # per call read: whether the host staged its rows, the live rows that took no step
    replay = sampler._replay

    def recording(samples, result, fresh, *args):
        reads.append((fresh, {i for i, s in enumerate(samples) if not s.done and result[i, 0] == 0}))
        return replay(samples, result, fresh, *args)

    sampler._replay = recording
    try:
        out = task(sampling.SamplingOptions(events_per_call=events_per_call, launch_ahead=launch_ahead, **options))
    finally:
        del sampler._replay
    wasted = [k for k, ((_, before), (fresh, idle)) in enumerate(zip(reads, reads[1:]), 1)
              if not fresh and before & idle]
    assert not wasted, f"rows idled in two calls running, at calls {wasted}"
    check_cache_holds_the_windows(sampler)
    return out, sampler.last_sequences, sampler.last_stops


@pytest.mark.parametrize("anticipatory", [True, False])
def test_the_music_does_not_depend_on_the_events_per_call(tiny_model, anticipatory):
    """Several events a device call (the device takes the host's steps, and stops a sample where the host has work
    to do before its next one) give the same samples as one a call, token for token, on the production path:
    accompaniment (given notes as controls, Algorithm 1, or played in as events, Algorithm 2's backfill) with
    windows that move (context full, time near 100 s), 3 samples that finish at different times, top-p < 1; and
    from nothing (the empty window's earliest time moves with its first event). After each, the cache holds what
    the host recorded as fed."""
    piece = ops.as_triples(midi.midi_to_events(DEMO / "miditok_multitrack" / "Funkytown.mid"))
    melody = max(ops.instruments(piece), key=lambda i: ops.instruments(piece)[i] if i != vocab.DRUMS else -1)
    # sample 0 paced (5 bins an event: its context fills), 1 paced with one jump at its 150th event (its window's
    # time nears 100 s; Algorithm 2: the jump passes given notes), 2 sampled (a random model's onsets jump: it ends
    # first), 3 paced with one 2.5 s jump at its 60th event (Algorithm 2: the given notes it passes are played, one
    # a step, before it samples again, within a call)
    sampler = steered(tiny_model, {0: 5, 1: 3, 2: None, 3: 4}, {1: 150, 3: 60}, once={1, 3})
    sampler.jump_bins = {3: 250}
    tasks = [lambda options: sampling.accompany(sampler, piece, [melody], 2, 150, options, anticipatory=anticipatory),
             lambda options: sampling.unconditional(sampler, 20, options)]
    for task in tasks if anticipatory else tasks[:1]:
        options = dict(num_samples=4, seed=4, top_p=0.9, max_events=500)
        one, sequences, stops = _music(sampler, task, 1, **options)
        moves = check_outputs(sampler, max_instruments=16)
        assert moves[0] >= 1 and len(sequences[2]) < len(sequences[0]), (moves, stops)
        assert task is tasks[1] or moves[1] >= 1, (moves, stops)
        # several a call; and calls launched ahead, each on the rows the one before left (its queue moved on, a
        # backfill's due triples kept due), the host staging rows only where it has work
        for events_per_call, launch_ahead in ((5, False), (16, False), (1, True), (5, True)):
            many, many_sequences, many_stops = _music(sampler, task, events_per_call, launch_ahead, **options)
            assert many_stops == stops, (events_per_call, launch_ahead)
            for a, b in zip(sequences + one, many_sequences + many):
                np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="events_per_call=0"):
        sampling.unconditional(sampler, 5, sampling.SamplingOptions(events_per_call=0))


def test_the_events_a_call_and_launching_ahead_are_chosen_for_the_batch_and_the_device(tiny_model, monkeypatch):
    """Unset, `events_per_call` and `launch_ahead` are the sampler's choice: 8 events a call, not launched ahead,
    except for one sample on a GPU: 1, launched ahead (measured there: the loop's trips launched from the host cost one
    sample more than its calls did, and the host's dispatch and replay set the pace; README). Each choice is asked
    with the platform the weights are on and the batch, and is what the device runs (launched ahead, two executables
    alternate); a value given is kept. (On the platform the test runs on: the GPU machine's device check runs it on
    the card.)"""
    assert [(sampling.default_events_per_call(n, platform), sampling.default_launch_ahead(n, platform))
            for n, platform in [(1, "gpu"), (1, "cuda"), (2, "gpu"), (8, "gpu"), (1, "cpu"), (8, "cpu"), (1, "tpu")]
            ] == [(1, True), (1, True), (8, False), (8, False), (8, False), (8, False), (8, False)]
    platform = jax.devices()[0].platform
    asked, ran = [], []
    events = sampling._events
    choose, ahead = sampling.default_events_per_call, sampling.default_launch_ahead

    def recording(*args, **static):
        ran.append((static["events"], static["copy"]))
        return events(*args, **static)

    monkeypatch.setattr(sampling, "_events", recording)
    monkeypatch.setattr(sampling, "default_events_per_call",
                        lambda n, platform: asked.append(("events", n, platform)) or (3 if n == 2 else choose(n, platform)))
    monkeypatch.setattr(sampling, "default_launch_ahead",
                        lambda n, platform: asked.append(("ahead", n, platform)) or (n == 2 or ahead(n, platform)))
    sampler = sampling.Sampler(tiny_model)
    for options, expected in [
            (sampling.SamplingOptions(num_samples=2, max_events=7), {(3, 0), (3, 1)}),
            (sampling.SamplingOptions(max_events=7), {(choose(1, platform), c) for c in (0, 1)[:1 + ahead(1, platform)]}),
            (sampling.SamplingOptions(num_samples=2, max_events=7, events_per_call=5, launch_ahead=False), {(5, 0)}),
            (sampling.SamplingOptions(max_events=7, events_per_call=2, launch_ahead=True), {(2, 0), (2, 1)})]:
        ran.clear()
        sampling.unconditional(sampler, 5, options)
        assert ran and set(ran) == expected, (options, ran)
    assert asked == [("events", 2, platform), ("ahead", 2, platform), ("events", 1, platform), ("ahead", 1, platform)]
    with pytest.raises(ValueError, match="launch_ahead='yes'"):
        sampling.unconditional(sampler, 5, sampling.SamplingOptions(launch_ahead="yes"))


def test_algorithm_2_plays_the_notes_a_backfill_passed_before_it_samples_again(tiny_model, monkeypatch):
    """Algorithm 2: when a sampled onset passes given notes, the first is played in its place (the backfill) and the
    rest it passed are due at once, played one a step even where the next sampled onset falls short of them. The
    device applies that rule within a call, the host between calls, and launched ahead a call carries the triples a
    backfill made due to the next: the samples at 8 events a call, and at one launched ahead, equal those at one.
    Onsets steered by each step's own key (a random model's do not jump this way): 30 bins past the current
    time (past about two of the melody's notes) one step in three, else 2 (short of the next), so a short onset
    follows a backfill; without the rule on the device its music differs from the host's (or the host's replay
    stops on it). From the start (an empty prompt) the given notes' instrument is new to the sample: a played given
    note counts among its instruments (the 15-instrument rule) on the device as on the host."""
    real = sampling.constrained_sample

    def steered_onsets(logits, keys, *, phase, min_onset, **constraints):
        token = real(logits, keys, phase=phase, min_onset=min_onset, **constraints)
        if phase != 0:
            return token
        jumps = jax.vmap(lambda key: jax.random.bernoulli(jax.random.fold_in(key, 7), 1 / 3))(keys)
        return vocab.TIME_OFFSET + jnp.clip(min_onset + jnp.where(jumps, 30, 2), 0, vocab.MAX_TIME - 1)

    piece = ops.as_triples(midi.midi_to_events(DEMO / "miditok_multitrack" / "Funkytown.mid"))
    melody = max(ops.instruments(piece), key=lambda i: ops.instruments(piece)[i] if i != vocab.DRUMS else -1)
    monkeypatch.setattr(sampling, "constrained_sample", steered_onsets)
    jax.clear_caches()  # (the device's program is traced again with the steered onsets, and again after the test)
    try:
        sampler = sampling.Sampler(tiny_model)
        sampler.record_inputs = True
        music = {}
        for events_per_call, launch_ahead in ((1, False), (8, False), (1, True)):
            options = sampling.SamplingOptions(num_samples=2, seed=3, max_events=120, events_per_call=events_per_call,
                                               launch_ahead=launch_ahead)
            music[events_per_call, launch_ahead] = sampling.accompany(sampler, piece, [melody], 0, 12, options,
                                                                      anticipatory=False)
            check_cache_holds_the_windows(sampler)
        for variant in ((8, False), (1, True)):
            for one, other in zip(music[1, False], music[variant]):
                np.testing.assert_array_equal(one, other)
    finally:
        monkeypatch.undo()
        jax.clear_caches()
