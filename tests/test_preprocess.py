"""The preprocessing job: caches Levanter reads, bad files skipped with reasons, resumable after kill -9."""

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from amt import midifile, preprocess, sequences, sources, vocab
from amt.preprocess import PreprocessConfig

LAKH_FILES = ("d6caebd1964d9e4a3c5ea59525230e2a.mid", "d8faddb8596fff7abb24d78666f73e4e.mid")


def _load_rows(out: Path, split: str) -> np.ndarray:
    from levanter.store.cache import TreeCache

    cache = TreeCache.load(str(out / split), preprocess.CACHE_EXEMPLAR)
    rows = cache.get_batch_sync(list(range(len(cache))))
    return np.stack([np.asarray(r["input_ids"]) for r in rows]) if rows else np.zeros((0, 1024), np.int32)


def _run(source, out, **options) -> dict:
    return preprocess.run(PreprocessConfig(source=str(source), out=str(out), progress_bar=False, **options))


@pytest.fixture(scope="module")
def corpus(midi_dir, tmp_path_factory) -> Path:
    """A small real corpus: 24 files from several collections, plus the two Lakh-named files, plus copies
    renamed with MD5-style names starting with e and f (validation and test by Lakh's rule)."""
    root = tmp_path_factory.mktemp("corpus")
    files = [p for p in midi.midi_files(midi_dir) if "corrupted" not in str(p) and p.name != "empty.mid"]
    for i, path in enumerate(files[5:125:5]):
        target = root / path.parent.name / f"{i:02d}_{path.name}"
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
    lakh = root / "lmd_full"
    for name in LAKH_FILES:
        (lakh / name[0]).mkdir(parents=True, exist_ok=True)
        shutil.copy(midi_dir / "lakh_from_miditok" / name, lakh / name[0] / name)
    for digit, source in (("e", files[20]), ("f", files[40])):
        (lakh / digit).mkdir(exist_ok=True)
        shutil.copy(source, lakh / digit / f"{digit}{'0' * 31}.mid")
    return root


from amt import midi  # noqa: E402  (used by the fixture above)


def test_caches_load_in_levanter_and_splits_follow_md5(corpus, tmp_path):
    stats = _run(corpus, tmp_path / "out")
    splits = stats["splits"]
    expected = {"train": 0, "validation": 0, "test": 0}
    for path in midi.midi_files(corpus):
        named = len(path.stem) == 32 and all(c in "0123456789abcdef" for c in path.stem)
        digit = path.stem[0] if named else hashlib.md5(path.read_bytes()).hexdigest()[0]
        expected["validation" if digit == "e" else "test" if digit == "f" else "train"] += 1
    assert {split: s["files_seen"] for split, s in splits.items()} == expected
    total = 0
    for split in ("train", "validation", "test"):
        rows = _load_rows(tmp_path / "out", split)
        assert rows.shape == (splits[split]["sequences"], vocab.CONTEXT_SIZE) and len(rows) > 0
        assert rows.dtype == np.int32 and rows.min() >= 0 and rows.max() < vocab.VOCAB_SIZE
        assert all(sequences.validate_sequence(r) == [] for r in rows)
        total += len(rows)
    assert stats["splits"]["train"]["tail_loss_fraction"] < 0.01
    # the two Lakh files (MD5 digit d) are train, by their names
    for name in LAKH_FILES:
        assert sources.split_of(sources.content_md5(f"lmd_full/d/{name}", b"")) == "train"
    # the e/f files went to validation and test, unaugmented: only AUTOREGRESS flags there
    assert set(_load_rows(tmp_path / "out", "validation")[:, 0]) == {vocab.AUTOREGRESS}


def test_train_is_augmented_and_validation_is_not(corpus, tmp_path):
    stats = _run(corpus, tmp_path / "out", augment=4)
    plain = _run(corpus, tmp_path / "plain")
    assert stats["splits"]["validation"]["sequences"] == plain["splits"]["validation"]["sequences"]
    assert stats["splits"]["train"]["control_events"] > 0
    assert stats["splits"]["validation"]["control_events"] == 0
    flags = _load_rows(tmp_path / "out", "train")[:, 0]
    assert vocab.ANTICIPATE in flags and vocab.AUTOREGRESS in flags


