"""The music21 corpus builder: one program per part, names the MD5 split follows, cached, resumable, bad pieces
recorded (the tests that read or build scores are skipped when music21 is not installed: it is the optional
`corpora` extra; those of the builder's own logic run without it)."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from amt import corpora, midi, ops, sources

needs_music21 = pytest.mark.skipif(importlib.util.find_spec("music21") is None,
                                   reason="music21 is the optional `corpora` extra")


def _manifest(out: Path) -> list[dict]:
    with open(out / corpora.MANIFEST, encoding="utf-8") as file:
        return list(csv.DictReader(file, delimiter="\t"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two chorales (5 and 4 parts) and two fiddle tunes, built by the command line with a pool of 2."""
    out = tmp_path_factory.mktemp("music21-midi")
    args = ["music21", "--out", str(out), "--collections", "bach,ryansMammoth", "--limit", "2", "--workers", "2",
            "--no-progress"]
    assert corpora.main(args) == 0
    return out, args


@needs_music21
def test_parts_get_distinct_programs_that_midi_reads_back(built):
    out, _ = built
    rows = _manifest(out)
    assert [r["collection"] for r in rows] == ["bach", "bach", "ryansMammoth", "ryansMammoth"]
    for row in rows:
        programs = [int(p) for p in row["programs"].split()]
        assert len(programs) == int(row["parts"]) and len(set(programs)) == len(programs), row
        events = ops.as_triples(midi.midi_to_events(out / row["name"]))
        assert sorted(ops.instruments(events)) == sorted(programs), row["name"]
        assert len(events) == int(row["notes"])
        assert float(row["qpm"]) > 0 and float(row["seconds"]) > 10
    four_part = next(r for r in rows if r["parts"] == "4")
    assert four_part["programs"] == "73 71 69 70"  # soprano flute, alto clarinet, tenor English horn, bass bassoon
    assert all(r["programs"] == "40" for r in rows if r["collection"] == "ryansMammoth")
    attribution = (out / corpora.ATTRIBUTION).read_text()
    assert "essenFolksong" in attribution and "non-commercial" in attribution


@needs_music21
def test_names_fix_the_split_whatever_the_bytes(built):
    out, _ = built
    for row in _manifest(out):
        stem = Path(row["name"]).stem
        assert stem == corpora.piece_name(f"music21:{row['source']}#{row['index']}")
        data = (out / row["name"]).read_bytes()
        assert sources.content_md5(row["name"], data) == stem  # preprocess splits by the name, not the bytes
        assert sources.content_md5(row["name"], data + b"\0") == stem


@needs_music21
def test_second_run_skips_and_an_interrupted_run_resumes_with_the_same_bytes(built, capsys):
    out, args = built
    rows = _manifest(out)
    stamps = {r["name"]: (out / r["name"]).stat().st_mtime_ns for r in rows}
    assert corpora.main(args[:-2] + ["1", "--no-progress"]) == 0
    assert "0 of 4 source files built now" in capsys.readouterr().out
    assert {r["name"]: (out / r["name"]).stat().st_mtime_ns for r in rows} == stamps
    # a run killed after writing a piece but before its record: the source is built again, byte for byte
    victim = rows[-1]
    before = (out / victim["name"]).read_bytes()
    corpora.record_path(out, victim["source"]).unlink()
    (out / victim["name"]).unlink()
    assert corpora.main(args[:-2] + ["1", "--no-progress"]) == 0
    assert "1 of 4 source files built now" in capsys.readouterr().out
    assert (out / victim["name"]).read_bytes() == before
    assert _manifest(out) == rows


@needs_music21
def test_a_failing_piece_is_recorded_and_the_job_goes_on(tmp_path, monkeypatch):
    real = corpora.score_to_midi

    def flaky(score, collection):
        if collection.folder == "bach" and len(score.parts) == 5:
            raise RuntimeError("broken on purpose")
        return real(score, collection)

    monkeypatch.setattr(corpora, "score_to_midi", flaky)
    summary = corpora.build_music21(tmp_path, ["bach"], workers=1, limit=2, progress=False)
    assert summary["pieces"] == 1 and summary["skipped"] == {"error": 1}
    with open(tmp_path / corpora.SKIPPED, encoding="utf-8") as file:
        (skipped,) = list(csv.DictReader(file, delimiter="\t"))
    assert skipped["source"] == "bach/bwv1.6.mxl" and "broken on purpose" in skipped["detail"]
    assert json.loads((tmp_path / "stats.json").read_text())["sources_done"] == 2


