"""The `amt` command refuses bad input in one line naming the value, before anything heavy loads, and says
what it did."""

import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from amt import cli, vocab

REPO = Path(__file__).resolve().parents[1]
FUR_ELISE = REPO / "demo" / "midi" / "npm_misc" / "fur-elise.mid"
FUNKYTOWN = REPO / "demo" / "midi" / "miditok_multitrack" / "Funkytown.mid"  # lead 87 from 0 s, 53 from 11.24 s


def _midi_with_programs(path: Path, programs, drums: bool = False) -> Path:
    """One short note per General MIDI program, one after another (channels 0-8 reused: a program change before each
    note), and a drum hit on channel 10 with `drums`; with no programs and no drums, a file without notes."""
    import mido

    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500_000, time=0)])
    for k, program in enumerate(programs):
        track += [mido.Message("program_change", channel=k % 9, program=program, time=0),
                  mido.Message("note_on", channel=k % 9, note=60, velocity=64, time=0),
                  mido.Message("note_off", channel=k % 9, note=60, velocity=0, time=96)]
    if drums:
        track += [mido.Message("note_on", channel=9, note=36, velocity=64, time=0),
                  mido.Message("note_off", channel=9, note=36, velocity=0, time=96)]
    track.append(mido.MetaMessage("end_of_track", time=100))
    mido.MidiFile(tracks=[track]).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "run" / "step-1").mkdir(parents=True)  # looks like a checkpoint: the argument checks pass it
    (root / "notes.txt").write_text("not MIDI\n")
    (root / "empty").mkdir()
    _midi_with_programs(root / "silent.mid", [])
    _midi_with_programs(root / "sixteen.mid", range(16))  # one melodic instrument more than MIDI holds
    _midi_with_programs(root / "fifteen.mid", range(15), drums=True)  # as many as it holds, and drums
    return root


