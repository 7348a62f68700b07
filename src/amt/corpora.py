"""Real corpora rebuilt by a script: `python -m amt.corpora music21 --out data/music21-midi`.

The demo corpus (70 files) is too small to learn from. music21's wheel bundles a corpus of encoded scores
(Bach's chorales, fiddle-tune books in ABC, ...); this module writes the collections whose terms allow it
as MIDI files that `amt preprocess` reads like any folder. It needs music21 (`pip install
'amt-levanter[corpora]'`), mido and tqdm, and nothing heavy: it imports no jax or Levanter.

What the builder decides, and why:
- **Collections.** Only those in `COLLECTIONS`: public-domain music whose encodings music21 distributes with
  the encoders' permission and carry no restriction of their own. `EXCLUDED` lists the collections left out
  and why (non-commercial terms, rights reserved, GPL, copyrighted modern editions). Both are written into
  the output's ATTRIBUTION.md.
- **Instruments.** music21 writes every part as program 0, which would make a four-voice chorale one
  instrument to our tokens. Parts with notes are ranked by mean pitch, highest first, and take the
  collection's ensemble in that order, the lowest part always taking the ensemble's last (bass) instrument:
  chorales flute 73 / clarinet 71 / English horn 69 (then oboe 68, French horn 60) / bassoon 70; fiddle
  tunes violin 40 (then viola 41) / cello 42 (General MIDI programs, 0-based). A piece with more parts than
  its ensemble is skipped (`too_many_parts`).
- **Tempo.** A tempo the score gives (MusicXML `<sound tempo>`, ABC `Q:`) is kept. Otherwise the meter's
  beat is played at the collection's beats per minute (chorales 80, fiddle tunes 100): 4/4 at 80 or 100
  quarters a minute, 6/8 jigs at 100 dotted quarters (150 quarters), 2/2 reels at 100 halves (200).
- **Repeats** are played as written (`expandRepeats`); where music21 cannot expand them, or its expansion
  makes a piece more than 4 times longer (a few ABC tunes came out over an hour long), once through.
- **Names.** Each piece is written as `<collection>/<md5>.mid`, the MD5 of `music21:<path in the
  corpus>#<piece in the file>`: `amt preprocess --split md5` then splits by that name, not by the bytes, so
  a rebuild with other instrument or tempo rules (or another music21) keeps every piece in its split.
  `manifest.tsv` maps names back to sources and titles; pieces whose MIDI bytes equal an earlier piece's
  (in `COLLECTIONS`' order, over every build of the folder) are removed (`duplicate` in skipped.tsv).
- **Cache and resumption.** The unit of work is one source file (an ABC book holds many tunes); a record in
  `.records/` is written after its pieces, so a rerun skips finished sources and an interrupted run resumes.
  A piece that fails or runs past the time limit is skipped and recorded; it never stops the job.

Combine with the demo corpus through a manifest (one path a line, relative to the manifest's folder), e.g.
`(cd data && find music21-midi ../demo/midi -name '*.mid' | sort) > data/mini.txt`, then
`amt preprocess --source data/mini.txt ...`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import hashlib
import io
import json
import multiprocessing
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

MUSIC21_VERSION = "10.5.1"  # the version the corpus was built and checked with (pinned in the `corpora` extra)
RECORDS = ".records"
MANIFEST = "manifest.tsv"
SKIPPED = "skipped.tsv"
ATTRIBUTION = "ATTRIBUTION.md"

# General MIDI programs (0-based), highest part first; the last is the bass instrument
MAX_EXPANSION = 4  # repeats written out may lengthen a piece this much; music21 sometimes makes a reel last an hour
WOODWINDS = (73, 71, 69, 68, 60, 70)  # flute, clarinet, English horn, oboe, French horn, bassoon
FIDDLE = (40, 41, 42)  # violin, viola, cello


@dataclass(frozen=True)
class Collection:
    folder: str  # in music21's corpus
    suffixes: tuple[str, ...]
    ensemble: tuple[int, ...]
    beats_per_minute: float  # when the score gives no tempo
    source: str
    terms: str


COLLECTIONS = {
    c.folder: c
    for c in (
        Collection("bach", (".mxl",), WOODWINDS, 80,
                   "J. S. Bach, the chorales; MusicXML encodings bundled with music21 (many credit Margaret Greentree)",
                   "compositions public domain; encodings distributed in music21 with the encoder's permission, "
                   "no restriction in the files (the 3 Humdrum files with CCARH's rights notice are not read)"),
        Collection("ryansMammoth", (".abc",), FIDDLE, 100,
                   "Ryan's Mammoth Collection (Boston, 1883); ABC by Ray Davies, John Chambers and others",
                   "public domain (1883); transcriptions distributed in music21, no restriction in the files"),
        Collection("oneills1850", (".abc",), FIDDLE, 100,
                   "O'Neill's Music of Ireland (Chicago, 1903); ABC by Henrik Norbeck, Bob Safranek, "
                   "John Chambers, Trish O'Neil and others",
                   "public domain (1903); transcriptions distributed in music21, no restriction in the files"),
        Collection("airdsAirs", (".abc",), FIDDLE, 100,
                   "James Aird, A Selection of Scotch, English, Irish and Foreign Airs (Glasgow, 1782-1803); "
                   "ABC by Jack Campin",
                   "public domain (18th century); transcriptions distributed in music21, no restriction in the files"),
        Collection("miscFolk", (".abc",), FIDDLE, 100,
                   "Northumbrian Minstrelsy (1882) and other folk tunes; ABC by Jack Campin",
                   "public domain (19th century); transcriptions distributed in music21, no restriction in the files"),
    )
}

EXCLUDED = {
    "essenFolksong": "non-commercial distribution and use only (corpus/essenFolksong/license.txt)",
    "palestrina": "Copyright 2000 John Miller, 'rights to all derivative electronic formats reserved', "
                  "use under a licensing agreement (each file's header)",
    "josquin": "GNU GPL (copyleft, not permissive)",
    "monteverdi": "files carry the copyright of a modern edition (Ut Orpheus Edizioni 2003)",
    "trecento": "transcriptions from a modern edition (PMFC); no licence stated",
    "nottingham-dataset": "no licence stated",
}


class CorpusError(ValueError):
    """Bad arguments, reported in one line before anything heavy loads."""


# --- one piece ---------------------------------------------------------------------------------------------
def piece_name(identifier: str) -> str:
    """The file stem of a piece: the MD5 of its stable identifier (so `--split md5` follows the name)."""
    return hashlib.md5(identifier.encode("utf-8")).hexdigest()


def programs_for(parts: int, ensemble: tuple[int, ...]) -> list[int]:
    """Programs of `parts` parts ranked highest first: the ensemble's top `parts - 1`, then its bass."""
    if parts > len(ensemble):
        raise ValueError(f"{parts} parts, the ensemble has {len(ensemble)} instruments")
    if parts <= 1:
        return list(ensemble[:parts])
    return list(ensemble[: parts - 1]) + [ensemble[-1]]


