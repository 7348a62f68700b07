"""A direct port of the paper's reference implementation (anticipation/ops.py, convert.py, tokenize.py, and
sample.py's constraints).

Python lists and loops, as the reference has them (the sampling masks use NumPy slices where the reference
assigns -inf to slices of a torch tensor). Not used by the pipeline: it is the oracle that the tests hold our
array code to, and the baseline that `benchmarks/preprocess.py` measures against.
"""

import numpy as np

from amt import midi
from amt.vocab import (ATIME_OFFSET, AUTOREGRESS, CONTROL_OFFSET, DELTA, DUR_OFFSET, EVENT_SIZE, M, MAX_DUR,
                       MAX_INSTR, MAX_NOTE, MAX_PITCH, MAX_TIME, NOTE_OFFSET, REST, SEPARATOR, SPECIAL_OFFSET,
                       TIME_OFFSET, TIME_RESOLUTION, VOCAB_SIZE)


def pad(tokens, end_time=None, density=TIME_RESOLUTION):
    end_time = TIME_OFFSET + (end_time if end_time else max_time(tokens, seconds=False))
    new_tokens = []
    previous_time = TIME_OFFSET + 0
    for time, dur, note in zip(tokens[0::3], tokens[1::3], tokens[2::3]):
        assert note < CONTROL_OFFSET
        while time > previous_time + density:
            new_tokens.extend([previous_time + density, DUR_OFFSET + 0, REST])
            previous_time += density
        new_tokens.extend([time, dur, note])
        previous_time = time
    while end_time > previous_time + density:
        new_tokens.extend([previous_time + density, DUR_OFFSET + 0, REST])
        previous_time += density
    return new_tokens


def anticipate(events, controls, delta=DELTA * TIME_RESOLUTION):
    if len(controls) == 0:
        return events, controls
    tokens = []
    event_time = 0
    control_time = controls[0] - ATIME_OFFSET
    for time, dur, note in zip(events[0::3], events[1::3], events[2::3]):
        while event_time >= control_time - delta:
            tokens.extend(controls[0:3])
            controls = controls[3:]
            control_time = controls[0] - ATIME_OFFSET if len(controls) > 0 else float("inf")
        event_time = time - TIME_OFFSET
        tokens.extend([time, dur, note])
    return tokens, controls


def min_time(tokens, seconds=True):
    mt = None
    for time, dur, note in zip(tokens[0::3], tokens[1::3], tokens[2::3]):
        if note == SEPARATOR:
            break
        time -= TIME_OFFSET if note < CONTROL_OFFSET else ATIME_OFFSET
        mt = time if mt is None else min(mt, time)
    if mt is None:
        mt = 0
    return mt / float(TIME_RESOLUTION) if seconds else mt


def max_time(tokens, seconds=True):
    mt = 0
    for time, dur, note in zip(tokens[0::3], tokens[1::3], tokens[2::3]):
        if note == SEPARATOR:
            continue
        time -= TIME_OFFSET if note < CONTROL_OFFSET else ATIME_OFFSET
        mt = max(mt, time)
    return mt / float(TIME_RESOLUTION) if seconds else mt


def translate(tokens, dt):
    new_tokens = []
    for time, dur, note in zip(tokens[0::3], tokens[1::3], tokens[2::3]):
        if note == SEPARATOR:
            new_tokens.extend([time, dur, note])
            dt = 0
            continue
        new_tokens.extend([time + dt, dur, note])
    return new_tokens


def clip(tokens, start, end, clip_duration=True):
    new_tokens = []
    for time, dur, note in zip(tokens[0::3], tokens[1::3], tokens[2::3]):
        if note < CONTROL_OFFSET:
            this_time, this_dur = time - TIME_OFFSET, dur - DUR_OFFSET
        else:
            this_time, this_dur = time - ATIME_OFFSET, dur - (ATIME_OFFSET + MAX_TIME)
        if this_time < start or end < this_time:
            continue
        if clip_duration and end < this_time + this_dur:
            dur -= this_time + this_dur - end
        new_tokens.extend([time, dur, note])
    return new_tokens


