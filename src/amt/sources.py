"""Where MIDI files come from: a folder tree, a manifest, a .tar.gz, or a Hugging Face `datasets` dataset.

Every source yields `MidiItem`s in a deterministic order, so that a job's shards (and so its output) are the
same on every run. Folder and manifest items carry a path that workers read; tar and dataset items carry
their bytes (a .tar.gz is streamed, never unpacked to disk).
"""

from __future__ import annotations

import hashlib
import re
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

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as file:
            return file.read()


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


def _folder_items(folder: Path) -> Iterator[MidiItem]:
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and is_midi_name(p.name)):
        yield MidiItem(name=path.relative_to(folder).as_posix(), path=str(path))


def _manifest_items(manifest: Path) -> Iterator[MidiItem]:
    base = manifest.parent
    with open(manifest, encoding="utf-8") as lines:
        for line in lines:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                path = Path(entry) if Path(entry).is_absolute() else base / entry
                yield MidiItem(name=entry, path=str(path))


def _tar_items(archive: Path) -> Iterator[MidiItem]:
    # streaming mode ("r|*"): members are read in archive order without seeking or unpacking to disk
    with tarfile.open(archive, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and is_midi_name(member.name):
                file = tar.extractfile(member)
                yield MidiItem(name=member.name, data=file.read() if file else b"")


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
    """What kind of source `source` is: folder, manifest, tar, dataset. Raises if it does not exist."""
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
    return "manifest"


def iter_items(source: str, dataset_column: str = "midi") -> Iterator[MidiItem]:
    """The MIDI files of a source, in a deterministic order."""
    kind = describe_source(source)
    if kind == "folder":
        return _folder_items(Path(source))
    if kind == "tar":
        return _tar_items(Path(source))
    if kind == "dataset":
        return _dataset_items(source, dataset_column)
    return _manifest_items(Path(source))
