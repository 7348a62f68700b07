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
position, window and offset in the cache. One jitted call (`_events`) takes up to `events_per_call` steps of every
row on the device (8; 1 for one sample on a GPU, where that measured faster): a step plays the row's next given
triple if it is due (a control, or Algorithm 2's given note), else samples the onset, duration and note under the
constraints, each fed to the model before the next; it returns only the sampled tokens and how many steps each row
took. The Python loop between calls then replays those steps in its own bookkeeping (the same rules: it raises if
the device stepped where the host would not), and does what only it does: moves a row's window when it must (its
context is full, its earliest time changed, or time in it nears 100 s) by prefilling that row alone and putting it
in its row of the cache, and refills its queue of given triples; the device stops a row at such a point and lets it
idle. Each row draws from its own generator (the seed and its row), so the music is the same whatever
`events_per_call` is (token for token on the CPU, a test; only if XLA compiled one step a call to other roundings
than several could a near-tie differ), and a finished row stays in the batch, idle. Several steps a call cut the
round trips, except for one sample on a GPU, where the loop's every trip is launched from the host (README). With
`launch_ahead` (the default for one sample on a GPU, measured faster there) each call is dispatched before the
last one's result is read, on the rows that call left (the host replays as before and stages rows only where it
has work): the host's launches overlap the device's work. Per
event at GPT-2 Small size on CPU (batch 1) that is about three decoder steps; benchmarks/sample.py compares it like
for like with the reference's method and with Hugging Face's KV cache.

After `generate`, `Sampler.last_sequences` holds what each sample was conditioned on (check given controls
there: `misplaced_controls`; the output holds them whatever the model saw), `last_generated` the sampled
notes, `last_stops` why each sample stopped ("end", or "max_events", which is also logged as a warning).

Differences from the reference, on purpose:
- N samples of one request run as one batch (one jitted call per `events_per_call` events for all of them), each
  with its own generator.
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

import collections
import dataclasses
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


def constrained_sample(logits, keys, *, phase: int, min_onset, instrument_allowed, rest_allowed, top_p: float,
                       temperature):
    """One token per row of (batch, block) logits of the slot `phase`'s vocabulary block (0 onset, 1 duration,
    2 note), each row drawn with its own key (`keys`: (batch, 2))."""
    low, _ = SLOTS[phase]
    allowed = allowed_tokens(phase, min_onset, instrument_allowed, rest_allowed)
    logits = jnp.where(allowed, logits / temperature, -jnp.inf)
    if top_p < 1.0:
        logits = jnp.where(_nucleus(jax.nn.softmax(logits, axis=-1), top_p), logits, -jnp.inf)
    return low + jax.vmap(jax.random.categorical)(keys, logits)


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


# What the host tells the device about each row for a call, packed into one int32 array (batch, columns): one
# host-to-device copy a call (each copy is a dispatch: ~0.5 ms on CPU, and the device waits). Times are relative to
# the row's window (absolute minus its offset).
POSITION = 0  # the row's next position in its cache
CURRENT = 1  # its current time (the last sampled onset; Algorithm 2: or a given note's, played)
START = 2  # the start time: no onset before max(START, CURRENT)
END = 3  # a sampled onset at or after it ends the sample
EVENTS_LEFT = 4  # events it may sample in this call before the host looks again (max_events, `forced_step`); 0: idle
FORCED = 5  # -1, or an onset this many bins after max(START, CURRENT) replaces each sampled one (`forced_step`)
WINDOW_MIN = 6  # the earliest time in the window (EMPTY: none): when it is not 0 the window must be fed again
QUEUED = 7  # how many of the row's given triples (pending first, then those to come) are in its queue
PENDING = 8  # how many of those are due already, whatever the time (Algorithm 2's backfill: the host decided)
FRESH = 9  # 1: the host staged the row (its first step runs whatever); 0: the rows a call left (launched ahead)
MORE = 10  # 1: the host holds more given triples than the queue: the row stops when its queue runs out
SEEN = 11  # MAX_INSTR + 1 columns: the instruments in the row's history (REST_INSTRUMENT the last), 1 or 0
# then the row's next given triples, in order, at least as many as the call has steps (a step plays one at most),
# each in QUEUE_FIELDS columns: the triple (its time token relative to the window), its time (relative), its due
# time (relative)
QUEUE = SEEN + vocab.MAX_INSTR + 1
QUEUE_FIELDS = 5
STATE = 7  # `_events`' output, per row: its steps, then the state the host checks its replay against (`_run`)
EMPTY = 2 ** 30  # WINDOW_MIN of an empty window
LAUNCH_AHEAD_QUEUE = 8  # given triples a row's queue holds where calls are launched ahead (a call's own steps at least)
NEVER = vocab.MAX_TIME  # beyond any sampled onset