def test_bad_files_are_skipped_with_reasons(midi_dir, tmp_path, caplog):
    folder = tmp_path / "midi"
    folder.mkdir()
    good = midi_dir / "miditok" / "multitrack" / "Funkytown.mid"
    shutil.copy(good, folder / "good.mid")
    (folder / "empty.mid").write_bytes(b"")
    (folder / "truncated.mid").write_bytes(good.read_bytes()[:3000])
    (folder / "not_midi.mid").write_text("this is not a MIDI file")
    shutil.copy(midi_dir / "miditok" / "corrupted" / "ValueError_Control168.mid", folder / "corrupt.mid")
    shutil.copy(midi_dir / "miditok" / "one_track" / "empty.mid", folder / "no_notes.mid")
    stats = _run(folder, tmp_path / "out", split="none")
    train = stats["splits"]["train"]
    assert train["files_seen"] == 6 and train["files_kept"] == 1
    assert train["files_skipped"] == {"parse_error": 4, "short": 1}
    reasons = {s["file"]: s["reason"] for s in stats["skipped_files"]}
    assert reasons == {"empty.mid": "parse_error", "truncated.mid": "parse_error", "not_midi.mid": "parse_error",
                       "corrupt.mid": "parse_error", "no_notes.mid": "short"}
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    for name in ("empty.mid", "truncated.mid", "not_midi.mid", "corrupt.mid"):
        assert name in warned
    saved = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert saved["splits"]["train"]["files_skipped"] == train["files_skipped"]
    assert saved["splits"]["train"]["hours_of_music"] > 0


def test_finished_job_is_not_redone_and_changed_options_are_refused(corpus, tmp_path):
    out = tmp_path / "out"
    _run(corpus, out, split="none")
    stamp = (out / "train" / "shard_ledger.json").stat().st_mtime_ns
    _run(corpus, out, split="none")
    assert (out / "train" / "shard_ledger.json").stat().st_mtime_ns == stamp
    with pytest.raises(preprocess.ConfigMismatch, match="augment"):
        _run(corpus, out, split="none", augment=2)
    _run(corpus, out, split="none", augment=2, overwrite=True)
    assert json.loads((out / "stats.json").read_text())["config"]["augment"] == 2


def test_every_option_that_shapes_the_rows_is_in_the_job_identity():
    """A job resumes only under the same identity: each option that changes what is written changes it (resumed
    under another seed, a cache would hold two jobs' rows), each that does not (processes, flush size, where
    shards run) leaves it, so a resume may change those. A new option must be put on one side or the other."""
    base = PreprocessConfig(source="src", out="out")
    shaping = dict(source="elsewhere", augment=2, seed=1, split="none", text=True, cache=False,
                   encoding="interarrival", files_per_shard=7, dataset_column="bytes",
                   filters=sequences.FileFilter(min_events=50), max_file_bytes=1, max_file_notes=1,
                   max_file_seconds=1.0)
    free = dict(out="other", workers=4, ray_address="auto", overwrite=True, flush_rows=1, progress_bar=False)
    assert set(shaping) | set(free) == {f.name for f in dataclasses.fields(PreprocessConfig)}
    for name, value in shaping.items():
        assert dataclasses.replace(base, **{name: value}).identity() != base.identity(), name
    for name, value in free.items():
        assert dataclasses.replace(base, **{name: value}).identity() == base.identity(), name


def test_bad_options_and_missing_source_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _run(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ValueError, match="split"):
        _run(tmp_path, tmp_path / "out", split="random")
    with pytest.raises(ValueError, match="interarrival"):
        _run(tmp_path, tmp_path / "out", encoding="interarrival", augment=3)


def test_tar_and_dataset_sources_give_the_same_rows(corpus, tmp_path):
    folder_out = tmp_path / "folder"
    _run(corpus, folder_out)
    files = [item.name for item in sources.iter_items(str(corpus))]
    archive = tmp_path / "corpus.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in files:
            tar.add(corpus / name, arcname=name)
        # members with MIDI names that hold no file: recorded as skipped, not silently left out
        link = tarfile.TarInfo("link.mid")
        link.type, link.linkname = tarfile.SYMTYPE, files[0]
        folder = tarfile.TarInfo("folder.mid")
        folder.type = tarfile.DIRTYPE
        tar.addfile(link)
        tar.addfile(folder)
    stats = _run(archive, tmp_path / "tar")
    assert preprocess.cache_fingerprint(tmp_path / "tar") == preprocess.cache_fingerprint(folder_out)
    skipped = {s["file"]: (s["reason"], s["detail"]) for s in stats["skipped_files"]}
    assert skipped["link.mid"] == ("not_a_file", "a link in the archive")
    assert skipped["folder.mid"] == ("not_a_file", "a directory in the archive")

    import datasets

    dataset = datasets.Dataset.from_dict({"midi": [(corpus / n).read_bytes() for n in files], "name": files})
    dataset.save_to_disk(str(tmp_path / "dataset"))
    _run(tmp_path / "dataset", tmp_path / "from_dataset")
    assert preprocess.cache_fingerprint(tmp_path / "from_dataset") == preprocess.cache_fingerprint(folder_out)


