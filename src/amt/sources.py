"""Where MIDI files come from: a folder tree, a manifest, a .tar.gz, or a Hugging Face `datasets` dataset.

Every source yields `MidiItem`s in a deterministic order, so that a job's shards (and so its output) are the
same on every run. Folder and manifest items carry a path that workers read; tar and dataset items carry
their bytes (a .tar.gz is streamed, never unpacked to disk).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MIDI_SUFFIXES = (".mid", ".midi", ".kar")
SPLIT_BY_DIGIT = {**{d: "train" for d in "0123456789abcd"}, "e": "validation", "f": "test"}
SPLITS = ("train", "validation", "test")
_MD5_NAME = re.compile(r"^[0-9a-fA-F]{32}$")


@dataclass(frozen=True)
class MidiItem:
    name: str  # as shown in messages and stats: a path relative to the source, or a dataset row
    path: str | None = None
    data: bytes | None = None
    error: str | None = None  # why this entry is not a MIDI file to read (a directory, a dangling link...)

    def problem(self) -> str | None:
        """Why the entry cannot be read as a file (checked before opening: a FIFO would block), or None."""
        if self.error or self.data is not None:
            return self.error
        return entry_problem(self.path)

    def size(self) -> int:
        return len(self.data) if self.data is not None else os.stat(self.path).st_size

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as file:
            return file.read()


def entry_problem(path: str) -> str | None:
    """None for a regular file (or a link to one); else what the entry is, for stats.json."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symlink loop"
        if os.path.islink(path):
            return "a dangling symlink"
        return None  # missing, unreadable: reading it says why
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file (a device?)"


def is_midi_name(name: str) -> bool:
    return name.lower().endswith(MIDI_SUFFIXES)


def content_md5(name: str, data: bytes) -> str:
    """The file's MD5: its name when that is 32 hex digits (Lakh MIDI's naming), else the MD5 of its bytes."""
    stem = Path(name).name.split(".")[0]
    if _MD5_NAME.match(stem):
        return stem.lower()
    return hashlib.md5(data).hexdigest()


def split_of(md5: str) -> str:
    """Lakh MIDI's split by the first hex digit of the MD5: 0-d train, e validation, f test."""
    return SPLIT_BY_DIGIT[md5[0]]


def _folder_paths(folder: Path) -> list[Path]:
    """Every entry with a MIDI name under the folder, whatever it is (directories named x.mid, links, FIFOs
    too: the job records why it skips them). Symlinked directories are not followed (no loops)."""
    return sorted(p for p in folder.rglob("*") if is_midi_name(p.name))


def _folder_items(folder: Path) -> Iterator[MidiItem]:
    for path in _folder_paths(folder):
        yield MidiItem(name=path.relative_to(folder).as_posix(), path=str(path))


def _manifest_entries(manifest: Path) -> list[str]:
    try:
        text = manifest.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"source: {manifest} is neither a folder, a .tar.gz, a MIDI file nor a manifest "
                         "(a UTF-8 text file of paths, one a line)") from None
    return [e for e in (line.strip() for line in text.splitlines()) if e and not e.startswith("#")]


def _manifest_items(manifest: Path) -> Iterator[MidiItem]:
    base = manifest.parent
    for entry in _manifest_entries(manifest):
        path = Path(entry) if Path(entry).is_absolute() else base / entry
        yield MidiItem(name=entry, path=str(path))


def _tar_items(archive: Path) -> Iterator[MidiItem]:
    # streaming mode ("r|*"): members are read in archive order without seeking or unpacking to disk
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                if not is_midi_name(member.name):
                    continue
                if not member.isfile():
                    kind = "a directory" if member.isdir() else "a link" if member.issym() or member.islnk() else "not a regular file"
                    yield MidiItem(name=member.name, error=f"{kind} in the archive")
                    continue
                file = tar.extractfile(member)
                yield MidiItem(name=member.name, data=file.read() if file else b"")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ValueError(f"source: {archive} is not a readable tar archive ({type(error).__name__}: {error})") from error


def _dataset_items(location: str, column: str) -> Iterator[MidiItem]:
    import datasets

    if location.startswith("hf://"):
        name, _, split = location[len("hf://"):].partition(":")
        dataset = datasets.load_dataset(name, split=split or "train")
    else:
        dataset = datasets.load_from_disk(location)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = datasets.concatenate_datasets([dataset[k] for k in sorted(dataset)])
    if column not in dataset.column_names:
        raise KeyError(f"dataset {location} has no column {column!r} (columns: {dataset.column_names})")
    # a string column "name" (e.g. Lakh's MD5 file names) names the rows, and so decides their split
    has_names = "name" in dataset.column_names
    for index, row in enumerate(dataset):
        value = row[column]
        name = row["name"] if has_names else None
        if isinstance(value, dict):  # datasets' binary/"file" features: {"bytes": ..., "path": ...}
            data, path = value.get("bytes"), value.get("path")
            name = name or path or f"{column}[{index}]"
            yield MidiItem(name=name, data=data) if data is not None else MidiItem(name=name, path=path)
        elif isinstance(value, (bytes, bytearray)):
            yield MidiItem(name=name or f"{column}[{index}]", data=bytes(value))
        elif isinstance(value, str):
            yield MidiItem(name=name or value, path=value)
        else:
            raise TypeError(f"{location}: row {index} of column {column!r} is neither MIDI bytes nor a path")


def describe_source(source: str) -> str:
    """What kind of source `source` is: folder, manifest, tar, dataset, file (one MIDI file). Raises if it
    does not exist."""
    if source.startswith("hf://"):
        return "dataset"
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"MIDI source not found: {source}")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return "dataset"
        return "folder"
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    if is_midi_name(path.name):
        return "file"
    return "manifest"


def source_digest(source: str) -> str:
    """A digest of what the source lists (paths, sizes, modification times), so that a job is resumed only
    on the same inputs: a changed folder between a kill and its resume is refused, not mixed in."""
    kind = describe_source(source)
    digest = hashlib.sha256(kind.encode())
    if kind == "dataset" and source.startswith("hf://"):
        return hashlib.sha256(source.encode()).hexdigest()

    def add(name: str, path: str | os.PathLike) -> None:
        try:
            info = os.stat(path)
            digest.update(f"{name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        except OSError as error:
            digest.update(f"{name}\0{error.errno}\n".encode())

    path = Path(source)
    if kind == "folder":
        for entry in _folder_paths(path):
            add(entry.relative_to(path).as_posix(), entry)
    elif kind == "dataset":
        for entry in sorted(p for p in path.rglob("*") if p.is_file()):
            add(entry.relative_to(path).as_posix(), entry)
    elif kind == "manifest":
        add(path.name, path)
        for entry in _manifest_entries(path):
            add(entry, Path(entry) if Path(entry).is_absolute() else path.parent / entry)
    else:  # a tar or a single file
        add(path.name, path)
    return digest.hexdigest()


def iter_items(source: str, dataset_column: str = "midi") -> Iterator[MidiItem]:
    """The MIDI files of a source, in a deterministic order."""
    kind = describe_source(source)
    if kind == "folder":
        return _folder_items(Path(source))
    if kind == "tar":
        return _tar_items(Path(source))
    if kind == "dataset":
        return _dataset_items(source, dataset_column)
    if kind == "file":
        return iter([MidiItem(name=Path(source).name, path=source)])
    return _manifest_items(Path(source))