def _row_width(queue_length: int) -> int:
    """Columns of a row's inputs with a queue of `queue_length` given triples."""
    return QUEUE + QUEUE_FIELDS * queue_length


def _instrument(note, xp=jnp):
    """The reference's get_instruments, elementwise on note tokens (events or controls): REST is REST_INSTRUMENT.
    `xp`: jax.numpy on the device, numpy on the host."""
    pitched = xp.where(note >= vocab.CONTROL_OFFSET, note - vocab.ANOTE_OFFSET, note - vocab.NOTE_OFFSET)
    return xp.where(note == vocab.REST, REST_INSTRUMENT, pitched // vocab.MAX_PITCH)


def constraints(now, seen):
    """The earliest onset (relative to the window) and the instruments a sampled note may have, per row, for the
    next event: `now` (batch,), the current time relative to the window; `seen` (batch, MAX_INSTR + 1), the
    instruments in the history (`seen_flags`): any until 15 are used (REST counted, as the reference counts it),
    then only those. Plain array operators: `_events` computes them on the device, a test on the host."""
    return now.clip(0, vocab.MAX_TIME - 1), seen[:, :vocab.MAX_INSTR] | (seen.sum(-1) < MAX_SAMPLED_INSTRUMENTS)[:, None]


# Every buffer a call reads or writes keeps its device address from one call to the next: on a GPU `_events` is a
# CUDA graph (or a loop of them), and XLA re-records a graph whose buffers moved (on an H200, Medium, batch 1, under
# the profiler: 4.6 ms of the host's time an event, and 4.3 ms to launch the graphs after it, against 3.8 ms of
# kernels). So what a call writes (the cache, hidden state, keys, its output) goes into the buffers of the same arrays
# from the call before, donated; the host's rows are staged into one buffer by `_stage`.
@functools.partial(jax.jit, static_argnames=("top_p", "events", "anticipatory", "copy"),
                   donate_argnames=("cache", "hidden", "rows", "keys", "out"))
def _events(weights: decoder.DecoderWeights, unembed, cache: decoder.KVCache, hidden, rows, keys, out, temperature, *,
            top_p: float, events: int, anticipatory: bool, copy: int = 0):
    """Up to `events` steps of every row in one call (one round trip, not one an event), each the host's step as
    `Sampler._run` replays it: the given triples due are played first, one a step, in order (a control is due when
    the current time reaches its time minus delta; Algorithm 2's given notes when it reaches their time); otherwise
    an event is sampled, its onset, duration and note each under the constraints (no onset before the current or
    start time, at most 15 instruments, REST only after a zero duration) and fed to the model before the next. In
    Algorithm 2 a sampled onset that reaches the next given note plays that note instead (the backfill). A row stops
    where the host has work to do before its next step: its context is full, its window must move (time in it nears
    100 s, its earliest time changed, or a given triple is earlier than it), it has sampled EVENTS_LEFT events, its
    queue ran out while the host holds more (MORE), or its onset reached the end. After a backfill the given notes
    up to the sampled onset are due, whatever the time (the host's rule), and played one a step. (A row's queue
    holds at least as many given triples as the call has steps, a step playing one at most; where it holds fewer
    than the host's list it stops when they run out: MORE.) The first step runs whatever where the host staged the
    row (FRESH: it has just done that work); a stopped row's later steps change nothing of it. `rows` is rewritten
    in place with each row's inputs for a next call that continues where this one stopped (not FRESH; its queue
    moved on, an ended row idle): what launching ahead runs, a call dispatched before the last one's result is read
    (`SamplingOptions.launch_ahead`). `copy`: which of two executables of the same program (each keeps its own `out`
    buffer, so neither's CUDA graph is re-recorded).

    `hidden` (batch, embed): the state that predicts each row's onset; `keys` (batch, 2): each row's generator, split
    once a step the row takes, so a sample's music depends on its seed and row only (up to rounding), not on `events` or on the
    other rows; `unembed`: the unembedding's block for each slot (half the vocabulary is never sampled: controls and
    specials). Returns `out` (batch, STATE + 3 events): the steps each row took, its position, current time,
    window's earliest time, given triples played, instruments seen and events sampled after them (for the host to
    check against its replay), then the triple each step sampled (what was fed instead when a given triple played is the host's to know); and the
    cache, hidden state and keys after them, and the next call's rows."""
    batch, context = hidden.shape[0], weights.shape[3]
    queue_length = (rows.shape[1] - QUEUE) // QUEUE_FIELDS
    start, end, forced, queued, sticky = rows[:, START], rows[:, END], rows[:, FORCED], rows[:, QUEUED], rows[:, PENDING]
    fresh, more = rows[:, FRESH] > 0, rows[:, MORE] > 0
    queue = rows[:, QUEUE:].reshape(batch, queue_length, QUEUE_FIELDS)
    instruments = jnp.arange(vocab.MAX_INSTR + 1)

    def step(j, carry):
        cache, hidden, keys, triples, state = carry
        position, current, head, window_min, seen, left, taken, active, through, ended = state
        now = jnp.maximum(start, current)
        has_head = head < queued
        entry = jnp.take_along_axis(queue, jnp.minimum(head, queue_length - 1)[:, None, None], axis=1)[:, 0]
        given, given_time, due = entry[:, :3], entry[:, 3], entry[:, 4]
        pending = has_head & ((head < sticky) | (current >= due) | (given_time <= through))
        stale = (window_min != EMPTY) & (window_min != 0)
        stops = ((position + 3 > context) | (now >= WINDOW_TIME_LIMIT) | (stale & ~pending) | (pending & (given_time < 0))
                 | (more & ~has_head))
        active = active & (left > 0) & (((j == 0) & fresh) | ~stops)
        min_onset, allowed = constraints(now, seen)
        given_at = jnp.where(pending, 0, jnp.where(has_head & (not anticipatory), given_time, NEVER))
        split = jax.vmap(lambda k: jax.random.split(k, 4))(keys)  # the row's next key, then one a slot
        new_hidden, recent, sampled, plays_given = hidden, decoder.empty_cache(weights, batch, 0), [], None
        for phase in range(3):
            token = constrained_sample(decoder.unembed(new_hidden, unembed[phase]), split[:, 1 + phase],
                                       phase=phase, min_onset=min_onset, instrument_allowed=allowed,
                                       rest_allowed=sampled[1] == vocab.DUR_OFFSET if phase == 2 else None,
                                       top_p=top_p, temperature=temperature)
            if phase == 0:
                token = jnp.where(forced >= 0, vocab.TIME_OFFSET + jnp.clip(now + forced, 0, vocab.MAX_TIME - 1), token)
                plays_given = token - vocab.TIME_OFFSET >= given_at
            sampled.append(token)
            new_hidden, recent = decoder.forward(weights, cache, recent,
                                                 jnp.where(plays_given, given[:, phase], token)[:, None], position)
            new_hidden = new_hidden[:, 0]
        onset = sampled[0] - vocab.TIME_OFFSET
        ends = active & ~pending & (onset >= end)
        event = active & ~pending & ~ends & ~plays_given
        played = active & ~ends & plays_given  # a due triple, or Algorithm 2's backfill
        grows = event | played
        seen = seen | (grows[:, None]
                       & (instruments[None] == _instrument(jnp.where(event, sampled[2], given[:, 2]))[:, None]))
        window_min = jnp.where(grows, jnp.minimum(window_min, jnp.where(event, onset, given_time)), window_min)
        current = jnp.where(event, onset, current)
        if not anticipatory:  # a given note played as an event moves time forward
            current = jnp.where(played, jnp.maximum(current, given_time), current)
        cache = decoder.write_into(cache, recent, position, active)  # (an idle row's cache as it was)
        triples = triples.at[:, j].set(jnp.stack(sampled, axis=1))
        # Algorithm 2's backfill (a given note played instead of the sampled event): the given notes up to the
        # sampled onset are due now
        through = jnp.where(played & ~pending, jnp.maximum(through, onset), through)
        state = (position + 3 * grows, current, head + played, window_min, seen, left - event, taken + active,
                 active & ~ends, through, ended | ends)
        return (cache, jnp.where(active[:, None], new_hidden, hidden), jnp.where(active[:, None], split[:, 0], keys),
                triples, state)

    state = (rows[:, POSITION], rows[:, CURRENT], jnp.zeros(batch, jnp.int32), rows[:, WINDOW_MIN],
             rows[:, SEEN:QUEUE] > 0, rows[:, EVENTS_LEFT], jnp.zeros(batch, jnp.int32), jnp.ones(batch, bool),
             jnp.full(batch, -EMPTY, jnp.int32), jnp.zeros(batch, bool))
    triples = jnp.zeros((batch, events, 3), jnp.int32)
    cache, hidden, keys, triples, state = jax.lax.fori_loop(0, events, step, (cache, hidden, keys, triples, state))
    position, current, head, window_min, seen, left, taken, _, through, ended = state
    checked = [position, current, window_min, head, seen.sum(-1, dtype=jnp.int32), rows[:, EVENTS_LEFT] - left]
    out = out * 0 + jnp.concatenate([jnp.stack([taken] + checked, axis=1), triples.reshape(batch, -1)], axis=1)
    # the next call's rows: the state reached, the queue moved past the triples played; the triples a backfill made
    # due (those up to `through`: a prefix, the queue being in time order) stay due, as the host's pending
    slots = jnp.arange(queue_length)[None]
    remaining = queued - head
    moved = jnp.take_along_axis(queue, jnp.minimum(slots + head[:, None], queue_length - 1)[:, :, None], axis=1)
    moved = jnp.where((slots < remaining[:, None])[:, :, None], moved, 0)
    backfilled = ((slots < remaining[:, None]) & (moved[:, :, 3] <= through[:, None])).sum(-1, dtype=jnp.int32)
    header = [position, current, start, end, jnp.where(ended, 0, left), forced, window_min, remaining,
              jnp.maximum(jnp.maximum(sticky - head, 0), backfilled), jnp.zeros(batch, jnp.int32), rows[:, MORE]]
    rows = rows * 0 + jnp.concatenate([jnp.stack(header, axis=1), seen.astype(jnp.int32),
                                       moved.reshape(batch, -1)], axis=1)
    return out, hidden, cache, keys, rows


@functools.partial(jax.jit, donate_argnums=0)
def _stage(staged, rows):
    """`rows` (just copied to the device) in `staged`'s buffer, so that `_events` always reads them at one address.
    (`staged * 0 + rows`, not `rows`: jit would hand back an input returned as it is, not write it in place.)"""
    return staged * 0 + rows


def instruments_in(triples) -> set[int]:
    """The reference's `get_instruments` as a set: the instruments of the notes of events and controls, and
    REST_INSTRUMENT (129) if a REST is among them."""
    triples = ops.as_triples(triples)
    found = set(ops.instruments(triples))
    return found | {REST_INSTRUMENT} if np.any(triples[:, 2] == vocab.REST) else found


def seen_flags(instruments: set[int]) -> np.ndarray:
    """(MAX_INSTR + 1,) booleans: the instruments of a history (`instruments_in`; REST_INSTRUMENT the last)."""
    flags = np.zeros(vocab.MAX_INSTR + 1, dtype=bool)
    flags[sorted(instruments)] = True
    return flags


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
    # since the host last staged the row (`_row_inputs`; counted down as calls are replayed): the given triples the
    # device's queue holds, whether the host has more, the events the device may still sample
    queue_on_device: int = 0
    more_on_host: bool = False
    events_allowed: int = 0
    fed: list[int] = field(default_factory=list)  # the tokens in the row's cache, as the model saw them

    def append(self, triple: list[int]) -> None:
        self.tokens.extend(triple)
        self.fed.extend([triple[0] - self.offset, triple[1], triple[2]])
        self.position += 3
        self.instruments.add(int(_instrument(triple[2], np)))
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
    # steps of every sample per device call (the host replays them after): fewer round trips, the same music whatever
    # the value, up to rounding (each sample's generator is its own, split once a step it takes); see `_events`.
    # None: `default_events_per_call`'s, for the batch and the device
    events_per_call: int | None = None
    # dispatch each call before the last one's result is read, on the rows that call leaves (`_events`), so that the
    # host's launches overlap the device's work; the host replays as before and stages rows itself only where it has
    # work to do (a window to move, a queue to refill). The same music. None: `default_launch_ahead`'s
    launch_ahead: bool | None = None


def _one_sample_on_a_gpu(num_samples: int, platform: str) -> bool:
    """Where the host's turn-taking, not the device, sets the sampler's pace (the two defaults below). (jax names a
    CUDA or ROCm device's platform "gpu"; its own, should that change.)"""
    return platform in ("gpu", "cuda", "rocm") and num_samples == 1


def default_events_per_call(num_samples: int, platform: str) -> int:
    """Events a device call where `SamplingOptions.events_per_call` is None: 8, except for one sample on a GPU: 1.
    Measured (README; Medium, a full context): on an H100 one sample took 5.7 ms an event at 1 a call against 7.4 at
    8 (float32; bfloat16 5.2 against 5.7), the loop's body launched from the host as a CUDA graph every trip (2.25
    ms of the host's time each under the profiler), and a batch of 8 0.9 against 0.8 (bfloat16 0.7 against 0.5); on
    a CPU 8 a call made one sample 1.24x faster (Small)."""
    return 1 if _one_sample_on_a_gpu(num_samples, platform) else 8


def default_launch_ahead(num_samples: int, platform: str) -> bool:
    """Whether calls are launched ahead where `SamplingOptions.launch_ahead` is None: for one sample on a GPU (where
    the host's dispatch and replay, not the card, set its pace), not elsewhere. Measured (README; Medium, bfloat16,
    a full context, one event a call, an H200): 3.8 ms an event launched ahead against 5.3 (12.7x real time against
    9.1), the bound of calls dispatched back to back 3.5; on a CPU one sample goes faster at 8 a call (Small: 45.5 ms
    an event against 59.1 at one launched ahead); not measured for a batch, whose calls (8 events of every row: ~32 ms
    for 8 Medium samples on an H100) are long beside the host's 1.2 ms share."""
    return _one_sample_on_a_gpu(num_samples, platform)


class Sampler:
    """Samples from a trained model (Levanter `Gpt2LMHeadModel`) with a KV cache.

    After `generate`: `last_sequences` (the token sequences the model was conditioned on, flag first,
    absolute time: what to check controls against), `last_generated` (the sampled events of each sample,
    RESTs removed: to tell generated notes from given ones), `last_stops` ("end" or "max_events" per sample).
    With `record_inputs = True`, `last_inputs[i]` lists, for every event sample i sampled, (how many of its
    tokens there were, the tokens its row of the model had seen: flag, window, relative time), and at the end
    `last_windows[i]` holds the tokens its row had seen then, `last_cache` the cache (what the model saw: to check
    the two agree)."""

    record_inputs = False

    def __init__(self, model, dtype="float32"):
        """`dtype`: the weights' and cache's, float32 or bfloat16 (half the bytes a step reads, for an
        accelerator; see amt.decoder on precision)."""
        self.weights = decoder.decoder_weights(model, dtype)
        self.context = self.weights.shape[3]
        # contiguous copies: a dot with a column slice of the whole unembedding copied the slice every time
        self.unembed = tuple(self.weights.lm_head[:, low:high] for low, high in SLOTS)

    def forced_step(self, sample: _Sample) -> tuple[int | None, int] | None:
        """A hook for tests and benchmarks (a random model can't be steered in time): (bins, events): for the
        sample's next `events` events, each onset is put `bins` after the current time (max of the start time and
        the last onset) instead of sampled (`bins` None: sampled). None: sampled. Asked when the host stages the
        sample's row, which may be only after `events` events (several a call, or launched ahead): an answer holds
        for the events it names."""
        return None

    def generate(self, start_time: float, end_time: float, inputs=None, controls=None,
                 options: SamplingOptions = SamplingOptions(), anticipatory: bool = True) -> list[np.ndarray]:
        """Algorithm 1 (anticipatory=True) or 2: (n, 3) events for each of `options.num_samples` samples, with
        the prompt, the future inputs and the given controls (as events) included, sorted by time."""
        start, end = vocab.to_bins(start_time), vocab.to_bins(end_time)
        inputs = ops.as_triples(np.zeros((0, 3), np.int64) if inputs is None else inputs)
        controls = ops.as_triples(np.zeros((0, 3), np.int64) if controls is None else controls)
        if len(controls) and not np.all(ops.is_control(controls)):
            raise ValueError("controls must be in the control block (use amt.ops.to_controls)")
        if options.events_per_call is not None and not (
                isinstance(options.events_per_call, int) and options.events_per_call >= 1):
            raise ValueError(f"SamplingOptions.events_per_call={options.events_per_call!r}: a positive integer "
                             "(or None: the sampler's choice)")
        if options.launch_ahead not in (None, True, False):
            raise ValueError(f"SamplingOptions.launch_ahead={options.launch_ahead!r}: True, False "
                             "(or None: the sampler's choice)")
        if options.events_per_call is None or options.launch_ahead is None:  # the sampler's choice, for the device
            platform = next(iter(jax.tree.leaves(self.weights)[0].devices())).platform
            options = dataclasses.replace(
                options,
                events_per_call=(default_events_per_call(options.num_samples, platform)
                                 if options.events_per_call is None else options.events_per_call),
                launch_ahead=(default_launch_ahead(options.num_samples, platform)
                              if options.launch_ahead is None else options.launch_ahead))
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
    def _window(self, s: _Sample, flag: int, first: int, now: int, given: int | None = None) -> list[int]:
        """Set sample `s`'s window to its triples from `first` on, later if need be so that `now` stays below
        WINDOW_TIME_LIMIT in the window's time, but not so late that `given` (the time of the given triple to be
        played next, if any) falls before the window's earliest time: a triple is fed at its time in the window,
        and one before it has none (its token would fall in another block of the vocabulary; after a jump of
        tens of seconds the window kept only the latest 50 s and fed such a control). Returns the window's tokens
        (flag first, relative time: the reference's rule, minus the window's earliest time)."""
        history = ops.as_triples(np.asarray(s.tokens, dtype=np.int64))
        t = ops.times(history)
        latest = np.minimum.accumulate(t[::-1])[::-1] if len(t) else t  # earliest time from each triple on
        if first < len(t) and now - latest[first] >= WINDOW_TIME_LIMIT:
            later = int(np.searchsorted(latest, now - WINDOW_TIME_KEEP))
            if given is not None:  # the last start whose earliest time is not after the given triple's
                later = min(later, int(np.searchsorted(latest, given, side="right")) - 1)
            first = max(first, later)
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
        """The earliest onset (relative to the window) and the instruments allowed for `s`'s next event, by the
        rule `_events` applies on the device (`constraints`)."""
        min_onset, allowed = constraints(np.asarray([now - s.offset]), seen_flags(s.instruments)[None])
        return int(min_onset[0]), allowed[0]

    def _prefill(self, windows: list[list[int]]):
        batch = decoder.pad_window(np.asarray(windows, dtype=np.int32), self.context)
        return decoder.prefill(self.weights, jnp.asarray(batch), len(windows[0]))

    def _run(self, samples: list[_Sample], flag: int, start: int, end: int, options: SamplingOptions,
             anticipatory: bool) -> None:
        full = (self.context - 1) // 3  # events that fit the context after the flag
        sliding = max(full - options.window_chunk, 1)
        n = len(samples)
        # the first window is the same for every sample: prefill it once and copy it to every row
        for s in samples:
            events = len(s.tokens) // 3
            self._window(s, flag, 0 if events < full else events - sliding, max(start, s.current_time))
        hidden, cache = self._prefill([samples[0].fed])
        hidden = jnp.repeat(hidden, n, axis=0)
        cache = jax.tree.map(lambda a: jnp.repeat(a, n, axis=0), cache)
        # controls are inserted `delta` ahead (Algorithm 1); Algorithm 2 inserts given notes as events, on time
        delta, condition_offset = (options.delta, vocab.ATIME_OFFSET) if anticipatory else (0, vocab.TIME_OFFSET)
        # each row's own generator: a sample's music depends on the seed and its row, not on how the calls fall
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.PRNGKey(options.seed), jnp.arange(n))
        # the buffers `_events` reads and writes in place (see there), made once; where calls are launched ahead, two
        # `out`s, each its own executable's: one is read while the next call runs
        length = max(options.events_per_call, LAUNCH_AHEAD_QUEUE) if options.launch_ahead else options.events_per_call
        width = _row_width(length)
        rows = jnp.zeros((n, width), jnp.int32)
        outs = [jnp.zeros((n, STATE + 3 * options.events_per_call), jnp.int32)
                for _ in range(2 if options.launch_ahead else 1)]
        temperature = jnp.float32(options.temperature)
        in_flight = collections.deque()  # (its `out`, whether the host staged its rows) of the calls not read yet
        copy = 0

        def dispatch(fresh: bool) -> None:
            nonlocal hidden, cache, keys, rows, copy
            outs[copy], hidden, cache, keys, rows = _events(
                self.weights, self.unembed, cache, hidden, rows, keys, outs[copy], temperature,
                top_p=float(options.top_p), events=options.events_per_call, anticipatory=anticipatory, copy=copy)
            in_flight.append((copy, fresh))
            copy = (copy + 1) % len(outs)

        while True:
            active = [i for i, s in enumerate(samples) if not s.done]
            if not active:
                if self.record_inputs:
                    self.last_windows, self.last_cache = [list(s.fed) for s in samples], cache
                return
            inputs = np.zeros((n, width), dtype=np.int32)  # EVENTS_LEFT 0: a finished row idles
            for i in active:
                s = samples[i]
                self._take_due(s, delta, condition_offset)
                now = max(start, s.current_time)
                first = self._moves_to(s, now, sliding, condition_offset)
                if first is not None:
                    given = s.pending[0][0] - condition_offset if s.pending else None  # (played at step 0)
                    row_hidden, row_cache = self._prefill([self._window(s, flag, first, now, given)])
                    hidden = hidden.at[i].set(row_hidden[0])
                    cache = decoder.set_row(cache, row_cache, i)
                inputs[i] = self._row_inputs(s, start, end, options, delta, condition_offset, length)
            rows = _stage(rows, jax.device_put(inputs))  # one copy to the device (jnp.asarray: a copy and a program run)
            dispatch(fresh=True)
            host_work = False
            while in_flight:
                if options.launch_ahead and not host_work and len(in_flight) == 1:
                    dispatch(fresh=False)  # on the rows the call before leaves, before its result is read
                which, fresh = in_flight.popleft()
                result = np.array(outs[which])  # a copy: on a CPU np.asarray's view would keep `out` from being donated
                host_work |= self._replay(samples, result, fresh, start, end, options, anticipatory, sliding, delta,
                                          condition_offset)

    def _replay(self, samples: list[_Sample], result: np.ndarray, fresh: bool, start: int, end: int,
                options: SamplingOptions, anticipatory: bool, sliding: int, delta: int, condition_offset: int) -> bool:
        """Replays a call's steps in the host's bookkeeping, checking the device's state against it; returns whether
        the host has work to do before the device's own rows can go on (a row's window to move, its queue to refill,
        its events to allow; or every sample done)."""
        work = False
        for i, s in enumerate(samples):
            if s.done:  # (idle on the device)
                continue
            given, sampled, steps = len(s.pending) + len(s.controls), s.sampled, int(result[i, 0])
            if steps == 0 and fresh:  # (the first step runs whatever: a row that took none would loop for ever)
                raise RuntimeError(f"sampler: sample {i} took no step in a call")
            for j in range(steps):
                if j or not fresh:  # the host's checks before a step, which the device made too (it stops there)
                    self._take_due(s, delta, condition_offset)
                    if s.done or self._moves_to(s, max(start, s.current_time), sliding, condition_offset) is not None:
                        raise RuntimeError(f"sampler: sample {i} stepped on at step {j} of a call where its window "
                                           "had to move or it was done (the device's stops differ from the host's)")
                self._step(s, [int(t) for t in result[i, STATE + 3 * j: STATE + 3 * j + 3]], end, options,
                           anticipatory)
            # the device's state after its steps is the host's after replaying them
            played = given - len(s.pending) - len(s.controls)
            window_min = EMPTY if s.window_min is None else s.window_min - s.offset
            expected = [s.position, s.current_time - s.offset, window_min, played, len(s.instruments),
                        s.sampled - sampled]
            if result[i, 1:STATE].tolist() != expected:
                raise RuntimeError(f"sampler: sample {i}'s state after a call is {result[i, 1:STATE].tolist()} on "
                                   f"the device and {expected} on the host (position, current time, earliest "
                                   "time, given triples played, instruments, events sampled)")
            s.queue_on_device -= played
            s.events_allowed -= s.sampled - sampled
            if options.launch_ahead and not s.done:  # (otherwise the host stages every row anyway)
                self._take_due(s, delta, condition_offset)
                work |= (steps == 0 or (s.more_on_host and s.queue_on_device == 0) or s.events_allowed <= 0
                         or self._moves_to(s, max(start, s.current_time), sliding, condition_offset) is not None)
        return work or all(s.done for s in samples)

    def _take_due(self, s: _Sample, delta: int, condition_offset: int) -> None:
        """The controls due now (Algorithm 2: the given notes) go to `s.pending`, to be played before sampling."""
        while s.controls and s.current_time >= s.controls[0][0] - condition_offset - delta:
            s.pending.append(s.controls.pop(0))

    def _row_inputs(self, s: _Sample, start: int, end: int, options: SamplingOptions, delta: int,
                    condition_offset: int, length: int) -> np.ndarray:
        """Row `s`'s inputs to `_events` (the columns named there), its times relative to its window, with a queue
        of `length` given triples. Notes in `s` what the device may then do without the host: how many
        of the queued triples it holds, whether the host has more, how many events it may sample."""
        row = np.zeros(_row_width(length), dtype=np.int32)
        row[POSITION], row[CURRENT], row[START] = s.position, s.current_time - s.offset, start - s.offset
        row[END] = min(end - s.offset, EMPTY)
        forced = self.forced_step(s)
        step, steps = forced if forced is not None else (None, options.max_events)
        row[EVENTS_LEFT] = max(min(options.max_events - s.sampled, steps, EMPTY), 1)
        row[FORCED] = -1 if step is None else min(step, EMPTY)
        row[WINDOW_MIN] = EMPTY if s.window_min is None else s.window_min - s.offset
        queue = (s.pending[:length] + s.controls[:length])[:length]
        row[QUEUED], row[PENDING] = len(queue), min(len(s.pending), length)
        row[FRESH], row[MORE] = 1, len(s.pending) + len(s.controls) > len(queue)
        s.queue_on_device, s.more_on_host, s.events_allowed = len(queue), bool(row[MORE]), int(row[EVENTS_LEFT])
        row[SEEN:QUEUE] = seen_flags(s.instruments)
        for k, (time, duration, note) in enumerate(queue):
            when = time - condition_offset - s.offset
            row[QUEUE + QUEUE_FIELDS * k: QUEUE + QUEUE_FIELDS * (k + 1)] = [time - s.offset, duration, note, when,
                                                                             when - delta]
        return row

    def _step(self, s: _Sample, sampled: list[int], end: int, options: SamplingOptions, anticipatory: bool) -> None:
        """Sample `s`'s step, as the device took it: the pending triple played, or the sampled event appended, or the
        end reached, or (Algorithm 2) the sampled onset passed given notes, the first of which was played."""
        if self.record_inputs and not s.pending:
            self.last_inputs[s.row].append((len(s.tokens), list(s.fed)))
        if not s.pending:
            onset = sampled[0] - vocab.TIME_OFFSET + s.offset
            if onset >= end:
                s.done, s.stop = True, "end"
                return
            if anticipatory or not s.controls or onset < s.controls[0][0] - vocab.TIME_OFFSET:
                triple = [vocab.TIME_OFFSET + onset, sampled[1], sampled[2]]
                s.append(triple)
                s.generated.append(triple)
                s.current_time = onset
                s.sampled += 1
                if s.sampled >= options.max_events:
                    s.done, s.stop = True, "max_events"
                    logger.warning("sample %d stopped at max_events=%d, at %.2f s (before the end time, %.2f s)",
                                   s.row, options.max_events, onset / vocab.TIME_RESOLUTION,
                                   end / vocab.TIME_RESOLUTION)
                return
            # Algorithm 2's backfill: given notes up to the sampled onset go first (the first one was played instead
            # of the event); the model then samples its event again, having seen them
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
    context = augment.infill_context(events, t0, t1)
    return sampler.generate(t0, t1, inputs=context, options=options, anticipatory=anticipatory)


def accompany(sampler: Sampler, events, instruments, start: float, end: float,
              options: SamplingOptions = SamplingOptions(), anticipatory: bool = True) -> list[np.ndarray]:
    """Keep the given instruments (e.g. a melody) as controls over [0, end) and generate the rest from
    `start`, prompted by the other instruments before `start`. The given notes come back unchanged."""
    prompt, controls = augment.accompaniment_inputs(events, instruments, start, end)
    return sampler.generate(start, end, inputs=prompt, controls=controls, options=options, anticipatory=anticipatory)
