"""Perplexity and bits per second on a test cache, as in the paper's Table 1, for one or many checkpoints.

Each 1,024-token sequence is a flag and 341 triples; the model predicts tokens 1..1,023 (the flag is given).
From the per-token losses (nats):
- loss: the mean over all predicted tokens (what Levanter's evaluation reports);
- event perplexity exp(3 x mean loss over event tokens), and onset / duration / note perplexities
  exp(mean loss over the event tokens in that slot of the triple): the paper's Table 1 (their product is
  the event perplexity). Events include REST; SEPARATOR triples count only in the overall loss;
- for anticipatory data, the same for the controls;
- bits per second, the paper's "mean loss / ln 2 x test tokens / test seconds", i.e. all bits over all
  seconds, with the seconds measured from the sequences themselves (`sequence_seconds`), not a constant;
  and event bits per second (the event tokens' bits only: on anticipatory data, where some notes are moved
  into controls, it leaves those notes' bits out; on the test split, which has no controls, both agree).

Interarrival caches (`amt preprocess --encoding interarrival`, the paper's "MIDI-like" baseline) are recognized
by their tokens (no flag, all ids under 34,025) and get the loss, its perplexity and bits per second only: as in
the reference's `scripts/eval-loss.py --interarrival`, there are no triples, hence no event perplexity.
Their seconds (`interarrival_seconds`) are measured the way the arrival-time ones are, from each file stretch's
first note onset to its last (the time shifts between them), so the two encodings' bits per second of the same
files are over the same music: on the demo corpus's test files the two totals agree within 1%.
Deliberate difference from the reference: it divides by one constant for both (Lakh's test set, 560.98 h);
we measure the seconds each cache's sequences hold, which also works on any other corpus.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from amt import ops, vocab

logger = logging.getLogger("amt.perplexity")

EVENT, CONTROL, SEPARATOR = 0, 1, 2  # kinds of triple


@dataclass(frozen=True)
class PerplexityConfig:
    """`amt eval perplexity` / eval/perplexity.py."""

    checkpoints: list[str] = field(default_factory=list)  # step-N folders, run folders (every step-N), HF folders
    cache: str = "runs/demo/data/test"  # a Levanter cache written by `amt preprocess` (either encoding)
    out: str = "runs/eval/perplexity"  # perplexity.csv, perplexity.json, perplexity.png
    batch_size: int = 4  # sequences per jitted forward pass (logits are batch x 1,024 x 55,028 floats)
    max_sequences: int | None = None  # the first N sequences of the cache (None: all)


def read_cache(path: str | os.PathLike, max_sequences: int | None = None) -> np.ndarray:
    """The rows (n, 1,024) of a cache written by `amt preprocess`."""
    from levanter.store.cache import TreeCache

    from amt.preprocess import CACHE_EXEMPLAR, verify_cache

    path = os.fspath(path)
    if "://" not in path and not os.path.exists(os.path.join(path, "shard_ledger.json")):
        raise FileNotFoundError(f"{path}: not a finished cache (no shard_ledger.json); write one with `amt preprocess`")
    verify_cache(path, missing_ok=True)  # a damaged cache is refused, naming it, before any checkpoint is loaded
    cache = TreeCache.load(path, CACHE_EXEMPLAR)
    n = len(cache) if max_sequences is None else min(max_sequences, len(cache))
    rows = [np.asarray(row["input_ids"], dtype=np.int64) for row in cache.get_batch_sync(list(range(n)))] if n else []
    sequences = np.stack(rows) if rows else np.zeros((0, vocab.CONTEXT_SIZE), np.int64)
    encoding_of(sequences, path)  # raises on a cache of neither encoding
    return sequences


def encoding_of(sequences: np.ndarray, name: str = "sequences") -> str:
    """"arrival" (every row starts with an AUTOREGRESS / ANTICIPATE flag) or "interarrival" (no flag, every
    id in the 34,025-id vocabulary); anything else is an error naming `name`."""
    sequences = np.asarray(sequences)
    if len(sequences) == 0 or np.isin(sequences[:, 0], (vocab.AUTOREGRESS, vocab.ANTICIPATE)).all():
        return "arrival"
    if sequences.min() >= 0 and sequences.max() < vocab.MIDI_VOCAB_SIZE:
        return "interarrival"
    raise ValueError(f"{name}: neither an arrival-time cache (rows start with a flag) nor an interarrival "
                     f"cache (ids under {vocab.MIDI_VOCAB_SIZE}); write one with `amt preprocess`")


def triple_kinds(sequences: np.ndarray) -> np.ndarray:
    """(n, 341) EVENT / CONTROL / SEPARATOR for each triple after the flag, by its note token."""
    sequences = np.asarray(sequences)
    triples = ops.as_triples(sequences[:, 1:].reshape(-1))
    kinds = np.where(ops.is_separator(triples), SEPARATOR, np.where(ops.is_control(triples), CONTROL, EVENT))
    return kinds.reshape(len(sequences), -1)


def previous_onsets(sequences: np.ndarray) -> np.ndarray:
    """(n, 1,023) for each predicted token 1..1,023: the onset (in bins, relative to the window) of the event
    before it in its file stretch, where the token is an event's onset and such an event exists; else -1."""
    sequences = np.asarray(sequences)
    kinds = triple_kinds(sequences)
    n, triples = kinds.shape
    is_event = kinds == EVENT
    # the index of the last event before each triple (-1: none), and whether it is in the same file stretch
    last_upto = np.maximum.accumulate(np.where(is_event, np.arange(triples), -1), axis=1)
    before = np.concatenate([np.full((n, 1), -1), last_upto[:, :-1]], axis=1)
    stretch = np.cumsum(kinds == SEPARATOR, axis=1)
    same_stretch = np.take_along_axis(stretch, np.maximum(before, 0), axis=1) == stretch
    onsets = sequences[:, 1::vocab.EVENT_SIZE].astype(np.int64) - vocab.TIME_OFFSET
    previous = np.take_along_axis(onsets, np.maximum(before, 0), axis=1)
    out = np.full((n, sequences.shape[1] - 1), -1, np.int64)
    # token 1 + 3i, triple i's onset, is predicted at column 3i
    out[:, 0::vocab.EVENT_SIZE] = np.where(is_event & (before >= 0) & same_stretch, previous, -1)
    return out


