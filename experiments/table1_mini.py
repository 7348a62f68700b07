"""Table 1 in miniature: the paper's comparisons, at a size that trains on 2 CPU cores, in one resumable command.

    python experiments/table1_mini.py                   # everything (hours on 2 cores); a rerun resumes
    python experiments/table1_mini.py --stages train     # one stage (corpus, caches, train, perplexity, generation, report)
    python experiments/table1_mini.py --out runs/table1-long --start-from runs/table1-mini --steps 2200 \
        --schedule-steps 8000 --clips 30                  # the three models trained on to 9.0M tokens (README)

Three models of one shape and optimizer (`recipes/amt-mini*.yaml`), each trained on the same number of tokens
(steps x batch x 1,024; `--steps` sets it for all three):
- interarrival: the paper's "MIDI-like" baseline (`--encoding interarrival`, 34,025 ids);
- autoregressive: arrival-time tokens, `--augment 1` (every sequence AUTOREGRESS: no anticipation);
- anticipatory: arrival-time tokens, `--augment 10` (the paper's mixture of anticipation and AUTOREGRESS copies).
The corpus is music21's bundled public-domain scores (`python -m amt.corpora music21`) with the demo corpus,
split by the MD5 rule. All three are evaluated on the same test files: bits per second over the same seconds
(each encoding's own cache of those files), event / onset / duration / note perplexity for the arrival-time
ones (on the test split without controls, as Table 1), and the uniform distribution over each vocabulary as a
floor. Then the prompted-generation evaluation (`amt eval generation`, the paper's protocol) on the test files:
continuation by each model against same-song and other-file retrieval and the truth; accompaniment by the
anticipatory model (Algorithm 1), by it and by the autoregressive model with Algorithm 2, and retrieval.

`--schedule-steps` longer than `--steps` evaluates a point on a longer run's curve: Levanter is given the longer
run's length (its learning-rate schedule) and stopped once the checkpoint at `--steps` is complete. `--start-from`
seeds each model's run, when it has no checkpoint yet, with the latest checkpoint of the same model in another
experiment's folder (the models above trained on from the 600-step comparison's).

Each stage is skipped when its output is complete (caches verified, training at its last step, an evaluation's
report newer than its checkpoints), so an interrupted run continues where it stopped: training resumes from
Levanter's latest checkpoint (saved every 5 minutes). Results: OUT/results.md and OUT/results.json, next to
each stage's own output; OUT/log.txt keeps the commands that ran.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from amt import vocab
from amt.demo import latest_step  # (neither imports jax nor Levanter)

REPO = Path(__file__).resolve().parents[1]
STAGES = ("corpus", "caches", "train", "perplexity", "generation", "report")
MODELS = {  # name: (recipe, cache of its encoding whose test split it is evaluated on), in training order
    "anticipatory": ("recipes/amt-mini.yaml", "data/mini-a1"),  # Table 1: the test split without controls
    "autoregressive": ("recipes/amt-mini-autoregressive.yaml", "data/mini-a1"),
    "interarrival": ("recipes/amt-mini-interarrival.yaml", "data/mini-interarrival"),
}
CACHES = {  # output: extra `amt preprocess` options
    "data/mini-a1": ["--augment", "1"],
    "data/mini-a10": ["--augment", "10"],
    "data/mini-interarrival": ["--encoding", "interarrival"],
}
# the paper's Table 1 (Lakh MIDI test set), for the report: (model, event ppl, bits/s)
PAPER_TABLE1 = [
    ("Small, interarrival (MIDI-like)", None, 83.1),
    ("Small, arrival-time, autoregressive", 15.1, 80.4),
    ("Small, arrival-time, anticipatory", 15.0, 80.7),
]
POLL_SECONDS = 10  # how often a run stopped before its schedule ends is checked for the checkpoint at --steps
KEEP_EVERY = 200  # the recipes' trainer.checkpointer.keep: [{every: 200}] (a test checks it)
VOCAB_SIZES = {"arrival": vocab.VOCAB_SIZE, "interarrival": vocab.MIDI_VOCAB_SIZE}


def say(message: str) -> None:
    print(f"[table1-mini {time.strftime('%H:%M:%S')}] {message}", flush=True)


def amt(*args: str, log: Path, stop=None) -> None:
    """Run an `amt` command (this interpreter's), its output passed through; a failure stops the experiment.
    `stop`, when given, is polled while it runs: once true, the command is ended (SIGTERM) as finished."""
    command = [sys.executable, "-m", "amt.cli", *args]
    with open(log, "a") as file:
        file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} amt {shlex.join(args)}\n")
    say("amt " + shlex.join(args))
    process = subprocess.Popen(command, cwd=REPO)
    while stop is not None and process.poll() is None:
        if stop():
            process.send_signal(signal.SIGTERM)
            process.wait()
            return
        time.sleep(POLL_SECONDS)
    if process.wait():
        raise SystemExit(f"table1-mini: `amt {shlex.join(args)}` failed (exit {process.returncode}); fix it and rerun: "
                         "finished stages are skipped")


def last_step(run: Path) -> int | None:
    """The step of the run's latest complete checkpoint (the demo's rule: metadata.json is written last), or None."""
    name = latest_step(run / "checkpoints")
    return int(name.split("-")[-1]) if name else None


def stage_corpus(args, log: Path) -> None:
    corpus = REPO / "data" / "music21-midi"
    if not (corpus / "stats.json").exists():
        command = [sys.executable, "-m", "amt.corpora", "music21", "--out", str(corpus)]
        say(shlex.join(command[1:]) + "  (about an hour on 2 cores; resumable)")
        if subprocess.run(command, cwd=REPO).returncode:
            raise SystemExit("table1-mini: the corpus build failed; rerun to resume it")
    manifest = REPO / "data" / "mini.txt"
    files = sorted(str(p.relative_to(REPO / "data")) for p in corpus.rglob("*.mid"))
    files += sorted(os.path.relpath(p, REPO / "data") for p in (REPO / "demo" / "midi").rglob("*.mid"))
    text = "\n".join(files) + "\n"
    if not manifest.exists() or manifest.read_text() != text:
        manifest.write_text(text)
    say(f"corpus: {len(files)} MIDI files listed in data/mini.txt")


def stage_caches(args, log: Path) -> None:
    for out, options in CACHES.items():
        amt("preprocess", "data/mini.txt", "--out", out, "--workers", str(args.workers), *options, log=log)


def seed_run(args, name: str) -> int:
    """Copy the latest checkpoint of model `name` in `--start-from` into this experiment's run (which has none);
    returns its step."""
    source = last_step(args.start_from / name)
    if source is None:
        raise SystemExit(f"table1-mini: --start-from {args.start_from}: {name} has no complete checkpoint there")
    target = args.out / name / "checkpoints"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(args.start_from / name / "checkpoints" / f"step-{source}", target / f"step-{source}")
    return source


def stage_train(args, log: Path) -> None:
    for name in args.models:
        recipe, _ = MODELS[name]
        run = args.out / name
        done = last_step(run)
        if done is not None and done >= args.steps:
            say(f"{name}: trained ({done} steps), skipped")
            continue
        if done is None and args.start_from is not None:
            done = seed_run(args, name)
            say(f"{name}: starting from {args.start_from / name}'s step {done}")
        stopping = args.schedule_steps > args.steps  # a point on a longer run's curve
        say(f"{name}: training to step {args.steps}" + (f" of a {args.schedule_steps}-step schedule" if stopping else "")
            + (f", resuming from step {done}" if done else ""))
        amt("train", "--config_path", recipe, "--trainer.num_train_steps", str(args.schedule_steps),
            "--trainer.checkpointer.base_path", str(run / "checkpoints"), "--trainer.log_dir", str(run / "logs"),
            log=log, stop=(lambda: (last_step(run) or 0) >= args.steps) if stopping else None)
        if stopping:
            say(f"{name}: stopped once its step-{args.steps} checkpoint was complete")


def _final_checkpoint(args, name: str) -> str:
    """The checkpoint at `--steps` (a run stopped on a longer schedule may have saved one after it), else the latest."""
    checkpoints = args.out / name / "checkpoints"
    if (checkpoints / f"step-{args.steps}" / "metadata.json").exists():
        return str(checkpoints / f"step-{args.steps}")
    step = last_step(args.out / name)
    if step is None:
        raise SystemExit(f"table1-mini: {checkpoints} has no checkpoint: run the train stage first")
    return str(checkpoints / f"step-{step}")


def _fresh(report: Path, checkpoints: list[str]) -> bool:
    """Whether `report` exists and was written after every checkpoint it evaluates."""
    return report.exists() and all(report.stat().st_mtime > Path(c, "metadata.json").stat().st_mtime for c in checkpoints)


def stage_perplexity(args, log: Path) -> None:
    for name in args.models:
        checkpoint = _final_checkpoint(args, name)
        out = args.out / name / "perplexity"
        if _fresh(out / "perplexity.json", [checkpoint]):
            say(f"{name}: perplexity of {checkpoint} already measured, skipped")
            continue
        amt("eval", "perplexity", "--checkpoint", checkpoint, "--cache", f"{MODELS[name][1]}/test", "--out", str(out),
            log=log)


def stage_generation(args, log: Path) -> None:
    checkpoints = {name: _final_checkpoint(args, name) for name in MODELS}
    out = args.out / "generation"
    if _fresh(out / "report.json", list(checkpoints.values())):
        say("generation: already evaluated with these checkpoints, skipped")
        return
    amt("eval", "generation", "--checkpoint", checkpoints["anticipatory"],
        "--autoregressive-checkpoint", checkpoints["autoregressive"],
        "--interarrival-checkpoint", checkpoints["interarrival"],
        "--midi", "data/mini.txt", "--split", "test", "--clips", str(args.clips), "--out", str(out), log=log)


def table1_rows(args) -> list[dict]:
    rows = []
    for name in MODELS:
        path = args.out / name / "perplexity" / "perplexity.json"
        if path.exists():
            result = json.loads(path.read_text())["results"][-1]
            rows.append({"model": name, **result})
    return rows


def stage_report(args, log: Path) -> None:
    rows = table1_rows(args)
    if not rows:
        raise SystemExit("table1-mini: no perplexity results yet: run the perplexity stage first")
    lines = ["# Table 1 in miniature", "",
             f"Models: `recipes/amt-mini*.yaml`, {args.steps} steps each (the same tokens: steps x 4 x 1,024)"
             + (f", stopped there on a {args.schedule_steps}-step learning-rate schedule"
                if args.schedule_steps > args.steps else "") + ". "
             "Test: the test split of `data/mini.txt`, each encoding's own cache of the same files.", "",
             "| model | step | test seconds | loss (nats/token) | event ppl | onset | duration | note | bits/s | uniform bits/s "
             "| onset mass in the past | in the next second |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(value, spec):
        return "" if value is None else format(value, spec)

    for row in rows:
        uniform = row["tokens"] * math.log2(VOCAB_SIZES[row["encoding"]]) / row["seconds"]
        row["uniform_bits_per_second"] = uniform
        lines.append(f"| {row['model']} | {row['step']} | {row['seconds']:.1f} | {row['loss']:.3f} | "
                     f"{fmt(row['event_perplexity'], '.2f')} | {fmt(row['event_onset_perplexity'], '.2f')} | "
                     f"{fmt(row['event_duration_perplexity'], '.2f')} | {fmt(row['event_note_perplexity'], '.2f')} | "
                     f"{row['bits_per_second']:.1f} | {uniform:.1f} | {fmt(row.get('onset_past_mass'), '.3f')} | "
                     f"{fmt(row.get('onset_next_second_mass'), '.3f')} |")
    lines += ["", "Onset masses (arrival-time models; `amt eval perplexity`): of the model's next-onset distribution, the share "
              "before the previous event's onset (the truth: 0) and, of the rest, the share within the next second (the "
              "truth: 1). A sampler draws from the rest: a low second column is a continuation that jumps ahead.",
              "", "The paper's Table 1 (Lakh MIDI test set, GPT-2 Small: 100k steps of 512 x 1,024 tokens, 52B tokens):", "",
              "| model | event ppl | bits/s |", "|---|---|---|"]
    lines += [f"| {model} | {fmt(ppl, '.1f')} | {bits:.1f} |" for model, ppl, bits in PAPER_TABLE1]
    generation = args.out / "generation" / "report.md"
    if generation.exists():
        lines += ["", f"Prompted generation: `{generation.relative_to(args.out)}`."]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(
        json.dumps({"steps": args.steps, "schedule_steps": args.schedule_steps, "rows": rows}, indent=2))
    print("\n".join(lines))
    say(f"report: {args.out / 'results.md'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python experiments/table1_mini.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/table1-mini"), help="runs, evaluations, results")
    parser.add_argument("--steps", type=int, default=600, help="training steps of each model (batch 4 x 1,024 tokens)")
    parser.add_argument("--schedule-steps", type=int, default=None,
                        help="the learning-rate schedule's length, if longer than --steps (stopped at --steps); "
                             "default: --steps")
    parser.add_argument("--start-from", type=Path, default=None,
                        help="another experiment folder whose models' latest checkpoints seed runs that have none")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {','.join(STAGES)}")
    parser.add_argument("--models", default=",".join(MODELS), help="models to train / evaluate, comma-separated")
    parser.add_argument("--clips", type=int, default=10, help="clips per generation task (the paper's scripts: 10)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="preprocessing processes")
    return parser


def parse(argv=None) -> argparse.Namespace:
    """The options, checked (one line naming the option, before anything runs)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.stages = args.stages.split(",")
    args.models = args.models.split(",")
    for value, known, what in ((args.stages, STAGES, "--stages"), (args.models, MODELS, "--models")):
        unknown = [v for v in value if v not in known]
        if unknown:
            parser.error(f"{what}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    for name in ("steps", "clips", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: must be >= 1, got {getattr(args, name)}")
    if args.schedule_steps is None:
        args.schedule_steps = args.steps
    if args.schedule_steps < args.steps:
        parser.error(f"--schedule-steps: must be >= --steps ({args.steps}), got {args.schedule_steps}")
    if args.schedule_steps > args.steps and args.steps % KEEP_EVERY:
        parser.error(f"--steps: a run stopped before its schedule ends keeps checkpoints every {KEEP_EVERY} steps "
                     f"(the recipes' checkpointer.keep), so --steps must be a multiple of it, got {args.steps}")
    args.out = args.out if args.out.is_absolute() else REPO / args.out
    if args.start_from is not None:  # (whether it exists is checked when the experiment starts, not here)
        args.start_from = args.start_from if args.start_from.is_absolute() else REPO / args.start_from
    return args


def main(argv=None) -> None:
    args = parse(argv)
    if args.start_from is not None and not args.start_from.is_dir():
        raise SystemExit(f"table1-mini: --start-from: no folder {args.start_from}")
    os.chdir(REPO)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "log.txt"
    for stage in STAGES:
        if stage in args.stages:
            globals()[f"stage_{stage}"](args, log)


if __name__ == "__main__":
    main()
