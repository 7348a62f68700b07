"""The preprocessing job: MIDI files -> anticipatory training sequences -> Levanter caches (and text).

Design (see README, "Preprocessing"):
- The source's files, in a fixed order, are cut into *shards* of `files_per_shard` files. A shard is the unit
  of work, of training packing and of resumption: each shard packs its training copies in one stream (the
  reference's packing), so the output depends only on the inputs and options, never on the worker count.
  Validation and test (small, never augmented) come back from the workers as copies and are packed by the
  writer as one stream per split in file order: the held-out caches do not depend on augment, shard size or
  workers, and lose only their stream's last partial window.
- A file never stops or stalls the job: any exception of one file, or a file over its budget of bytes, notes
  or wall seconds (enforced in the worker), is a skip naming the file and the reason in stats.json.
- Shards run in parallel on an existing engine: processes on one machine (`--workers N`), or a Ray cluster
  (`--ray-address auto`). Levanter's own Ray cache builder counts *input* rows in its ledger and gives one
  output row per input row, so it cannot emit fixed 1,024-token rows from a packing that spans files; we
  therefore run the shards ourselves and write Levanter's cache format (`TreeStore`) directly.
- Results are written in shard order. After each shard, `progress.json` is atomically replaced with the rows
  written so far; a killed job (even kill -9) resumes by trimming the caches to those rows and redoing the
  shards after them, so no sequence is lost or duplicated. A finished job is not redone; changed options
  are refused (or, with `overwrite`, rebuilt from scratch), as are changed inputs (a digest of the source's
  listing). A finished job is verified before it is reported as built.
- Each flush records the SHA-256 of its rows; a finished cache carries them (`amt_rows.json`), and
  `verify_cache` checks a cache against them (called by `amt train`, `amt eval perplexity`, `--verify`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from amt import midi, ops, sequences, sources, vocab

logger = logging.getLogger("amt.preprocess")

FORMAT_VERSION = 2  # bump when the tokens a given input produces change
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
    max_file_bytes: int = 16 << 20
    """Per-file budget: larger files are skipped unread (Lakh's largest is about 1 MB)."""
    max_file_notes: int = 1_000_000
    """Per-file budget: files with more notes are skipped before tokenization (Lakh's most: ~100k)."""
    max_file_seconds: float = 60.0
    """Per-file budget: a file still being read or tokenized after this wall time is skipped (enforced in
    the worker, so one file cannot stall a shard; a safety valve, far above any real file's time)."""

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
        for key in ("max_file_bytes", "max_file_notes", "max_file_seconds"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}: must be > 0, got {getattr(self, key)}")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"out: {self.out} is a file, not a folder")

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
            "budget": {"bytes": self.max_file_bytes, "notes": self.max_file_notes, "seconds": self.max_file_seconds},
        }


# --- one shard ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardSettings:
    augment: int
    seed: int
    split: str
    encoding: str
    filters: sequences.FileFilter
    max_bytes: int = 16 << 20
    max_notes: int = 1_000_000
    max_seconds: float = 60.0


HELD_OUT = ("validation", "test")  # packed as one stream each, in file order, by the writer