def test_bad_arguments_fail_in_one_line(tmp_path, capsys):
    assert corpora.main(["music21", "--out", str(tmp_path), "--collections", "essenFolksong"]) == 2
    assert "excluded: non-commercial" in capsys.readouterr().err
    assert corpora.main(["music21", "--out", str(tmp_path), "--collections", "bachh"]) == 2
    assert "unknown collection 'bachh'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_programs_for_keeps_the_bass_instrument_for_the_lowest_part():
    assert corpora.programs_for(4, corpora.WOODWINDS) == [73, 71, 69, 70]
    assert corpora.programs_for(2, corpora.WOODWINDS) == [73, 70]
    assert corpora.programs_for(1, corpora.FIDDLE) == [40]
    with pytest.raises(ValueError, match="parts"):
        corpora.programs_for(4, corpora.FIDDLE)


def test_a_stuck_piece_times_out():
    import time

    with pytest.raises(TimeoutError, match="over 0.2 s"):
        with corpora.time_limit(0.2):
            time.sleep(2)
    with corpora.time_limit(0.2):  # and the timer is gone afterwards
        pass
    time.sleep(0.3)


@needs_music21
def test_a_tune_whose_repeats_cannot_be_expanded_is_played_once_through():
    from music21 import converter

    score = converter.parse(corpora.corpus_root() / "ryansMammoth/BossJig.abc", forceSource=True, storePickle=False)
    data, decided = corpora.score_to_midi(score, corpora.COLLECTIONS["ryansMammoth"])
    assert decided["repeats"] == "once through (ExpanderException)"
    assert decided["qpm"] == 150  # 6/8 without a tempo: dotted quarter at 100
    seconds, notes = corpora.midi_summary(data)
    assert notes > 90 and seconds > 15


def test_an_abc_book_is_cut_into_tunes_that_keep_its_header():
    header, tunes = corpora.split_abc("%abc-2.1\nI:linebreak $\n\nX:1\nT:One\nK:D\nDEF|\n\nX:2\nT:Two\nK:G\nGAB|\n")
    assert header == "%abc-2.1\nI:linebreak $\n\n"
    assert tunes == ["X:1\nT:One\nK:D\nDEF|\n\n", "X:2\nT:Two\nK:G\nGAB|\n"]
    assert corpora.split_abc("T:no tune\n") == ("T:no tune\n", [])


def test_a_piece_with_as_many_parts_as_its_ensemble_takes_all_of_it():
    """The ensemble is the most parts a collection plays: a three-part fiddle tune is violin, viola, cello and a
    six-part chorale uses every woodwind; only one part more is `too_many_parts` (the boundary is `>`)."""
    assert corpora.programs_for(3, corpora.FIDDLE) == [40, 41, 42]
    assert corpora.programs_for(6, corpora.WOODWINDS) == [73, 71, 69, 68, 60, 70]
    with pytest.raises(ValueError, match="7 parts, the ensemble has 6 instruments"):
        corpora.programs_for(7, corpora.WOODWINDS)


def test_each_skipped_piece_is_recorded_under_its_reason():
    """skipped.tsv's reason column (and stats.json's counts) tell a timeout, a score without notes and one with
    too many parts from any other error, from the messages score_to_midi and programs_for raise."""
    assert corpora._reason(TimeoutError("over 300 s")) == "timeout"
    assert corpora._reason(ValueError("no notes")) == "no_notes"
    with pytest.raises(ValueError) as too_many:
        corpora.programs_for(4, corpora.FIDDLE)
    assert corpora._reason(too_many.value) == "too_many_parts"
    assert corpora._reason(ValueError("expanded 9x")) == "error"
    assert corpora._reason(RuntimeError("no notes")) == "error"  # only score_to_midi's ValueError


def _piece(name: str, source: str, bytes_md5: str) -> dict:
    return {"name": name, "collection": "ryansMammoth", "source": source, "index": 1, "title": "", "parts": 1,
            "programs": [40], "qpm": 100.0, "tempo": "default", "repeats": "expanded", "seconds": 30.0,
            "notes": 100, "bytes_md5": bytes_md5}


