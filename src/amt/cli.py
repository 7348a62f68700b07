"""The `amt` command: thin wiring from the command line to the library.

Every command's arguments are checked here before anything heavy is imported (jax and Levanter take seconds
to load, a model more): a mistake costs a second and one line naming the value (`amt generate: error: ...`,
exit status 2), never a model load or a traceback. Our own commands spell options in kebab-case
(`--num-samples`); `amt train` passes Levanter's dotted config keys (`--trainer.num_train_steps`) to draccus
unchanged, since they are paths into the recipe. Output is quiet by default (warnings and our own one-line
messages); `--verbose` (before or after the command) shows every library's INFO logging.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import traceback
from pathlib import Path

import numpy as np


class UsageError(ValueError):
    """A user's mistake: printed as one line `amt <command>: error: <message>`, exit status 2."""

    prog = "amt"


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one line naming the option and the value (no usage block above it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in every option's help (not for flags, nor "default: None")."""

    def _get_help_string(self, action):
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _existing(path: str, what: str) -> str:
    """A local path that must exist (remote gs:// / hf:// paths are checked by the library)."""
    if "://" not in path and not os.path.exists(path):
        raise UsageError(f"{what} not found: {path}")
    return path


def _checkpoint(path: str, option: str = "--checkpoint") -> str:
    """A Levanter checkpoint (a step-N folder or a run's checkpoint folder) or a Hugging Face folder."""
    if "://" in path:
        return path
    if not os.path.exists(path):
        raise UsageError(f"{option}: checkpoint not found: {path}")
    if not os.path.isdir(path):
        raise UsageError(f"{option}: {path} is a file; a checkpoint is a folder: a step-N folder, a run's "
                         "checkpoint folder or a Hugging Face folder (amt export)")
    names = os.listdir(path)
    markers = {"config.json", "metadata.json", "model", "amt-model.yaml"}  # amt-model.yaml: amt.checkpoints' (not
    # imported here: it loads Levanter)
    if not markers.intersection(names) and not any(name.startswith("step-") for name in names):
        raise UsageError(f"{option}: no checkpoint in {path} (no step-N folder, metadata.json or config.json)")
    return path


# --- preprocess -----------------------------------------------------------------------------------------
def _add_preprocess(subparsers, common, help) -> None:
    from amt.preprocess import PreprocessConfig

    defaults = PreprocessConfig()
    p = subparsers.add_parser(
        "preprocess", parents=[common], formatter_class=_Help, help=help,
        description="Tokenize MIDI files into the paper's anticipatory training sequences and write them as "
        "Levanter caches OUT/{train,validation,test} (and OUT/<split>.txt with --text), with OUT/stats.json. "
        "A finished OUT is not rebuilt; an interrupted one resumes. "
        "Example: amt preprocess demo/midi --out runs/demo/data --augment 10",
    )
    p.add_argument("source", nargs="?",
                   help="folder, manifest (one path a line), .tar.gz, one MIDI file, datasets folder or hf://NAME[:SPLIT]")
    p.add_argument("--out", help="output folder (required unless --verify)")
    p.add_argument("--verify", metavar="DIR",
                   help="check a finished output (or one split's cache) against its checksums, then exit")
    p.add_argument("--augment", type=_positive(int), default=defaults.augment,
                   help="copies of each training file (paper: 1 or 30)")
    p.add_argument("--workers", type=_positive(int), default=defaults.workers, help="parallel processes (or Ray CPUs)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="augmentation seed")
    p.add_argument("--split", choices=["md5", "none"], default=defaults.split,
                   help="md5: Lakh's split by first MD5 digit (0-d/e/f); none: all in train")
    p.add_argument("--text", action="store_true", help="also write <split>.txt, one sequence a line")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="do not write Levanter caches")
    p.add_argument("--encoding", choices=["arrival", "interarrival"], default=defaults.encoding,
                   help="arrival: the paper's anticipatory tokens; interarrival: the MIDI-like baseline")
    p.add_argument("--files-per-shard", type=_positive(int), default=None,
                   help="files per unit of work (default 256 // augment, >= 16)")
    p.add_argument("--dataset-column", default=defaults.dataset_column, help="dataset column with MIDI bytes or paths")
    p.add_argument("--ray-address", default=None, help="run on a Ray cluster ('auto'), or 'local' for a local Ray")
    p.add_argument("--overwrite", action="store_true", help="rebuild if OUT holds a job with other options")
    p.add_argument("--flush-rows", type=_positive(int), default=defaults.flush_rows,
                   help="rows buffered between writes and progress commits (a killed job redoes at most these)")
    p.add_argument("--no-progress", dest="progress_bar", action="store_false", help="no progress bar")
    p.add_argument("--max-file-mb", type=float, default=defaults.max_file_bytes / 2**20, help="per-file budget: larger files are skipped")
    p.add_argument("--max-file-notes", type=int, default=defaults.max_file_notes, help="per-file budget: notes")
    p.add_argument("--max-file-seconds", type=float, default=defaults.max_file_seconds, help="per-file budget: wall time")


def _check_preprocess(args):
    from amt.preprocess import PreprocessConfig

    if args.verify:
        return None  # checked by the library, which names what is missing
    if not args.source or not args.out:
        raise UsageError("a SOURCE and --out OUT are required (or --verify DIR)")
    if "://" not in args.source:
        _existing(args.source, "source")
    config = PreprocessConfig(
        source=args.source, out=args.out, augment=args.augment, workers=args.workers, seed=args.seed,
        split=args.split, text=args.text, cache=args.cache, encoding=args.encoding,
        files_per_shard=args.files_per_shard, dataset_column=args.dataset_column, ray_address=args.ray_address,
        overwrite=args.overwrite, progress_bar=args.progress_bar, flush_rows=args.flush_rows,
        max_file_bytes=int(args.max_file_mb * 2**20), max_file_notes=args.max_file_notes,
        max_file_seconds=args.max_file_seconds,
    )
    config.validate()
    return config


def _run_preprocess(args, config) -> int:
    from amt import preprocess

    if args.verify:
        try:
            single = os.path.exists(os.path.join(args.verify, preprocess.MANIFEST_FILE))
            rows = ({os.path.basename(args.verify.rstrip("/")): preprocess.verify_cache(args.verify)} if single
                    else preprocess.verify_output(args.verify))
        except preprocess.CacheError as error:
            print(f"amt preprocess: error: {error}", file=sys.stderr)
            return 1
        print(f"verified {args.verify}: " + ", ".join(f"{split} {n} rows" for split, n in rows.items()))
        return 0
    try:
        stats = preprocess.run(config)
    except (preprocess.ConfigMismatch, ValueError, FileNotFoundError, KeyError) as error:
        raise UsageError(str(error)) from error
    for split, s in stats["splits"].items():
        print(f"{split:>10}: {s['files_kept']}/{s['files_seen']} files kept, {s['sequences']} sequences, "
              f"{s['hours_of_music']:.2f} h of music, skipped {json.dumps(s['files_skipped'])}")
    if stats.get("already_built"):
        print(f"{args.out} was already built" + (", verified" if stats["verified"] else "") + "; nothing to do "
              "(a new --out, or --overwrite with other options, builds again)")
    else:
        print(f"wrote {args.out} in {stats['seconds']:.1f} s")
    return 0


# --- train / export -------------------------------------------------------------------------------------
def _run_train(args, rest: list[str]) -> int:
    """`amt train --config_path RECIPE [--any.levanter.key VALUE ...]`: draccus parses the recipe and overrides."""
    path = args.config_path
    if not os.path.isfile(path) and "://" not in path:
        raise UsageError(f"--config_path: recipe not found: {path}" if not os.path.exists(path)
                         else f"--config_path: {path} is not a file (a YAML recipe, e.g. recipes/amt-tiny.yaml)")
    import contextlib
    import io

    import draccus

    from amt.train import TrainConfig, train

    messages = io.StringIO()  # draccus prints its whole usage (hundreds of keys) above an unknown key's error
    try:
        with contextlib.redirect_stderr(messages):
            config = draccus.parse(TrainConfig, config_path=path, args=rest)
    except SystemExit as exit:
        if exit.code == 0:  # --help
            sys.stderr.write(messages.getvalue())
            return 0
        error = messages.getvalue().strip().splitlines()[-1:] or ["cannot parse the arguments"]
        raise UsageError(error[0].split("error: ", 1)[-1] + " (keys are the recipe's paths, e.g. "
                         "--trainer.num_train_steps; `amt train --config_path RECIPE --help` lists them)") from None
    except draccus.utils.DecodingError as error:
        raise UsageError(str(error)) from None
    from amt.train import compact_console, grad_in_forward_problem, platforms_problem

    if not config.dry_run and (problem := platforms_problem(os.environ.get("JAX_PLATFORMS", ""))):
        raise UsageError(problem)
    if problem := grad_in_forward_problem(config.model):
        raise UsageError(problem)

    with compact_console(config.trainer.num_train_steps, getattr(args, "verbose", False)):
        train(config)
    return 0


def _run_export(args) -> int:
    from amt.checkpoints import export_hf
    from amt.train import platforms_problem

    if problem := platforms_problem(os.environ.get("JAX_PLATFORMS", "")):
        raise UsageError(problem)
    try:
        print(f"wrote {export_hf(args.checkpoint, args.out)}")
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error
    return 0


# --- generate -------------------------------------------------------------------------------------------
def _add_generate(subparsers, common, help) -> None:
    p = subparsers.add_parser(
        "generate", parents=[common], formatter_class=_Help, help=help,
        description="Writes OUT (and OUT-2.mid, ... for more samples) with a piano-roll PNG beside each. Examples: "
        "amt generate --checkpoint runs/demo/checkpoints --prompt demo/midi/npm_misc/fur-elise.mid --start 5 "
        "--end 20 -o out.mid; with --accompany 87 (keep instrument 87 as controls) or --infill 5 10 "
        "(regenerate 5-10 s).")
    p.add_argument("--checkpoint", required=True, help="a Levanter checkpoint (step-N or run folder) or an HF folder")
    p.add_argument("--prompt", help="a MIDI file: the prompt (and the controls for --accompany / --infill)")
    p.add_argument("--start", type=float, default=0.0, help="seconds of the prompt kept before generating")
    p.add_argument("--end", type=_positive(float), default=20.0, help="generate up to this time (seconds)")
    task = p.add_mutually_exclusive_group()
    task.add_argument("--accompany", help="instruments of the prompt to keep as controls, e.g. 0 or 0,40 "
                      "(General MIDI programs 0-127, 128 = drums)")
    task.add_argument("--infill", nargs=2, type=float, metavar=("T0", "T1"),
                      help="regenerate the span [T0, T1) seconds of the prompt, given what comes before and after")
    p.add_argument("--autoregressive", action="store_true", help="Algorithm 2 (no anticipation)")
    p.add_argument("--num-samples", type=_positive(int), default=1, help="samples drawn (one batch)")
    p.add_argument("--top-p", type=float, default=0.98, help="nucleus sampling: keep the most probable tokens "
                   "holding this much probability, in (0, 1]")
    p.add_argument("--temperature", type=_positive(float), default=1.0, help="softmax temperature (> 0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same music)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="the weights' and key/value cache's precision while sampling: bfloat16 halves what each "
                   "token reads, for a GPU or TPU (on a CPU it is slower)")
    p.add_argument("--events-per-call", type=_positive(int), default=None,
                   help="events each sample takes a device call (default: 8, or 1 for one sample on a GPU, each "
                   "call launched before the last one's result is read: that measured faster there): fewer round "
                   "trips for more; the music is the same whatever the value (up to rounding)")
    p.add_argument("-o", "--out", default="generated.mid", help="output MIDI file (a PNG piano roll beside it)")


def _instruments(text: str) -> list[int]:
    try:
        instruments = [int(x) for x in text.split(",")]
    except ValueError:
        instruments = None
    if not instruments or not all(0 <= i <= 128 for i in instruments):
        raise UsageError(f"--accompany: {text!r} is not a comma-separated list of instruments (0-127 General MIDI "
                         "programs, 128 drums), e.g. 0 or 0,40")
    return instruments


MAX_GENERATE_SECONDS = 1_000_000  # times are int32 counts of 10 ms bins on the device (21.4M s); a finite bound


def _seconds(option: str, value: float) -> None:
    """A time in seconds that amt generate can work with: not negative, not nan, not past MAX_GENERATE_SECONDS."""
    if not 0 <= value <= MAX_GENERATE_SECONDS:
        why = "negative" if value < 0 else f"past {MAX_GENERATE_SECONDS:,} s" if value > 0 else "not a time"
        raise UsageError(f"{option}: {value:g} is {why}")


def _check_generate(args) -> dict:
    """Everything about a generate request that can be checked without the model: the plan of the run."""
    from amt import augment, ops, vocab

    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p: {args.top_p:g} is not in (0, 1]")
    _seconds("--start", args.start)
    _seconds("--end", args.end)
    if args.end <= args.start:
        raise UsageError(f"--end {args.end:g} must be after --start {args.start:g}")
    if (args.accompany or args.infill) and not args.prompt:
        raise UsageError(f"{'--accompany' if args.accompany else '--infill'} needs --prompt (the piece it works on)")
    _checkpoint(args.checkpoint)
    plan = {"task": "unconditional", "events": None, "given": np.zeros((0, 3), np.int64), "start": 0.0, "shown": None}
    if args.prompt is None:
        return plan
    if os.path.isdir(args.prompt):
        raise UsageError(f"--prompt: {args.prompt} is a folder; give a MIDI file")
    from amt import midi

    try:
        events = ops.as_triples(midi.midi_to_events(args.prompt))
    except midi.MidiError as error:
        raise UsageError(f"--prompt: {error}") from error
    if not len(events):
        raise UsageError(f"--prompt: {args.prompt} has no notes")
    length = ops.max_time(events)
    plan.update(events=events, start=args.start)
    if args.infill:
        t0, t1 = args.infill
        _seconds("--infill", t0)
        _seconds("--infill", t1)
        if not t0 < t1:
            raise UsageError(f"--infill {t0:g} {t1:g}: not a span (0 <= T0 < T1)")
        if vocab.to_bins(t0) > ops.max_time(events, seconds=False):  # (a span may start at the last onset)
            raise UsageError(f"--infill {t0:g} {t1:g}: the span starts after the piece ends ({args.prompt}: notes "
                             f"start up to {length:.2f} s)")
        plan.update(task="infill", start=t0, given=augment.infill_context(events, t0, t1))
    elif args.accompany:
        instruments = _instruments(args.accompany)
        present = ops.instruments(events[ops.times(events) < vocab.to_bins(args.end)])  # as the controls: [0, end)
        missing = [i for i in instruments if i not in present]
        if missing:
            raise UsageError(f"--accompany: instrument(s) {missing} do not play in the first {args.end:g} s of "
                             f"{args.prompt} (it has {sorted(present)}; 0-127 General MIDI programs, 128 drums)")
        prompt, controls = augment.accompaniment_inputs(events, instruments, args.start, args.end)
        controls = ops.from_controls(controls)
        plan.update(task="accompany", instruments=instruments, shown=controls, given=np.concatenate([prompt, controls]))
    else:
        plan.update(task="continuation", given=ops.clip(events, 0, args.start, clip_duration=False))
    melodic = sorted(i for i in ops.instruments(plan["given"]) if i != vocab.DRUMS)
    if len(melodic) > 15:  # the sampler adds none beyond 15; MIDI cannot hold more (amt.midi.events_to_midi)
        raise UsageError(f"--prompt: the given part of {args.prompt} has {len(melodic)} melodic instruments; "
                         "MIDI files hold at most 15 (channel 10 is drums)")
    return plan


def count_notes(sample: np.ndarray, given: np.ndarray, start_seconds: float) -> tuple[int, int]:
    """(generated, given) notes of a sample: generated are the notes at or after the start time that are not
    among the given notes (the prompt and the controls, matched as a multiset); the rest were given."""
    from collections import Counter

    from amt import ops, vocab

    supplied = Counter(map(tuple, ops.as_triples(given).tolist()))
    start = vocab.to_bins(start_seconds)  # the sampler's start
    generated = 0
    for row, t in zip(map(tuple, ops.as_triples(sample).tolist()), ops.times(sample).tolist()):
        if supplied[row] > 0:
            supplied[row] -= 1
        elif t >= start:
            generated += 1
    return generated, len(sample) - generated


def original_notes(plan, end: float) -> int:
    """How many notes the prompt's file has where the model played in a continuation or an infill: its notes
    before `end` (--end, or the span's T1) that the plan does not give the model (a continuation's notes at --start
    are the prompt's; an infill's at T0 are regenerated)."""
    from amt import ops, vocab

    def before(triples):
        return int((ops.times(ops.unpad(triples)) < vocab.to_bins(end)).sum())

    return before(plan["events"]) - before(plan["given"])


def _run_generate(args, plan) -> int:
    from levanter.utils.tree_utils import inference_mode

    from amt import midi, sampling
    from amt.checkpoints import load_model
    from amt.pianoroll import save_pianoroll

    try:
        model, _ = load_model(args.checkpoint)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"--checkpoint: {error}") from error
    from amt import interarrival_sampling

    if interarrival_sampling.is_interarrival_model(model):  # told apart by its vocabulary (34,025 ids)
        return _generate_interarrival(args, plan, inference_mode(model, True))
    sampler = sampling.Sampler(inference_mode(model, True), dtype=args.dtype)
    options = sampling.SamplingOptions(top_p=args.top_p, temperature=args.temperature, seed=args.seed,
                                       num_samples=args.num_samples, events_per_call=args.events_per_call)
    events, anticipatory = plan["events"], not args.autoregressive
    if plan["task"] == "unconditional":
        outputs = sampler.generate(0, args.end, options=options, anticipatory=anticipatory)
    elif plan["task"] == "infill":
        outputs = sampling.infill(sampler, events, *args.infill, options=options, anticipatory=anticipatory)
    elif plan["task"] == "accompany":
        outputs = sampling.accompany(sampler, events, plan["instruments"], args.start, args.end, options,
                                     anticipatory=anticipatory)
    else:
        outputs = sampling.continuation(sampler, events, args.start, args.end, options, anticipatory=anticipatory)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    what = {"unconditional": "", "continuation": " from the prompt", "infill": " from the prompt around the span",
            "accompany": " from the prompt and the controls"}[plan["task"]]
    original = ""
    if plan["task"] in ("continuation", "infill"):  # how much music the file itself has where the model played
        played_to = args.end if plan["task"] == "continuation" else args.infill[1]
        original = f"; the original has {original_notes(plan, played_to)} there"
    for i, sample in enumerate(outputs):
        path = out if i == 0 else out.with_name(f"{out.stem}-{i + 1}{out.suffix}")
        midi.events_to_midi(sample, path)
        save_pianoroll(sample, path.with_suffix(".png"), given=plan["shown"], title=path.name,
                       prompt_end=plan["start"] if plan["task"] in ("continuation", "accompany") else None,
                       span=tuple(args.infill) if plan["task"] == "infill" else None)
        generated = len(sampler.last_generated[i])  # what the model sampled; the rest was given
        given = len(sample) - generated
        print(f"wrote {path}: {_notes(generated)} generated after {plan['start']:.1f} s"
              + (f" (+ {given}{what})" if given else "") + f"{original}, piano roll {path.with_suffix('.png')}")
    return 0


