"""Piano-roll pictures of events: one bar per note, a color per instrument, given controls outlined, the end of
the prompt and an infilled span marked."""

from __future__ import annotations

import os

import numpy as np

from amt import ops, vocab


def save_pianoroll(events, path: str | os.PathLike, given=None, title: str = "", prompt_end: float | None = None,
                   span: tuple[float, float] | None = None) -> None:
    """Write a PNG of (n, 3) events; rows also in `given` (e.g. accompaniment controls) get a black outline.
    `prompt_end` (seconds): a dashed line where the prompt ends and generation starts; `span` (start, end
    seconds): the infilled span, shaded (what lies outside it was given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    events = ops.unpad(ops.as_triples(events))
    given_rows = set(map(tuple, ops.as_triples(given).tolist())) if given is not None and len(given) else set()
    onset = (events[:, 0] - vocab.TIME_OFFSET) / vocab.TIME_RESOLUTION
    duration = np.maximum((events[:, 1] - vocab.DUR_OFFSET) / vocab.TIME_RESOLUTION, 0.05)
    instrument, pitch = np.divmod(events[:, 2] - vocab.NOTE_OFFSET, vocab.MAX_PITCH)
    present = sorted(set(instrument.tolist()))
    colors = plt.get_cmap("tab20")
    color_of = {instr: colors(i % 20) for i, instr in enumerate(present)}
    fig, ax = plt.subplots(figsize=(14, 5), dpi=100)
    for row, x, w, y, instr in zip(events.tolist(), onset, duration, pitch, instrument):
        outline = tuple(row) in given_rows
        ax.add_patch(Rectangle((x, y - 0.4), w, 0.8, facecolor=color_of[instr],
                               edgecolor="black" if outline else "none", linewidth=0.8 if outline else 0))
    handles = []
    if span is not None:
        ax.axvspan(span[0], span[1], color="gold", alpha=0.15, zorder=0)
        handles.append(Patch(color="gold", alpha=0.3, label=f"infilled {span[0]:g}-{span[1]:g} s"))
    if prompt_end is not None:
        ax.axvline(prompt_end, color="black", linestyle="--", linewidth=1)
        handles.append(Line2D([], [], color="black", linestyle="--", label=f"prompt ends ({prompt_end:g} s)"))
    ax.set_xlim(0, max(float((onset + duration).max()) if len(events) else 1.0, 1.0, span[1] if span else 0))
    ax.set_ylim((pitch.min() - 2) if len(events) else 0, (pitch.max() + 2) if len(events) else 127)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title or f"{len(events)} notes")
    handles = [Patch(color=color_of[i], label=vocab.GM_INSTRUMENTS[i]) for i in present[:20]] + handles
    if given_rows:
        handles.append(Patch(facecolor="white", edgecolor="black", label="given (controls)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)