def sequence_seconds(sequence: np.ndarray) -> float:
    """Seconds of music a sequence covers: for each stretch of one file (between SEPARATORs), the time
    from its first event's onset to its last event's onset (RESTs included: they mark silence)."""
    triples = ops.as_triples(np.asarray(sequence)[1:])
    kinds = triple_kinds(np.asarray(sequence)[None])[0]
    segment = np.cumsum(kinds == SEPARATOR)
    onset = triples[:, 0] - vocab.TIME_OFFSET
    total = 0
    for s in np.unique(segment[kinds == EVENT]):
        t = onset[(segment == s) & (kinds == EVENT)]
        total += int(t.max() - t.min())
    return total / vocab.TIME_RESOLUTION


def interarrival_seconds(sequence: np.ndarray) -> float:
    """Seconds of music an interarrival sequence covers, measured as `sequence_seconds` measures arrival-time
    ones: in each stretch of one file (between SEPARATORs, and within this row), the time shifts that lie
    between its first note-on and its last note-on (leading silence and the shifts before trailing note-offs
    are not counted, as arrival time counts from the first onset to the last)."""
    tokens = np.asarray(sequence, dtype=np.int64).ravel()
    stretch = np.cumsum(tokens == vocab.MIDI_SEPARATOR)
    note_on = (tokens >= vocab.MIDI_START_OFFSET) & (tokens < vocab.MIDI_END_OFFSET)
    shift = np.where(tokens < vocab.MIDI_START_OFFSET, tokens - vocab.MIDI_TIME_OFFSET, 0)
    total = 0
    for s in np.unique(stretch[note_on]):
        on = np.flatnonzero(note_on & (stretch == s))
        total += int(shift[on[0] : on[-1]].sum())
    return total / vocab.TIME_RESOLUTION


