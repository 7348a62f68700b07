"""A trained model small enough to ship in the repository, so that `amt demo` plays music from a model that has
learned some, not only from the one it trains in minutes.

A 4-layer, 128-wide model is 8.0M parameters (32 MB as float32), 7.0M of them the 55,028-token embedding, and
most of those tokens never occur in a small corpus (times past a window's span, pitches and programs nobody
played). `pack` keeps:
- the embedding rows of the tokens the training data holds, in int8 with one float16 scale per row (absmax);
- for all other tokens of a vocabulary block (onsets, durations, notes, their control twins, ...), one shared
  row: the mean of their trained rows. Such a token was never an input, and as an output it was only ever
  pushed down by the softmax, so its rows differ only by their random start; the shared row keeps their level;
- every other tensor in float16.
`unpack` writes a Hugging Face GPT-2 folder (float32) that `amt generate --checkpoint DIR` and the evaluations
load like any other. `python experiments/bundle_model.py` packs a checkpoint and measures what packing costs
(perplexity and onset masses before and after, on the test split).

The bundle is a .npz: tensors by their Hugging Face names, the embedding as `wte.ids` / `wte.int8` /
`wte.scale` / `wte.fill`, the model's config.json as `config.json` (bytes) and a free-text `about`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from amt import vocab

EMBEDDING = "wte.weight"


def vocabulary_blocks(vocab_size: int) -> list[tuple[int, int]]:
    """[start, end) of each block of tokens of one kind, covering the vocabulary (the arrival-time one's
    onset, duration, note, REST, control onset, control duration, control note and special tokens; the
    interarrival one's time shifts, note-ons, note-offs and SEPARATOR)."""
    if vocab_size == vocab.VOCAB_SIZE:
        starts = [vocab.TIME_OFFSET, vocab.DUR_OFFSET, vocab.NOTE_OFFSET, vocab.REST, vocab.ATIME_OFFSET,
                  vocab.ADUR_OFFSET, vocab.ANOTE_OFFSET, vocab.SPECIAL_OFFSET]
    elif vocab_size == vocab.MIDI_VOCAB_SIZE:
        starts = [vocab.MIDI_TIME_OFFSET, vocab.MIDI_START_OFFSET, vocab.MIDI_END_OFFSET, vocab.MIDI_SEPARATOR]
    else:
        raise ValueError(f"a model of {vocab_size} tokens is neither arrival-time ({vocab.VOCAB_SIZE}) nor "
                         f"interarrival ({vocab.MIDI_VOCAB_SIZE})")
    return list(zip(starts, starts[1:] + [vocab_size]))


def pack_weights(tensors: dict[str, np.ndarray], seen: np.ndarray) -> dict[str, np.ndarray]:
    """The bundle's arrays from a model's tensors (Hugging Face names) and the ids of the tokens its training
    data holds."""
    embedding = np.asarray(tensors[EMBEDDING], np.float32)
    kept = np.zeros(len(embedding), bool)
    kept[np.asarray(seen, np.int64)] = True
    fill = np.zeros((len(vocabulary_blocks(len(embedding))), embedding.shape[1]), np.float32)
    for b, (start, end) in enumerate(vocabulary_blocks(len(embedding))):
        unseen = ~kept[start:end]
        if unseen.any():
            fill[b] = embedding[start:end][unseen].mean(0)
    rows = embedding[kept]
    scale = np.maximum(np.abs(rows).max(1), 1e-30) / 127.0
    out = {name: np.asarray(t, np.float16) for name, t in tensors.items() if name != EMBEDDING}
    out.update({"wte.ids": np.flatnonzero(kept).astype(np.int32), "wte.int8": np.round(rows / scale[:, None]).astype(np.int8),
                "wte.scale": scale.astype(np.float16), "wte.fill": fill.astype(np.float16),
                "wte.shape": np.asarray(embedding.shape, np.int64)})
    return out


def unpack_weights(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's float32 tensors (Hugging Face names) from a bundle's arrays."""
    size, width = (int(x) for x in arrays["wte.shape"])
    embedding = np.empty((size, width), np.float32)
    for b, (start, end) in enumerate(vocabulary_blocks(size)):
        embedding[start:end] = arrays["wte.fill"][b].astype(np.float32)
    ids = arrays["wte.ids"]
    embedding[ids] = arrays["wte.int8"].astype(np.float32) * arrays["wte.scale"].astype(np.float32)[:, None]
    out = {name: np.asarray(a, np.float32) for name, a in arrays.items()
           if not name.startswith("wte.") and name not in ("config.json", "about")}
    out[EMBEDDING] = embedding
    return out


def training_token_ids(cache: str | os.PathLike) -> np.ndarray:
    """The distinct token ids of a training cache (`amt preprocess`'s OUT/train)."""
    from amt.perplexity import read_cache

    return np.unique(read_cache(cache))


def pack(checkpoint: str | os.PathLike, training_cache: str | os.PathLike, out: str | os.PathLike,
         about: str = "") -> Path:
    """Write the bundle of a Levanter checkpoint or Hugging Face folder, keeping the embedding rows of the
    tokens that `training_cache` (the cache it was trained on) holds."""
    import tempfile

    from safetensors.numpy import load_file

    from amt.checkpoints import export_hf, is_hf_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(checkpoint) if is_hf_folder(checkpoint) else export_hf(checkpoint, tmp)
        tensors = load_file(str(folder / "model.safetensors"))
        config = (folder / "config.json").read_bytes()
    arrays = pack_weights(tensors, training_token_ids(training_cache))
    arrays["config.json"] = np.frombuffer(config, np.uint8)
    arrays["about"] = np.frombuffer(about.encode(), np.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as file:  # (np.savez_compressed would append .npz to a name without it)
        np.savez_compressed(file, **arrays)
    return out


def about(bundle: str | os.PathLike) -> str:
    with np.load(bundle) as arrays:
        return bytes(arrays["about"]).decode()


def unpack(bundle: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the bundle as a Hugging Face GPT-2 folder (config.json, model.safetensors) at `out`, unless a
    folder unpacked from this very bundle is already there; returns `out`."""
    from safetensors.numpy import save_file

    out = Path(out)
    stamp = out / "bundle.json"
    source = {"bundle": os.path.abspath(bundle), "size": os.path.getsize(bundle), "mtime": os.path.getmtime(bundle)}
    if stamp.exists() and json.loads(stamp.read_text()) == source and (out / "model.safetensors").exists():
        return out
    with np.load(bundle) as file:
        arrays = {name: file[name] for name in file.files}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_bytes(bytes(arrays["config.json"]))
    save_file(unpack_weights(arrays), str(out / "model.safetensors"), metadata={"format": "pt"})
    stamp.write_text(json.dumps(source))
    return out
