"""The token vocabularies of the Anticipatory Music Transformer, defined once.

Arrival-time vocabulary (the paper's, 55,028 ids, 10 ms time bins). Every event and every control is a
triple of tokens (onset time, duration, note), with note = 128 * instrument + pitch and instrument 128 = drums:

    block                                   offset   size
    onset time (0-100 s)                         0   10,000
    duration (0-10 s)                       10,000    1,000
    note                                    11,000   16,512
    REST                                    27,512        1
    control onset / duration / note         27,513   10,000 + 1,000 + 16,512
    SEPARATOR, AUTOREGRESS, ANTICIPATE      55,025        3

Interarrival ("MIDI-like") baseline vocabulary (34,025 ids): 1,000 time shifts, 16,512 note-ons,
16,512 note-offs, SEPARATOR.

Names follow the paper's reference implementation so that its readers find their way.
"""

from __future__ import annotations

import numpy as np

# --- time and sizes ---------------------------------------------------------------------------------
TIME_RESOLUTION = 100  # time bins per second (10 ms)
MAX_TIME_IN_SECONDS = 100  # onset vocabulary span; windows reaching it are dropped
MAX_DURATION_IN_SECONDS = 10
MAX_INTERARRIVAL_IN_SECONDS = 10
MAX_TIME = TIME_RESOLUTION * MAX_TIME_IN_SECONDS  # 10,000 onset bins
MAX_DUR = TIME_RESOLUTION * MAX_DURATION_IN_SECONDS  # 1,000 duration bins
MAX_INTERARRIVAL = TIME_RESOLUTION * MAX_INTERARRIVAL_IN_SECONDS  # 1,000 time shifts

MAX_PITCH = 128
MAX_INSTR = 129  # 128 General MIDI programs + drums
DRUMS = 128  # the instrument number of channel 10 (index 9)
DRUM_CHANNEL = 9
MAX_NOTE = MAX_PITCH * MAX_INSTR  # 16,512

EVENT_SIZE = 3  # tokens per event or control
CONTEXT_SIZE = 1024  # model context = 1 flag + 3 * 341
M = 341  # events (triples) per training sequence
DELTA = 5  # anticipation interval, seconds
DELTA_BINS = DELTA * TIME_RESOLUTION
REST_DENSITY = TIME_RESOLUTION  # pad with REST so that an event arrives at least every 1 s
UNCLOSED_NOTE_DURATION = TIME_RESOLUTION // 4  # notes never closed last 0.25 s


def to_bins(seconds) -> int:
    """Seconds as 10 ms time bins, truncated as the reference's int(100 * seconds), except that a time which is
    a whole number of bins stays that bin: 100 * 4.02 is 401.99999999999994 in floating point, which the
    reference truncates to 401 (a prompt ending at its last onset, 4.02 s, then lost its last notes to the
    future). The tolerance, 1e-6 bins, is far above rounding error and far below any time a user writes."""
    return int(np.floor(TIME_RESOLUTION * seconds + 1e-6))


# --- arrival-time vocabulary --------------------------------------------------------------------------
TIME_OFFSET = 0
DUR_OFFSET = TIME_OFFSET + MAX_TIME
NOTE_OFFSET = DUR_OFFSET + MAX_DUR
REST = NOTE_OFFSET + MAX_NOTE

CONTROL_OFFSET = REST + 1
ATIME_OFFSET = CONTROL_OFFSET + 0
ADUR_OFFSET = ATIME_OFFSET + MAX_TIME
ANOTE_OFFSET = ADUR_OFFSET + MAX_DUR

SPECIAL_OFFSET = ANOTE_OFFSET + MAX_NOTE
SEPARATOR = SPECIAL_OFFSET
AUTOREGRESS = SPECIAL_OFFSET + 1
ANTICIPATE = SPECIAL_OFFSET + 2
VOCAB_SIZE = ANTICIPATE + 1

# --- interarrival vocabulary ----------------------------------------------------------------------------
MIDI_TIME_OFFSET = 0
MIDI_START_OFFSET = MIDI_TIME_OFFSET + MAX_INTERARRIVAL
MIDI_END_OFFSET = MIDI_START_OFFSET + MAX_NOTE
MIDI_SEPARATOR = MIDI_END_OFFSET + MAX_NOTE
MIDI_VOCAB_SIZE = MIDI_SEPARATOR + 1

assert VOCAB_SIZE == 55_028 and MIDI_VOCAB_SIZE == 34_025 and CONTEXT_SIZE == 1 + EVENT_SIZE * M