def interarrival_metrics(sequences: np.ndarray, losses: np.ndarray) -> dict:
    """Loss, perplexity and bits per second of interarrival sequences (n, 1,024) from the losses (n, 1,023) of
    tokens 1..1,023 (nats); the event columns are None (the encoding has no events)."""
    losses = np.asarray(losses, dtype=np.float64)
    seconds = float(sum(interarrival_seconds(s) for s in np.asarray(sequences)))
    loss = float(losses.mean())
    out = {column: None for column in COLUMNS if column not in ("checkpoint", "step")}
    out.update(encoding="interarrival", sequences=len(losses), tokens=int(losses.size), seconds=seconds, loss=loss,
               perplexity=math.exp(loss) if loss < 700 else math.inf,
               bits_per_second=float(losses.sum() / math.log(2) / seconds) if seconds else None)
    return out


def metrics(sequences: np.ndarray, losses: np.ndarray, onset_masses: np.ndarray | None = None) -> dict:
    """Table 1's numbers from sequences (n, 1,024) and the losses (n, 1,023) of tokens 1..1,023 (nats), for
    either encoding (`encoding_of`); with `onset_masses` (n, 1,023, 2) from `token_scores`, also the onset
    masses (module docstring)."""
    sequences, losses = np.asarray(sequences), np.asarray(losses, dtype=np.float64)
    if encoding_of(sequences) == "interarrival":
        return interarrival_metrics(sequences, losses)
    n = len(sequences)
    kind = np.repeat(triple_kinds(sequences), vocab.EVENT_SIZE, axis=1)  # per predicted token
    slot = np.broadcast_to(np.arange(losses.shape[1]) % vocab.EVENT_SIZE, losses.shape)
    seconds = float(sum(sequence_seconds(s) for s in sequences))
    bits = losses / math.log(2)

    def mean(mask):
        return float(losses[mask].mean()) if mask.any() else None

    def exp(x, scale=1.0):  # inf for a diverged checkpoint, instead of stopping a run over many
        if x is None:
            return None
        return math.exp(scale * x) if scale * x < 700 else math.inf

    out = {"encoding": "arrival", "sequences": n, "tokens": int(losses.size), "seconds": seconds, "loss": mean(np.ones_like(kind, bool))}
    out["perplexity"] = exp(out["loss"])
    out["bits_per_second"] = float(bits.sum() / seconds) if seconds else None
    out["event_bits_per_second"] = float(bits[kind == EVENT].sum() / seconds) if seconds else None
    for name, k in (("event", EVENT), ("control", CONTROL)):
        out[f"{name}_tokens"] = int((kind == k).sum())
        out[f"{name}_loss"] = mean(kind == k)
        out[f"{name}_perplexity"] = exp(out[f"{name}_loss"], vocab.EVENT_SIZE)
        for s, slot_name in enumerate(("onset", "duration", "note")):
            out[f"{name}_{slot_name}_perplexity"] = exp(mean((kind == k) & (slot == s)))
    out["onset_past_mass"] = out["onset_next_second_mass"] = None
    if onset_masses is not None:
        scored = previous_onsets(sequences) >= 0
        if scored.any():
            out["onset_past_mass"] = float(onset_masses[..., 0][scored].mean())
            out["onset_next_second_mass"] = float(onset_masses[..., 1][scored].mean())
    return out


def _scores_of(model, ids, previous):
    """(batch, positions - 1) next-token losses: logsumexp minus the target's logit (no log-softmax array);
    and, for arrival-time models, (batch, positions - 1, 2) onset masses before the `previous` onset and
    within the second after it (`previous_onsets`; zeros where it is -1)."""
    import haliax as hax
    import jax
    import jax.numpy as jnp
    from levanter.layers.attention import AttentionMask

    named = hax.named(ids, ("batch", "position"))
    logits = model(named, attn_mask=AttentionMask.causal(), key=None).rearrange(("batch", "position", "vocab"))
    logits = logits.array[:, :-1].astype(jnp.float32)
    target = jnp.take_along_axis(logits, ids[:, 1:, None], axis=-1)[..., 0]
    losses = jax.nn.logsumexp(logits, axis=-1) - target
    if logits.shape[-1] < vocab.VOCAB_SIZE:  # interarrival: no onsets
        return losses, jnp.zeros((*losses.shape, 2), jnp.float32)
    below = jnp.cumsum(jax.nn.softmax(logits[..., vocab.TIME_OFFSET : vocab.TIME_OFFSET + vocab.MAX_TIME], axis=-1),
                       axis=-1)  # below[..., t]: the mass of onsets <= t

    def mass_upto(t):  # the mass of onsets < t
        return jnp.where(t > 0, jnp.take_along_axis(below, jnp.clip(t - 1, 0, vocab.MAX_TIME - 1)[..., None],
                                                    axis=-1)[..., 0], 0.0)

    past = mass_upto(previous)
    next_second = (mass_upto(previous + vocab.TIME_RESOLUTION + 1) - past) / jnp.maximum(1.0 - past, 1e-12)
    valid = previous >= 0
    return losses, jnp.stack([jnp.where(valid, past, 0.0), jnp.where(valid, next_second, 0.0)], axis=-1)


