"""A direct port of the paper's reference list-based operations (anticipation/ops.py, tokenize.py).

Used only by the tests, as the oracle our vectorized array operations must agree with.
"""

from amt.vocab import (ATIME_OFFSET, CONTROL_OFFSET, DELTA, DUR_OFFSET, MAX_TIME, REST, SEPARATOR,
                       TIME_OFFSET, TIME_RESOLUTION)


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