class FileSkipped(Exception):
    """A file the job skips: `reason` goes to stats.json (files_skipped), `detail` to skipped_files."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@contextlib.contextmanager
def wall_time_limit(seconds: float | None, expired: Callable[[], Exception]):
    """Raise `expired()` in the block after `seconds` of wall time (None or 0: no limit).

    SIGALRM interrupts Python code (mido, music21, augmentation, packing); compiled code (the numba reader) is
    not interrupted, but it is linear in the file's bytes, which the bytes budget bounds. Signals work only in a
    process's main thread, where pool and Ray workers run tasks; elsewhere (and off Unix) the block runs unbounded.
    """
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise expired()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _time_budget(seconds: float):
    """Raise FileSkipped('budget_seconds') in the block after `seconds` of wall time."""
    return wall_time_limit(seconds, lambda: FileSkipped("budget_seconds", f"still running after {seconds:g} s"))


def _new_split_stats() -> dict:
    return collections.Counter()


def _read_item(item: sources.MidiItem, max_bytes: int) -> bytes:
    problem = item.problem()
    if problem:
        raise FileSkipped("not_a_file", problem)
    try:
        size = item.size()
        if size > max_bytes:
            raise FileSkipped("budget_bytes", f"{size:,} bytes > {max_bytes:,}")
        return item.read()
    except OSError as error:
        raise FileSkipped("unreadable", str(error)) from error


def _tokenize(item, data: bytes, split: str, md5: str, settings: ShardSettings, counts) -> list:
    """The file's packable pieces (copies, or interarrival token arrays). Raises FileSkipped."""
    try:
        notes = midi.parse_midi(data, name=item.name)
    except midi.MidiError as error:
        raise FileSkipped("parse_error", error.reason) from error
    counts["files_parsed"] += 1
    if len(notes.onset) > settings.max_notes:
        raise FileSkipped("budget_notes", f"{len(notes.onset):,} notes > {settings.max_notes:,}")
    events, truncations = midi.notes_to_events(notes)
    events = ops.as_triples(events)
    reason = settings.filters.reason_to_skip(events)
    if reason:
        raise FileSkipped(reason)
    file_counts = collections.Counter(files_kept=1, truncated_durations=truncations)
    seconds = ops.max_time(events, seconds=True)
    file_counts["seconds_of_music"] += seconds
    rate = vocab.EVENT_SIZE * len(events) / seconds
    file_counts["file_token_rate_sum"] += rate
    file_counts["file_token_rate_sum_sq"] += rate * rate
    if settings.encoding == "interarrival":
        file_counts["truncated_interarrivals"] += notes.interarrival_truncations
        pieces = [np.asarray(notes.interarrival, dtype=np.int64)]
    else:
        copies = settings.augment if split == "train" else 1  # validation and test are never augmented
        pieces = []
        for copy in sequences.file_copies(events, copies, settings.seed, int(md5[:16], 16)):
            file_counts["rest_tokens"] += copy.rests
            file_counts["control_events"] += copy.controls
            file_counts["copy_tokens"] += len(copy.tokens)
            pieces.append(copy)
    for piece in pieces:  # times are still absolute here (windows make them relative): they must fit int32
        tokens = piece if isinstance(piece, np.ndarray) else piece.tokens
        if len(tokens) and (tokens.min() < 0 or tokens.max() > np.iinfo(np.int32).max):
            raise FileSkipped("token_out_of_range", f"tokens {tokens.min()}..{tokens.max()}")
    counts.update(file_counts)
    return pieces


def _new_packer(encoding: str):
    return sequences.InterarrivalPacker() if encoding == "interarrival" else sequences.SequencePacker()


def process_shard(items: list[sources.MidiItem], settings: ShardSettings) -> dict:
    """Tokenize one shard: training rows packed per shard, held-out files' pieces for the writer to pack.

    Never raises for a file: any exception while reading or tokenizing one (and a file over its budget of
    bytes, notes or seconds) becomes a skip naming the file and the reason.
    """
    rows: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    held_out: dict[str, list] = collections.defaultdict(list)
    stats: dict[str, collections.Counter] = collections.defaultdict(_new_split_stats)
    skipped = []
    packers = {}
    for item in items:
        split = None
        try:
            with _time_budget(settings.max_seconds):
                data = _read_item(item, settings.max_bytes)
                md5 = sources.content_md5(item.name, data)
                split = sources.split_of(md5) if settings.split == "md5" else "train"
                stats[split]["files_seen"] += 1
                pieces = _tokenize(item, data, split, md5, settings, stats[split])
            # packed outside the budget: a packer is never left half-updated by an interrupt
            if split in HELD_OUT:
                held_out[split].extend(pieces)
            else:
                packer = packers.setdefault(split, _new_packer(settings.encoding))
                for piece in pieces:
                    rows[split].extend(packer.add(piece))
        except Exception as error:  # noqa: BLE001  (a file must never stop the job)
            if not isinstance(error, FileSkipped):
                error = FileSkipped("error", f"{type(error).__name__}: {error}")
            if split is None:
                stats["unassigned"]["files_seen"] += 1
            stats[split or "unassigned"][f"skipped_{error.reason}"] += 1
            skipped.append({"file": item.name, "split": split, "reason": error.reason, "detail": error.detail})
    for split, packer in packers.items():
        stats[split]["dropped_windows"] += packer.dropped
        stats[split]["tail_tokens"] += packer.leftover_tokens
    out_rows = {split: _as_rows(r) for split, r in rows.items() if r}
    for split, r in out_rows.items():
        stats[split]["sequences"] += len(r)
        stats[split]["tokens"] += r.size
    return {"rows": out_rows, "held_out": dict(held_out), "stats": {s: dict(c) for s, c in stats.items()},
            "skipped": skipped, "files": len(items)}


def _as_rows(rows: list[np.ndarray]) -> np.ndarray:
    """(n, 1,024) int32, checked: a value that does not fit int32 or the vocabulary is a bug, never truncated."""
    array = np.asarray(rows, dtype=np.int64).reshape(-1, vocab.CONTEXT_SIZE)
    if array.size and (array.min() < 0 or array.max() >= vocab.VOCAB_SIZE):
        raise AssertionError(f"packed tokens outside the vocabulary: {array.min()}..{array.max()}")
    return array.astype(np.int32)


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
MANIFEST_FILE = "amt_rows.json"  # in each split's cache: the row count and a checksum per written block


