"""Continuations from an interarrival ("MIDI-like") baseline model, as the paper's `humaneval/prompt-interarrival.py`.

The paper's third model family predicts a stream of time shifts, note-ons and note-offs (`amt.vocab`'s 34,025
ids) with no anticipation, so it can only continue a prompt. The reference turns the prompt clip into a MIDI
file, reads it back as interarrival tokens, drops everything after the last note-on, samples with top-p 0.95
up to 1,024 tokens, and turns the result back into events through MIDI (`interarrival_to_midi`, then
`midi_to_events`), clipped to the clip's end. This module does the same with our KV-cached decoder
(`amt.decoder`): one jitted call per `tokens_per_call` tokens (8), N samples of one prompt as one batch.

Differences from the reference, on purpose:
- The prompt starts with a SEPARATOR, as every file does in the training rows (`InterarrivalPacker`); the
  reference's prompt has none.
- Constraints on every sampled token (the reference samples the whole vocabulary): no SEPARATOR (it would
  start another piece), no zero time shift (never in the data: a shift is written only when time passes),
  and no note-on of a 16th pitched instrument (MIDI has 15 channels besides drums, and `interarrival_to_midi`
  refuses more: the same rule as the arrival-time sampler's).
- The prompt ends at its last note-on. The reference meant the same ("strip trailing offsets") but its test,
  `MIDI_START_OFFSET <= token < MIDI_START_OFFSET + MIDI_END_OFFSET`, also takes the note-offs of programs 0-7
  (ids up to 18,511) for note-ons: a piano prompt kept its trailing note-offs there.
- Sampling stops when the time shifts reach `end_seconds` (the reference stops at 1,024 tokens, however much
  time that covers); past the context the window moves by `window_chunk` tokens and is prefilled again, as
  `amt.sampling` does (no time to rewrite: interarrival time is relative already). `max_tokens` bounds a
  model that never moves time forward.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from amt import decoder, midi, ops, vocab
from amt.sampling import MAX_SAMPLED_INSTRUMENTS, _nucleus

PAPER_TOP_P = 0.95  # humaneval/prompt-interarrival.py


@dataclass(frozen=True)
class InterarrivalOptions:
    top_p: float = PAPER_TOP_P
    temperature: float = 1.0
    seed: int = 0
    num_samples: int = 1
    window_chunk: int = 256  # tokens dropped from the window at a time once the context is full
    max_tokens: int = 20_000  # per sample
    tokens_per_call: int = 8  # tokens each device call takes (fewer round trips; the same samples whatever the value)


def is_interarrival_model(model) -> bool:
    """An interarrival model is told apart by its vocabulary (34,025 ids against 55,028)."""
    return model.Vocab.size == vocab.MIDI_VOCAB_SIZE


def prompt_tokens(events, prompt_seconds: float) -> np.ndarray:
    """The reference's prompt: the events before `prompt_seconds`, as a MIDI file read back in the interarrival
    vocabulary, up to its last note-on (trailing note-offs and shifts dropped), after a SEPARATOR."""
    prompt = ops.clip(ops.as_triples(events), 0, prompt_seconds, clip_duration=False)
    buffer = io.BytesIO()
    midi.events_to_midi(ops.flatten(prompt)).save(file=buffer)
    tokens = midi.midi_to_interarrival(buffer.getvalue())
    on = np.flatnonzero((tokens >= vocab.MIDI_START_OFFSET) & (tokens < vocab.MIDI_END_OFFSET))
    tokens = tokens[: on[-1] + 1] if len(on) else tokens[:0]
    return np.concatenate([[vocab.MIDI_SEPARATOR], tokens]).astype(np.int64)


def tokens_to_events(tokens, end_seconds: float | None = None) -> np.ndarray:
    """Interarrival tokens as (n, 3) arrival-time events, through MIDI as the reference does
    (`interarrival_to_midi`, then `midi_to_events`), clipped at `end_seconds`."""
    buffer = io.BytesIO()
    midi.interarrival_to_midi(tokens).save(file=buffer)
    events = ops.as_triples(midi.midi_to_events(buffer.getvalue()))
    if end_seconds is not None:
        events = ops.as_triples(ops.clip(events, 0, end_seconds))
    return ops.sort(events) if len(events) else events


# what the host tells the device about each row for a call, one int32 array (batch, ROW_INPUTS); times in bins
NOW, END, DONE, PLAYED = 0, 1, 2, 3  # the time reached, the end time, 1 if finished; PLAYED: MAX_INSTR columns,
ROW_INPUTS = PLAYED + vocab.MAX_INSTR  # the pitched instruments its note-ons have used (1 or 0)


@functools.partial(jax.jit, static_argnames=("top_p", "tokens"), donate_argnames=("cache", "hidden", "key"))
def _tokens(weights: decoder.DecoderWeights, cache: decoder.KVCache, hidden, rows, position, steps, key, *,
            top_p: float, temperature, tokens: int):
    """`steps` (at most `tokens`) tokens of every row in one call, at positions position.. (the same for every
    row), each sampled under the constraints (no SEPARATOR, no zero shift, no note-on of a 16th pitched
    instrument) and fed to the model, its keys and values written into the cache. A row finishes at the shift that
    would reach its end time (that token is fed, not kept: the host drops it); a finished row steps on, idle. The
    generator is split once a step, for all rows, as one call a token split it. Returns the tokens (batch, tokens),
    the rows' times and finished flags after them, the cache, hidden state and generator."""
    v = jnp.arange(vocab.MIDI_VOCAB_SIZE)
    instrument = jnp.clip((v - vocab.MIDI_START_OFFSET) // vocab.MAX_PITCH, 0, vocab.MAX_INSTR - 1)
    is_on = (v >= vocab.MIDI_START_OFFSET) & (v < vocab.MIDI_END_OFFSET)
    never = (v == vocab.MIDI_SEPARATOR) | (v == vocab.MIDI_TIME_OFFSET)
    pitched = jnp.arange(vocab.MAX_INSTR) != vocab.DRUMS
    end = rows[:, END]

    def step(j, carry):
        cache, hidden, key, out, now, done, played = carry
        runs = j < steps
        split_key, subkey = jax.random.split(key)
        full = (played & pitched).sum(-1) >= MAX_SAMPLED_INSTRUMENTS  # then only those (drums always)
        note_on_allowed = ~full[:, None] | played | ~pitched[None]
        allowed = ~never[None] & (~is_on[None] | note_on_allowed[:, instrument])
        logits = jnp.where(allowed, decoder.unembed(hidden, weights.lm_head) / temperature, -jnp.inf)
        if top_p < 1.0:
            logits = jnp.where(_nucleus(jax.nn.softmax(logits, axis=-1), top_p), logits, -jnp.inf)
        token = jax.random.categorical(subkey, logits, axis=-1)
        new_hidden, recent = decoder.forward(weights, cache, decoder.empty_cache(weights, hidden.shape[0], 0),
                                             token[:, None], position + j)
        cache = decoder.write_into(cache, recent, position + j, jnp.broadcast_to(runs, done.shape))
        keeps = runs & ~done
        shift = token < vocab.MIDI_START_OFFSET
        ends = keeps & shift & (now + token >= end)
        now = jnp.where(keeps & shift & ~ends, now + token, now)
        on = keeps & (token >= vocab.MIDI_START_OFFSET) & (token < vocab.MIDI_END_OFFSET)
        played = played | (on[:, None] & (jnp.arange(vocab.MAX_INSTR)[None] == instrument[token][:, None])
                           & pitched[None])
        return (cache, jnp.where(runs, new_hidden[:, 0], hidden), jnp.where(runs, split_key, key),
                out.at[:, j].set(token), now, done | ends, played)

    carry = (cache, hidden, key, jnp.zeros((hidden.shape[0], tokens), jnp.int32), rows[:, NOW], rows[:, DONE] > 0,
             rows[:, PLAYED:] > 0)
    cache, hidden, key, out, now, done, _ = jax.lax.fori_loop(0, tokens, step, carry)
    return out, now, done, cache, hidden, key


class InterarrivalSampler:
    """Samples continuations from a trained interarrival model (Levanter `Gpt2LMHeadModel`, vocab 34,025)."""

    def __init__(self, model, dtype="float32"):
        if not is_interarrival_model(model):
            raise ValueError(f"not an interarrival model: vocabulary {model.Vocab.size}, expected {vocab.MIDI_VOCAB_SIZE}")
        self.weights = decoder.decoder_weights(model, dtype)  # float32 or bfloat16: see amt.decoder
        self.context = self.weights.shape[3]

    def continue_tokens(self, prompt: np.ndarray, end_seconds: float,
                        options: InterarrivalOptions = InterarrivalOptions()) -> list[np.ndarray]:
        """Token streams (the prompt, then the sampled tokens) for `options.num_samples` samples: sampling
        stops before the shift that would reach `end_seconds` (time counted from the prompt's start)."""
        if not (isinstance(options.tokens_per_call, int) and options.tokens_per_call >= 1):
            raise ValueError(f"InterarrivalOptions.tokens_per_call={options.tokens_per_call!r}: a positive integer")
        prompt = np.asarray(prompt, dtype=np.int64)
        n = options.num_samples
        shifts = np.where(prompt < vocab.MIDI_START_OFFSET, prompt - vocab.MIDI_TIME_OFFSET, 0)
        now = np.full(n, int(shifts.sum()))
        end = vocab.to_bins(end_seconds)
        on = prompt[(prompt >= vocab.MIDI_START_OFFSET) & (prompt < vocab.MIDI_END_OFFSET)]
        pitched = set(((on - vocab.MIDI_START_OFFSET) // vocab.MAX_PITCH).tolist()) - {vocab.DRUMS}
        instruments = [set(pitched) for _ in range(n)]
        streams = [list(prompt) for _ in range(n)]
        done = np.zeros(n, bool)
        key = jax.random.PRNGKey(options.seed)
        keep = max(self.context - options.window_chunk, 1)

        def prefill(length):  # a finished sample's stream stops growing: it borrows a running one's window
            running = streams[int(np.argmin(done))]
            window = np.asarray([(running if done[i] else s)[-length:] for i, s in enumerate(streams)], dtype=np.int32)
            hidden, cache = decoder.prefill(self.weights, jnp.asarray(decoder.pad_window(window, self.context)),
                                            window.shape[1])
            return hidden, cache, window.shape[1]

        hidden, cache, position = prefill(min(len(prompt), keep if len(prompt) > self.context else self.context))
        sampled = 0
        while not done.all() and sampled < options.max_tokens:
            if position >= self.context:
                hidden, cache, position = prefill(keep)
            steps = min(options.tokens_per_call, self.context - position, options.max_tokens - sampled)
            rows = np.zeros((n, ROW_INPUTS), dtype=np.int32)
            rows[:, NOW], rows[:, END], rows[:, DONE] = now, end, done
            for i, used in enumerate(instruments):
                rows[i, PLAYED + np.asarray(sorted(used), dtype=np.int64)] = 1
            tokens, device_now, device_done, cache, hidden, key = _tokens(
                self.weights, cache, hidden, jnp.asarray(rows), jnp.int32(position), jnp.int32(steps), key,
                top_p=float(options.top_p), temperature=options.temperature, tokens=options.tokens_per_call)
            tokens = np.asarray(tokens)
            for j in range(steps):  # the same rules on the host, which keeps the streams
                for i, token in enumerate(tokens[:, j].tolist()):
                    if done[i]:
                        continue
                    if token < vocab.MIDI_START_OFFSET:
                        if now[i] + token >= end:
                            done[i] = True
                            continue
                        now[i] += token
                    elif token < vocab.MIDI_END_OFFSET and (token - vocab.MIDI_START_OFFSET) // vocab.MAX_PITCH != vocab.DRUMS:
                        instruments[i].add((token - vocab.MIDI_START_OFFSET) // vocab.MAX_PITCH)
                    streams[i].append(token)
            if not (np.array_equal(np.asarray(device_now), now) and np.array_equal(np.asarray(device_done), done)):
                raise RuntimeError("interarrival sampler: the device's times or finished samples differ from the host's")
            position += steps
            sampled += steps
        return [np.asarray(s, dtype=np.int64) for s in streams]

    def continuation(self, events, prompt_seconds: float, end_seconds: float,
                     options: InterarrivalOptions = InterarrivalOptions()) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Continue the first `prompt_seconds` of a piece (arrival-time events) to `end_seconds`: returns the
        (n, 3) events of each sample (prompt included, clipped at `end_seconds`) and their token streams."""
        streams = self.continue_tokens(prompt_tokens(events, prompt_seconds), end_seconds, options)
        return [tokens_to_events(s, end_seconds) for s in streams], streams