# (arguments, the text the one-line error must contain); {run}, {txt}, {empty}, {root}, {prompt}, {funky}, {silent} and
# {sixteen} are filled in
BAD = [
    ("generate --checkpoint {run} --temperature 0", "--temperature: must be > 0, got 0"),
    ("generate --checkpoint {run} --start 10 --end 5", "--end 5 must be after --start 10"),
    ("generate --checkpoint {run} --top-p 0", "--top-p: 0 is not in (0, 1]"),
    ("generate --checkpoint {run} --top-p 1.5", "--top-p: 1.5 is not in (0, 1]"),
    ("generate --checkpoint {run} --num-samples 0", "--num-samples: must be > 0, got 0"),
    ("generate --checkpoint {run} --prompt {prompt} --accompany piano", "--accompany: 'piano'"),
    ("generate --checkpoint {run} --prompt {prompt} --accompany 40", "instrument(s) [40] do not play"),
    ("generate --checkpoint {run} --prompt {prompt} --infill 500 510", "--infill 500 510: the span starts after"),
    ("generate --checkpoint {run} --prompt {prompt} --infill 8 8", "--infill 8 8: not a span"),
    ("generate --checkpoint {run} --infill 5 10", "--infill needs --prompt"),
    ("generate --checkpoint {root}/nowhere", "checkpoint not found: {root}/nowhere"),
    ("generate --checkpoint {txt}", "--checkpoint: {txt} is a file"),
    ("generate --checkpoint {empty}", "no checkpoint in {empty}"),
    ("generate --checkpoint {run} --prompt {root}/nowhere.mid", "--prompt: {root}/nowhere.mid: cannot open"),
    ("generate --checkpoint {run} --prompt {txt}", "--prompt: {txt}: "),
    ("generate --checkpoint {run} --end inf", "--end: must be > 0, got inf"),
    ("generate --checkpoint {run} --start -1", "--start: -1 is negative"),
    ("generate --checkpoint {run} --start 5 --end 5", "--end 5 must be after --start 5"),
    ("generate --checkpoint {run} --prompt {empty}", "--prompt: {empty} is a folder; give a MIDI file"),
    ("generate --checkpoint {run} --prompt {silent}", "--prompt: {silent} has no notes"),
    ("generate --checkpoint {run} --prompt {prompt} --infill -1 3", "--infill: -1 is negative"),
    ("generate --checkpoint {run} --prompt {prompt} --infill 5 inf", "--infill: inf is past 1,000,000 s"),
    ("generate --checkpoint {run} --prompt {prompt} --infill 5 1e308", "--infill: 1e+308 is past 1,000,000 s"),
    ("generate --checkpoint {run} --end 1e308", "--end: 1e+308 is past 1,000,000 s"),  # (else after the model loads)
    ("generate --checkpoint {run} --prompt {prompt} --accompany 0 --end 1e308", "--end: 1e+308 is past"),
    ("generate --checkpoint {run} --prompt {prompt} --start nan", "--start: nan is not a time"),
    ("generate --checkpoint {run} --prompt {prompt} --infill 164.99 170", "--infill 164.99 170: the span starts after"),
    ("generate --checkpoint {run} --prompt {funky} --accompany 27", "instrument(s) [27] do not play in the first 20 s"),
    ("generate --checkpoint {run} --prompt {funky} --accompany 53 --end 11.24",  # its first note is at the end
     "instrument(s) [53] do not play in the first 11.24 s"),
    ("generate --checkpoint {run} --prompt {sixteen} --start 5", "the given part of {sixteen} has 16 melodic instruments"),
    ("train --config_path {root}/nowhere.yaml", "recipe not found: {root}/nowhere.yaml"),
    ("train --config_path {empty}", "--config_path: {empty} is not a file"),
    ("export --checkpoint {txt} --out {root}/hf", "--checkpoint: {txt} is a file"),
    ("export --checkpoint {run} --out {txt}", "--out: {txt} is a file; give a folder"),
    ("sweep {root}/nowhere.yaml", "sweep file not found: {root}/nowhere.yaml"),
    ("eval perplexity --checkpoint {run} --cache {root}/nowhere", "--cache: {root}/nowhere: not a finished cache"),
    ("eval perplexity --checkpoint {txt} --cache {empty}", "--checkpoint: {txt} is a file"),
    ("eval perplexity --checkpoint {run} {txt} --cache {empty}", "--checkpoint: {txt} is a file"),  # each of them
    ("eval perplexity --checkpoint {run} --cache {empty} --batch-size 0", "--batch-size: must be > 0, got 0"),
    ("eval generation --checkpoint {run} --midi {empty} --tasks melody", "unknown ['melody']"),
    ("eval generation --checkpoint {run} --midi {empty} --prompt-seconds 30", "prompt_seconds (30.0)"),
    ("eval generation --checkpoint {run} --midi {root}/nowhere", "--midi not found: {root}/nowhere"),
    ("eval generation --checkpoint {run} --midi {empty} --top-p 2", "amt eval generation: error: --top-p: 2 is not in"),
    ("eval generation --checkpoint {run} --midi {empty} --examples -1", "--examples: -1 is negative"),
    ("eval generation --checkpoint {run} --midi {empty} --interarrival-checkpoint {txt}",
     "--interarrival-checkpoint: {txt} is a file"),
    ("eval generation --checkpoint {run} --midi {empty} --autoregressive-checkpoint {root}/nowhere",
     "--autoregressive-checkpoint: checkpoint not found: {root}/nowhere"),
    ("demo --steps 0", "--steps: must be >= 1, got 0"),
    ("demo --prompt-seconds 30", "--prompt-seconds 30 must be in (0, --end-seconds 20)"),
    ("demo --prompt-seconds 20", "--prompt-seconds 20 must be in (0, --end-seconds 20)"),
    ("demo --prompt-seconds 0", "--prompt-seconds 0 must be in (0, --end-seconds 20)"),
    ("demo --end-seconds inf", "--end-seconds: inf is not a time"),  # (else refused by generate, after training)
    ("demo --accompany 200", "--accompany: [200] are not instruments"),
    ("demo --soundfont {root}/nowhere.sf2", "--soundfont: {root}/nowhere.sf2 not found"),
    ("demo --continuation-prompt {root}/nowhere.mid", "--continuation-prompt: {root}/nowhere.mid not found"),
    ("demo --midi {root}/nowhere", "--midi: {root}/nowhere not found"),
    ("demo --bundled-model {root}/nowhere.npz", "--bundled-model: {root}/nowhere.npz not found"),
    ("preprocess {root}/nowhere --out {root}/data", "source not found: {root}/nowhere"),
    ("preprocess {empty} --out {root}/data --augment 0", "--augment: must be > 0, got 0"),
]


def _fill(text: str, root: Path) -> str:
    return text.format(run=root / "run", txt=root / "notes.txt", empty=root / "empty", root=root, prompt=FUR_ELISE,
                       funky=FUNKYTOWN, silent=root / "silent.mid", sixteen=root / "sixteen.mid")