def test_each_file_draws_its_own_augmentations(midi_dir, tmp_path):
    """The augmentations of a file draw from (seed, its whole MD5, copy): two Lakh files of the same first hex
    digit (the same split) holding the same notes get different anticipated controls, while the same file
    under the same name gives the same rows. An uppercase Lakh name is the same MD5 as its lowercase."""
    data = (midi_dir / "miditok" / "multitrack" / "Funkytown.mid").read_bytes()
    names = {"a": "0" + "a" * 31 + ".mid", "a again": "0" + "a" * 31 + ".mid", "b": "0" + "b" * 31 + ".mid"}
    prints = {}
    for key, name in names.items():
        (tmp_path / key).mkdir()
        (tmp_path / key / name).write_bytes(data)
        _run(tmp_path / key, tmp_path / f"out {key}", split="none", augment=2)
        prints[key] = preprocess.cache_fingerprint(tmp_path / f"out {key}")
    assert prints["a"] == prints["a again"] != prints["b"]
    assert sources.content_md5("0" + "A" * 31 + ".MID", b"") == "0" + "a" * 31


def test_a_folder_lists_every_midi_name_in_sorted_order(midi_dir, tmp_path):
    """The job's shards (so its rows) follow the folder listing: sorted, whatever the file system's order,
    and MIDI suffixes in any case (.MID, .Midi, .KAR) are read, not silently left out."""
    good = (midi_dir / "miditok" / "multitrack" / "Funkytown.mid").read_bytes()
    names = [f"{name}{suffix}" for name, suffix in zip(
        ["zeta", "alpha", "Mid", "b", "x_9", "x_10", "omega", "a0", "q", "c"] * 2,
        [".mid"] * 10 + [".MID", ".Midi", ".KAR", ".kar", ".midi", ".mId", ".MIDI", ".Kar", ".mid", ".mid"])]
    for i, name in enumerate(names):
        folder = tmp_path / "src" / ("sub" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(good)
    (tmp_path / "src" / "notes.txt").write_text("not MIDI")
    listed = [item.name for item in sources.iter_items(str(tmp_path / "src"))]
    assert sorted(listed) == sorted(p.relative_to(tmp_path / "src").as_posix()
                                    for p in (tmp_path / "src").rglob("*") if p.is_file() and p.suffix != ".txt")
    assert listed == sorted(listed, key=lambda name: Path(name).parts)


def test_interarrival_encoding(corpus, tmp_path):
    stats = _run(corpus, tmp_path / "out", encoding="interarrival", split="none")
    rows = _load_rows(tmp_path / "out", "train")
    assert len(rows) == stats["splits"]["train"]["sequences"] > 0
    assert rows.max() < vocab.MIDI_VOCAB_SIZE and rows[0, 0] == vocab.MIDI_SEPARATOR


@pytest.mark.slow
def test_two_workers_give_the_same_rows_as_one(corpus, tmp_path):
    _run(corpus, tmp_path / "one", files_per_shard=4)
    _run(corpus, tmp_path / "two", files_per_shard=4, workers=2)
    assert preprocess.cache_fingerprint(tmp_path / "one") == preprocess.cache_fingerprint(tmp_path / "two")


@pytest.mark.slow
def test_ray_engine_gives_the_same_rows(corpus, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    _run(corpus, tmp_path / "one", files_per_shard=8)
    try:
        _run(corpus, tmp_path / "ray", files_per_shard=8, workers=2, ray_address="local")
    finally:
        import ray

        ray.shutdown()
    assert preprocess.cache_fingerprint(tmp_path / "ray") == preprocess.cache_fingerprint(tmp_path / "one")


@pytest.mark.slow
def test_killed_job_resumes_to_the_same_rows(midi_dir, tmp_path):
    """kill -9 part-way (a real signal to the process), run the same command again, compare with a clean run."""
    command = [sys.executable, "-m", "amt.cli", "preprocess", str(midi_dir), "--augment", "3", "--files-per-shard",
               "6", "--flush-rows", "50", "--text", "--no-progress"]
    subprocess.run([*command, "--out", str(tmp_path / "clean")], check=True, capture_output=True)
    total_shards = json.loads((tmp_path / "clean" / "progress.json").read_text())["next_shard"]

    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline:
        try:
            done = json.loads((killed / "progress.json").read_text())["next_shard"]
        except (FileNotFoundError, json.JSONDecodeError):
            done = 0
        if done >= 3:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    progress = json.loads((killed / "progress.json").read_text())
    assert 3 <= progress["next_shard"] < total_shards and not progress["finished"]

    subprocess.run([*command, "--out", str(killed)], check=True, capture_output=True)
    assert preprocess.cache_fingerprint(killed) == preprocess.cache_fingerprint(tmp_path / "clean")
    for split in ("train", "validation", "test"):
        assert (killed / f"{split}.txt").read_bytes() == (tmp_path / "clean" / f"{split}.txt").read_bytes()


def test_a_bucket_as_output_is_refused_with_what_to_do_instead():
    config = preprocess.PreprocessConfig(source="lmd_full.tar.gz", out="gs://bucket/lakh-a30")
    with pytest.raises(ValueError, match="out: gs://bucket/lakh-a30: the job writes to a local folder.*gsutil"):
        config.validate()


# --- issue 11: hostile input, held-out streams, checked caches, every entry accounted for -----------------
def _real_files(midi_dir, n, start=0):
    files = [p for p in midi.midi_files(midi_dir) if "corrupted" not in str(p) and 3000 < p.stat().st_size < 60_000]
    return files[start:start + n]


def test_hostile_files_and_odd_entries_are_skipped_named_and_counted(midi_dir, tmp_path, monkeypatch):
    from crafted_midi import long_delta_file, overflow_file, system_byte_file

    folder = tmp_path / "midi"
    folder.mkdir()
    for i, path in enumerate(_real_files(midi_dir, 4)):
        shutil.copy(path, folder / f"real{i}.mid")
    (folder / "overflow.mid").write_bytes(overflow_file())
    (folder / "long_delta.mid").write_bytes(long_delta_file(1))
    (folder / "system_byte.mid").write_bytes(system_byte_file(20))  # over a 16 MB budget set below
    (folder / "dir.mid").mkdir()
    (folder / "loop.mid").symlink_to(folder / "loop.mid")
    (folder / "dangling.mid").symlink_to(folder / "nowhere.mid")
    os.mkfifo(folder / "fifo.mid")
    (folder / "boom.mid").write_bytes(b"MThd")
    (folder / "slow.mid").write_bytes(b"MThd slow")
    real_parse = midi.parse_midi

    def parse(data, *args, name=None, **kwargs):  # an unexpected exception and a stall, in two named files
        if name == "boom.mid":
            raise RuntimeError("unexpected")
        if name == "slow.mid":
            time.sleep(30)
        return real_parse(data, *args, name=name, **kwargs)

    monkeypatch.setattr(midi, "parse_midi", parse)
    import levanter.store.tree_store  # noqa: F401  (imported before the clock starts: slow on a loaded machine)

    start = time.time()
    stats = _run(folder, tmp_path / "out", split="none", max_file_bytes=16 << 20, max_file_seconds=2.0)
    assert time.time() - start < 20  # slow.mid alone would take 30 s
    reasons = {s["file"]: (s["reason"], s["detail"]) for s in stats["skipped_files"]}
    assert reasons["overflow.mid"] == ("parse_error", midifile.ERRORS[midifile.TOO_LATE])
    assert reasons["long_delta.mid"] == ("parse_error", midifile.ERRORS[midifile.TOO_BIG])
    assert reasons["system_byte.mid"][0] == "budget_bytes"
    assert reasons["dir.mid"] == ("not_a_file", "a directory")
    assert reasons["loop.mid"] == ("not_a_file", "a symlink loop")
    assert reasons["dangling.mid"] == ("not_a_file", "a dangling symlink")
    assert reasons["fifo.mid"] == ("not_a_file", "a FIFO")
    assert reasons["boom.mid"] == ("error", "RuntimeError: unexpected")
    assert reasons["slow.mid"][0] == "budget_seconds"
    seen = sum(s["files_seen"] for s in stats["splits"].values())
    assert seen == len(list(folder.iterdir())) == 13  # every entry accounted for
    assert stats["splits"]["train"]["files_kept"] >= 3


def test_the_50mb_system_byte_file_reads_on_the_fast_path_within_budget(tmp_path):
    from crafted_midi import system_byte_file

    (tmp_path / "midi").mkdir()
    (tmp_path / "midi" / "system_byte.mid").write_bytes(system_byte_file(50))
    start = time.time()
    stats = _run(tmp_path / "midi", tmp_path / "out", split="none", max_file_bytes=64 << 20, max_file_notes=1000)
    assert stats["skipped_files"][0]["reason"] == "budget_notes"  # read (6.25M notes), then refused by budget
    assert time.time() - start < 30


@pytest.fixture(scope="module")
def held_out_corpus(midi_dir, tmp_path_factory) -> Path:
    """Lakh-named files: 8 train (digit 0-d), 10 validation (e), 10 test (f), interleaved in file order."""
    root = tmp_path_factory.mktemp("held_out")
    files = _real_files(midi_dir, 28, start=3)
    digits = "0e1f2e3f4e5f6e7f" + "efefef" + "89abcd"
    for i, (digit, path) in enumerate(zip(digits, files)):
        name = f"{digit}{i:031x}.mid"
        shutil.copy(path, root / name)
    return root


def test_held_out_caches_do_not_depend_on_augment_shard_size_or_workers(held_out_corpus, tmp_path):
    runs = {
        "a1": {},
        "a10": {"augment": 10},
        "fps16": {"files_per_shard": 16},
        "fps3": {"files_per_shard": 3, "flush_rows": 5},
    }
    results = {name: _run(held_out_corpus, tmp_path / name, text=True, **options) for name, options in runs.items()}
    for split in ("validation", "test"):
        reference = _load_rows(tmp_path / "a1", split)
        assert len(reference) > 10
        for name in runs:
            np.testing.assert_array_equal(_load_rows(tmp_path / name, split), reference, err_msg=f"{name} {split}")
            assert (tmp_path / name / f"{split}.txt").read_bytes() == (tmp_path / "a1" / f"{split}.txt").read_bytes()
        for name in runs:
            s = results[name]["splits"][split]
            assert s["packing"] == "one stream in file order"
            assert s["tail_tokens_dropped"] < sequences.WINDOW_TOKENS  # only the stream's last window is lost
        # many flushes (a checksum each): full and sampled verification pass
        assert preprocess.verify_cache(tmp_path / "fps3" / split) == len(reference)
        assert preprocess.verify_cache(tmp_path / "fps3" / split, max_rows=10) == len(reference)
    assert results["a10"]["splits"]["train"]["sequences"] > 5 * results["a1"]["splits"]["train"]["sequences"]


@pytest.mark.parametrize("cache", [True, False], ids=["caches-and-text", "text-only"])
def test_a_job_killed_between_writing_rows_and_committing_them_resumes_exactly(held_out_corpus, tmp_path,
                                                                              monkeypatch, cache):
    """The worst moment for a kill: rows flushed to the caches and lines to the text files, progress.json not
    yet replaced, with a held-out stream's window open. The rerun cuts the caches and text back to the last
    commit, restores that window and redoes the shards after it, exactly once. A text-only job (`--no-cache
    --text`) commits as often (it once committed only at its end: killed, it started again from shard 0)."""
    options = dict(augment=2, files_per_shard=3, flush_rows=1, text=True, cache=cache)
    _run(held_out_corpus, tmp_path / "clean", **options)
    real_write = preprocess._write_json_atomic

    def dies_at_the_seventh_commit(path, obj):  # shards 5-6 hold validation files (names sort by digit)
        if path.name == preprocess.PROGRESS_FILE and obj.get("next_shard") == 7:
            raise KeyboardInterrupt("killed")
        real_write(path, obj)

    monkeypatch.setattr(preprocess, "_write_json_atomic", dies_at_the_seventh_commit)
    with pytest.raises(KeyboardInterrupt):
        _run(held_out_corpus, tmp_path / "killed", **options)
    monkeypatch.setattr(preprocess, "_write_json_atomic", real_write)
    progress = json.loads((tmp_path / "killed" / preprocess.PROGRESS_FILE).read_text())
    assert progress["next_shard"] == 6 and progress["open_windows"]["validation"]["buffer"]
    assert (tmp_path / "killed" / "validation.txt").stat().st_size > progress["text_bytes"]["validation"]
    _run(held_out_corpus, tmp_path / "killed", **options)
    for split in ("train", "validation", "test"):
        assert (tmp_path / "killed" / f"{split}.txt").read_bytes() == (tmp_path / "clean" / f"{split}.txt").read_bytes()
        if cache:
            assert preprocess.verify_cache(tmp_path / "killed" / split) == len(_load_rows(tmp_path / "clean", split))
    if cache:
        assert preprocess.cache_fingerprint(tmp_path / "killed") == preprocess.cache_fingerprint(tmp_path / "clean")


@pytest.fixture(scope="module")
def finished_output(held_out_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "out"
    _run(held_out_corpus, out)
    return out


def _damage(out: Path, how: str) -> None:
    chunk = max((p for p in (out / "test" / "input_ids" / "data").rglob("*") if p.is_file() and p.name != "zarr.json"),
                key=lambda p: p.stat().st_size)
    data = chunk.read_bytes()
    if how == "deleted chunk":
        chunk.unlink()
    elif how == "flipped byte":
        chunk.write_bytes(data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0x10]) + data[len(data) // 2 + 1:])
    else:
        chunk.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("how", ["deleted chunk", "flipped byte", "truncated file"])
def test_damaged_caches_are_detected_everywhere_they_are_opened(held_out_corpus, finished_output, tmp_path, how):
    from amt import cli, perplexity
    from amt.train import MusicDataConfig

    out = tmp_path / "out"
    shutil.copytree(finished_output, out)
    assert cli.main(["preprocess", "--verify", str(out)]) == 0
    _damage(out, how)
    with pytest.raises(preprocess.CacheError, match=f"{out / 'test'}"):
        preprocess.verify_cache(out / "test")
    with pytest.raises(preprocess.CacheError, match=f"{out / 'test'}"):
        preprocess.verify_cache(out / "test", max_rows=1)  # train's quick check of a large cache
    assert cli.main(["preprocess", "--verify", str(out)]) == 1
    assert cli.main(["preprocess", "--verify", str(out / "test")]) == 1
    with pytest.raises(preprocess.CacheError, match="test"):
        _run(held_out_corpus, out)  # a rerun does not say "already built"
    with pytest.raises(preprocess.CacheError, match="test"):
        perplexity.read_cache(out / "test")
    with pytest.raises(preprocess.CacheError, match="test"):
        MusicDataConfig(cache_dir=str(out)).build_caches("test")


def test_rerun_verifies_and_says_so_and_a_changed_source_is_refused(held_out_corpus, finished_output, tmp_path, capsys):
    from amt import cli

    out = tmp_path / "out"
    shutil.copytree(finished_output, out)
    assert cli.main(["preprocess", str(held_out_corpus), "--out", str(out), "--no-progress"]) == 0
    assert "already built, verified" in capsys.readouterr().out
    source = tmp_path / "src"
    shutil.copytree(held_out_corpus, source)
    _run(source, tmp_path / "copy", files_per_shard=4)
    next(source.iterdir()).touch()  # a changed input between runs (or between a kill and its resume)
    with pytest.raises(preprocess.ConfigMismatch, match="source's files changed"):
        _run(source, tmp_path / "copy", files_per_shard=4)


def test_bad_sources_and_outputs_give_one_line_errors(held_out_corpus, tmp_path, capsys):
    from amt import cli

    one = next(held_out_corpus.iterdir())
    stats = _run(one, tmp_path / "single", split="none")  # a single MIDI file is a source
    assert stats["splits"]["train"]["files_seen"] == 1
    (tmp_path / "fake.tar.gz").write_bytes(b"not a tar at all")
    (tmp_path / "afile").write_text("x")
    damaged = tmp_path / "damaged"
    _run(one, damaged, split="none")
    (damaged / "progress.json").write_text("{not json")
    cases = [
        ([str(tmp_path / "fake.tar.gz"), "--out", str(tmp_path / "o1")], "fake.tar.gz is not a readable tar archive"),
        ([str(one), "--out", str(tmp_path / "afile")], "afile is a file, not a folder"),
        ([str(one), "--out", str(damaged), "--split", "none"], "progress.json is damaged"),
        (["--verify", str(tmp_path / "nowhere")], "no train/validation/test caches"),
    ]
    for argv, message in cases:
        status = cli.main(["preprocess", *argv, "--no-progress"] if "--verify" not in argv else ["preprocess", *argv])
        err = capsys.readouterr().err
        assert status != 0 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert cli.main(["preprocess", str(one), "--out", str(damaged), "--split", "none", "--overwrite", "--no-progress"]) == 0