# General MIDI program names (0-127) and drums (128), for printing.
GM_INSTRUMENTS = (
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet", "Celesta", "Glockenspiel",
    "Music Box", "Vibraphone", "Marimba", "Xylophone", "Tubular Bells", "Dulcimer", "Drawbar Organ",
    "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ", "Accordion", "Harmonica",
    "Tango Accordion", "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)",
    "Electric Guitar (clean)", "Electric Guitar (muted)", "Overdriven Guitar", "Distortion Guitar",
    "Guitar Harmonics", "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass",
    "Slap Bass 1", "Slap Bass 2", "Synth Bass 1", "Synth Bass 2", "Violin", "Viola", "Cello", "Contrabass",
    "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani", "String Ensemble 1",
    "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs", "Voice Oohs", "Synth Choir",
    "Orchestra Hit", "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn", "Brass Section",
    "Synth Brass 1", "Synth Brass 2", "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax", "Oboe",
    "English Horn", "Bassoon", "Clarinet", "Piccolo", "Flute", "Recorder", "Pan Flute", "Blown Bottle",
    "Shakuhachi", "Whistle", "Ocarina", "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)",
    "Lead 4 (chiff)", "Lead 5 (charang)", "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)", "Pad 5 (bowed)",
    "Pad 6 (metallic)", "Pad 7 (halo)", "Pad 8 (sweep)", "FX 1 (rain)", "FX 2 (soundtrack)",
    "FX 3 (crystal)", "FX 4 (atmosphere)", "FX 5 (brightness)", "FX 6 (goblin)", "FX 7 (echoes)",
    "FX 8 (sci-fi)", "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock", "Taiko Drum", "Melodic Tom", "Synth Drum",
    "Reverse Cymbal", "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet", "Telephone Ring",
    "Helicopter", "Applause", "Gunshot", "Drums",
)
_PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def pitch_name(pitch: int) -> str:
    """MIDI pitch as scientific pitch notation (60 -> C4)."""
    return f"{_PITCH_CLASSES[pitch % 12]}{pitch // 12 - 1}"


def token_name(token: int) -> str:
    """A short human-readable name for one arrival-time token, e.g. `onset 1.27s`, `ctrl note Violin A4`."""
    token = int(token)
    if not 0 <= token < VOCAB_SIZE:
        raise ValueError(f"token {token} is outside the arrival-time vocabulary (0..{VOCAB_SIZE - 1})")
    special = {REST: "REST", SEPARATOR: "SEPARATOR", AUTOREGRESS: "AUTOREGRESS", ANTICIPATE: "ANTICIPATE"}
    if token in special:
        return special[token]
    prefix, base = ("", 0) if token < CONTROL_OFFSET else ("ctrl ", CONTROL_OFFSET)
    local = token - base
    if local < DUR_OFFSET:
        return f"{prefix}onset {local / TIME_RESOLUTION:.2f}s"
    if local < NOTE_OFFSET:
        return f"{prefix}dur {(local - DUR_OFFSET) / TIME_RESOLUTION:.2f}s"
    note = local - NOTE_OFFSET
    instrument, pitch = divmod(note, MAX_PITCH)
    return f"{prefix}note {GM_INSTRUMENTS[instrument]} {pitch_name(pitch)}"


def interarrival_token_name(token: int) -> str:
    """A short human-readable name for one interarrival token."""
    token = int(token)
    if not 0 <= token < MIDI_VOCAB_SIZE:
        raise ValueError(f"token {token} is outside the interarrival vocabulary (0..{MIDI_VOCAB_SIZE - 1})")
    if token == MIDI_SEPARATOR:
        return "SEPARATOR"
    if token < MIDI_START_OFFSET:
        return f"shift {token / TIME_RESOLUTION:.2f}s"
    kind, note = ("on", token - MIDI_START_OFFSET) if token < MIDI_END_OFFSET else ("off", token - MIDI_END_OFFSET)
    instrument, pitch = divmod(note, MAX_PITCH)
    return f"{kind} {GM_INSTRUMENTS[instrument]} {pitch_name(pitch)}"


def describe(tokens, limit: int | None = None) -> str:
    """Arrival-time tokens as text, one event or control per line (a leading flag on its own line)."""
    tokens = np.asarray(tokens).ravel()
    lines = []
    if len(tokens) % EVENT_SIZE == 1:
        lines.append(token_name(tokens[0]))
        tokens = tokens[1:]
    triples = tokens[: len(tokens) - len(tokens) % EVENT_SIZE].reshape(-1, EVENT_SIZE)
    for i, (onset, dur, note) in enumerate(triples):
        if limit is not None and i >= limit:
            lines.append(f"... ({len(triples) - limit} more)")
            break
        if note in (SEPARATOR, REST):
            lines.append(token_name(note) if note == SEPARATOR else f"{token_name(onset)}  REST")
        else:
            lines.append(f"{token_name(onset):>16}  {token_name(dur):>14}  {token_name(note)}")
    return "\n".join(lines)