def default_qpm(score, beats_per_minute: float) -> float:
    """Quarter notes a minute when the score gives no tempo: the first meter's beat at `beats_per_minute`."""
    from music21 import meter

    signatures = score.recurse().getElementsByClass(meter.TimeSignature)
    beat = signatures.first().beatDuration.quarterLength if signatures.first() is not None else 1.0
    return float(beats_per_minute * beat)


def score_to_midi(score, collection: Collection) -> tuple[bytes, dict]:
    """A music21 score as MIDI bytes with one program per part and a tempo; and what was decided."""
    from music21 import instrument, tempo
    from music21.midi import translate

    _unshare_conductor_marks(score)
    try:
        expanded = score.expandRepeats()
        if expanded.highestTime > MAX_EXPANSION * max(score.highestTime, 1):
            raise ValueError(f"expanded {expanded.highestTime / max(score.highestTime, 1):.0f}x")
        score, repeats = expanded, "expanded"
    except Exception as error:  # noqa: BLE001  (music21 raises several kinds on unexpandable repeats)
        repeats = f"once through ({type(error).__name__}: {error})" if isinstance(error, ValueError) else \
            f"once through ({type(error).__name__})"
        _strip_repeats(score)  # else music21's MIDI writer tries the same expansion and fails
    parts = [p for p in score.parts if p.recurse().notes]
    if not parts:
        raise ValueError("no notes")
    mean_pitch = [_mean_pitch(p) for p in parts]
    order = sorted(range(len(parts)), key=lambda i: -mean_pitch[i])  # stable: ties keep score order
    programs = [0] * len(parts)
    for rank, program in zip(order, programs_for(len(parts), collection.ensemble)):
        programs[rank] = program
    for part, program in zip(parts, programs):
        for old in list(part.recurse().getElementsByClass(instrument.Instrument)):
            old.activeSite.remove(old)
        voice = instrument.instrumentFromMidiProgram(program)
        voice.midiProgram = program
        part.insert(0, voice)
    for part in score.parts:
        if part not in parts:
            score.remove(part)
    marks = score.recurse().getElementsByClass(tempo.MetronomeMark)
    if marks.first() is not None:
        qpm, tempo_from = marks.first().getQuarterBPM(), "score"
    else:
        qpm, tempo_from = default_qpm(score, collection.beats_per_minute), "default"
        parts[0].insert(0, tempo.MetronomeMark(number=qpm, referent=1.0))
    data = translate.streamToMidiFile(score).writestr()
    return data, {"parts": len(parts), "programs": programs, "qpm": round(qpm or 0, 2),
                  "tempo": tempo_from, "repeats": repeats}