def _notes(count: int) -> str:
    return f"{count} note" if count == 1 else f"{count} notes"


def _generate_interarrival(args, plan, model) -> int:
    """`amt generate` with an interarrival model: continuation only (the encoding has no controls)."""
    from amt import interarrival_sampling, midi
    from amt.pianoroll import save_pianoroll

    if plan["task"] != "continuation" or args.autoregressive:
        raise UsageError("an interarrival model only continues a --prompt (no --accompany, --infill or "
                         "--autoregressive)")
    options = interarrival_sampling.InterarrivalOptions(top_p=args.top_p, temperature=args.temperature, seed=args.seed,
                                                        num_samples=args.num_samples)
    sampler = interarrival_sampling.InterarrivalSampler(model, dtype=args.dtype)
    prompt = interarrival_sampling.prompt_tokens(plan["events"], args.start)
    streams = sampler.continue_tokens(prompt, args.end, options)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, tokens in enumerate(streams):
        path = out if i == 0 else out.with_name(f"{out.stem}-{i + 1}{out.suffix}")
        midi.interarrival_to_midi(tokens, path)
        sample = interarrival_sampling.tokens_to_events(tokens, args.end)
        save_pianoroll(sample, path.with_suffix(".png"), title=path.name, prompt_end=args.start)
        generated, given = count_notes(sample, plan["given"], args.start)
        print(f"wrote {path}: {_notes(generated)} generated by the interarrival model after {args.start:.1f} s"
              + (f" (+ {given} from the prompt)" if given else "") + f", piano roll {path.with_suffix('.png')}")
    return 0


