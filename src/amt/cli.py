"""The `amt` command: thin wiring from the command line to the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _add_preprocess(subparsers) -> None:
    from amt.preprocess import PreprocessConfig

    defaults = PreprocessConfig()
    p = subparsers.add_parser(
        "preprocess",
        help="MIDI files -> anticipatory training sequences (Levanter caches, optional text)",
        description="Tokenize MIDI files into the paper's anticipatory training sequences and write them as "
        "Levanter caches OUT/{train,validation,test} (and OUT/<split>.txt with --text), with OUT/stats.json.",
    )
    p.add_argument("source", help="folder, manifest (one path a line), .tar.gz, datasets folder or hf://NAME[:SPLIT]")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--augment", type=int, default=defaults.augment, help="copies of each training file (paper: 1 or 30)")
    p.add_argument("--workers", type=int, default=defaults.workers, help="parallel processes (or Ray CPUs)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="augmentation seed")
    p.add_argument("--split", choices=["md5", "none"], default=defaults.split,
                   help="md5: Lakh's split by first MD5 digit (0-d/e/f); none: all in train")
    p.add_argument("--text", action="store_true", help="also write <split>.txt, one sequence a line")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="do not write Levanter caches")
    p.add_argument("--encoding", choices=["arrival", "interarrival"], default=defaults.encoding)
    p.add_argument("--files-per-shard", type=int, default=None, help="files per unit of work (default 256 // augment, >= 16)")
    p.add_argument("--dataset-column", default=defaults.dataset_column, help="dataset column with MIDI bytes or paths")
    p.add_argument("--ray-address", default=None, help="run on a Ray cluster ('auto'), or 'local' for a local Ray")
    p.add_argument("--overwrite", action="store_true", help="rebuild if OUT holds a job with other options")
    p.add_argument("--flush-rows", type=int, default=defaults.flush_rows,
                   help="rows buffered between writes and progress commits (a killed job redoes at most these)")
    p.add_argument("--no-progress", dest="progress_bar", action="store_false", help="no progress bar")


def _run_preprocess(args) -> int:
    from amt.preprocess import ConfigMismatch, PreprocessConfig, run

    config = PreprocessConfig(
        source=args.source, out=args.out, augment=args.augment, workers=args.workers, seed=args.seed,
        split=args.split, text=args.text, cache=args.cache, encoding=args.encoding,
        files_per_shard=args.files_per_shard, dataset_column=args.dataset_column, ray_address=args.ray_address,
        overwrite=args.overwrite, progress_bar=args.progress_bar, flush_rows=args.flush_rows,
    )
    try:
        stats = run(config)
    except (ConfigMismatch, ValueError, FileNotFoundError, KeyError) as error:
        print(f"amt preprocess: error: {error}", file=sys.stderr)
        return 2
    for split, s in stats["splits"].items():
        print(f"{split:>10}: {s['files_kept']}/{s['files_seen']} files kept, {s['sequences']} sequences, "
              f"{s['hours_of_music']:.2f} h of music, skipped {json.dumps(s['files_skipped'])}")
    print(f"wrote {args.out} in {stats['seconds']:.1f} s")
    return 0


def _run_train(args, rest: list[str]) -> int:
    """`amt train --config_path RECIPE [--any.levanter.key VALUE ...]`: draccus parses the recipe and overrides."""
    import draccus

    from amt.train import TrainConfig, train

    config = draccus.parse(TrainConfig, config_path=args.config_path, args=rest)
    train(config)
    return 0


def _run_generate(args) -> int:
    from pathlib import Path

    from levanter.utils.tree_utils import inference_mode

    from amt import augment, midi, ops, sampling
    from amt.checkpoints import load_model
    from amt.pianoroll import save_pianoroll

    model, _ = load_model(args.checkpoint)
    from amt import interarrival_sampling

    if interarrival_sampling.is_interarrival_model(model):  # told apart by its vocabulary (34,025 ids)
        return _generate_interarrival(args, inference_mode(model, True))
    sampler = sampling.Sampler(inference_mode(model, True))
    options = sampling.SamplingOptions(top_p=args.top_p, temperature=args.temperature, seed=args.seed,
                                       num_samples=args.num_samples)
    events = ops.as_triples(midi.midi_to_events(args.prompt)) if args.prompt else None
    given = None
    if events is None:
        if args.accompany or args.infill:
            print("amt generate: error: --accompany and --infill need --prompt", file=sys.stderr)
            return 2
        outputs = sampler.generate(0, args.end, options=options, anticipatory=not args.autoregressive)
    elif args.infill:
        outputs = sampling.infill(sampler, events, *args.infill, options=options)
    elif args.accompany:
        instruments = [int(x) for x in args.accompany.split(",")]
        present = ops.instruments(ops.clip(events, 0, args.end, clip_duration=False))
        missing = [i for i in instruments if i not in present]
        if missing:
            print(f"amt generate: error: --accompany: instrument(s) {missing} do not play in the first {args.end:g} s of "
                  f"{args.prompt} (it has {sorted(present)}; 0-127 General MIDI programs, 128 drums)", file=sys.stderr)
            return 2
        outputs = sampling.accompany(sampler, events, instruments, args.start, args.end, options,
                                     anticipatory=not args.autoregressive)
        given = ops.from_controls(ops.clip(augment.extract_instruments(events, instruments)[1], 0, args.end,
                                           clip_duration=False))  # outlined in the piano roll
    else:
        outputs = sampling.continuation(sampler, events, args.start, args.end, options,
                                        anticipatory=not args.autoregressive)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, sample in enumerate(outputs):
        path = out if i == 0 else out.with_name(f"{out.stem}-{i + 1}{out.suffix}")
        midi.events_to_midi(sample, path)
        save_pianoroll(sample, path.with_suffix(".png"), given=given, title=path.name)
        print(f"wrote {path} ({len(sample)} notes, {ops.max_time(sample):.1f} s) and {path.with_suffix('.png')}")
    return 0


def _generate_interarrival(args, model) -> int:
    """`amt generate` with an interarrival model: continuation only (the encoding has no controls)."""
    from pathlib import Path

    from amt import interarrival_sampling, midi, ops
    from amt.pianoroll import save_pianoroll

    if args.accompany or args.infill or args.autoregressive or not args.prompt:
        print("amt generate: error: an interarrival model only continues a --prompt (no --accompany, --infill or "
              "--autoregressive)", file=sys.stderr)
        return 2
    events = ops.as_triples(midi.midi_to_events(args.prompt))
    options = interarrival_sampling.InterarrivalOptions(top_p=args.top_p, temperature=args.temperature, seed=args.seed,
                                                        num_samples=args.num_samples)
    sampler = interarrival_sampling.InterarrivalSampler(model)
    streams = sampler.continue_tokens(interarrival_sampling.prompt_tokens(events, args.start), args.start, args.end, options)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, tokens in enumerate(streams):
        path = out if i == 0 else out.with_name(f"{out.stem}-{i + 1}{out.suffix}")
        midi.interarrival_to_midi(tokens, path)
        sample = interarrival_sampling.tokens_to_events(tokens, args.end)
        save_pianoroll(sample, path.with_suffix(".png"), title=path.name)
        print(f"wrote {path} ({len(sample)} notes, interarrival model) and {path.with_suffix('.png')}")
    return 0


def _add_eval(subparsers) -> None:
    from amt.generation_eval import PROTOCOLS, RETRIEVALS, TASKS, GenerationEvalConfig
    from amt.perplexity import PerplexityConfig

    p = subparsers.add_parser("eval", help="evaluate: perplexity and bits/s on a cache; prompted-generation metrics")
    tasks = p.add_subparsers(dest="evaluation", required=True)
    defaults = PerplexityConfig()
    q = tasks.add_parser("perplexity", help="the paper's Table 1 on a test cache, for one or many checkpoints",
                         description="Loss, event / onset / duration / note perplexity and bits per second of each "
                         "checkpoint on a cache; writes OUT/perplexity.{csv,json,png}.")
    q.add_argument("--checkpoint", nargs="+", required=True,
                   help="step-N folders, run checkpoint folders (every step-N in them) or Hugging Face folders")
    q.add_argument("--cache", required=True, help="a cache written by `amt preprocess`, e.g. runs/demo-data/test")
    q.add_argument("--out", default=defaults.out)
    q.add_argument("--batch-size", type=int, default=defaults.batch_size)
    q.add_argument("--max-sequences", type=int, default=None, help="evaluate the first N sequences only")
    defaults = GenerationEvalConfig()
    q = tasks.add_parser("generation", help="continue / accompany test clips; metrics against the truth and baselines",
                         description="Writes OUT/report.{md,json}, metric histograms and piano rolls.")
    q.add_argument("--checkpoint", required=True, help="a Levanter checkpoint (step-N or run folder) or an HF folder")
    q.add_argument("--midi", default=defaults.midi, help="MIDI source (folder, manifest, .tar.gz, datasets)")
    q.add_argument("--split", default=defaults.split, help="train / validation / test (Lakh's MD5 split) or all")
    q.add_argument("--clips", type=int, default=defaults.clips, help="at most this many clips, one per file")
    q.add_argument("--clip-seconds", type=float, default=defaults.clip_seconds)
    q.add_argument("--prompt-seconds", type=float, default=defaults.prompt_seconds)
    q.add_argument("--tasks", default=",".join(defaults.tasks), help=f"comma-separated, of {','.join(TASKS)}")
    q.add_argument("--protocol", choices=PROTOCOLS, default=defaults.protocol,
                   help="paper: the reference's humaneval scripts (clip and melody rules, top-p, same-song retrieval); "
                   "ours: the earlier, easier protocol")
    q.add_argument("--retrieval", default=",".join(defaults.retrieval),
                   help=f"retrieval baselines, comma-separated, of {','.join(RETRIEVALS)}")
    q.add_argument("--interarrival-checkpoint", default=None,
                   help="an interarrival model (amt-interarrival-*.yaml): another continuation system")
    q.add_argument("--min-melody-notes", type=int, default=None, help="default: the protocol's (paper 20, ours 8)")
    q.add_argument("--tries", type=int, default=defaults.tries, help="random clip starts tried per file")
    q.add_argument("--top-p", type=float, default=defaults.top_p,
                   help="default: the protocol's (paper: 0.98 continuation, 0.95 accompaniment and interarrival)")
    q.add_argument("--seed", type=int, default=defaults.seed)
    q.add_argument("--examples", type=int, default=defaults.examples, help="clips drawn as piano rolls")
    q.add_argument("--out", default=defaults.out)


def _run_eval(args) -> int:
    from amt import generation_eval, perplexity

    try:
        if args.evaluation == "perplexity":
            rows = perplexity.run(perplexity.PerplexityConfig(
                checkpoints=args.checkpoint, cache=args.cache, out=args.out, batch_size=args.batch_size,
                max_sequences=args.max_sequences))
            print(perplexity.markdown_table(rows))
            print(f"wrote {args.out}/perplexity.csv, perplexity.json and perplexity.png")
            return 0
        report = generation_eval.run(generation_eval.GenerationEvalConfig(
            checkpoint=args.checkpoint, midi=args.midi, split=args.split, clips=args.clips,
            clip_seconds=args.clip_seconds, prompt_seconds=args.prompt_seconds, tasks=args.tasks.split(","),
            top_p=args.top_p, seed=args.seed, examples=args.examples, out=args.out, protocol=args.protocol,
            retrieval=[r for r in args.retrieval.split(",") if r], interarrival_checkpoint=args.interarrival_checkpoint,
            min_melody_notes=args.min_melody_notes, tries=args.tries))
    except (FileNotFoundError, ValueError) as error:
        print(f"amt eval {args.evaluation}: error: {error}", file=sys.stderr)
        return 2
    print(generation_eval.markdown_report(report))
    print(f"wrote {args.out}/report.md, report.json and plots")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="amt", description="Anticipatory Music Transformer on Levanter")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_preprocess(subparsers)
    p = subparsers.add_parser("train", help="train a recipe with Levanter (any config key can be overridden)",
                              description="Run Levanter's train_lm on a recipe, e.g. recipes/amt-small.yaml. Other "
                              "flags override recipe keys: --trainer.num_train_steps 10 --data.cache_dir DIR. "
                              "--dry_run true prints the parameter count and batch arithmetic.")
    p.add_argument("--config_path", required=True, help="a YAML recipe (recipes/*.yaml)")
    p = subparsers.add_parser("export", help="write a Levanter checkpoint as a Hugging Face GPT-2 folder")
    p.add_argument("--checkpoint", required=True, help="a step-N folder or a run's checkpoint folder (latest step)")
    p.add_argument("--out", required=True, help="output folder (config.json + model.safetensors)")
    p = subparsers.add_parser("sweep", help="expand a sweep file into runs: print, write, run, or a wandb sweep")
    p.add_argument("sweep_file", help="a sweep YAML (see recipes/sweeps/)")
    p.add_argument("--write", metavar="DIR", help="write each run's full config to DIR/<run id>.yaml")
    p.add_argument("--run", action="store_true", help="train the runs one after another")
    p.add_argument("--wandb", metavar="FILE", help="write the equivalent wandb sweep config")
    p = subparsers.add_parser("generate", help="sample MIDI from a model: unconditional, continuation, infilling, "
                              "accompaniment", description="Writes OUT (and OUT-2.mid, ... for more samples) with a "
                              "piano-roll PNG beside each.")
    p.add_argument("--checkpoint", required=True, help="a Levanter checkpoint (step-N or run folder) or an HF folder")
    p.add_argument("--prompt", help="a MIDI file: the prompt (and the controls for --accompany / --infill)")
    p.add_argument("--start", type=float, default=0.0, help="seconds of the prompt kept before generating")
    p.add_argument("--end", type=float, default=20.0, help="generate up to this time (seconds)")
    p.add_argument("--accompany", help="instruments of the prompt to keep as controls, e.g. 0 or 0,40 (128 = drums)")
    p.add_argument("--infill", nargs=2, type=float, metavar=("T0", "T1"), help="regenerate the span [T0, T1)")
    p.add_argument("--autoregressive", action="store_true", help="Algorithm 2 (no anticipation)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--top-p", type=float, default=0.98)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="generated.mid")
    _add_eval(subparsers)
    subparsers.add_parser(
        "demo", help="the whole path on the bundled corpus: caches, a tiny model, perplexity, music (minutes on a CPU)",
        description="Preprocess demo/midi, train recipes/amt-tiny.yaml, evaluate perplexity, generate a continuation "
        "and an accompaniment (MIDI, piano rolls, WAV with FluidSynth). Options (amt.demo.DemoConfig): --out runs/demo "
        "--steps 100 --augment 10 --workers 2 --eval_sequences N --prompt_seconds 5 --end_seconds 20 --seed 0 "
        "--soundfont FILE.sf2")
    p = subparsers.add_parser("tpu", help="launch a recipe on a Cloud TPU VM slice (gcloud), resuming after preemption",
                              description="Other flags are passed to `amt train` on every host.")
    from amt import tpu

    tpu.add_arguments(p)
    args, rest = parser.parse_known_args(argv)
    if args.command == "tpu":
        return tpu.main(args, rest)
    if args.command == "sweep" and not rest:
        from amt import sweep

        return sweep.main(args.sweep_file, write=args.write, run=args.run, wandb=args.wandb)
    if args.command == "train":
        return _run_train(args, rest)
    if args.command == "demo":
        from amt import demo

        return demo.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "preprocess":
        return _run_preprocess(args)
    if args.command == "generate":
        return _run_generate(args)
    if args.command == "eval":
        return _run_eval(args)
    if args.command == "export":
        from amt.checkpoints import export_hf

        print(f"wrote {export_hf(args.checkpoint, args.out)}")
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