class ConfigMismatch(RuntimeError):
    pass


class CacheError(ValueError):
    """A cache that is missing, incomplete or damaged; the message names it and says what to do."""


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as file:
        json.dump(obj, file, indent=1, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def _rows_digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype="<i4").tobytes()).hexdigest()


def _packer_state(packer) -> dict:
    return {"buffer": packer.buffer.tolist(), "flag": int(getattr(packer, "flag", 0))}


def _restore_packer(encoding: str, state: dict | None):
    packer = _new_packer(encoding)
    if state:
        packer.buffer = np.asarray(state["buffer"], dtype=np.int64)
        if hasattr(packer, "flag"):
            packer.flag = state["flag"]
    return packer


class _Outputs:
    """Per-split cache stores and text files, cut back to what `progress` says was committed.

    A killed run may have written rows (or whole splits) after its last commit: they are trimmed away
    when a split is opened, so the shards after the commit can be written again exactly once. Each flush
    records the checksum of the rows it wrote; a finished cache carries them in `amt_rows.json`.
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
        # rows written since the last commit, whatever holds them: a text-only job commits as often (it once never
        # did before its end, so a killed one started again from its first shard)
        self.pending_rows += len(rows)
        if self.config.cache:
            self.pending[split].append(rows)
        if self.config.text:
            text = self._text(split)
            text.write("".join(" ".join(map(str, row.tolist())) + "\n" for row in rows).encode())
            text.flush()
            os.fsync(text.fileno())
            progress["text_bytes"][split] = text.tell()
        progress["rows"][split] = progress["rows"].get(split, 0) + len(rows)

    def flush(self) -> None:
        """Write the buffered rows and their checksums; the caller commits the progress after this."""
        from levanter.store.jagged_array import PreparedBatch

        checksums = self.progress.setdefault("checksums", {})
        for split, chunks in self.pending.items():
            rows = np.concatenate(chunks)
            ends = np.arange(1, len(rows) + 1, dtype=np.int64) * rows.shape[1]
            self._store(split).extend_with_batch({"input_ids": PreparedBatch(rows.reshape(-1), ends, None)})
            checksums.setdefault(split, []).append([len(rows), _rows_digest(rows)])
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
            blocks = self.progress["checksums"].get(split, [])
            assert sum(n for n, _ in blocks) == rows, (split, rows, blocks)
            manifest = {"rows": rows, "row_tokens": vocab.CONTEXT_SIZE, "blocks": blocks, "identity": identity}
            _write_json_atomic(self.out / split / MANIFEST_FILE, manifest)


def _open_text(path: str):
    if "://" in path:
        import fsspec

        return fsspec.open(path, "r").open()
    return open(path)


def verify_cache(path: str | os.PathLike, *, missing_ok: bool = False, max_rows: int | None = None) -> int:
    """Check one split's cache (e.g. OUT/test) against its `amt_rows.json`; returns its row count.

    Reads the rows (as training does, through the offsets) and compares the count and each block's SHA-256
    with those recorded when the rows were written. Raises CacheError naming the cache and what failed: a
    deleted data file (read back as the store's fill value, zeros), changed bytes, a truncated or missing
    file. `missing_ok`: a cache without the manifest (written before checksums existed) passes with a warning.
    `max_rows`: read at most about this many rows (the first, last and evenly spaced blocks), after checking
    that every data file of a local cache exists; for a quick check of a very large cache before training
    (Lakh at augment 30 is ~58M rows, 240 GB decompressed). None: every row.
    """
    path = os.fspath(path).rstrip("/")
    rebuild = "rebuild it with `amt preprocess ... --overwrite`"
    try:
        with _open_text(f"{path}/{MANIFEST_FILE}") as file:
            manifest = json.load(file)
    except FileNotFoundError:
        if missing_ok:
            logger.warning("%s has no %s (written before caches carried checksums): not verified", path, MANIFEST_FILE)
            return -1
        raise CacheError(f"{path}: no {MANIFEST_FILE}: not a finished cache of `amt preprocess`; {rebuild}") from None
    except (OSError, ValueError) as error:
        raise CacheError(f"{path}/{MANIFEST_FILE}: unreadable ({error}); {rebuild}") from error
    from levanter.store.tree_store import TreeStore

    width = manifest["row_tokens"]
    blocks, start = [], 0
    for count, digest in manifest["blocks"]:
        blocks.append((start, count, digest))
        start += count
    _check_data_files_exist(path, manifest["rows"] * width)
    if max_rows is not None and manifest["rows"] > max_rows:
        wanted = max(2, max_rows * len(blocks) // manifest["rows"])
        keep = set(np.linspace(0, len(blocks) - 1, wanted).round().astype(int).tolist())
        blocks = [b for i, b in enumerate(blocks) if i in keep]
        logger.info("%s: checking %d of %d blocks (`amt preprocess --verify %s` checks all)",
                    path, len(blocks), len(manifest["blocks"]), path)
    try:
        with _uncached_reads():
            store = TreeStore.open(CACHE_EXEMPLAR, path, mode="r").tree["input_ids"]
        stored_rows = int(store.offsets[0].read().result())
        if stored_rows != manifest["rows"]:
            raise CacheError(f"{path}: holds {stored_rows} rows, its {MANIFEST_FILE} says {manifest['rows']}; {rebuild}")
        for start, count, digest in blocks:
            ends = np.asarray(store.offsets[start + 1 : start + count + 1].read().result())
            if not np.array_equal(ends, np.arange(start + 1, start + count + 1, dtype=np.int64) * width):
                raise CacheError(f"{path}: the offsets of rows {start}-{start + count - 1} are damaged; {rebuild}")
            rows = np.asarray(store.data[start * width : (start + count) * width].read().result())
            if _rows_digest(rows) != digest:
                raise CacheError(
                    f"{path}: rows {start}-{start + count - 1} fail their checksum (a data file under "
                    f"{path}/input_ids/data was changed or removed); {rebuild}"
                )
    except CacheError:
        raise
    except Exception as error:  # tensorstore: a truncated or missing chunk, a damaged zarr.json...
        raise CacheError(f"{path}: unreadable ({type(error).__name__}: {error}); {rebuild}") from error
    return manifest["rows"]


def _uncached_reads():
    """Read the bytes on disk, not this process's cache of them: Levanter's read-only stores share one
    tensorstore cache pool per process, so a cache read once (e.g. by a first check) and damaged afterwards
    would otherwise read back as it was. Levanter's own disposable zero-byte context, where it has one."""
    import contextlib

    from levanter.store import jagged_array

    return getattr(jagged_array, "_no_cache_read_context", contextlib.nullcontext)()


def _check_data_files_exist(path: str, tokens: int) -> None:
    """Every shard file of a local cache's data array exists (a deleted one reads as zeros, silently)."""
    if "://" in path:
        return
    data = Path(path) / "input_ids" / "data"
    try:
        meta = json.loads((data / "zarr.json").read_text())
        grid = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    except FileNotFoundError:
        return  # another layout (zarr 2): the reads below still check every row
    except (OSError, ValueError, KeyError, IndexError) as error:
        raise CacheError(f"{data}/zarr.json: unreadable ({error}); rebuild it with `amt preprocess ... --overwrite`") from error
    encoding = meta.get("chunk_key_encoding", {})
    if encoding.get("name") != "default" or encoding.get("configuration", {}).get("separator", "/") != "/":
        return  # chunk files named otherwise: the reads below still check every row
    for index in range(-(-tokens // grid)):
        if not (data / "c" / str(index)).exists():
            raise CacheError(f"{data}/c/{index}: missing (rows from {index * grid // 1024} on would read as zeros); "
                             "rebuild it with `amt preprocess ... --overwrite`")


def verify_output(out: str | os.PathLike) -> dict[str, int]:
    """verify_cache on every split cache of a finished job's folder; returns the rows per split."""
    out = Path(out)
    found = {split: verify_cache(out / split) for split in sources.SPLITS if (out / split).exists()}
    if not found:
        raise CacheError(f"{out}: no train/validation/test caches here")
    return found


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
            "packing": {"train": "one stream per shard", "validation": "one stream in file order",
                        "test": "one stream in file order"}.get(split, "none (files skipped before their split was known)"),
            "hours_of_music": c["seconds_of_music"] / 3600,
            "tokens_per_second_of_music": {"mean": mean, "std": math.sqrt(var)},
        }
    return {
        "config": progress["identity"],
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
            "finished": False, "seconds": 0.0, "checksums": {}, "open_windows": {}}


def _load_progress(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        progress = json.loads(path.read_text())
        for key in ("identity", "next_shard", "rows", "text_bytes", "stats", "skipped", "finished"):
            progress[key]
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigMismatch(f"{path} is damaged ({type(error).__name__}: {error}); "
                             "rerun with --overwrite to rebuild this output") from error
    return progress


def _clear_outputs(out: Path) -> None:
    for name in (*sources.SPLITS, PROGRESS_FILE, STATS_FILE, *(f"{s}.txt" for s in sources.SPLITS)):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run(config: PreprocessConfig) -> dict:
    """Run (or resume, or verify and skip if finished) a preprocessing job. Returns the stats.

    Training rows are packed per shard (in parallel); validation and test files come back from the workers
    as copies and are packed here, one stream per split in file order, so the held-out caches do not depend
    on workers, shard size or augmentation. The open window of each held-out stream is committed with the
    progress, so a killed job resumes it exactly.
    """
    config.validate()
    sources.describe_source(config.source)  # fail early, naming the source, if it does not exist
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    identity = {**config.identity(), "source_contents": sources.source_digest(config.source)}
    progress_path = out / PROGRESS_FILE
    try:
        progress = _load_progress(progress_path)
    except ConfigMismatch:
        if not config.overwrite:
            raise
        progress = None
    if progress is not None and progress["identity"] != identity:
        changed = sorted(k for k in identity if progress["identity"].get(k) != identity[k])
        if not config.overwrite:
            what = ", ".join(changed) + (" (the source's files changed)" if "source_contents" in changed else "")
            raise ConfigMismatch(
                f"{out} holds a preprocessing job with other options or inputs ({what} differ); "
                "use a new --out, or --overwrite to rebuild it"
            )
        logger.warning("rebuilding %s: options changed (%s)", out, ", ".join(changed))
        progress = None
    if progress is not None and progress["finished"]:
        stats = json.loads((out / STATS_FILE).read_text())
        if config.cache:
            verify_output(out)
        logger.info("%s is already built and verified; nothing to do", out)
        return {**stats, "already_built": True, "verified": config.cache}
    if progress is None:
        _clear_outputs(out)
        progress = _fresh_progress(identity)
        _write_json_atomic(progress_path, progress)
    elif progress["next_shard"]:
        logger.info("resuming %s after shard %d", out, progress["next_shard"])

    settings = ShardSettings(config.augment, config.seed, config.split, config.encoding, config.filters,
                             config.max_file_bytes, config.max_file_notes, config.max_file_seconds)
    outputs = _Outputs(out, config, progress)
    held_out = {s: _restore_packer(config.encoding, progress.get("open_windows", {}).get(s)) for s in HELD_OUT}

    def commit() -> None:
        outputs.flush()
        progress["open_windows"] = {s: _packer_state(p) for s, p in held_out.items()}
        _write_json_atomic(progress_path, progress)

    start, done_before = time.time(), progress["seconds"]
    items = sources.iter_items(config.source, config.dataset_column)
    shards = itertools.islice(_shards(iter(items), config.shard_size), progress["next_shard"], None)
    bar = _progress_bar(config)
    tasks = ((chunk, settings) for _, chunk in shards)
    for result in _ordered_map(process_shard, tasks, config.workers, config.ray_address):
        for split in sources.SPLITS:
            if split in result["rows"]:
                outputs.write(split, result["rows"][split])
            pieces = result["held_out"].get(split, [])
            if pieces:
                packer = held_out[split]
                dropped = packer.dropped
                rows = [row for piece in pieces for row in packer.add(piece)]
                counts = progress["stats"].setdefault(split, {})
                counts["dropped_windows"] = counts.get("dropped_windows", 0) + packer.dropped - dropped
                if rows:
                    outputs.write(split, _as_rows(rows))
                    counts["sequences"] = counts.get("sequences", 0) + len(rows)
                    counts["tokens"] = counts.get("tokens", 0) + len(rows) * vocab.CONTEXT_SIZE
        for skip in result["skipped"]:
            if skip["reason"] not in ("short", "long", "too_many_instruments"):
                logger.warning("skipped %s: %s (%s)", skip["file"], skip["reason"], skip["detail"])
        _merge_stats(progress["stats"], result["stats"])
        progress["skipped"].extend(result["skipped"])
        progress["next_shard"] += 1
        progress["seconds"] = done_before + time.time() - start
        if outputs.pending_rows >= config.flush_rows:
            commit()
        if bar is not None:
            bar.update(result["files"])
    if bar is not None:
        bar.close()
    for split, packer in held_out.items():  # the end of each held-out stream: its open window is the tail
        if split in progress["stats"]:
            progress["stats"][split]["tail_tokens"] = packer.leftover_tokens
    outputs.finish(identity)
    stats = summarize(progress, config, progress["seconds"])
    _write_json_atomic(out / STATS_FILE, stats)
    progress["finished"] = True
    progress["open_windows"] = {}
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
