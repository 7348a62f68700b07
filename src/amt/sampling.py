"""Sampling: the paper's Algorithm 1 (anticipatory) and Algorithm 2 (autoregressive), with a KV cache.

Follows the reference's `generate`: the prompt (events up to the start time, REST-padded) and the controls
(given controls, plus any input events after the start time, e.g. the rest of a piece around an infilled span)
are interleaved with anticipation; then, until an onset reaches the end time, controls due within 5 s of the
current time are inserted and one event (onset, duration, note) is sampled. Constraints on every token, as the
reference's: no control or special tokens, onset / duration / note by position in the triple, no onset before
the current time, no 16th instrument once 15 are used (one channel stays for drums); then temperature and
nucleus (top-p) sampling from a seeded generator.

Differences from the reference, on purpose:
- N samples of one request run as one batch (one jitted step per token for all of them).
- REST may only be sampled in the note slot, after a zero duration (as in the training data; the reference
  leaves it allowed everywhere, which can make an unreadable triple).
- Beyond the context (1,024 tokens) the reference slides a window of the latest 1,017 tokens forward by one
  event for every new event, with time relative to the window, and runs the whole window again. With a cache,
  moving the window changes every token's value, so the window moves by `window_chunk` events at a time
  and is prefilled again (amortized); in between, the context grows instead of sliding.
- Given controls that start before 0.05 s are kept (the reference drops them by clipping at 5 *bins*).
- Algorithm 2 with given notes (the autoregressive accompaniment baseline): when a sampled onset would pass
  given notes, the reference inserts them before the sampled event; here they are inserted and the event is
  sampled again, so that the model sees them first.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from amt import augment, decoder, ops, vocab

MAX_SAMPLED_INSTRUMENTS = 15  # the 16th MIDI channel stays free for drums (the reference's rule)


@functools.partial(jax.jit, static_argnames=("phase", "top_p"))
def constrained_sample(logits, key, *, phase: int, min_onset, instrument_allowed, rest_allowed, top_p: float,
                       temperature):
    """One token per row of (batch, vocab) logits for the slot `phase` (0 onset, 1 duration, 2 note)."""
    # only the slot's block of the vocabulary can be sampled: work on that slice (a smaller sort for top-p)
    low, high = ((vocab.TIME_OFFSET, vocab.TIME_OFFSET + vocab.MAX_TIME), (vocab.DUR_OFFSET, vocab.DUR_OFFSET + vocab.MAX_DUR),
                 (vocab.NOTE_OFFSET, vocab.REST + 1))[phase]
    logits = logits[:, low:high]
    v = jnp.arange(low, high)
    if phase == 0:
        allowed = v[None] >= vocab.TIME_OFFSET + min_onset[:, None]
    elif phase == 1:
        allowed = jnp.ones(logits.shape, bool)
    else:
        note = v - vocab.NOTE_OFFSET
        instrument = jnp.clip(note // vocab.MAX_PITCH, 0, vocab.MAX_INSTR - 1)
        allowed = ((v < vocab.REST)[None] & instrument_allowed[:, instrument]) | ((v == vocab.REST)[None] & rest_allowed[:, None])
    logits = jnp.where(allowed, logits / temperature, -jnp.inf)
    if top_p >= 1.0:
        return low + jax.random.categorical(key, logits, axis=-1)
    # nucleus: keep the most probable tokens whose cumulative probability reaches top_p (at least one)
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove_sorted = jnp.concatenate([jnp.zeros_like(cumulative[:, :1], bool), cumulative[:, :-1] > top_p], axis=-1)
    remove = jnp.zeros_like(remove_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(remove_sorted)
    logits = jnp.where(remove, -jnp.inf, logits)
    return low + jax.random.categorical(key, logits, axis=-1)


@dataclass
class _Sample:
    """One sequence being generated: its tokens (after the flag), in absolute time."""

    tokens: list[int]
    controls: list[list[int]]  # controls still to insert, in time order
    current_time: int
    offset: int = 0  # absolute - relative time of the window in the cache
    sampled: int = 0  # events sampled so far
    pending: list[int] = field(default_factory=list)  # tokens to feed before sampling again (a control)
    triple: list[int] = field(default_factory=list)  # the event being sampled
    done: bool = False
    instruments: set = field(default_factory=set)


@dataclass(frozen=True)
class SamplingOptions:
    top_p: float = 0.98
    temperature: float = 1.0
    seed: int = 0
    num_samples: int = 1
    window_chunk: int = 128  # events dropped from the window at a time once the context is full
    max_events: int = 20_000  # per sample: a model that never reaches the end time still stops
    delta: int = vocab.DELTA_BINS


class Sampler:
    """Samples from a trained model (Levanter `Gpt2LMHeadModel`) with a KV cache."""

    def __init__(self, model):
        self.weights = decoder.decoder_weights(model)
        self.context = self.weights.shape[3]

    def generate(self, start_time: float, end_time: float, inputs=None, controls=None,
                 options: SamplingOptions = SamplingOptions(), anticipatory: bool = True) -> list[np.ndarray]:
        """Algorithm 1 (anticipatory=True) or 2: (n, 3) events for each of `options.num_samples` samples, with
        the prompt, the future inputs and the given controls (as events) included, sorted by time."""
        start, end = int(vocab.TIME_RESOLUTION * start_time), int(vocab.TIME_RESOLUTION * end_time)
        inputs = ops.as_triples(np.zeros((0, 3), np.int64) if inputs is None else inputs)
        controls = ops.as_triples(np.zeros((0, 3), np.int64) if controls is None else controls)
        if len(controls) and not np.all(ops.is_control(controls)):
            raise ValueError("controls must be in the control block (use amt.ops.to_controls)")
        before = ops.clip(inputs, 0, start, clip_duration=False, seconds=False)
        future = ops.clip(inputs, start + 1, max(ops.max_time(inputs, seconds=False), start + 1),
                          clip_duration=False, seconds=False)
        if anticipatory:
            prompt = ops.pad(before, start)
            conditions = ops.sort(np.concatenate([controls, ops.to_controls(future)]))
            flag = vocab.ANTICIPATE if len(conditions) else vocab.AUTOREGRESS
            tokens, remaining = ops.anticipate(prompt, conditions, options.delta)
        else:
            # Algorithm 2: given notes are plain events: those before the start join the prompt, the later
            # ones are played when a sampled event would pass them (the reference's backfill)
            given = ops.sort(controls - vocab.CONTROL_OFFSET)
            early = ops.times(given) <= start
            prompt = ops.pad(ops.sort(np.concatenate([before, given[early]])), start)
            flag, tokens, remaining = vocab.AUTOREGRESS, prompt, given[~early]
        current = ops.max_time(prompt, seconds=False)
        samples = [
            _Sample(tokens=ops.flatten(tokens).tolist(), controls=remaining.tolist(), current_time=current,
                    instruments=set(ops.instruments(tokens)))
            for _ in range(options.num_samples)
        ]
        self._run(samples, flag, start, end, options, anticipatory)
        self.last_sequences = [np.asarray([flag] + s.tokens, dtype=np.int64) for s in samples]  # for inspection
        out = []
        for s in samples:
            events, _ = ops.split(ops.as_triples(np.asarray(s.tokens, dtype=np.int64)))
            if anticipatory:  # the given controls, all of them, as events (interleaved copies are dropped)
                given = controls - vocab.CONTROL_OFFSET
            else:  # given notes not yet played when the sample ended
                given = np.asarray(s.controls, dtype=np.int64).reshape(-1, 3)
            out.append(ops.sort(np.concatenate([ops.unpad(events), future, given])))
        return out

    # --- the loop -----------------------------------------------------------------------------------
    def _prefill(self, samples: list[_Sample], flag: int, room: int):
        """Prefill the cache with each sample's latest `room` events, time relative to that window (the
        reference's rule: minus the window's earliest time). Returns (logits, cache, next position)."""
        windows = []
        for s in samples:
            history = ops.as_triples(np.asarray(s.tokens, dtype=np.int64))[-room:] if room else np.zeros((0, 3), np.int64)
            s.offset = ops.min_time(history, seconds=False) if len(history) else 0
            windows.append([flag] + ops.flatten(ops.translate(history, -s.offset)).tolist())
        batch = decoder.pad_window(np.asarray(windows, dtype=np.int32), self.context)
        cache = decoder.empty_cache(self.weights, len(samples))
        logits, cache = decoder.prefill(self.weights, cache, jnp.asarray(batch), len(windows[0]))
        return logits, cache, len(windows[0])

    def _run(self, samples: list[_Sample], flag: int, start: int, end: int, options: SamplingOptions,
             anticipatory: bool) -> None:
        full = (self.context - 1) // 3  # events that fit the context after the flag
        sliding = max(full - options.window_chunk, 1)
        key = jax.random.PRNGKey(options.seed)
        logits, cache, position = self._prefill(samples, flag, full if len(samples[0].tokens) <= 3 * full else sliding)
        # controls are inserted `delta` ahead (Algorithm 1); Algorithm 2 inserts given notes as events, on time
        delta, condition_offset = (options.delta, vocab.ATIME_OFFSET) if anticipatory else (0, vocab.TIME_OFFSET)
        while True:
            phase = (position - 1) % 3
            if phase == 0:
                if position + 3 > self.context:  # the context is full: move the window (see the notes above)
                    logits, cache, position = self._prefill(samples, flag, sliding)
                for s in samples:  # between events: the controls now due go in first
                    while not s.done and s.controls and s.current_time >= s.controls[0][0] - condition_offset - delta:
                        s.pending.extend(s.controls.pop(0))
            min_onset = np.array([max(start, s.current_time) - s.offset for s in samples], dtype=np.int32)
            allowed = np.ones((len(samples), vocab.MAX_INSTR), dtype=bool)
            for i, s in enumerate(samples):
                if len(s.instruments) >= MAX_SAMPLED_INSTRUMENTS:
                    allowed[i] = False
                    allowed[i, sorted(s.instruments)] = True
            rest_allowed = np.array([len(s.triple) == 2 and s.triple[1] == vocab.DUR_OFFSET for s in samples])
            key, subkey = jax.random.split(key)
            sampled = np.asarray(constrained_sample(
                logits, subkey, phase=phase, min_onset=jnp.asarray(np.minimum(min_onset, vocab.MAX_TIME - 1)),
                instrument_allowed=jnp.asarray(allowed), rest_allowed=jnp.asarray(rest_allowed),
                top_p=float(options.top_p), temperature=options.temperature))
            feed = np.array([(vocab.TIME_OFFSET, vocab.DUR_OFFSET, vocab.REST)[phase]] * len(samples), dtype=np.int32)
            for i, s in enumerate(samples):
                if s.done:
                    continue
                if s.pending:  # a control (or, in Algorithm 2, a given note) being inserted
                    token = s.pending.pop(0)
                    s.tokens.append(token)
                    feed[i] = token - s.offset if phase == 0 else token
                    if phase == 2:
                        s.instruments.add((token - condition_offset - vocab.NOTE_OFFSET) // vocab.MAX_PITCH)
                        if not anticipatory:  # a given note played as an event moves time forward
                            s.current_time = max(s.current_time, s.tokens[-3] - vocab.TIME_OFFSET)
                    continue
                token = int(sampled[i])
                feed[i] = token
                if phase == 0:
                    onset = token - vocab.TIME_OFFSET + s.offset
                    if onset >= end or min_onset[i] >= vocab.MAX_TIME:
                        s.done = True
                        continue
                    if not anticipatory and s.controls and s.controls[0][0] - vocab.TIME_OFFSET <= onset:
                        # Algorithm 2's backfill: given notes up to the sampled onset go first; the model
                        # then samples its event again, having seen them
                        while s.controls and s.controls[0][0] - vocab.TIME_OFFSET <= onset:
                            s.pending.extend(s.controls.pop(0))
                        token = s.pending.pop(0)
                        s.tokens.append(token)
                        feed[i] = token - s.offset
                        continue
                    token = vocab.TIME_OFFSET + onset
                s.triple.append(token)
                if phase == 2:
                    s.tokens.extend(s.triple)
                    s.current_time = s.triple[0] - vocab.TIME_OFFSET
                    s.sampled += 1
                    s.done = s.sampled >= options.max_events
                    if token != vocab.REST:
                        s.instruments.add((token - vocab.NOTE_OFFSET) // vocab.MAX_PITCH)
                    s.triple = []
            if all(s.done for s in samples):
                return
            logits, cache = decoder.step(self.weights, cache, jnp.asarray(feed), jnp.asarray(position))
            position += 1


# --- tasks: what musicians ask for ----------------------------------------------------------------------
def unconditional(sampler: Sampler, seconds: float, options: SamplingOptions = SamplingOptions()) -> list[np.ndarray]:
    """Music from nothing, `seconds` long."""
    return sampler.generate(0, seconds, options=options)


def continuation(sampler: Sampler, events, prompt_seconds: float, end_seconds: float,
                 options: SamplingOptions = SamplingOptions(), anticipatory: bool = True) -> list[np.ndarray]:
    """Continue the first `prompt_seconds` of a piece up to `end_seconds`."""
    prompt = ops.clip(events, 0, prompt_seconds, clip_duration=False)
    return sampler.generate(prompt_seconds, end_seconds, inputs=prompt, options=options, anticipatory=anticipatory)


def infill(sampler: Sampler, events, t0: float, t1: float, options: SamplingOptions = SamplingOptions()) -> list[np.ndarray]:
    """Regenerate the span [t0, t1) given everything before it and, anticipated as controls, after it."""
    events = ops.as_triples(events)
    t = ops.times(events)
    context = events[(t < int(vocab.TIME_RESOLUTION * t0)) | (t >= int(vocab.TIME_RESOLUTION * t1))]
    return sampler.generate(t0, t1, inputs=context, options=options)


def accompany(sampler: Sampler, events, instruments, start: float, end: float,
              options: SamplingOptions = SamplingOptions(), anticipatory: bool = True) -> list[np.ndarray]:
    """Keep the given instruments (e.g. a melody) as controls over [0, end) and generate the rest from
    `start`, prompted by the other instruments before `start`. The given notes come back unchanged."""
    others, given = augment.extract_instruments(ops.as_triples(events), instruments)
    prompt = ops.clip(others, 0, start, clip_duration=False)
    controls = ops.clip(given, 0, end, clip_duration=False)
    controls = controls[ops.times(controls) < int(vocab.TIME_RESOLUTION * end)]
    return sampler.generate(start, end, inputs=prompt, controls=controls, options=options, anticipatory=anticipatory)