def test_pieces_with_the_same_bytes_are_kept_once_whatever_their_names(tmp_path):
    """Duplicates are found by the MD5 of the MIDI bytes: every piece has its own name (the MD5 of its source and
    index), so two sources that hold the same tune write different names with the same bytes. The first in source
    order is kept; the later one's file is deleted and recorded as `duplicate`; a different piece stays."""
    pieces = {"ryansMammoth/A.abc": [_piece("ryansMammoth/aaaa.mid", "ryansMammoth/A.abc", "11" * 16)],
              "ryansMammoth/B.abc": [_piece("ryansMammoth/bbbb.mid", "ryansMammoth/B.abc", "11" * 16),
                                     _piece("ryansMammoth/cccc.mid", "ryansMammoth/B.abc", "22" * 16)]}
    (tmp_path / "ryansMammoth").mkdir()
    for source, mine in pieces.items():
        corpora.record_path(tmp_path, source).parent.mkdir(exist_ok=True)
        corpora.record_path(tmp_path, source).write_text(json.dumps({"source": source, "pieces": mine,
                                                                      "skipped": [], "seconds": 1.0}))
        for piece in mine:
            (tmp_path / piece["name"]).write_bytes(b"MThd")
    summary = corpora.write_outputs(tmp_path, list(pieces), "10.5.1", ["ryansMammoth"])
    assert [r["name"] for r in _manifest(tmp_path)] == ["ryansMammoth/aaaa.mid", "ryansMammoth/cccc.mid"]
    assert summary["pieces"] == 2 and summary["skipped"] == {"duplicate": 1}
    assert sorted(p.name for p in (tmp_path / "ryansMammoth").iterdir()) == ["aaaa.mid", "cccc.mid"]
    with open(tmp_path / corpora.SKIPPED, encoding="utf-8") as file:
        (skipped,) = list(csv.DictReader(file, delimiter="\t"))
    assert skipped == {"source": "ryansMammoth/B.abc", "index": "1", "reason": "duplicate",
                       "detail": "same MIDI bytes as ryansMammoth/aaaa.mid"}


def test_the_copy_that_stays_does_not_depend_on_which_collections_a_rerun_names(tmp_path):
    """Two collections hold the same tune. Whatever a later build of the same folder names (one collection, or
    both in the other order), the copy that stays is the same (COLLECTIONS' order: ryansMammoth's), every file
    the manifest lists is there and the folder holds the tune once. (Decided in each run's order, a rerun over
    oneills1850 listed a file deleted before, and both orders in turn deleted both copies.) A copy deleted by
    hand is recorded as missing, not listed."""
    sources = {"ryansMammoth/A.abc": "ryansMammoth/aaaa.mid", "oneills1850/B.abc": "oneills1850/bbbb.mid"}
    for source, name in sources.items():
        piece = {**_piece(name, source, "11" * 16), "collection": source.split("/")[0]}
        corpora.record_path(tmp_path, source).parent.mkdir(exist_ok=True)
        corpora.record_path(tmp_path, source).write_text(json.dumps({"source": source, "pieces": [piece],
                                                                      "skipped": [], "seconds": 1.0}))
        (tmp_path / name).parent.mkdir()
        (tmp_path / name).write_bytes(b"MThd")
    runs = [["ryansMammoth/A.abc", "oneills1850/B.abc"], ["oneills1850/B.abc"],
            ["oneills1850/B.abc", "ryansMammoth/A.abc"]]
    for run in runs:
        summary = corpora.write_outputs(tmp_path, run, "10.5.1", [s.split("/")[0] for s in run])
        listed = [r["name"] for r in _manifest(tmp_path)]
        assert listed == ([] if run == ["oneills1850/B.abc"] else ["ryansMammoth/aaaa.mid"]), run
        assert summary["skipped"] == {"duplicate": 1}, run
        assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.mid")) == ["ryansMammoth/aaaa.mid"]
    (tmp_path / "ryansMammoth" / "aaaa.mid").unlink()
    summary = corpora.write_outputs(tmp_path, runs[0], "10.5.1", ["ryansMammoth", "oneills1850"])
    assert _manifest(tmp_path) == [] and summary["skipped"] == {"missing": 2}


def _tune(pitches: str, repeat_times: int | None = None):
    """A one-part score of one 4/4 measure, optionally between repeat signs played `repeat_times` times."""
    from music21 import bar, meter, note, stream

    measure = stream.Measure(number=1)
    measure.append(meter.TimeSignature("4/4"))
    for pitch in pitches.split():
        measure.append(note.Note(pitch, quarterLength=4 / len(pitches.split())))
    if repeat_times is not None:
        measure.leftBarline = bar.Repeat(direction="start")
        measure.rightBarline = bar.Repeat(direction="end", times=repeat_times)
    part = stream.Part()
    part.append(measure)
    score = stream.Score()
    score.append(part)
    return score


