"""The KV-cached sampler: logits equal the full forward pass; Algorithms 1 and 2 keep their constraints."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import mido
import numpy as np
import pytest

from amt import augment, checkpoints, decoder, midi, ops, sampling, sequences, vocab

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "midi"


@pytest.fixture(scope="module")
def tiny_model(make_tiny_model):
    return make_tiny_model(seq_len=256)  # a short context, so long pieces move the window


@pytest.fixture(scope="module")
def sampler(tiny_model):
    return sampling.Sampler(tiny_model)


def test_cached_logits_equal_the_full_forward_pass_at_every_position(tiny_model):
    tokens = ops.flatten(ops.as_triples(midi.midi_to_events(DEMO / "npm_misc" / "fur-elise.mid")))[:255]
    tokens = np.concatenate([[vocab.AUTOREGRESS], tokens])
    expected = checkpoints.logits(tiny_model, tokens)
    weights = decoder.decoder_weights(tiny_model)
    np.testing.assert_allclose(np.asarray(decoder.full_logits(weights, jnp.asarray(tokens[None], jnp.int32)))[0],
                               expected, atol=1e-4)
    hidden, cache = decoder.prefill(weights, jnp.asarray(decoder.pad_window(tokens[None, :40], 256)), 40)
    np.testing.assert_allclose(np.asarray(hidden @ weights.lm_head)[0], expected[39], atol=1e-4)
    step = jax.jit(decoder.forward, static_argnames="first")
    for start in range(40, 256, 3):  # as the sampler: three tokens (an event) at a time, then into the cache
        recent = decoder.empty_cache(weights, 1, 3)
        for first, position in enumerate(range(start, min(start + 3, 256))):
            hidden, recent = step(weights, cache, recent, jnp.asarray(tokens[None, position:position + 1], jnp.int32),
                                  jnp.asarray(start), first=first)
            if position < 255:
                np.testing.assert_allclose(np.asarray(hidden @ weights.lm_head)[0, 0], expected[position], atol=1e-4,
                                           err_msg=str(position))
        cache = decoder.write(cache, recent, jnp.asarray(start))


def test_sampled_events_keep_every_constraint(sampler):
    """About 1,000 events from a random model: typed triples, time never goes back, at most 15 instruments."""
    events_seen = 0
    for seed in range(6):
        options = sampling.SamplingOptions(num_samples=48, seed=seed, top_p=1.0, max_events=30)
        outputs = sampler.generate(0, 1000, options=options)
        for sequence, events in zip(sampler.last_sequences, outputs):
            assert sequences.validate_sequence(sequence, length=None) == []
            assert sequence[0] == vocab.AUTOREGRESS
            body = ops.as_triples(sequence[1:])
            assert not np.any(ops.is_control(body))
            times = ops.times(body)
            assert np.all(np.diff(times) >= 0)
            notes = body[body[:, 2] != vocab.REST, 2]
            assert len(set(((notes - vocab.NOTE_OFFSET) // vocab.MAX_PITCH).tolist())) <= 15
            events_seen += len(body)
        if events_seen >= 1000:
            break
    assert events_seen >= 1000


def test_same_seed_same_music_and_batches_differ(sampler):
    prompt = ops.as_triples(midi.midi_to_events(DEMO / "npm_misc" / "fur-elise.mid"))
    options = sampling.SamplingOptions(num_samples=3, seed=5)
    first = sampling.continuation(sampler, prompt, 4, 12, options)
    again = sampling.continuation(sampler, prompt, 4, 12, options)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    batch = sampler.generate(0, 1000, options=sampling.SamplingOptions(num_samples=3, seed=5, max_events=20))
    assert all(len(sample) == 20 for sample in batch)
    assert not np.array_equal(batch[0], batch[1]) and not np.array_equal(batch[1], batch[2])
    other_seed = sampler.generate(0, 1000, options=sampling.SamplingOptions(num_samples=3, seed=6, max_events=20))
    assert not np.array_equal(batch[0], other_seed[0])
    # the prompt comes back unchanged, and nothing is generated before the start
    kept = ops.clip(prompt, 0, 4, clip_duration=False)
    for sample in first:
        rows = set(map(tuple, sample.tolist()))
        assert all(tuple(r) in rows for r in kept.tolist())
        new = np.array([r for r in sample.tolist() if tuple(r) not in set(map(tuple, kept.tolist()))]).reshape(-1, 3)
        assert len(new) == 0 or ops.times(new).min() >= 400


def test_accompaniment_reproduces_the_given_controls(sampler):
    piece = ops.as_triples(midi.midi_to_events(DEMO / "miditok_multitrack" / "Funkytown.mid"))
    melody_instrument = max(ops.instruments(piece), key=lambda i: ops.instruments(piece)[i] if i != 128 else -1)
    for anticipatory in (True, False):
        outputs = sampling.accompany(sampler, piece, [melody_instrument], 2, 12,
                                     sampling.SamplingOptions(num_samples=2, seed=1), anticipatory=anticipatory)
        _, melody = augment.extract_instruments(piece, [melody_instrument])
        melody = ops.clip(melody, 0, 12, clip_duration=False) - vocab.CONTROL_OFFSET
        melody = melody[ops.times(melody) < 1200]
        assert len(melody) > 10
        for sample, sequence in zip(outputs, sampler.last_sequences):
            rows = set(map(tuple, sample.tolist()))
            missing = [r for r in melody.tolist() if tuple(r) not in rows]
            assert missing == [], (anticipatory, len(melody), missing[:3])
            assert sequence[0] == (vocab.ANTICIPATE if anticipatory else vocab.AUTOREGRESS)
            assert np.any(ops.is_control(ops.as_triples(sequence[1:]))) == anticipatory
            assert sequences.validate_sequence(sequence, length=None) == []


def test_infilling_keeps_the_music_around_the_span(sampler):
    piece = ops.as_triples(midi.midi_to_events(DEMO / "npm_misc" / "maple-leaf-rag.mid"))
    outputs = sampling.infill(sampler, piece, 5, 8, sampling.SamplingOptions(num_samples=1, seed=3))
    outside = piece[(ops.times(piece) < 500) | (ops.times(piece) >= 800)]
    rows = set(map(tuple, outputs[0].tolist()))
    assert all(tuple(r) in rows for r in outside.tolist())
    assert sampler.last_sequences[0][0] == vocab.ANTICIPATE


def test_generate_command_writes_midi_and_pianoroll(tmp_path, tiny_model):
    from amt.checkpoints import (
        export_hf,  # noqa: F401  (the CLI loads HF folders; make one from the tiny model)
        single_device_mesh,
    )

    with single_device_mesh():
        tiny_model.config.hf_checkpoint_converter().save_pretrained(tiny_model, str(tmp_path / "hf"), save_tokenizer=False)
    out = tmp_path / "out" / "acc.mid"
    subprocess.run([sys.executable, "-m", "amt.cli", "generate", "--checkpoint", str(tmp_path / "hf"), "--prompt",
                    str(DEMO / "miditok_multitrack" / "Funkytown.mid"), "--accompany", "87", "--start", "2",
                    "--end", "8", "--num-samples", "2", "-o", str(out)], check=True, capture_output=True,
                   env={"HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    lead = {tuple(r) for r in ops.as_triples(midi.midi_to_events(DEMO / "miditok_multitrack" / "Funkytown.mid")).tolist()
            if (r[2] - vocab.NOTE_OFFSET) // vocab.MAX_PITCH == 87 and r[0] < 800}
    for path in (out, out.with_name("acc-2.mid")):
        assert mido.MidiFile(path).length > 0
        assert path.with_suffix(".png").stat().st_size > 10_000
        assert lead <= {tuple(r) for r in ops.as_triples(midi.midi_to_events(path)).tolist()}  # the given part
    absent = subprocess.run([sys.executable, "-m", "amt.cli", "generate", "--checkpoint", str(tmp_path / "hf"),
                             "--prompt", str(DEMO / "miditok_multitrack" / "Funkytown.mid"), "--accompany", "33",
                             "-o", str(out)], check=False, capture_output=True, text=True,
                            env={"HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert absent.returncode == 2 and "instrument(s) [33] do not play" in absent.stderr
