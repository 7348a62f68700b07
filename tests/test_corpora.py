"""The music21 corpus builder: one program per part, names the MD5 split follows, cached, resumable, bad pieces
recorded (skipped when music21 is not installed: it is the optional `corpora` extra)."""

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("music21")

from amt import corpora, midi, ops, sources  # noqa: E402


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


def test_names_fix_the_split_whatever_the_bytes(built):
    out, _ = built
    for row in _manifest(out):
        stem = Path(row["name"]).stem
        assert stem == corpora.piece_name(f"music21:{row['source']}#{row['index']}")
        data = (out / row["name"]).read_bytes()
        assert sources.content_md5(row["name"], data) == stem  # preprocess splits by the name, not the bytes
        assert sources.content_md5(row["name"], data + b"\0") == stem


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