def token_losses(model, sequences: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """Losses (n, 1,023) in nats of tokens 1..1,023 of each sequence under a Levanter LM, dropout off."""
    return token_scores(model, sequences, batch_size)[0]


def token_scores(model, sequences: np.ndarray, batch_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Losses (n, 1,023) in nats of tokens 1..1,023 of each sequence under a Levanter LM, dropout off, and
    the onset masses (n, 1,023, 2) of `_scores_of` (zeros for interarrival models); batched and jitted (the
    last batch is padded to keep one compiled shape)."""
    import equinox as eqx
    import jax.numpy as jnp
    from levanter.utils.tree_utils import inference_mode

    from amt.checkpoints import single_device_mesh

    model = inference_mode(model, True)
    if model.Pos.size < np.shape(sequences)[1]:
        raise ValueError(f"the model's context ({model.Pos.size} tokens) is shorter than the sequences "
                         f"({np.shape(sequences)[1]}); evaluate a model trained with seq_len 1024")
    scores_of = eqx.filter_jit(_scores_of)
    sequences = np.asarray(sequences, dtype=np.int32)
    arrival = encoding_of(sequences) == "arrival"
    previous = previous_onsets(sequences) if arrival else np.full((len(sequences), sequences.shape[1] - 1), -1)
    out = np.zeros((len(sequences), sequences.shape[1] - 1), np.float32)
    masses = np.zeros((*out.shape, 2), np.float32)

    def padded(rows):
        return jnp.asarray(np.concatenate([rows, np.repeat(rows[-1:], batch_size - len(rows), axis=0)]))

    with single_device_mesh():
        for start in range(0, len(sequences), batch_size):
            batch = slice(start, min(start + batch_size, len(sequences)))
            losses, onset = scores_of(model, padded(sequences[batch]), padded(previous[batch].astype(np.int32)))
            n = batch.stop - batch.start
            out[batch], masses[batch] = np.asarray(losses)[:n], np.asarray(onset)[:n]
    return out, masses


def expand_checkpoints(paths: list[str]) -> list[tuple[str, int | None]]:
    """(path, step) for each checkpoint, local or remote (gs://): a run's checkpoint folder stands for all its
    `step-N` folders, in step order; Hugging Face folders have no step."""
    import fsspec

    found = []
    for path in paths:
        path = path.rstrip("/")
        fs, plain = fsspec.core.url_to_fs(path)
        if not fs.isdir(plain):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        match = re.fullmatch(r"step-(\d+)", os.path.basename(plain))
        if match:
            found.append((path, int(match.group(1))))
        elif fs.exists(f"{plain}/config.json"):
            found.append((path, None))
        else:
            names = [os.path.basename(p.rstrip("/")) for p in fs.ls(plain, detail=False)]
            steps = sorted((int(m.group(1)), f"{path}/{name}") for name in names if (m := re.fullmatch(r"step-(\d+)", name)))
            unfinished = [p for _, p in steps if not fs.exists(f"{p}/metadata.json")]
            if unfinished:  # still being written by a running job (Levanter writes metadata.json last)
                logger.warning("skipping unfinished checkpoints: %s", ", ".join(unfinished))
                steps = [(step, p) for step, p in steps if p not in unfinished]
            if not steps:
                raise FileNotFoundError(f"{path}: neither a step-N checkpoint, a folder of them, nor a Hugging Face folder")
            found.extend((p, step) for step, p in steps)
    return found


COLUMNS = ("checkpoint", "step", "encoding", "sequences", "tokens", "seconds", "loss", "perplexity", "event_perplexity",
           "event_onset_perplexity", "event_duration_perplexity", "event_note_perplexity", "bits_per_second",
           "event_bits_per_second", "event_tokens", "event_loss", "control_tokens", "control_loss",
           "control_perplexity", "control_onset_perplexity", "control_duration_perplexity",
           "control_note_perplexity", "onset_past_mass", "onset_next_second_mass")


def run(config: PerplexityConfig) -> list[dict]:
    """Evaluate every checkpoint on the cache; write CSV, JSON and a plot over steps to `config.out`."""
    from amt.checkpoints import load_model

    if not config.checkpoints:
        raise ValueError("checkpoints: give at least one checkpoint")
    checkpoints = expand_checkpoints(config.checkpoints)
    sequences = read_cache(config.cache, config.max_sequences)
    if len(sequences) == 0:
        raise ValueError(f"{config.cache}: the cache has no sequences")
    encoding = encoding_of(sequences, config.cache)
    logger.info("%d checkpoint(s) on %d sequences of %s (%s encoding)", len(checkpoints), len(sequences), config.cache,
                encoding)
    rows = []
    for path, step in checkpoints:
        model, _ = load_model(path)
        expected = vocab.MIDI_VOCAB_SIZE if encoding == "interarrival" else vocab.VOCAB_SIZE
        if model.Vocab.size != expected:
            raise ValueError(f"{path}: a model of {model.Vocab.size} tokens cannot score {config.cache}, an {encoding} "
                             f"cache ({expected} tokens); evaluate each model on a cache of its own encoding")
        row = {"checkpoint": path, "step": step, **metrics(sequences, *token_scores(model, sequences, config.batch_size))}
        logger.info("%s: loss %.4f, event perplexity %s, %s bits/s, onset mass in the past %s, in the next second %s",
                    path, row["loss"], _fmt(row["event_perplexity"], ".4g"), _fmt(row["bits_per_second"], ".1f"),
                    _fmt(row["onset_past_mass"], ".3f"), _fmt(row["onset_next_second_mass"], ".3f"))
        rows.append(row)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "perplexity.json").write_text(json.dumps({"config": asdict(config), "results": rows}, indent=2))
    with open(out / "perplexity.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: row[k] for k in COLUMNS} for row in rows)
    plot(rows, out / "perplexity.png")
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Loss, event perplexity and bits per second over training steps (checkpoints without a step last)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [row["step"] if row["step"] is not None else i for i, row in enumerate(rows)]
    onsets = any(row.get("onset_past_mass") is not None for row in rows)
    fig, axes = plt.subplots(1, 3 + onsets, figsize=(13 + 4 * onsets, 3.6))
    for ax, key, label in zip(axes, ("loss", "event_perplexity", "bits_per_second"),
                              ("loss (nats/token)", "event perplexity", "bits per second")):
        ax.plot(x, [row[key] for row in rows], marker="o")
        ax.set_title(label)
    if onsets:
        for key, label in (("onset_past_mass", "before the previous onset"),
                           ("onset_next_second_mass", "of the rest, in the next second")):
            axes[3].plot(x, [row.get(key) for row in rows], marker="o", label=label)
        axes[3].set_ylim(0, 1)
        axes[3].set_title("onset probability mass")
        axes[3].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("step" if all(row["step"] is not None for row in rows) else "checkpoint")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown_table(rows: list[dict]) -> str:
    """The Table 1 columns for the README / reports."""
    lines = ["| checkpoint | step | encoding | loss | event ppl | onset | duration | note | seconds | bits/s "
             "| onset mass in the past | in the next second |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['checkpoint']} | {row['step'] if row['step'] is not None else ''} | {row.get('encoding', '')} | "
            f"{_fmt(row['loss'], '.3f')} | "
            f"{_fmt(row['event_perplexity'], '.4g')} | {_fmt(row['event_onset_perplexity'], '.2f')} | "
            f"{_fmt(row['event_duration_perplexity'], '.2f')} | {_fmt(row['event_note_perplexity'], '.2f')} | "
            f"{_fmt(row['seconds'], '.1f')} | {_fmt(row['bits_per_second'], '.1f')} | "
            f"{_fmt(row.get('onset_past_mass'), '.3f')} | {_fmt(row.get('onset_next_second_mass'), '.3f')} |"
        )
    return "\n".join(lines)