def _strip_repeats(score) -> None:
    """Plain barlines for repeat signs, no endings, segni or codas: the score played once through."""
    from music21 import bar, repeat, spanner, stream

    for measure in score.recurse().getElementsByClass(stream.Measure):
        if isinstance(measure.leftBarline, bar.Repeat):
            measure.leftBarline = bar.Barline()
        if isinstance(measure.rightBarline, bar.Repeat):
            measure.rightBarline = bar.Barline()
    kinds = (repeat.RepeatExpression, spanner.RepeatBracket)
    for mark, site in [(m, m.activeSite) for m in score.recurse().getElementsByClass(kinds)]:
        site.remove(mark)


def _unshare_conductor_marks(score) -> None:
    """Give each placement of a meter, key or tempo mark its own object.

    music21's ABC reader can place one TimeSignature object twice in a part (e.g. O'Neill's tune 1), and its
    MIDI writer then refuses the file ("already found in this Stream") when it gathers the conductor track.
    """
    import copy

    from music21 import key, meter, tempo

    kinds = (meter.TimeSignature, key.KeySignature, tempo.MetronomeMark)
    placements = [(mark, mark.activeSite) for mark in score.recurse().getElementsByClass(kinds)]
    seen = set()
    for mark, site in placements:
        if id(mark) in seen:
            site.replace(mark, copy.deepcopy(mark))
        seen.add(id(mark))


def _mean_pitch(part) -> float:
    pitches = [p.midi for n in part.recurse().notes for p in n.pitches]
    return sum(pitches) / len(pitches) if pitches else 0.0


def midi_summary(data: bytes) -> tuple[float, int]:
    """Seconds and notes of MIDI bytes (mido: the reader the project's exact path uses)."""
    import mido

    midi = mido.MidiFile(file=io.BytesIO(data))
    notes = sum(1 for track in midi.tracks for m in track if m.type == "note_on" and m.velocity > 0)
    return float(midi.length), notes


def time_limit(seconds: float | None):
    """Raise TimeoutError in this (main) thread after `seconds` (a stuck parse must not stall a worker)."""
    from amt.preprocess import wall_time_limit

    return wall_time_limit(seconds, lambda: TimeoutError(f"over {seconds:g} s"))


# --- one source file (the unit of work) --------------------------------------------------------------------
def corpus_root() -> Path:
    import music21

    return Path(music21.__file__).parent / "corpus"


