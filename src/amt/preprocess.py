"""The preprocessing job: MIDI files -> anticipatory training sequences -> Levanter caches (and text).

Design (see README, "Preprocessing"):
- The source's files, in a fixed order, are cut into *shards* of `files_per_shard` files. A shard is the unit
  of work, of packing and of resumption: each shard packs its files' sequences in one stream per split (the
  reference's packing), so the output depends only on the inputs and options, never on the worker count.
- Shards run in parallel on an existing engine: processes on one machine (`--workers N`), or a Ray cluster
  (`--ray-address auto`). Levanter's own Ray cache builder counts *input* rows in its ledger and gives one
  output row per input row, so it cannot emit fixed 1,024-token rows from a packing that spans files; we
  therefore run the shards ourselves and write Levanter's cache format (`TreeStore`) directly.
- Results are written in shard order. After each shard, `progress.json` is atomically replaced with the rows
  written so far; a killed job (even kill -9) resumes by trimming the caches to those rows and redoing the
  shards after them, so no sequence is lost or duplicated. A finished job is not redone; changed options
  are refused (or, with `overwrite`, rebuilt from scratch).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from amt import midi, ops, sequences, sources, vocab

logger = logging.getLogger("amt.preprocess")

FORMAT_VERSION = 1  # bump when the tokens a given input produces change
PROGRESS_FILE = "progress.json"
STATS_FILE = "stats.json"
ENCODINGS = ("arrival", "interarrival")
SPLIT_MODES = ("md5", "none")


@dataclass
class PreprocessConfig:
    """Options of `amt preprocess` (also the draccus config of `preprocess/build_caches.py`)."""

    source: str = ""
    """A folder (searched recursively for .mid/.midi/.kar), a manifest (one path a line, relative to the
    manifest's folder), a .tar.gz of MIDI files, a `datasets.save_to_disk` folder, or hf://NAME[:SPLIT]."""
    out: str = ""
    """Output folder: `train/`, `validation/`, `test/` Levanter caches, `stats.json`, `progress.json`."""
    augment: int = 1
    """Copies of each training file (the paper: 1 autoregressive, 30 anticipatory). Validation and test: 1."""
    workers: int = 1
    """Processes on this machine (or Ray CPUs when `ray_address` is set)."""
    seed: int = 0
    """Seed of the augmentations; each copy of each file draws from (seed, file MD5, copy)."""
    split: str = "md5"
    """md5: first hex digit of the file's MD5 (0-d train, e validation, f test); none: everything in train."""
    text: bool = False
    """Also write `<split>.txt`, one sequence a line (the reference's format)."""
    cache: bool = True
    """Write Levanter caches."""
    encoding: str = "arrival"
    """arrival (the paper's anticipatory tokens) or interarrival (the MIDI-like baseline, augment 1)."""
    files_per_shard: int | None = None
    """Files per unit of work and packing stream. Default: max(16, 256 // augment)."""
    dataset_column: str = "midi"
    """For dataset sources: the column holding MIDI bytes or paths."""
    ray_address: str | None = None
    """Run the shards on a Ray cluster (`auto` = the one this machine belongs to)."""
    overwrite: bool = False
    """Rebuild when `out` holds a job with other options (otherwise that is refused)."""
    flush_rows: int = 16384
    """Rows buffered before they are written to the caches and the progress is committed (Levanter's
    compressed, sharded store is several times faster written in large batches). A killed job redoes
    at most the shards since the last flush."""
    progress_bar: bool = True
    filters: sequences.FileFilter = field(default_factory=sequences.FileFilter)

    def validate(self) -> None:
        if not self.source:
            raise ValueError("source: no MIDI source given")
        if not self.out:
            raise ValueError("out: no output folder given")
        if "://" in self.out:
            raise ValueError(f"out: {self.out}: the job writes to a local folder; copy it to a bucket afterwards "
                             "(gsutil -m cp -r OUT gs://BUCKET/...), training and evaluation read caches from there")
        if self.augment < 1:
            raise ValueError(f"augment: must be >= 1, got {self.augment}")
        if self.workers < 1:
            raise ValueError(f"workers: must be >= 1, got {self.workers}")
        if self.split not in SPLIT_MODES:
            raise ValueError(f"split: must be one of {SPLIT_MODES}, got {self.split!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding: must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.encoding == "interarrival" and self.augment != 1:
            raise ValueError("augment: the interarrival encoding has no anticipation, so no augmentation (use 1)")
        if not (self.text or self.cache):
            raise ValueError("nothing to write: enable cache or text")
        if self.flush_rows < 1:
            raise ValueError(f"flush_rows: must be >= 1, got {self.flush_rows}")
        if self.files_per_shard is not None and self.files_per_shard < 1:
            raise ValueError(f"files_per_shard: must be >= 1, got {self.files_per_shard}")

    @property
    def shard_size(self) -> int:
        return self.files_per_shard or max(16, 256 // self.augment)

    def identity(self) -> dict:
        """Everything that determines the output rows: a job is resumed only under the same identity."""
        return {
            "format_version": FORMAT_VERSION,
            "source": os.path.abspath(self.source) if not self.source.startswith("hf://") else self.source,
            "augment": self.augment,
            "seed": self.seed,
            "split": self.split,
            "encoding": self.encoding,
            "files_per_shard": self.shard_size,
            "dataset_column": self.dataset_column,
            "text": self.text,
            "cache": self.cache,
            "filters": dataclasses.asdict(self.filters),
        }


# --- one shard ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardSettings:
    augment: int
    seed: int
    split: str
    encoding: str
    filters: sequences.FileFilter


def _new_split_stats() -> dict:
    return collections.Counter()


def process_shard(items: list[sources.MidiItem], settings: ShardSettings) -> dict:
    """Tokenize and pack one shard. Pure apart from reading the files; never raises for a bad file."""
    rows: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    stats: dict[str, collections.Counter] = collections.defaultdict(_new_split_stats)
    skipped = []
    packers: dict[str, sequences.SequencePacker | sequences.InterarrivalPacker] = {}
    for item in items:
        try:
            data = item.read()
        except OSError as error:
            skipped.append({"file": item.name, "split": None, "reason": "unreadable", "detail": str(error)})
            continue
        md5 = sources.content_md5(item.name, data)
        split = sources.split_of(md5) if settings.split == "md5" else "train"
        counts = stats[split]
        counts["files_seen"] += 1
        try:
            notes = midi.parse_midi(data, name=item.name)
        except midi.MidiError as error:
            counts["skipped_parse_error"] += 1
            skipped.append({"file": item.name, "split": split, "reason": "parse_error", "detail": error.reason})
            continue
        counts["files_parsed"] += 1
        events, truncations = midi.notes_to_events(notes)
        events = ops.as_triples(events)
        reason = settings.filters.reason_to_skip(events)
        if reason:
            counts[f"skipped_{reason}"] += 1
            skipped.append({"file": item.name, "split": split, "reason": reason, "detail": ""})
            continue
        counts["files_kept"] += 1
        counts["truncated_durations"] += truncations
        seconds = ops.max_time(events, seconds=True)
        counts["seconds_of_music"] += seconds
        rate = vocab.EVENT_SIZE * len(events) / seconds
        counts["file_token_rate_sum"] += rate
        counts["file_token_rate_sum_sq"] += rate * rate
        if settings.encoding == "interarrival":
            packer = packers.setdefault(split, sequences.InterarrivalPacker())
            counts["truncated_interarrivals"] += notes.interarrival_truncations
            rows[split].extend(packer.add(notes.interarrival))
            continue
        packer = packers.setdefault(split, sequences.SequencePacker())
        copies = settings.augment if split == "train" else 1  # validation and test are never augmented
        file_key = int(md5[:16], 16)
        for copy in sequences.file_copies(events, copies, settings.seed, file_key):
            counts["rest_tokens"] += copy.rests
            counts["control_events"] += copy.controls
            counts["copy_tokens"] += len(copy.tokens)
            rows[split].extend(packer.add(copy))
    for split, packer in packers.items():
        stats[split]["dropped_windows"] += packer.dropped
        stats[split]["tail_tokens"] += packer.leftover_tokens
    out_rows = {
        split: np.asarray(r, dtype=np.int32).reshape(-1, vocab.CONTEXT_SIZE) for split, r in rows.items() if r
    }
    for split, r in out_rows.items():
        stats[split]["sequences"] += len(r)
        stats[split]["tokens"] += r.size
    return {"rows": out_rows, "stats": {s: dict(c) for s, c in stats.items()}, "skipped": skipped, "files": len(items)}


# --- engines ----------------------------------------------------------------------------------------------
def _ordered_map(fn: Callable, tasks: Iterable[tuple], workers: int, ray_address: str | None) -> Iterator:
    """fn(*task) for each task, results in task order, at most 2 x workers tasks in flight."""
    window = 2 * workers
    if ray_address is not None:
        try:
            import ray  # an optional extra since Levanter no longer depends on it
        except ImportError:
            raise ImportError("--ray-address needs Ray, an optional extra: pip install -e '.[ray]'") from None

        if not ray.is_initialized():
            kwargs = {"address": ray_address} if ray_address != "local" else {"num_cpus": workers}
            ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
        remote = ray.remote(fn)
        pending = collections.deque()
        for task in tasks:
            pending.append(remote.remote(*task))
            if len(pending) >= window:
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())
        return
    if workers == 1:
        for task in tasks:
            yield fn(*task)
        return
    import multiprocessing

    # forkserver, not fork: a forked child of a process that holds threads (tensorstore, tqdm) can deadlock;
    # the server imports this module (numba's compiled reader included) once, so workers start in ms
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["amt.preprocess"])
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending = collections.deque()
        for task in tasks:
            pending.append(pool.submit(fn, *task))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# --- outputs ----------------------------------------------------------------------------------------------
CACHE_EXEMPLAR = {"input_ids": np.zeros((0,), dtype=np.int32)}


class ConfigMismatch(RuntimeError):
    pass


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as file:
        json.dump(obj, file, indent=1, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


class _Outputs:
    """Per-split cache stores and text files, cut back to what `progress` says was committed.

    A killed run may have written rows (or whole splits) after its last commit: they are trimmed away
    when a split is opened, so the shards after the commit can be written again exactly once.
    """

    def __init__(self, out: Path, config: PreprocessConfig, progress: dict):
        self.out, self.config, self.progress = out, config, progress
        self.stores = {}
        self.texts = {}
        self.pending: dict[str, list[np.ndarray]] = collections.defaultdict(list)
        self.pending_rows = 0
        self.committed_rows = dict(progress["rows"])  # what the caches held at the last commit
        for split in sources.SPLITS:  # outputs of splits with nothing committed are leftovers
            if split not in progress["rows"]:
                shutil.rmtree(out / split, ignore_errors=True)
                (out / f"{split}.txt").unlink(missing_ok=True)

    def _store(self, split: str):
        if split not in self.stores:
            from levanter.store.tree_store import TreeStore

            store = TreeStore.open(CACHE_EXEMPLAR, str(self.out / split), mode="a", cache_metadata=False)
            store.trim_to_size(self.committed_rows.get(split, 0))
            self.stores[split] = store
        return self.stores[split]

    def _text(self, split: str):
        if split not in self.texts:
            path = self.out / f"{split}.txt"
            text = open(path, "r+b" if path.exists() else "w+b")
            text.truncate(self.progress["text_bytes"].get(split, 0))
            text.seek(0, os.SEEK_END)
            self.texts[split] = text
        return self.texts[split]

    def write(self, split: str, rows: np.ndarray) -> None:
        """Buffer rows (text goes straight to its file: a resumed job cuts it back to the last commit)."""
        progress = self.progress
        if self.config.cache:
            self.pending[split].append(rows)
            self.pending_rows += len(rows)
        if self.config.text:
            text = self._text(split)
            text.write("".join(" ".join(map(str, row.tolist())) + "\n" for row in rows).encode())
            text.flush()
            os.fsync(text.fileno())
            progress["text_bytes"][split] = text.tell()
        progress["rows"][split] = progress["rows"].get(split, 0) + len(rows)

    def flush(self) -> None:
        """Write the buffered rows; the caller commits the progress after this."""
        from levanter.store.jagged_array import PreparedBatch

        for split, chunks in self.pending.items():
            rows = np.concatenate(chunks)
            ends = np.arange(1, len(rows) + 1, dtype=np.int64) * rows.shape[1]
            self._store(split).extend_with_batch({"input_ids": PreparedBatch(rows.reshape(-1), ends, None)})
        self.pending.clear()
        self.pending_rows = 0

    def finish(self, identity: dict) -> None:
        self.flush()
        if self.config.text:
            for split in self.progress["rows"]:
                self._text(split)  # cut a text file a killed run left longer
        for text in self.texts.values():
            text.close()
        if not self.config.cache:
            return
        from levanter.store.cache import CacheLedger, CacheMetadata

        for split, rows in self.progress["rows"].items():
            self._store(split)
            ledger = CacheLedger(
                total_num_rows=rows, shard_rows={"amt": rows}, is_finished=True, finished_shards=["amt"],
                field_counts={}, metadata=CacheMetadata(preprocessor_metadata={"amt": identity}),
            )
            ledger._serialize_and_commit(str(self.out / split))


# --- statistics ------------------------------------------------------------------------------------------
def _merge_stats(total: dict, shard: dict) -> None:
    for split, counts in shard.items():
        into = total.setdefault(split, {})
        for key, value in counts.items():
            into[key] = into.get(key, 0) + value


def summarize(progress: dict, config: PreprocessConfig, seconds: float) -> dict:
    """stats.json: per split counts, skips by reason, hours of music, tokens per second of music, tail loss."""
    splits = {}
    for split, counts in sorted(progress["stats"].items()):
        c = collections.Counter(counts)
        kept = c["files_kept"]
        mean = c["file_token_rate_sum"] / kept if kept else 0.0
        var = max(c["file_token_rate_sum_sq"] / kept - mean**2, 0.0) if kept else 0.0
        skipped = {k[len("skipped_"):]: v for k, v in sorted(c.items()) if k.startswith("skipped_")}
        produced = c["tokens"] + c["tail_tokens"]
        splits[split] = {
            "files_seen": c["files_seen"],
            "files_parsed": c["files_parsed"],
            "files_kept": kept,
            "files_skipped": skipped,
            "sequences": c["sequences"],
            "tokens": c["tokens"],
            "rest_tokens": c["rest_tokens"],
            "control_events": c["control_events"],
            "truncated_durations": c["truncated_durations"],
            "truncated_interarrivals": c["truncated_interarrivals"],
            "dropped_windows_over_100s": c["dropped_windows"],
            "tail_tokens_dropped": c["tail_tokens"],
            "tail_loss_fraction": c["tail_tokens"] / produced if produced else 0.0,
            "hours_of_music": c["seconds_of_music"] / 3600,
            "tokens_per_second_of_music": {"mean": mean, "std": math.sqrt(var)},
        }
    return {
        "config": config.identity(),
        "splits": splits,
        "skipped_files": progress["skipped"],
        "shards": progress["next_shard"],
        "seconds": seconds,
    }


# --- the job -----------------------------------------------------------------------------------------------
def _shards(items: Iterator[sources.MidiItem], size: int) -> Iterator[tuple[int, list[sources.MidiItem]]]:
    for index in itertools.count():
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield index, chunk


def _fresh_progress(identity: dict) -> dict:
    return {"identity": identity, "next_shard": 0, "rows": {}, "text_bytes": {}, "stats": {}, "skipped": [],
            "finished": False, "seconds": 0.0}


def _clear_outputs(out: Path) -> None:
    for name in (*sources.SPLITS, PROGRESS_FILE, STATS_FILE, *(f"{s}.txt" for s in sources.SPLITS)):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run(config: PreprocessConfig) -> dict:
    """Run (or resume, or skip if finished) a preprocessing job. Returns the stats."""
    config.validate()
    sources.describe_source(config.source)  # fail early, naming the source, if it does not exist
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    identity = config.identity()
    progress_path = out / PROGRESS_FILE
    progress = json.loads(progress_path.read_text()) if progress_path.exists() else None
    if progress is not None and progress["identity"] != identity:
        changed = sorted(k for k in identity if progress["identity"].get(k) != identity[k])
        if not config.overwrite:
            raise ConfigMismatch(
                f"{out} holds a preprocessing job with other options ({', '.join(changed)} differ); "
                "use a new --out, or --overwrite to rebuild it"
            )
        logger.warning("rebuilding %s: options changed (%s)", out, ", ".join(changed))
        progress = None
    if progress is not None and progress["finished"]:
        logger.info("%s is already built; nothing to do", out)
        return json.loads((out / STATS_FILE).read_text())
    if progress is None:
        _clear_outputs(out)
        progress = _fresh_progress(identity)
        _write_json_atomic(progress_path, progress)
    elif progress["next_shard"]:
        logger.info("resuming %s after shard %d", out, progress["next_shard"])

    settings = ShardSettings(config.augment, config.seed, config.split, config.encoding, config.filters)
    outputs = _Outputs(out, config, progress)
    start, done_before = time.time(), progress["seconds"]
    items = sources.iter_items(config.source, config.dataset_column)
    shards = itertools.islice(_shards(iter(items), config.shard_size), progress["next_shard"], None)
    bar = _progress_bar(config)
    tasks = ((chunk, settings) for _, chunk in shards)
    for result in _ordered_map(process_shard, tasks, config.workers, config.ray_address):
        for split in sorted(result["rows"]):
            outputs.write(split, result["rows"][split])
        for skip in result["skipped"]:
            if skip["reason"] in ("parse_error", "unreadable"):
                logger.warning("skipped %s: %s (%s)", skip["file"], skip["reason"], skip["detail"])
        _merge_stats(progress["stats"], result["stats"])
        progress["skipped"].extend(result["skipped"])
        progress["next_shard"] += 1
        progress["seconds"] = done_before + time.time() - start
        if outputs.pending_rows >= config.flush_rows:
            outputs.flush()
            _write_json_atomic(progress_path, progress)
        if bar is not None:
            bar.update(result["files"])
    if bar is not None:
        bar.close()
    outputs.finish(identity)
    stats = summarize(progress, config, progress["seconds"])
    _write_json_atomic(out / STATS_FILE, stats)
    progress["finished"] = True
    _write_json_atomic(progress_path, progress)
    return stats


def _progress_bar(config: PreprocessConfig):
    if not config.progress_bar:
        return None
    from tqdm import tqdm

    return tqdm(desc="preprocess", unit="file", file=sys.stderr, dynamic_ncols=True)


def cache_fingerprint(out: str | os.PathLike) -> str:
    """A digest of every row of a finished job's caches, for comparing runs."""
    from levanter.store.cache import TreeCache

    digest = hashlib.sha256()
    for split in sources.SPLITS:
        path = Path(out) / split
        if path.exists():
            cache = TreeCache.load(str(path), CACHE_EXEMPLAR)
            digest.update(split.encode())
            for start in range(0, len(cache), 1024):
                for row in cache.get_batch_sync(list(range(start, min(start + 1024, len(cache))))):
                    digest.update(np.asarray(row["input_ids"], dtype=np.int32).tobytes())
    return digest.hexdigest()