# --- eval -----------------------------------------------------------------------------------------------
def _add_eval(subparsers, common, help) -> None:
    from amt.generation_eval import PROTOCOLS, RETRIEVALS, TASKS, GenerationEvalConfig
    from amt.perplexity import PerplexityConfig

    p = subparsers.add_parser("eval", parents=[common], formatter_class=_Help, help=help,
                              description="Evaluations of trained models: `amt eval perplexity -h`, "
                              "`amt eval generation -h`.")
    tasks = p.add_subparsers(dest="evaluation", required=True, metavar="{perplexity,generation}",
                             help="which evaluation")
    defaults = PerplexityConfig()
    q = tasks.add_parser("perplexity", parents=[common], formatter_class=_Help,
                         help="the paper's Table 1 on a test cache, for one or many checkpoints",
                         description="Loss, event / onset / duration / note perplexity and bits per second of each "
                         "checkpoint on a cache; writes OUT/perplexity.{csv,json,png}. Example: amt eval perplexity "
                         "--checkpoint runs/demo/checkpoints --cache runs/demo/data/test --out runs/demo/eval")
    q.add_argument("--checkpoint", nargs="+", required=True,
                   help="step-N folders, run checkpoint folders (every step-N in them) or Hugging Face folders")
    q.add_argument("--cache", required=True, help="a cache written by `amt preprocess`, e.g. runs/demo/data/test")
    q.add_argument("--out", default=defaults.out, help="output folder")
    q.add_argument("--batch-size", type=_positive(int), default=defaults.batch_size,
                   help="sequences per forward pass (memory: batch x 1,024 x 55,028 floats)")
    q.add_argument("--max-sequences", type=_positive(int), default=None, help="evaluate the first N sequences only")
    defaults = GenerationEvalConfig()
    q = tasks.add_parser("generation", parents=[common], formatter_class=_Help,
                         help="continue / accompany test clips; metrics against the truth and baselines",
                         description="Writes OUT/report.{md,json}, metric histograms and piano rolls. Example: amt "
                         "eval generation --checkpoint runs/demo/checkpoints --midi demo/midi --split test --clips 8")
    q.add_argument("--checkpoint", required=True, help="a Levanter checkpoint (step-N or run folder) or an HF folder")
    q.add_argument("--midi", default=defaults.midi, help="MIDI source (folder, manifest, .tar.gz, datasets)")
    q.add_argument("--split", default=defaults.split, help="train / validation / test (Lakh's MD5 split) or all")
    q.add_argument("--clips", type=_positive(int), default=defaults.clips, help="at most this many clips, one per file")
    q.add_argument("--clip-seconds", type=_positive(float), default=defaults.clip_seconds, help="length of each clip")
    q.add_argument("--prompt-seconds", type=_positive(float), default=defaults.prompt_seconds,
                   help="seconds of each clip given as the prompt")
    q.add_argument("--tasks", default=",".join(defaults.tasks), help=f"comma-separated, of {','.join(TASKS)}")
    q.add_argument("--protocol", choices=PROTOCOLS, default=defaults.protocol,
                   help="paper: the reference's humaneval scripts (clip and melody rules, top-p, same-song retrieval); "
                   "ours: the earlier, easier protocol")
    q.add_argument("--retrieval", default=",".join(defaults.retrieval),
                   help=f"retrieval baselines, comma-separated, of {','.join(RETRIEVALS)}")
    q.add_argument("--interarrival-checkpoint", default=None,
                   help="an interarrival model (amt-interarrival-*.yaml): another continuation system")
    q.add_argument("--autoregressive-checkpoint", default=None,
                   help="a model trained without anticipation (augment 1): another continuation system, and an "
                   "accompaniment system with Algorithm 2")
    q.add_argument("--min-melody-notes", type=_positive(int), default=None,
                   help="default: the protocol's (paper 20, ours 8)")
    q.add_argument("--tries", type=_positive(int), default=defaults.tries, help="random clip starts tried per file")
    q.add_argument("--top-p", type=float, default=defaults.top_p,
                   help="nucleus sampling threshold in (0, 1]; default: the protocol's (paper: 0.98 continuation, "
                   "0.95 accompaniment and interarrival)")
    q.add_argument("--seed", type=int, default=defaults.seed, help="clip choice, retrieval pairing and sampling")
    q.add_argument("--examples", type=int, default=defaults.examples, help="clips drawn as piano rolls")
    q.add_argument("--out", default=defaults.out, help="output folder")