def source_files(collection: Collection, root: Path) -> list[str]:
    """The collection's source files, as paths relative to the corpus, sorted."""
    folder = root / collection.folder
    return sorted(p.relative_to(root).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in collection.suffixes)


def split_abc(text: str) -> tuple[str, list[str]]:
    """An ABC file as its header (the lines before the first `X:`) and its tunes (each from its `X:` line)."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("X:")]
    if not starts:
        return text, []
    ends = starts[1:] + [len(lines)]
    return "".join(lines[: starts[0]]), ["".join(lines[a:b]) for a, b in zip(starts, ends)]


def piece_loaders(path: Path) -> list:
    """One parse function per piece of a corpus file, in file order.

    An ABC book is cut into its tunes and each tune parsed alone: parsed whole, music21 links every tune to
    the book, and each later copy (repeat expansion, the MIDI writer's own copy) walks all of them, so a
    100-tune book took minutes instead of seconds. Each tune keeps the book's header lines.
    """
    from music21 import converter

    if path.suffix.lower() == ".abc":
        header, tunes = split_abc(path.read_text(encoding="utf-8"))
        if len(tunes) > 1:
            return [lambda tune=tune: converter.parse(header + tune, format="abc") for tune in tunes]
    return [lambda: converter.parse(path, forceSource=True, storePickle=False)]


def record_path(out: Path, source: str) -> Path:
    return out / RECORDS / (source.replace("/", "__") + ".json")


def build_source(source: str, out: str, timeout: float | None) -> dict:
    """Write the pieces of one corpus file; return (and store) its record. Never raises for a bad piece."""
    from music21 import converter, stream

    out_dir = Path(out)
    collection = COLLECTIONS[source.split("/")[0]]
    pieces, skipped = [], []
    started = time.time()
    try:
        loaders = piece_loaders(corpus_root() / source)
    except Exception as error:  # noqa: BLE001  (an unreadable file is skipped, recorded)
        loaders = []
        skipped.append({"source": source, "index": "", "reason": _reason(error), "detail": _detail(error)})
    for index, load in enumerate(loaders, start=1):
        identifier = f"music21:{source}#{index}"
        try:
            with time_limit(timeout):
                score = load()
                if isinstance(score, stream.Opus):  # a file read whole that holds several pieces
                    raise ValueError(f"{len(score.scores)} pieces where one was expected")
                data, decided = score_to_midi(score, collection)
                seconds, notes = midi_summary(data)
        except Exception as error:  # noqa: BLE001
            skipped.append({"source": source, "index": index, "reason": _reason(error), "detail": _detail(error)})
            continue
        name = piece_name(identifier)
        path = out_dir / collection.folder / f"{name}.mid"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".mid.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        title = (score.metadata.title if score.metadata is not None else None) or ""
        pieces.append({"name": f"{collection.folder}/{name}.mid", "collection": collection.folder,
                       "source": source, "index": index, "title": " ".join(str(title).split()),
                       "seconds": round(seconds, 3), "notes": notes,
                       "bytes_md5": hashlib.md5(data).hexdigest(), **decided})
    record = {"source": source, "pieces": pieces, "skipped": skipped, "seconds": round(time.time() - started, 2)}
    path = record_path(out_dir, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)  # written last: a source with a record is done
    return record


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ValueError) and "no notes" in str(error):
        return "no_notes"
    if isinstance(error, ValueError) and "parts, the ensemble" in str(error):
        return "too_many_parts"
    return "error"


def _detail(error: BaseException) -> str:
    text = " ".join(str(error).split())[:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _init_worker() -> None:
    # music21 warns on stderr for every odd ABC construct; a batch job prints its own summary instead
    import warnings

    warnings.simplefilter("ignore")


# --- the job -----------------------------------------------------------------------------------------------
def build_music21(out: str | os.PathLike, collections: list[str] | None = None, workers: int | None = None,
                  limit: int | None = None, timeout: float | None = 300.0, progress: bool | None = None) -> dict:
    """Build (or finish building) the music21 corpus in `out`; return the summary that stats.json holds."""
    names = list(collections or COLLECTIONS)
    _check_collections(names)
    try:
        import music21
    except ImportError as error:
        raise CorpusError("music21 is not installed: pip install 'amt-levanter[corpora]' "
                          f"(tested with music21=={MUSIC21_VERSION})") from error
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = corpus_root()
    sources = [s for name in names for s in source_files(COLLECTIONS[name], root)[:limit]]
    todo = [s for s in sources if not record_path(out, s).exists()]
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    started = time.time()
    bar = tqdm(total=len(sources), initial=len(sources) - len(todo), unit="file", desc="music21 corpus",
               disable=(not progress) if progress is not None else None, dynamic_ncols=True)
    with bar:
        if workers == 1:
            _init_worker()
            for source in todo:
                build_source(source, str(out), timeout)
                bar.update()
        else:
            context = multiprocessing.get_context("spawn")  # never fork a parent that may hold jax threads
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                        initializer=_init_worker) as pool:
                futures = {pool.submit(build_source, s, str(out), timeout): s for s in todo}
                for future in concurrent.futures.as_completed(futures):
                    try:
                        future.result()
                    except Exception as error:  # noqa: BLE001  (a dead worker: the source is retried next run)
                        tqdm.write(f"music21 corpus: {futures[future]}: {_detail(error)} (not recorded; rerun)")
                    bar.update()
    summary = write_outputs(out, sources, music21.__version__, names)
    summary["seconds"] = round(time.time() - started, 1)
    summary["built_now"] = len(todo)
    (out / "stats.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _check_collections(names: list[str]) -> None:
    for name in names:
        if name in EXCLUDED:
            raise CorpusError(f"collection {name!r} is excluded: {EXCLUDED[name]}")
        if name not in COLLECTIONS:
            raise CorpusError(f"unknown collection {name!r} (choose from {', '.join(COLLECTIONS)})")


def write_outputs(out: Path, sources: list[str], version: str, names: list[str]) -> dict:
    """manifest.tsv, skipped.tsv and ATTRIBUTION.md from the records of `sources`; drop duplicate pieces.

    Which of several pieces with the same MIDI bytes stays is decided over every record in the folder (each
    build's, whatever collections it named), in one fixed order (COLLECTIONS', then the source, then the piece),
    the first whose file is there; the others' files are deleted. Decided in this run's order instead, a rerun
    over other collections, or the same in another order, listed a file an earlier run had deleted, or deleted
    the only copy left."""
    order = {name: i for i, name in enumerate(COLLECTIONS)}
    records = {path: json.loads(path.read_text()) for path in sorted((out / RECORDS).glob("*.json"))}
    every = sorted((piece for record in records.values() for piece in record["pieces"]),
                   key=lambda p: (order.get(p["collection"], len(order)), p["source"], p["index"]))
    kept = {}  # MIDI bytes -> the piece that stays
    for piece in every:
        if piece["bytes_md5"] not in kept and (out / piece["name"]).exists():
            kept[piece["bytes_md5"]] = piece["name"]
    for piece in every:
        if kept.get(piece["bytes_md5"], piece["name"]) != piece["name"]:
            (out / piece["name"]).unlink(missing_ok=True)
    pieces, skipped = [], []
    for source in sources:
        path = record_path(out, source)
        if path not in records:
            continue
        record = records[path]
        skipped.extend(record["skipped"])
        for piece in record["pieces"]:
            first = kept.get(piece["bytes_md5"])
            if first is None:  # no copy on disk (deleted by hand): rebuilt once its record is removed
                skipped.append({"source": piece["source"], "index": piece["index"], "reason": "missing",
                                "detail": f"{piece['name']} is gone; remove {path.relative_to(out)} to rebuild it"})
            elif first != piece["name"]:
                skipped.append({"source": piece["source"], "index": piece["index"], "reason": "duplicate",
                                "detail": f"same MIDI bytes as {first}"})
            else:
                pieces.append(piece)
    columns = ["name", "collection", "source", "index", "title", "parts", "programs", "qpm", "tempo",
               "repeats", "seconds", "notes"]
    _write_tsv(out / MANIFEST, columns, [{**p, "programs": " ".join(map(str, p["programs"]))} for p in pieces])
    _write_tsv(out / SKIPPED, ["source", "index", "reason", "detail"], skipped)
    (out / ATTRIBUTION).write_text(attribution(version, names, pieces))
    by_collection = {}
    for name in names:
        mine = [p for p in pieces if p["collection"] == name]
        by_collection[name] = {"pieces": len(mine), "hours": round(sum(p["seconds"] for p in mine) / 3600, 2)}
    return {
        "music21": version,
        "sources": len(sources),
        "sources_done": sum(record_path(out, s).exists() for s in sources),
        "pieces": len(pieces),
        "hours": round(sum(p["seconds"] for p in pieces) / 3600, 2),
        "notes": sum(p["notes"] for p in pieces),
        "skipped": dict(Counter(s["reason"] for s in skipped)),
        "collections": by_collection,
    }


def _write_tsv(path: Path, columns: list[str], rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, columns, delimiter="\t", extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def attribution(version: str, names: list[str], pieces: list[dict]) -> str:
    counts = Counter(p["collection"] for p in pieces)
    rows = "\n".join(f"| `{n}/` | {counts[n]} | {COLLECTIONS[n].source} | {COLLECTIONS[n].terms} |" for n in names)
    excluded = "\n".join(f"- `{n}`: {why}" for n, why in EXCLUDED.items())
    return f"""# Sources and terms of this corpus

MIDI written by `python -m amt.corpora music21` (amt-levanter) from the corpus bundled in the PyPI wheel
`music21=={version}` (software BSD-3-Clause, Copyright (c) 2006-2026 Michael Scott Asato Cuthbert and the
music21 contributors). Changes made: each part given its own General MIDI program, a tempo where the score
gives none, repeats written out (see `manifest.tsv` and the docstring of `amt.corpora`).

music21's corpus note (`music21/corpus/license.txt`) says the encodings are distributed with the permission
of their encoders, that the music is, to its authors' knowledge, out of copyright in the United States or
licensed for use, and that restrictions, where there are any, are stated in the files or their folders.
The collections below state none and their music is in the public domain; no collection has an explicit
open licence of its own. Collections whose files or folders state restrictions were left out.

| folder | pieces | source | terms |
|---|---|---|---|
{rows}

Left out:
{excluded}
"""


# --- command line ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m amt.corpora", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Build a real MIDI corpus from permissively usable sources (cached: a rerun skips done files).")
    commands = parser.add_subparsers(dest="corpus", required=True)
    m21 = commands.add_parser("music21", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                              help="music21's bundled corpus (Bach chorales, fiddle-tune books)")
    m21.add_argument("--out", required=True, help="output folder, e.g. data/music21-midi")
    m21.add_argument("--collections", default=",".join(COLLECTIONS), help="comma-separated music21 corpus folders")
    m21.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    m21.add_argument("--limit", type=int, default=None, help="at most this many source files per collection")
    m21.add_argument("--timeout", type=float, default=300.0, help="seconds per source file or piece before skipping it")
    m21.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: on a terminal)")
    args = parser.parse_args(argv)
    try:
        if args.workers < 1:
            raise CorpusError(f"--workers must be >= 1, got {args.workers}")
        if args.limit is not None and args.limit < 1:
            raise CorpusError(f"--limit must be >= 1, got {args.limit}")
        summary = build_music21(args.out, [c.strip() for c in args.collections.split(",") if c.strip()],
                                args.workers, args.limit, args.timeout, args.progress)
    except CorpusError as error:
        print(f"amt.corpora: error: {error}", file=sys.stderr)
        return 2
    skipped = ", ".join(f"{n} {r}" for r, n in sorted(summary["skipped"].items())) or "none"
    print(f"music21 corpus: {summary['pieces']} pieces, {summary['hours']:.2f} hours, {summary['notes']} notes "
          f"in {args.out} ({summary['built_now']} of {summary['sources']} source files built now, "
          f"{summary['seconds']:.0f} s); skipped: {skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