def get_instruments(tokens):
    instruments = {}
    for time, dur, note in zip(tokens[0::3], tokens[1::3], tokens[2::3]):
        if note >= SPECIAL_OFFSET:
            continue
        note -= NOTE_OFFSET if note < CONTROL_OFFSET else ATIME_OFFSET + MAX_TIME + MAX_DUR
        instruments[note // MAX_PITCH] = instruments.get(note // MAX_PITCH, 0) + 1
    return instruments


def midi_to_events(path):
    """The reference's midi_to_compound (mido, a Python loop per message) and compound_to_events."""
    notes = midi.parse_midi(path, reference=True)  # the same loop as the reference's, over mido's messages
    tokens = []
    for onset, duration, pitch, instrument in zip(notes.onset.tolist(), notes.duration.tolist(),
                                                  notes.pitch.tolist(), notes.instrument.tolist()):
        duration = TIME_RESOLUTION // 4 if duration == -1 else min(duration, MAX_DUR - 1)
        tokens.extend([TIME_OFFSET + onset, DUR_OFFSET + duration, NOTE_OFFSET + MAX_PITCH * instrument + pitch])
    return tokens


def maybe_tokenize(events):
    """The reference's filters: None if kept, else the reason."""
    if len(events) < 3 * 100:
        return "short"
    end_time = max_time(events, seconds=False)
    if end_time < TIME_RESOLUTION * 10:
        return "short"
    if end_time > TIME_RESOLUTION * 3600:
        return "long"
    if len(get_instruments(events)) > 16:
        return "too_many_instruments"
    return None


def tokenize(all_files_events):
    """The reference's tokenize() at augmentation 1: lists of tokens in, 1,024-token sequences out."""
    sequences, concatenated = [], []
    z = AUTOREGRESS
    for all_events in all_files_events:
        end_time = max_time(all_events, seconds=False)
        if len(concatenated) == 0:
            z = AUTOREGRESS
        events = pad(list(all_events), end_time)
        tokens, _ = anticipate(events, [])
        tokens[0:0] = [SEPARATOR, SEPARATOR, SEPARATOR]
        concatenated.extend(tokens)
        while len(concatenated) >= EVENT_SIZE * M:
            seq = concatenated[0:EVENT_SIZE * M]
            concatenated = concatenated[EVENT_SIZE * M:]
            seq = translate(seq, -min_time(seq, seconds=False))
            if max_time(seq, seconds=False) >= MAX_TIME:
                continue
            seq.insert(0, z)
            sequences.append(seq)
            z = AUTOREGRESS
    return sequences


# --- sample.py: the constraints add_token puts on each token (as masks: True = may be sampled) ---------------
def safe_logits(allowed, idx):
    allowed[CONTROL_OFFSET:SPECIAL_OFFSET] = False  # don't generate controls
    allowed[SPECIAL_OFFSET:] = False  # don't generate special tokens
    # don't generate stuff in the wrong time slot
    if idx % 3 == 0:
        allowed[DUR_OFFSET:DUR_OFFSET + MAX_DUR] = False
        allowed[NOTE_OFFSET:NOTE_OFFSET + MAX_NOTE] = False
    elif idx % 3 == 1:
        allowed[TIME_OFFSET:TIME_OFFSET + MAX_TIME] = False
        allowed[NOTE_OFFSET:NOTE_OFFSET + MAX_NOTE] = False
    elif idx % 3 == 2:
        allowed[TIME_OFFSET:TIME_OFFSET + MAX_TIME] = False
        allowed[DUR_OFFSET:DUR_OFFSET + MAX_DUR] = False
    return allowed


def future_logits(allowed, curtime):
    """don't sample events in the past"""
    if curtime > 0:
        allowed[TIME_OFFSET:TIME_OFFSET + curtime] = False
    return allowed


def instr_logits(allowed, full_history):
    """don't sample more than 16 instruments"""
    instrs = get_instruments(full_history)
    if len(instrs) < 15:  # 16 - 1 to account for the reserved drum track
        return allowed
    for instr in range(MAX_INSTR):
        if instr not in instrs:
            allowed[NOTE_OFFSET + instr * MAX_PITCH:NOTE_OFFSET + (instr + 1) * MAX_PITCH] = False
    return allowed


def nucleus(logits, top_p):
    """The reference's nucleus (from Hugging Face) on a NumPy vector: which entries it keeps."""
    keep = np.ones(len(logits), dtype=bool)
    if top_p < 1.0:
        order = np.argsort(-logits, kind="stable")
        shifted = np.exp(logits[order] - logits[order][0])
        cumulative = np.cumsum(shifted / shifted.sum())
        remove = cumulative > top_p
        remove[1:] = remove[:-1].copy()
        remove[0] = False
        keep[order[remove]] = False
    return keep


def add_token_masks(tokens, new_token, current_time, z=AUTOREGRESS):
    """What add_token allows for the next token of an event (before nucleus): `tokens` the history (absolute
    time), `new_token` the event's tokens sampled so far, `current_time` as generate passes it
    (max(start_time, current_time)). Returns (allowed over the vocabulary, the window's offset)."""
    history = list(tokens)
    lookback = max(len(tokens) - 1017, 0)
    history = history[lookback:]  # Markov window
    offset = min_time(history, seconds=False)
    i = len(new_token)
    idx = len([z] + history + list(new_token)) - 1
    allowed = safe_logits(np.ones(VOCAB_SIZE, dtype=bool), idx)
    if i == 0:
        allowed = future_logits(allowed, current_time - offset)
    elif i == 2:
        allowed = instr_logits(allowed, tokens)
    return allowed, offset
