"""Sampling: the paper's Algorithm 1 (anticipatory) and Algorithm 2 (autoregressive), with a KV cache.

Follows the reference's `generate` and `generate_ar` (anticipation/sample.py): the prompt (events up to the
start time, REST-padded) and the controls (given controls, plus any input events after the start time, e.g.
the rest of a piece around an infilled span) are interleaved with anticipation; then, until an onset reaches
the end time, controls due within 5 s of the current time are inserted and one event (onset, duration, note)
is sampled. Algorithm 2 has no controls: given notes and later inputs are played in as plain events when a
sampled onset reaches them. Time in the model's input is relative to its window: minus the window's earliest
time, recomputed as the reference's add_token does for every token (so an empty prompt gets relative time
too). Constraints on every token, as the reference's add_token: no control or special tokens, onset /
duration / note by position in the triple, no onset before the current time (nor before the window's
earliest time), and its instrument limit: once 15 instruments are in the history (REST counted as one, as
its get_instruments counts it) only those may be sampled (one channel stays for drums); then temperature and
nucleus (top-p) sampling from a seeded generator (same seed, same music).

How it runs: N samples of one request run as one batch whose rows are independent: each has its own length,
position, window and offset in the cache. One jitted call per event (`_event`) samples the onset, duration
and note of every row on the device, each under its constraints and fed to the model before the next, and
returns only the three tokens; the Python loop between events inserts the controls due (a row then plays its
triple instead of sampling), and moves a row's window when it must (its context is full, its earliest time
changed, or time in it nears 100 s) by prefilling that row alone and putting it in its row of the cache. A
finished row stays in the batch, idle. Per event at GPT-2 Small size on CPU (batch 1) that is about three
decoder steps; benchmarks/sample.py compares it like for like with the reference's method and with Hugging
Face's KV cache.

After `generate`, `Sampler.last_sequences` holds what each sample was conditioned on (check given controls
there: `misplaced_controls`; the output holds them whatever the model saw), `last_generated` the sampled
notes, `last_stops` why each sample stopped ("end", or "max_events", which is also logged as a warning).

Differences from the reference, on purpose:
- N samples of one request run as one batch (one jitted call per event for all of them).
- Top-p keeps the tokens at least as probable as a threshold found by a search on its bits, 4 at a time
  (`_nucleus`), not a sorted cumsum: the same tokens except at exact ties and last-ulp rounding of the
  cumulative sum.
- REST may only be sampled in the note slot, after a zero duration (as in the training data). REST lies
  outside the reference's onset, duration and note blocks, so its masks leave it allowed in every slot,
  which can make an unreadable triple.
- Beyond the context the reference slides a window of the latest 1,017 tokens forward by one event for every
  new event and runs the whole window again. With a cache, moving the window changes every token's value
  (time is relative to it), so a row's window moves by `window_chunk` events at a time once its 1,024-token
  context is full, and is prefilled again (amortized); in between, the context grows instead of sliding.
  While a row's history fits 1,017 tokens the model's inputs are the reference's, token for token (a test).
- Time within a window: when the current time is 90 s past the window's earliest time, the window moves to
  its latest 50 s. The reference's window keeps its 1,017 tokens whatever their span; at 100 s its onset
  mask covers every onset and it fails (a NaN distribution). An onset is at most 100 s after the window's
  earliest time (the vocabulary), so right before such a move it is at most 10 s after the current time.
  An empty window (everything older than 50 s) has the current time as its offset (the reference: 0).
- Hitting `max_events` (the reference has no such limit) ends that sample early and says so.
- Given controls that start before 0.05 s are kept (the reference drops them by clipping at 5 *bins*).
- Algorithm 2 with given notes (the autoregressive accompaniment baseline): when a sampled onset would pass
  given notes, the reference inserts them before the sampled event; here they are inserted and the event is
  sampled again, so that the model sees them first.
- The output holds the prompt, the sampled events, the later inputs and the given controls (as events), each
  once: the reference's generate leaves the controls out, and its generate_ar returns later inputs twice.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from amt import augment, decoder, ops, vocab

MAX_SAMPLED_INSTRUMENTS = 15  # the 16th MIDI channel stays free for drums (the reference's rule)
NUCLEUS_DIGIT_BITS = 4  # top-p's threshold is found 4 bits a step (see _nucleus)
REST_INSTRUMENT = vocab.MAX_INSTR  # where the reference's get_instruments counts REST (129): it uses up a slot
WINDOW_TIME_LIMIT = vocab.MAX_TIME - 10 * vocab.TIME_RESOLUTION  # relative time (bins) at which a window moves
WINDOW_TIME_KEEP = vocab.MAX_TIME // 2  # after such a move, the window holds the latest 50 s (at most)

logger = logging.getLogger(__name__)

# the vocabulary block of each slot of an event: onset, duration, note (or REST)
SLOTS = ((vocab.TIME_OFFSET, vocab.TIME_OFFSET + vocab.MAX_TIME), (vocab.DUR_OFFSET, vocab.DUR_OFFSET + vocab.MAX_DUR),
         (vocab.NOTE_OFFSET, vocab.REST + 1))


def allowed_tokens(phase: int, min_onset, instrument_allowed, rest_allowed):
    """Which tokens of the slot `phase`'s vocabulary block (0 onset, 1 duration, 2 note) may be sampled, per
    row: (batch, block) booleans. `min_onset` (batch,): the earliest onset, relative to the window;
    `instrument_allowed` (batch, MAX_INSTR); `rest_allowed` (batch,): whether the note may be REST."""
    low, high = SLOTS[phase]
    v = jnp.arange(low, high)
    batch = instrument_allowed.shape[0]
    if phase == 0:
        return v[None] >= vocab.TIME_OFFSET + jnp.asarray(min_onset)[:, None]
    if phase == 1:
        return jnp.ones((batch, high - low), bool)
    note = v - vocab.NOTE_OFFSET
    instrument = jnp.clip(note // vocab.MAX_PITCH, 0, vocab.MAX_INSTR - 1)
    return (((v < vocab.REST)[None] & jnp.asarray(instrument_allowed)[:, instrument])
            | ((v == vocab.REST)[None] & jnp.asarray(rest_allowed)[:, None]))


def constrained_sample(logits, key, *, phase: int, min_onset, instrument_allowed, rest_allowed, top_p: float,
                       temperature):
    """One token per row of (batch, block) logits of the slot `phase`'s vocabulary block (0 onset, 1 duration,
    2 note)."""
    low, _ = SLOTS[phase]
    allowed = allowed_tokens(phase, min_onset, instrument_allowed, rest_allowed)
    logits = jnp.where(allowed, logits / temperature, -jnp.inf)
    if top_p >= 1.0:
        return low + jax.random.categorical(key, logits, axis=-1)
    return low + jax.random.categorical(key, jnp.where(_nucleus(jax.nn.softmax(logits, axis=-1), top_p), logits, -jnp.inf),
                                        axis=-1)


def _nucleus(probabilities, top_p: float):
    """Which tokens top-p keeps, per row: the most probable ones, in order, up to the first whose cumulative
    probability passes top_p (at least one). That is the tokens at least as probable as a threshold: the
    largest value t with mass(p >= t) > top_p. Non-negative floats order as their bits do, so t's bits are
    found from the top, NUCLEUS_DIGIT_BITS at a time: of the 2^k - 1 candidates that extend the bits found so
    far by one digit, the number that pass is the digit (passing is monotone in t). Masked sums instead of a
    sort of up to 16,513 entries (a sort per token was a third of a step at batch 1); ties at the threshold
    are all kept, and the sums are not a cumsum's rounding: equal to the sorted cumsum's choice but at exact
    ties and last-ulp sums.

    Why digits and not single bits: each step is two kernels on a GPU, whatever its width; 8 four-bit steps
    instead of 31 one-bit ones are ~120 fewer kernel launches an event (benchmarks/gpu_compile.py: 1,292 ->
    1,171 for Medium at batch 1), for more arithmetic (15 masked sums a step; on CPU +0.2-0.4 ms an event at
    batch 1). The steps are a Python loop (unrolled): XLA's GPU command buffers (CUDA graphs) take no while
    loops by default."""
    def passing(candidates):  # (batch, c) int32 bits of thresholds -> (batch,) how many have mass > top_p
        thresholds = jax.lax.bitcast_convert_type(candidates, probabilities.dtype)[:, :, None]
        p = probabilities[:, None, :]
        return (jnp.where(p >= thresholds, p, 0).sum(-1) > top_p).sum(-1, dtype=jnp.int32)

    found = jnp.zeros(probabilities.shape[0], jnp.int32)  # bits of t known so far (t >= 0 always passes)
    low_bit = 31  # bits 30..0: a non-negative float's (bit 31, the sign, is 0)
    while low_bit > 0:
        width = min(NUCLEUS_DIGIT_BITS, low_bit)
        low_bit -= width
        digits = jnp.arange(1, 2 ** width, dtype=jnp.int32) << low_bit
        found = found + (passing(found[:, None] | digits[None]) << low_bit)
    return probabilities >= jax.lax.bitcast_convert_type(found, probabilities.dtype)[:, None]


# what the host tells the device about each row for its next event, packed into one int32 array (batch, ROW_INPUTS):
# one host-to-device copy an event instead of six (each a dispatch: ~0.5 ms an event on CPU, and the device waits)
POSITION, GIVEN, GIVEN_AT, MIN_ONSET, FORCED, ALLOWED = 0, 1, 4, 5, 6, 7  # GIVEN: 3 columns, ALLOWED: MAX_INSTR
ROW_INPUTS = ALLOWED + vocab.MAX_INSTR


# Every buffer an event reads or writes keeps its device address from one event to the next: on a GPU `_event` and
# `_write` are a CUDA graph each, and XLA re-records a graph whose buffers moved (on an H200, Medium, batch 1, under
# the profiler: 4.6 ms of the host's time an event, and 4.3 ms to launch the graphs after it, against 3.8 ms of
# kernels). So what an event writes (its triples, hidden state, next key, new keys and values) goes into the
# buffers of the same arrays from the event before, donated; the cache is written in place by `_write`; the host's
# rows are staged into one buffer by `_stage`. (The cache is not written inside `_event`: XLA's CPU backend then copies all of it, twice, every event.)
# keep_unused: `last` and `last_recent` are read by nothing, and jit would drop them, donations and all (it keeps the
# weights' unread lm_head too: a pointer, not a copy).
@functools.partial(jax.jit, static_argnames="top_p", donate_argnames=("hidden", "key", "last", "last_recent"),
                   keep_unused=True)
def _event(weights: decoder.DecoderWeights, unembed, cache: decoder.KVCache, hidden, rows, key, last,
           last_recent: decoder.KVCache, temperature, *, top_p: float):
    """One event per row, row r at its own positions rows[r, POSITION]..+2, in one call and one round trip (not
    one a token): the onset, duration and note are sampled under the constraints, each fed to the model before
    the next. A row plays its given triple (rows[r, GIVEN:GIVEN + 3], time relative to the window) instead when
    its sampled onset reaches rows[r, GIVEN_AT]: 0 for a control due now, the given note's time for Algorithm 2's
    backfill, otherwise never (MAX_TIME). rows[r, MIN_ONSET]: the earliest onset (relative); rows[r, FORCED]: an
    onset (relative) that replaces the sampled one, or -1 (a hook for tests that must steer a random model in
    time); rows[r, ALLOWED:]: the instruments a note may have (1 or 0).

    `hidden` (batch, embed) is the state that predicts the onset; `unembed` the unembedding's block for
    each slot (half the vocabulary is never sampled: controls and specials); `key` the generator's state, split
    here (on the device, as the host split it before: the same samples); `last` and `last_recent` the previous
    call's triples and keys and values (their buffers are reused). Returns the sampled triples (batch, 3), the
    hidden state after the event, its keys and values (for `_write`) and the next key."""
    position, given, given_at = rows[:, POSITION], rows[:, GIVEN:GIVEN + 3], rows[:, GIVEN_AT]
    min_onset, forced, instrument_allowed = rows[:, MIN_ONSET], rows[:, FORCED], rows[:, ALLOWED:] > 0
    recent = decoder.empty_cache(weights, hidden.shape[0], 0)  # grows by a position a token
    key, subkey = jax.random.split(key)
    keys = jax.random.split(subkey, 3)
    sampled, plays_given = [], None
    for phase in range(3):
        token = constrained_sample(decoder.unembed(hidden, unembed[phase]), keys[phase], phase=phase,
                                   min_onset=min_onset, instrument_allowed=instrument_allowed,
                                   rest_allowed=sampled[1] == vocab.DUR_OFFSET if phase == 2 else None,
                                   top_p=top_p, temperature=temperature)
        if phase == 0:
            token = jnp.where(forced >= 0, vocab.TIME_OFFSET + forced, token)
            plays_given = token - vocab.TIME_OFFSET >= given_at
        sampled.append(token)
        hidden, recent = decoder.forward(weights, cache, recent, jnp.where(plays_given, given[:, phase], token)[:, None],
                                         position)
        hidden = hidden[:, 0]
    del last, last_recent
    return jnp.stack(sampled, axis=1), hidden, recent, key


@functools.partial(jax.jit, donate_argnums=0)
def _write(cache: decoder.KVCache, recent: decoder.KVCache, rows) -> decoder.KVCache:
    """`decoder.write` at each row's position, read from the rows' packed inputs already on the device."""
    return decoder.write_into(cache, recent, rows[:, POSITION])


@functools.partial(jax.jit, donate_argnums=0)
def _stage(staged, rows):
    """`rows` (just copied to the device) in `staged`'s buffer, so that `_event` always reads them at one address.
    (`staged * 0 + rows`, not `rows`: jit would hand back an input returned as it is, not write it in place.)"""
    return staged * 0 + rows


def instruments_in(triples) -> set[int]:
    """The reference's `get_instruments` as a set: the instruments of the notes of events and controls, and
    REST_INSTRUMENT (129) if a REST is among them."""
    triples = ops.as_triples(triples)
    found = set(ops.instruments(triples))
    return found | {REST_INSTRUMENT} if np.any(triples[:, 2] == vocab.REST) else found


def instrument_mask(instruments: set[int]) -> np.ndarray:
    """(MAX_INSTR,) instruments a sampled note may have, given those in the history (`instruments_in`): any
    until 15 are used (REST counted, as the reference counts it), then only those."""
    allowed = np.ones(vocab.MAX_INSTR, dtype=bool)
    if len(instruments) >= MAX_SAMPLED_INSTRUMENTS:
        allowed[:] = False
        allowed[sorted(i for i in instruments if i < vocab.MAX_INSTR)] = True
    return allowed


def _instrument_of(triple) -> int:
    note = triple[2]
    if note == vocab.REST:
        return REST_INSTRUMENT
    return (note - (vocab.ANOTE_OFFSET if note >= vocab.CONTROL_OFFSET else vocab.NOTE_OFFSET)) // vocab.MAX_PITCH


@dataclass
class _Sample:
    """One sequence being generated, its own row of the batch: its tokens (after the flag, absolute time)
    and its window (the tokens in its row of the cache, from event `window_start` on, time minus `offset`)."""

    row: int  # its row of the batch
    tokens: list[int]
    controls: list[list[int]]  # controls still to insert (Algorithm 2: given notes still to play), in time order
    current_time: int
    instruments: set = field(default_factory=set)  # the reference's get_instruments of all tokens so far
    window_start: int = 0  # index of the window's first triple in `tokens`
    offset: int = 0  # absolute - relative time in the window: its earliest time (the reference's min_time)
    window_min: int | None = None  # earliest time of the window's tokens now (None: empty)
    position: int = 0  # the next position in the row's cache
    sampled: int = 0  # events sampled so far
    pending: list[list[int]] = field(default_factory=list)  # triples to feed before sampling again (controls)
    done: bool = False
    stop: str = ""  # why it stopped: "end" (an onset reached the end time) or "max_events"
    generated: list[list[int]] = field(default_factory=list)  # the sampled events (absolute time)
    fed: list[int] = field(default_factory=list)  # the tokens in the row's cache, as the model saw them

    def append(self, triple: list[int]) -> None:
        self.tokens.extend(triple)
        self.fed.extend([triple[0] - self.offset, triple[1], triple[2]])
        self.position += 3
        self.instruments.add(_instrument_of(triple))
        t = triple[0] - (vocab.ATIME_OFFSET if triple[2] >= vocab.CONTROL_OFFSET else vocab.TIME_OFFSET)
        self.window_min = t if self.window_min is None else min(self.window_min, t)

    @property
    def stale(self) -> bool:
        """The window's earliest time moved (it is the first token, or one came earlier): the reference
        recomputes the offset for every token, so the window is fed again, relative to its new minimum."""
        return self.window_min is not None and self.window_min != self.offset


@dataclass(frozen=True)
class SamplingOptions:
    top_p: float = 0.98
    temperature: float = 1.0
    seed: int = 0
    num_samples: int = 1
    window_chunk: int = 128  # events dropped from the window at a time once the context is full
    max_events: int = 20_000  # per sample: a model that never reaches the end time still stops (and says so)
    delta: int = vocab.DELTA_BINS


class Sampler:
    """Samples from a trained model (Levanter `Gpt2LMHeadModel`) with a KV cache.

    After `generate`: `last_sequences` (the token sequences the model was conditioned on, flag first,
    absolute time: what to check controls against), `last_generated` (the sampled events of each sample,
    RESTs removed: to tell generated notes from given ones), `last_stops` ("end" or "max_events" per sample).
    With `record_inputs = True`, `last_inputs[i]` lists, for every event sample i sampled, (how many of its
    tokens there were, the tokens its row of the model had seen: flag, window, relative time)."""

    record_inputs = False

    def __init__(self, model, dtype="float32"):
        """`dtype`: the weights' and cache's, float32 or bfloat16 (half the bytes a step reads, for an
        accelerator; see amt.decoder on precision)."""
        self.weights = decoder.decoder_weights(model, dtype)
        self.context = self.weights.shape[3]
        # contiguous copies: a dot with a column slice of the whole unembedding copied the slice every time
        self.unembed = tuple(self.weights.lm_head[:, low:high] for low, high in SLOTS)

    def forced_onset(self, sample: _Sample) -> int | None:
        """A hook for tests: an absolute onset to use instead of sampling one (None: sample)."""
        return None

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
            # Algorithm 2 (the reference's generate_ar): given notes and the inputs after the start are plain
            # events: those up to the start join the prompt, the later ones are played in as time passes them
            given = ops.sort(np.concatenate([controls - vocab.CONTROL_OFFSET, future]))
            early = ops.times(given) <= start
            prompt = ops.pad(ops.sort(np.concatenate([before, given[early]])), start)
            flag, tokens, remaining = vocab.AUTOREGRESS, prompt, given[~early]
        current = ops.max_time(prompt, seconds=False)
        samples = [
            _Sample(row=row, tokens=ops.flatten(tokens).tolist(), controls=remaining.tolist(), current_time=current,
                    instruments=instruments_in(tokens))
            for row in range(options.num_samples)
        ]
        self.last_inputs = [[] for _ in samples]
        self._run(samples, flag, start, end, options, anticipatory)
        self.last_sequences = [np.asarray([flag] + s.tokens, dtype=np.int64) for s in samples]
        self.last_generated = [ops.unpad(np.asarray(s.generated, dtype=np.int64).reshape(-1, 3)) for s in samples]
        self.last_stops = [s.stop for s in samples]
        out = []
        for s in samples:
            events, _ = ops.split(ops.as_triples(np.asarray(s.tokens, dtype=np.int64)))
            if anticipatory:  # the given controls, all of them, as events (interleaved copies are dropped)
                rest = np.concatenate([future, controls - vocab.CONTROL_OFFSET])
            else:  # given notes and later inputs not yet played when the sample ended
                rest = np.asarray(s.controls, dtype=np.int64).reshape(-1, 3)
            out.append(ops.sort(np.concatenate([ops.unpad(events), rest])))
        return out

    # --- the loop -----------------------------------------------------------------------------------
    def _window(self, s: _Sample, flag: int, first: int, now: int) -> list[int]:
        """Set sample `s`'s window to its triples from `first` on, later if need be so that `now` stays below
        WINDOW_TIME_LIMIT in the window's time; returns the window's tokens (flag first, relative time: the
        reference's rule, minus the window's earliest time)."""
        history = ops.as_triples(np.asarray(s.tokens, dtype=np.int64))
        t = ops.times(history)
        latest = np.minimum.accumulate(t[::-1])[::-1] if len(t) else t  # earliest time from each triple on
        if first < len(t) and now - latest[first] >= WINDOW_TIME_LIMIT:
            first = max(first, int(np.searchsorted(latest, now - WINDOW_TIME_KEEP)))
        s.window_start = first
        s.window_min = int(latest[first]) if first < len(t) else None
        s.offset = s.window_min if s.window_min is not None else now  # the reference: 0 for an empty history
        s.fed = [flag] + ops.flatten(ops.translate(history[first:], -s.offset)).tolist()
        s.position = len(s.fed)
        return s.fed

    def _moves_to(self, s: _Sample, now: int, sliding: int, condition_offset: int) -> int | None:
        """Where sample `s`'s window starts if it must move before the next event (None: it stays). Each row
        moves its own: when its context is full (to its latest `sliding` triples), when the reference's
        offset (the window's earliest time) changed before a sample, when time in the window nears 100 s,
        or before a given triple earlier than the window's offset is fed."""
        if s.position + 3 > self.context:
            return len(s.tokens) // 3 - sliding
        if ((s.stale and not s.pending) or now - s.offset >= WINDOW_TIME_LIMIT
                or (s.pending and s.pending[0][0] - condition_offset < s.offset)):
            return s.window_start
        return None

    @staticmethod
    def _constraints(s: _Sample, now: int) -> tuple[int, np.ndarray]:
        """The earliest onset (relative to the window) and the instruments allowed for `s`'s next event."""
        return min(max(now - s.offset, 0), vocab.MAX_TIME - 1), instrument_mask(s.instruments)

    def _prefill(self, windows: list[list[int]]):
        batch = decoder.pad_window(np.asarray(windows, dtype=np.int32), self.context)
        return decoder.prefill(self.weights, jnp.asarray(batch), len(windows[0]))

    def _run(self, samples: list[_Sample], flag: int, start: int, end: int, options: SamplingOptions,
             anticipatory: bool) -> None:
        full = (self.context - 1) // 3  # events that fit the context after the flag
        sliding = max(full - options.window_chunk, 1)
        n = len(samples)
        key = jax.random.PRNGKey(options.seed)
        # the first window is the same for every sample: prefill it once and copy it to every row
        for s in samples:
            events = len(s.tokens) // 3
            self._window(s, flag, 0 if events < full else events - sliding, max(start, s.current_time))
        hidden, cache = self._prefill([samples[0].fed])
        hidden = jnp.repeat(hidden, n, axis=0)
        cache = jax.tree.map(lambda a: jnp.repeat(a, n, axis=0), cache)
        # controls are inserted `delta` ahead (Algorithm 1); Algorithm 2 inserts given notes as events, on time
        delta, condition_offset = (options.delta, vocab.ATIME_OFFSET) if anticipatory else (0, vocab.TIME_OFFSET)
        never = vocab.MAX_TIME  # beyond any sampled onset
        # the buffers `_event` reads and writes in place (see there), made once
        rows, last = jnp.zeros((n, ROW_INPUTS), jnp.int32), jnp.zeros((n, 3), jnp.int32)
        recent = decoder.empty_cache(self.weights, n, 3)
        temperature = jnp.float32(options.temperature)
        while True:
            active = [i for i, s in enumerate(samples) if not s.done]
            if not active:
                return
            inputs = np.zeros((n, ROW_INPUTS), dtype=np.int32)
            inputs[:, GIVEN_AT], inputs[:, FORCED], inputs[:, ALLOWED:] = never, -1, 1
            for i in active:
                s = samples[i]
                while s.controls and s.current_time >= s.controls[0][0] - condition_offset - delta:
                    s.pending.append(s.controls.pop(0))  # the controls now due go in first
                now = max(start, s.current_time)
                first = self._moves_to(s, now, sliding, condition_offset)
                if first is not None:
                    row_hidden, row_cache = self._prefill([self._window(s, flag, first, now)])
                    hidden = hidden.at[i].set(row_hidden[0])
                    cache = decoder.set_row(cache, row_cache, i)
                inputs[i, MIN_ONSET], inputs[i, ALLOWED:] = self._constraints(s, now)
                if s.pending or (not anticipatory and s.controls):  # Algorithm 2: backfill if the onset passes it
                    inputs[i, GIVEN:GIVEN + 3] = s.pending[0] if s.pending else s.controls[0]
                    inputs[i, GIVEN] -= s.offset
                    inputs[i, GIVEN_AT] = 0 if s.pending else inputs[i, GIVEN] - vocab.TIME_OFFSET
                onset = self.forced_onset(s)
                if onset is not None and not s.pending:
                    inputs[i, FORCED] = min(max(onset - s.offset, 0), vocab.MAX_TIME - 1)
                if self.record_inputs and not s.pending:
                    self.last_inputs[i].append((len(s.tokens), list(s.fed)))
            inputs[:, POSITION] = [s.position for s in samples]
            rows = _stage(rows, jax.device_put(inputs))  # one copy to the device (jnp.asarray: a copy and a program run)
            last, hidden, recent, key = _event(self.weights, self.unembed, cache, hidden, rows, key, last, recent,
                                               temperature, top_p=float(options.top_p))
            cache = _write(cache, recent, rows)
            sampled = np.array(last)  # a copy: on a CPU np.asarray's view would keep `last` from being donated
            for i in active:
                s = samples[i]
                if not s.pending:
                    onset = int(sampled[i, 0]) - vocab.TIME_OFFSET + s.offset
                    if onset >= end:
                        s.done, s.stop = True, "end"
                        continue
                    if onset - s.offset < inputs[i, GIVEN_AT]:  # (sampled onsets are below `never`)
                        triple = [vocab.TIME_OFFSET + onset, int(sampled[i, 1]), int(sampled[i, 2])]
                        s.append(triple)
                        s.generated.append(triple)
                        s.current_time = onset
                        s.sampled += 1
                        if s.sampled >= options.max_events:
                            s.done, s.stop = True, "max_events"
                            logger.warning("sample %d stopped at max_events=%d, at %.2f s (before the end time, "
                                           "%.2f s)", i, options.max_events, onset / vocab.TIME_RESOLUTION,
                                           end / vocab.TIME_RESOLUTION)
                        continue
                    # Algorithm 2's backfill: given notes up to the sampled onset go first (the first one was
                    # played instead of the event); the model then samples its event again, having seen them
                    while s.controls and s.controls[0][0] - vocab.TIME_OFFSET <= onset:
                        s.pending.append(s.controls.pop(0))
                triple = s.pending.pop(0)  # a control (or, in Algorithm 2, a given note), played
                s.append(triple)
                if not anticipatory:  # a given note played as an event moves time forward
                    s.current_time = max(s.current_time, triple[0] - vocab.TIME_OFFSET)


def misplaced_controls(sequence, controls, delta: int = vocab.DELTA_BINS, anticipatory: bool = True) -> list:
    """The given controls (control block, absolute time) that a conditioned sequence (flag first, absolute
    time: `Sampler.last_sequences`) does not hold where the rule puts them, as (triple, why) pairs: what to
    check when asking whether the model saw the given notes (the output holds them whatever it saw).

    Algorithm 1 (the reference's generate and anticipate): a control at time t is in the sequence before the
    first event whose predecessor (time 0 for the first) is at or after t - delta. Algorithm 2 (generate_ar):
    the given note, as an event, is in the sequence before any event later than it. Controls due after the
    sequence's last event are not required (the sample ended first)."""
    body = ops.as_triples(np.asarray(sequence)[1:])
    controls = ops.as_triples(controls)
    is_control = ops.is_control(body)
    times = ops.times(body)
    rows = {}
    for index, row in enumerate(map(tuple, body.tolist())):
        rows.setdefault(row, index)
    event_index = np.flatnonzero(~is_control)
    event_times = times[event_index]
    problems = []
    for control in controls.tolist():
        t = control[0] - vocab.ATIME_OFFSET
        if anticipatory:
            previous = np.concatenate([[0], event_times[:-1]])
            due = np.flatnonzero(previous >= t - delta)
            where = rows.get(tuple(control))
        else:
            due = np.flatnonzero(event_times > t)
            where = rows.get(tuple(int(x) - vocab.CONTROL_OFFSET for x in control))
        if not len(due):
            continue
        if where is None:
            problems.append((control, "missing"))
        elif where > event_index[due[0]]:
            problems.append((control, "late"))
    return problems


# --- tasks: what musicians ask for ----------------------------------------------------------------------
def unconditional(sampler: Sampler, seconds: float, options: SamplingOptions = SamplingOptions()) -> list[np.ndarray]:
    """Music from nothing, `seconds` long."""
    return sampler.generate(0, seconds, options=options)


def continuation(sampler: Sampler, events, prompt_seconds: float, end_seconds: float,
                 options: SamplingOptions = SamplingOptions(), anticipatory: bool = True) -> list[np.ndarray]:
    """Continue the first `prompt_seconds` of a piece up to `end_seconds`."""
    prompt = ops.clip(events, 0, prompt_seconds, clip_duration=False)
    return sampler.generate(prompt_seconds, end_seconds, inputs=prompt, options=options, anticipatory=anticipatory)


def infill(sampler: Sampler, events, t0: float, t1: float, options: SamplingOptions = SamplingOptions(),
           anticipatory: bool = True) -> list[np.ndarray]:
    """Regenerate the span [t0, t1) given everything before it and after it: anticipated as controls
    (Algorithm 1), or with `anticipatory=False` played in as events when time reaches them (Algorithm 2, the
    reference's generate_ar: the model sees the music after the span only as it passes it)."""
    events = ops.as_triples(events)
    t = ops.times(events)
    context = events[(t < int(vocab.TIME_RESOLUTION * t0)) | (t >= int(vocab.TIME_RESOLUTION * t1))]
    return sampler.generate(t0, t1, inputs=context, options=options, anticipatory=anticipatory)


def accompany(sampler: Sampler, events, instruments, start: float, end: float,
              options: SamplingOptions = SamplingOptions(), anticipatory: bool = True) -> list[np.ndarray]:
    """Keep the given instruments (e.g. a melody) as controls over [0, end) and generate the rest from
    `start`, prompted by the other instruments before `start`. The given notes come back unchanged."""
    others, given = augment.extract_instruments(ops.as_triples(events), instruments)
    prompt = ops.clip(others, 0, start, clip_duration=False)
    controls = ops.clip(given, 0, end, clip_duration=False)
    controls = controls[ops.times(controls) < int(vocab.TIME_RESOLUTION * end)]
    return sampler.generate(start, end, inputs=prompt, controls=controls, options=options, anticipatory=anticipatory)