def _check_eval(args):
    from amt import generation_eval, perplexity

    if args.evaluation == "perplexity":
        for checkpoint in args.checkpoint:
            _checkpoint(checkpoint)
        if "://" not in args.cache and not os.path.isdir(args.cache):
            raise UsageError(f"--cache: {args.cache}: not a finished cache (no such folder; give a split folder "
                             "written by amt preprocess, e.g. runs/demo/data/test)")
        return perplexity.PerplexityConfig(checkpoints=args.checkpoint, cache=args.cache, out=args.out,
                                           batch_size=args.batch_size, max_sequences=args.max_sequences)
    _checkpoint(args.checkpoint)
    if "://" not in args.midi:
        _existing(args.midi, "--midi")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p: {args.top_p:g} is not in (0, 1]")
    if args.interarrival_checkpoint:
        _checkpoint(args.interarrival_checkpoint, "--interarrival-checkpoint")
    if args.autoregressive_checkpoint:
        _checkpoint(args.autoregressive_checkpoint, "--autoregressive-checkpoint")
    if args.examples < 0:
        raise UsageError(f"--examples: {args.examples} is negative")
    config = generation_eval.GenerationEvalConfig(
        checkpoint=args.checkpoint, midi=args.midi, split=args.split, clips=args.clips,
        clip_seconds=args.clip_seconds, prompt_seconds=args.prompt_seconds, tasks=args.tasks.split(","),
        top_p=args.top_p, seed=args.seed, examples=args.examples, out=args.out, protocol=args.protocol,
        retrieval=[r for r in args.retrieval.split(",") if r], interarrival_checkpoint=args.interarrival_checkpoint,
        autoregressive_checkpoint=args.autoregressive_checkpoint, min_melody_notes=args.min_melody_notes, tries=args.tries)
    config.validate()
    return config