@needs_music21
def test_repeats_are_written_out_up_to_4x_the_length_and_played_once_beyond():
    """music21 expanded some ABC tunes to 40-66 minutes: an expansion more than MAX_EXPANSION (4) times the
    written length is refused and the piece played once through (recorded in `repeats`); 4 times exactly is
    written out."""
    fiddle = corpora.COLLECTIONS["ryansMammoth"]
    data, decided = corpora.score_to_midi(_tune("C5 D5 E5 F5", repeat_times=4), fiddle)
    assert decided["repeats"] == "expanded" and corpora.midi_summary(data)[1] == 16
    data, decided = corpora.score_to_midi(_tune("C5 D5 E5 F5", repeat_times=5), fiddle)
    assert decided["repeats"] == "once through (ValueError: expanded 5x)"
    assert corpora.midi_summary(data)[1] == 4


@needs_music21
def test_a_meter_placed_twice_in_a_part_is_written():
    """music21's ABC reader can put one TimeSignature object in two measures of a part (O'Neill's tune 1 does);
    its MIDI writer then refuses the score ("already found in this Stream") unless each placement is its own
    object. A built score and the real tune are both written."""
    from music21 import meter, note, stream

    shared = meter.TimeSignature("3/4")
    part = stream.Part()
    for number, pitches in ((1, "C5 D5 E5"), (2, "F5 G5 A5")):
        measure = stream.Measure(number=number)
        measure.insert(0, shared)
        for pitch in pitches.split():
            measure.append(note.Note(pitch))
        part.append(measure)
    score = stream.Score()
    score.append(part)
    fiddle = corpora.COLLECTIONS["oneills1850"]
    data, decided = corpora.score_to_midi(score, fiddle)
    assert corpora.midi_summary(data)[1] == 6 and decided["qpm"] == 100  # 3/4: the quarter at 100
    marks = list(score.recurse().getElementsByClass(meter.TimeSignature))
    assert len(marks) == 2 and marks[0] is not marks[1]

    tune = corpora.piece_loaders(corpora.corpus_root() / "oneills1850/0001-0050.abc")[0]()
    marks = list(tune.recurse().getElementsByClass(meter.TimeSignature))
    assert len({id(m) for m in marks}) < len(marks)  # music21 10.5.1 shares one
    data, _ = corpora.score_to_midi(tune, fiddle)
    assert corpora.midi_summary(data)[1] > 50


def _build_with(monkeypatch, tmp_path, scores) -> dict:
    """build_source on a made-up fiddle-tune file whose pieces parse to `scores`."""
    monkeypatch.setattr(corpora, "piece_loaders", lambda path: [lambda score=s: score for s in scores])
    return corpora.build_source("ryansMammoth/Made up.abc", str(tmp_path), timeout=60)


@needs_music21
def test_a_score_without_notes_is_recorded_as_no_notes(tmp_path, monkeypatch):
    """A piece of rests writes no file and is recorded as `no_notes` (its own count in stats.json, not `error`);
    the next piece of the file is written."""
    from music21 import note, stream

    rests = _tune("C5")
    measure = rests.parts[0].getElementsByClass(stream.Measure)[0]
    measure.replace(measure.notes[0], note.Rest(quarterLength=4))
    record = _build_with(monkeypatch, tmp_path, [rests, _tune("G4 A4 B4 C5")])
    assert record["skipped"] == [{"source": "ryansMammoth/Made up.abc", "index": 1, "reason": "no_notes",
                                  "detail": "ValueError: no notes"}]
    assert [p["index"] for p in record["pieces"]] == [2] and record["pieces"][0]["notes"] == 4


@needs_music21
def test_a_file_read_whole_that_holds_several_pieces_is_recorded_as_such(tmp_path, monkeypatch):
    """A loader meant to give one piece may give an Opus (several scores): it is skipped with a detail saying so,
    not passed on to score_to_midi (which fails on it with an AttributeError that says nothing useful)."""
    from music21 import stream

    opus = stream.Opus()
    opus.append(_tune("C5 D5 E5 F5"))
    opus.append(_tune("G4 A4 B4 C5"))
    record = _build_with(monkeypatch, tmp_path, [opus])
    assert record["pieces"] == []
    assert record["skipped"] == [{"source": "ryansMammoth/Made up.abc", "index": 1, "reason": "error",
                                  "detail": "ValueError: 2 pieces where one was expected"}]
    assert not (tmp_path / "ryansMammoth").exists()