def test_every_bad_input_is_one_line_naming_the_value_without_loading_jax(files):
    """All the bad inputs in one process (cheap): exit 2, one line on stderr naming the value, nothing on stdout,
    jax / Levanter never imported, and under 2 s of CPU each (CPU, not wall time: CI machines are shared), once the
    MIDI reader is compiled (numba caches it at its first use after an install; a fresh CI clone has no cache)."""
    script = textwrap.dedent(f"""
        import contextlib, io, json, shlex, sys, time
        from amt import cli, midi
        midi.midi_to_events({str(FUR_ELISE)!r})  # the MIDI reader compiles once per install (numba's cache): not timed
        results = []
        for line in json.loads(sys.argv[1]):
            err, out = io.StringIO(), io.StringIO()
            begin = time.process_time()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                try:
                    rc = cli.main(shlex.split(line))
                except SystemExit as exit:
                    rc = exit.code
            heavy = sorted(m for m in ("jax", "levanter", "haliax") if m in sys.modules)
            results.append([line, rc, err.getvalue(), out.getvalue(), heavy, time.process_time() - begin])
        print(json.dumps(results))
    """)
    import json

    lines = [_fill(args, files) for args, _ in BAD]
    done = subprocess.run([sys.executable, "-c", script, json.dumps(lines)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    for (line, rc, err, out, heavy, seconds), (_, expected) in zip(results, BAD):
        assert rc == 2, (line, rc, err)
        assert err.count("\n") == 1 and err.startswith("amt "), (line, err)
        assert _fill(expected, files) in err, (line, err)
        assert not out and not heavy, (line, out, heavy)
        assert seconds < 2, (line, seconds)


@pytest.mark.parametrize("args", ["generate --checkpoint {run} --top-p 1.5",
                                  "generate --checkpoint {run} --prompt {txt}",
                                  "train --config_path {root}/nowhere.yaml"])
def test_argument_errors_take_under_two_seconds_as_a_command(files, args):
    """The whole command, Python start-up included, as a user runs it: under 2 s of CPU (wall time on an idle
    machine is about the same; on a shared one it is not a measure of the command)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    begin = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "amt.cli", *_fill(args, files).split()], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    wall = time.perf_counter() - begin
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert cpu < 2, (cpu, wall)


def test_help_shows_defaults_and_every_option_has_a_line(capsys):
    """Every command's --help: each option explained, defaults shown; demo lists all its options in kebab-case."""
    parser = cli.build_parser()
    commands = {name: sub for action in parser._subparsers._group_actions for name, sub in action.choices.items()}
    commands.update({f"eval {name}": sub for action in commands["eval"]._subparsers._group_actions
                     for name, sub in action.choices.items()})
    import argparse

    for name, sub in commands.items():
        assert sub.description, name
        formatter = sub._get_formatter()
        for action in sub._actions:
            assert action.help, (name, action.option_strings or action.dest)
            shown = action.help != argparse.SUPPRESS and action.default not in (None, argparse.SUPPRESS) and action.nargs != 0
            if action.option_strings and shown:
                assert "%(default)" in formatter._get_help_string(action), (name, action.option_strings)
    text = commands["demo"].format_help()
    from dataclasses import fields

    from amt.demo import DemoConfig

    for f in fields(DemoConfig):
        assert f"--{f.name.replace('_', '-')}" in text
        assert "_" not in f.name or f"--{f.name}" not in text  # the old spelling works but is not listed
    assert "(default: 100)" in " ".join(text.split())
    assert "(default: 0.98)" in " ".join(commands["generate"].format_help().split())


def test_demo_accepts_both_spellings():
    args, _ = cli.parse(["demo", "--prompt_seconds", "3", "--end-seconds", "9", "--accompany", "0,40"])
    assert (args.plan.prompt_seconds, args.plan.end_seconds, args.plan.accompany) == (3.0, 9.0, [0, 40])
    assert cli.parse(["demo", "--bundled-model", ""])[0].plan.bundled_model == ""  # the stage left out


def test_each_request_plans_what_the_model_is_given(files, capsys):
    """The plan of a good request (checked, no model loaded): a continuation is given the prompt up to --start (the
    notes at it included), an infill everything outside [T0, T1) (the notes at T0 not: they are regenerated; a span
    may start at the last onset), an accompaniment the other instruments up to --start and the kept instrument's
    notes before --end as controls; drums are no melodic instrument (15 and drums fit in MIDI); --top-p 1 and
    --accompany 128 (drums) are valid. What the command says the original has where the model played is what the
    plan did not give it. Unknown options are refused; preprocess's budget is in MB and --text / --no-cache are
    their own options."""
    from amt import midi, ops

    def plan(*argv):
        return cli.parse(["generate", "--checkpoint", str(files / "run"), *map(str, argv)])[0].plan

    def rows(triples):
        return sorted(map(tuple, ops.as_triples(triples).tolist()))

    assert plan("--top-p", 1)["task"] == "unconditional"
    fur = ops.as_triples(midi.midi_to_events(FUR_ELISE))
    t = ops.times(fur)
    assert 304 in t and (t == 261).sum() == 2 and t.max() == 16498
    continuation = plan("--prompt", FUR_ELISE, "--start", 3.04, "--end", 9)
    np.testing.assert_array_equal(continuation["given"], fur[t <= 304])
    assert cli.original_notes(continuation, 9) == ((t > 304) & (t < 900)).sum()
    infill = plan("--prompt", FUR_ELISE, "--infill", 2.61, 5)
    assert (infill["task"], infill["start"]) == ("infill", 2.61)
    np.testing.assert_array_equal(infill["given"], fur[(t < 261) | (t >= 500)])
    assert cli.original_notes(infill, 5) == ((t >= 261) & (t < 500)).sum()
    np.testing.assert_array_equal(plan("--prompt", FUR_ELISE, "--infill", 164.98, 170)["given"], fur[t < 16498])

    funky = ops.as_triples(midi.midi_to_events(FUNKYTOWN))
    ft, instrument = ops.times(funky), ops.notes(funky) // vocab.MAX_PITCH
    end = int(ft[(instrument == 87) & (ft > 600)].min())  # a lead note at --end: not a control
    accompany = plan("--prompt", FUNKYTOWN, "--accompany", 87, "--start", 2, "--end", end / 100)
    assert accompany["instruments"] == [87]
    assert rows(accompany["shown"]) == rows(funky[(instrument == 87) & (ft < end)])
    given = accompany["given"]
    assert rows(given) == rows(funky[((instrument != 87) & (ft <= 200)) | ((instrument == 87) & (ft < end))])
    assert plan("--prompt", FUNKYTOWN, "--accompany", 128)["instruments"] == [128]
    assert plan("--prompt", files / "fifteen.mid", "--start", 5)["task"] == "continuation"

    with pytest.raises(SystemExit) as exit:
        cli.parse(["generate", "--checkpoint", str(files / "run"), "--bogus", "3"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and "unrecognized arguments: --bogus 3" in err, err
    config = cli.parse(["preprocess", str(files / "empty"), "--out", str(files / "data"), "--max-file-mb", "2",
                        "--text", "--no-cache"])[0].plan
    assert (config.max_file_bytes, config.text, config.cache) == (2 << 20, True, False)


def test_preprocess_says_how_many_files_of_each_split_it_kept(files, monkeypatch, capsys):
    from amt import preprocess

    split = {"files_kept": 3, "files_seen": 5, "sequences": 7, "hours_of_music": 0.5, "files_skipped": {"no notes": 2}}
    monkeypatch.setattr(preprocess, "run", lambda config: {"splits": {"train": split}, "seconds": 1.0})
    assert cli.main(["preprocess", str(files / "empty"), "--out", str(files / "data")]) == 0
    assert "train: 3/5 files kept, 7 sequences, 0.50 h of music, skipped {\"no notes\": 2}" in capsys.readouterr().out


def test_generated_and_given_notes_are_counted_apart():
    """The prompt's notes and the controls are given; the notes from the start time on that are not are the
    model's, even where one equals a given note."""
    def rows(*notes):
        return np.asarray([(vocab.TIME_OFFSET + t, vocab.DUR_OFFSET + 10, vocab.NOTE_OFFSET + n) for t, n in notes])

    given = rows((0, 60), (100, 62), (700, 64))  # a prompt before 5 s and a control at 7 s
    sample = rows((0, 60), (100, 62), (500, 60), (600, 61), (700, 64), (700, 64))
    assert cli.count_notes(sample, given, 5.0) == (3, 3)
    assert cli.count_notes(given, given, 5.0) == (0, 3)
    assert cli.count_notes(sample, given[:0], 0.0) == (6, 0)


@pytest.mark.parametrize("platforms, fine", [("cuda", False), ("tpu", False), ("cuda, cpu", False), ("cuda,cpu", True),
                                             ("gpu,cpu", True), ("cpu", True), ("", True)])
def test_train_needs_the_cpu_among_jax_platforms(capsys, monkeypatch, files, platforms, fine):
    """JAX_PLATFORMS=cuda alone: every `amt train` run would fail at its dataset (Levanter builds examples on the
    CPU device): one line naming the variable and the fix, before anything loads (a dry run needs no devices).
    Read as jax reads it ("cuda, cpu" names " cpu", which jax rejects)."""
    from amt.train import platforms_problem

    assert (platforms_problem(platforms) is None) == fine
    if fine:
        return
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert cli.main(["train", "--config_path", str(REPO / "recipes" / "amt-tiny.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"JAX_PLATFORMS={platforms} leaves out the CPU" in err, err
    assert f"JAX_PLATFORMS={platforms},cpu" in err
    assert cli.main(["train", "--config_path", str(REPO / "recipes" / "amt-tiny.yaml"), "--dry_run", "true"]) == 0
    capsys.readouterr()
    assert cli.main(["export", "--checkpoint", str(files / "run"), "--out", str(files / "hf")]) == 2  # export too
    assert "leaves out the CPU" in capsys.readouterr().err


def test_verbose_is_accepted_before_or_after_the_command():
    assert cli.parse(["-v", "demo"])[0].verbose and cli.parse(["demo", "--verbose"])[0].verbose
    assert not getattr(cli.parse(["demo"])[0], "verbose")


@pytest.mark.parametrize("key, message", [
    (["--trainer.num_train_step", "3"], "unrecognized arguments: --trainer.num_train_step 3"),
    (["--trainer.num_train_steps", "three"], "`trainer.num_train_steps`: Couldn't parse 'three' into an int"),
    (["--model.grad_in_forward_token_block_size", "0"],
     "model.grad_in_forward_token_block_size must be a positive number of positions, not 0"),
])
def test_train_key_errors_are_one_line(capsys, key, message):
    """A wrong Levanter key or value: one line naming it (not draccus's usage of every key, nor a traceback)."""
    assert cli.main(["train", "--config_path", str(REPO / "recipes" / "amt-tiny.yaml"), *key]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("script, args, message", [
    ("preprocess/build_caches.py", "--config_path preprocess/lakh.yaml", "MIDI source not found: lmd_full.tar.gz"),
    ("eval/perplexity.py", "--checkpoints [{root}/nowhere] --cache {root}/cache", "checkpoint not found: {root}/nowhere"),
    ("eval/generation.py", "--checkpoint {root} --interarrival_checkpoint {root}/nowhere --midi demo/midi",
     "interarrival_checkpoint: checkpoint not found: {root}/nowhere"),
    ("eval/generation.py", "--checkpoint {root} --midi {root}/lmd.tar.gz", "MIDI source not found: {root}/lmd.tar.gz")])
def test_the_job_scripts_say_a_missing_input_in_one_line(tmp_path, script, args, message):
    """The draccus job scripts (the README's Lakh configs, run where the data is not) end as `amt` does: one line
    naming the missing input, exit status 2, no traceback; the generation job before it reads any clip."""
    done = subprocess.run([sys.executable, script, *args.format(root=tmp_path).split()], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"})
    errors = [line for line in done.stderr.splitlines() if not line.startswith("INFO ")]
    assert done.returncode == 2 and errors == [f"{Path(script).name}: error: {message.format(root=tmp_path)}"], done.stderr
    assert "clips from" not in done.stderr


def test_a_job_scripts_library_error_keeps_its_traceback(capsys):
    """Only our own code's verdicts on the input become one line: a ValueError raised inside numpy (a defect,
    hours into a job) is raised on with its traceback, not reported as the user's mistake."""
    from amt import sources

    with pytest.raises(ValueError, match="reshape"):
        with cli.job_errors("job.py"):
            np.zeros(3).reshape(2)
    with pytest.raises(SystemExit) as stopped:
        with cli.job_errors("job.py"):
            sources.describe_source("nowhere.tar")
    assert stopped.value.code == 2 and capsys.readouterr().err == "job.py: error: MIDI source not found: nowhere.tar\n"