def _run_eval(args, config) -> int:
    from amt import generation_eval, perplexity

    try:
        if args.evaluation == "perplexity":
            rows = perplexity.run(config)
            print(perplexity.markdown_table(rows))
            print(f"wrote {args.out}/perplexity.csv, perplexity.json and perplexity.png")
            return 0
        report = generation_eval.run(config)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error
    print(generation_eval.markdown_report(report))
    print(f"wrote {args.out}/report.md, report.json and plots")
    return 0


# --- the parser -----------------------------------------------------------------------------------------
COMMANDS = {  # name -> one line of help (the full parser of a command is built only when it runs)
    "demo": "the whole path on the bundled corpus: caches, a tiny model, perplexity, music (minutes on a CPU)",
    "preprocess": "MIDI files -> anticipatory training sequences (Levanter caches, optional text)",
    "train": "train a recipe with Levanter (any config key can be overridden)",
    "export": "write a Levanter checkpoint as a Hugging Face GPT-2 folder",
    "generate": "sample MIDI from a model: unconditional, continuation, infilling, accompaniment",
    "eval": "evaluate: perplexity and bits/s on a cache; prompted-generation metrics",
    "sweep": "expand a sweep file into runs: print, write, run, or a wandb sweep",
    "tpu": "launch a recipe on a Cloud TPU VM slice (gcloud), resuming after preemption",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `only`, the other commands get a bare parser (their option defaults come from
    library configs whose imports cost time an argument error should not)."""
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show every library's INFO logging (Levanter, jax)")
    parser = _Parser(prog="amt", formatter_class=_Help,
                     description="Anticipatory Music Transformer on Levanter. `amt COMMAND -h` for a command's "
                     "options; start with `amt demo`.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show every library's INFO logging (Levanter, jax)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help in COMMANDS.items():
        if only is None or name == only:
            globals()[f"_add_{name}"](subparsers, common, help)
        else:
            subparsers.add_parser(name, help=help)
    return parser


def _add_demo(subparsers, common, help) -> None:
    from amt import demo

    p = subparsers.add_parser(
        "demo", parents=[common], formatter_class=_Help, help=help,
        description="Preprocess demo/midi, train recipes/amt-tiny.yaml, evaluate perplexity, generate a continuation "
        "and an accompaniment (MIDI, piano rolls, WAV with FluidSynth). Every stage resumes: a second run skips "
        "what is done and says so. Example: amt demo --steps 300 --out runs/demo")
    demo.add_arguments(p)


def _add_train(subparsers, common, help) -> None:
    p = subparsers.add_parser("train", parents=[common], formatter_class=_Help, help=help,
                              description="Run Levanter's train_lm on a recipe (recipes/*.yaml); it resumes from "
                              "its last checkpoint. Other flags are Levanter's dotted config keys (paths into the "
                              "recipe, spelled as draccus spells them) and override it; --dry_run true prints the "
                              "parameter count and batch arithmetic. Example: amt train --config_path "
                              "recipes/amt-tiny.yaml --data.cache_dir runs/demo/data --trainer.num_train_steps 20")
    p.add_argument("--config_path", required=True, help="a YAML recipe (recipes/*.yaml)")


def _add_export(subparsers, common, help) -> None:
    p = subparsers.add_parser("export", parents=[common], formatter_class=_Help, help=help,
                              description="Write a Levanter checkpoint as a Hugging Face GPT-2 folder (config.json "
                              "with the 55,028-token vocabulary and model.safetensors), for transformers or "
                              "fine-tuning with --initialize_from_hf.")
    p.add_argument("--checkpoint", required=True, help="a step-N folder or a run's checkpoint folder (latest step)")
    p.add_argument("--out", required=True, help="output folder (config.json + model.safetensors)")


def _add_sweep(subparsers, common, help) -> None:
    p = subparsers.add_parser("sweep", parents=[common], formatter_class=_Help, help=help,
                              description="Expand a grid or random sweep (recipes/sweeps/*.yaml) into `amt train` "
                              "runs: print their commands (the default), write their configs, run them, or write "
                              "the equivalent wandb sweep. Example: amt sweep recipes/sweeps/lr-size-augment.yaml")
    p.add_argument("sweep_file", help="a sweep YAML (see recipes/sweeps/)")
    p.add_argument("--write", metavar="DIR", help="write each run's full config to DIR/<run id>.yaml")
    p.add_argument("--run", action="store_true", help="train the runs one after another")
    p.add_argument("--wandb", metavar="FILE", help="write the equivalent wandb sweep config")


def _add_tpu(subparsers, common, help) -> None:
    from amt import tpu

    p = subparsers.add_parser("tpu", parents=[common], formatter_class=_Help, help=help,
                              description="Create a Cloud TPU VM slice with gcloud and run `amt train` on every "
                              "host, recreating it and resuming after preemption with --watch. Other flags are "
                              "passed to `amt train`.")
    tpu.add_arguments(p)


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parse and check a command line without running it: (args, extra arguments for train/tpu), with
    `args.plan` holding what the command will run on. Raises UsageError (or exits, for argparse's errors)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=next((a for a in argv if not a.startswith("-")), None))
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("train", "tpu"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.plan = None
    args.prog = f"amt {args.command}" + (f" {args.evaluation}" if args.command == "eval" else "")
    try:
        _check(args)
    except ValueError as error:  # ours, or a library config's validate() (naming the field and the value)
        usage = error if isinstance(error, UsageError) else UsageError(str(error))
        usage.prog = args.prog
        raise usage from error
    return args, rest


def _check(args) -> None:
    if args.command == "demo":
        from amt import demo

        args.plan = demo.config_from_args(args)
    elif args.command == "preprocess":
        args.plan = _check_preprocess(args)
    elif args.command == "generate":
        args.plan = _check_generate(args)
    elif args.command == "eval":
        args.plan = _check_eval(args)
    elif args.command == "export":
        _checkpoint(args.checkpoint)
        if os.path.isfile(args.out):
            raise UsageError(f"--out: {args.out} is a file; give a folder")
    elif args.command == "sweep":
        _existing(args.sweep_file, "sweep file")


def configure_logging(verbose: bool) -> None:
    """Quiet by default: warnings, and our own messages printed as lines; --verbose: INFO from everyone."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    if not verbose:
        for name in ("jax._src.xla_bridge", "absl"):  # "Unable to initialize backend 'tpu'" on every CPU start
            logging.getLogger(name).setLevel(logging.ERROR)
        for name in ("levanter", "tqdm_loggable"):  # Levanter's init_logging sets these to INFO when training starts
            logging.getLogger(name).setLevel(logging.NOTSET)


@contextlib.contextmanager
def job_errors(prog: str, *kinds: type[BaseException]):
    """A draccus job script (`preprocess/build_caches.py`, `eval/*.py`) as `amt` is to its user: an input that is
    not there or a value that is wrong (FileNotFoundError, ValueError, `kinds`, raised by our own code) ends it with
    one line `PROG: error: MESSAGE` (exit status 2), not a traceback. One raised inside a library (numpy, jax,
    Levanter), hours into a job, is no verdict on the input: it keeps its traceback."""
    try:
        yield
    except (FileNotFoundError, ValueError, *kinds) as error:
        frames = traceback.extract_tb(error.__traceback__)
        if frames and f"{os.sep}amt{os.sep}" not in frames[-1].filename:
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> int:
    try:
        args, rest = parse(argv)
    except UsageError as error:
        print(f"{error.prog}: error: {error}", file=sys.stderr)
        return 2
    try:
        configure_logging(getattr(args, "verbose", False))
        if args.command == "demo":
            from amt import demo

            return demo.main(args.plan, verbose=getattr(args, "verbose", False))
        if args.command == "tpu":
            from amt import tpu

            return tpu.main(args, rest)
        if args.command == "sweep":
            from amt import sweep

            return sweep.main(args.sweep_file, write=args.write, run=args.run, wandb=args.wandb)
        if args.command == "train":
            return _run_train(args, rest)
        if args.command == "preprocess":
            return _run_preprocess(args, args.plan)
        if args.command == "generate":
            return _run_generate(args, args.plan)
        if args.command == "eval":
            return _run_eval(args, args.plan)
        if args.command == "export":
            return _run_export(args)
    except UsageError as error:
        print(f"{args.prog}: error: {error}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
