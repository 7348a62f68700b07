"""Sweeps expand into runs; the TPU launcher's commands (dry run)."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import draccus
import numpy as np
import pytest
import yaml

from amt import sweep, tpu
from amt.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_grid_sweep_expands_every_combination_into_runnable_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    runs = sweep.expand("recipes/sweeps/lr-size-augment.yaml")
    assert len(runs) == 8 and len({r.run_id for r in runs}) == 8
    combos = {(r.config_path, r.overrides["optimizer.learning_rate"], r.overrides["data.cache_dir"]) for r in runs}
    assert len(combos) == 8
    for run in runs:
        path = tmp_path / f"{run.run_id}.yaml"
        path.write_text(yaml.safe_dump(run.config()))
        config = draccus.parse(TrainConfig, config_path=str(path), args=[])
        assert config.optimizer.learning_rate == run.overrides["optimizer.learning_rate"]
        assert config.data.cache_dir == run.overrides["data.cache_dir"]
        assert config.trainer.id == run.run_id
        assert config.trainer.checkpointer.base_path == f"checkpoints/sweeps/{run.run_id}"
        assert config.model.num_layers == (12 if "small" in run.config_path else 24)
    # the printed command is what `amt train` parses to the same config
    command = runs[5].command()
    parsed = draccus.parse(TrainConfig, config_path=command[3], args=command[4:])
    assert parsed.optimizer.learning_rate == runs[5].overrides["optimizer.learning_rate"]


def test_random_sweep_draws_reproducibly_within_ranges(tmp_path):
    spec = {"name": "r", "method": "random", "count": 20, "seed": 3, "config_path": str(REPO / "recipes/amt-tiny.yaml"),
            "parameters": {"optimizer.learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                           "trainer.seed": {"distribution": "int_uniform", "min": 0, "max": 9},
                           "model.num_layers": [2, 4]}}
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(spec))
    runs, again = sweep.expand(path), sweep.expand(path)
    assert [r.overrides for r in runs] == [r.overrides for r in again]
    rates = [r.overrides["optimizer.learning_rate"] for r in runs]
    assert len(runs) == 20 and all(1e-4 <= x <= 1e-2 for x in rates) and len(set(rates)) == 20
    assert {r.overrides["model.num_layers"] for r in runs} == {2, 4}
    assert all(0 <= r.overrides["trainer.seed"] <= 9 for r in runs)
    wandb = sweep.wandb_sweep_config(path)
    assert wandb["method"] == "random" and wandb["run_cap"] == 20
    assert wandb["parameters"]["optimizer.learning_rate"]["distribution"] == "log_uniform_values"
    assert wandb["parameters"]["config_path"] == {"value": spec["config_path"]}
    assert wandb["command"] == ["${env}", "amt", "train", "${args}"]


def test_bad_sweep_files_are_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"config_path": "x.yaml", "parameters": {"a": []}}))
    with pytest.raises(ValueError, match="bad.yaml: parameter a"):
        sweep.expand(path)
    path.write_text(yaml.safe_dump({"config_path": "x.yaml", "paramters": {"a": [1]}}))
    with pytest.raises(KeyError, match="paramters"):
        sweep.expand(path)


def test_tpu_launch_dry_run_prints_the_gcloud_commands(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "secret-key-value")
    out = subprocess.run([sys.executable, "-m", "amt.cli", "tpu", "--name", "amt-small", "--zone", "europe-west4-a",
                          "--bucket", "gs://bucket/amt", "--dry-run", "--trainer.num_train_steps", "800000"],
                         capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[0].startswith("gcloud compute tpus tpu-vm create amt-small --accelerator-type=v3-32")
    assert "--spot" in lines[0] and "--zone=europe-west4-a" in lines[0]
    train = next(line for line in lines if " train " in line)
    assert "--worker=all" in train and "--config_path recipes/amt-small.yaml" in train
    assert "--data.cache_dir gs://bucket/amt/lakh-a30" in train
    assert "--trainer.checkpointer.base_path gs://bucket/amt/checkpoints/amt-small" in train
    assert "--trainer.num_train_steps 800000" in train
    assert "WANDB_API_KEY=${WANDB_API_KEY}" in train and "secret-key-value" not in out
    # escaped: the remote shell, not the launching one, runs the remote venv's python (see the next tests)
    assert any(r'\"jax[tpu]==\$(.venv/bin/python -c ' "'import jax; print(jax.__version__)')" r'\"' in line
               for line in lines)
    assert "--watch" in lines[-1]


def test_tpu_launch_wants_gcs():
    with pytest.raises(ValueError, match="gs://"):
        tpu.launch(tpu.TpuLaunch("n", "z", "/local/path"), dry_run=True)


TINY_RECIPE = str(REPO / "recipes" / "amt-tiny.yaml")


def _sweep_file(tmp_path, spec: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("spec, message", [
    ({"method": "grdi", "parameters": {"a": [1]}}, "method must be grid or random, got 'grdi'"),
    ({"parameters": {}}, "'parameters' must map dotted config keys"),
    ({"parameters": {"a": {"distribution": "uniform", "min": 0, "max": 1}}}, "parameter a: distributions need method: random"),
    ({"method": "random", "parameters": {"a": {"distribution": "uniform", "min": 0}}}, "parameter a: a distribution needs"),
    ({"method": "random", "parameters": {"a": {"distribution": "normal", "min": 0, "max": 1}}}, "parameter a: a distribution needs"),
    ({"parameters": {"a": [1]}, "no_recipe": True}, "no config_path"),
])
def test_sweep_files_that_would_run_something_else_are_refused(tmp_path, spec, message):
    """A misspelt method (not silently a random sweep of 10), no parameters (not one bare run), a distribution in a
    grid (not a grid over its keys) or without its bounds, no recipe: refused by every use of the file, naming it."""
    spec = dict(spec)
    if not spec.pop("no_recipe", False):
        spec["config_path"] = TINY_RECIPE
    path = _sweep_file(tmp_path, spec)
    for use in (sweep.expand, sweep.wandb_sweep_config):
        with pytest.raises(ValueError, match=f"sweep.yaml: {re.escape(message)}"):
            use(path)


def test_random_draws_cover_their_ranges_in_their_distributions(tmp_path):
    """int_uniform includes both ends (and a one-value range), log_uniform_values spreads its draws evenly over the
    decades (about a quarter in each of 1e-5..1e-1's four); without a seed or count: seed 0, 10 runs, so that
    printing, --write and --run of the same file expand to the same runs."""
    spec = {"method": "random", "count": 400, "seed": 1, "config_path": TINY_RECIPE, "parameters": {
        "trainer.seed": {"distribution": "int_uniform", "min": 0, "max": 3},
        "trainer.num_train_steps": {"distribution": "int_uniform", "min": 5, "max": 5},
        "optimizer.learning_rate": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1}}}
    runs = sweep.expand(_sweep_file(tmp_path, spec))
    assert {r.overrides["trainer.seed"] for r in runs} == {0, 1, 2, 3}
    assert {r.overrides["trainer.num_train_steps"] for r in runs} == {5}
    decades = np.histogram(np.log10([r.overrides["optimizer.learning_rate"] for r in runs]), bins=4, range=(-5, -1))[0]
    assert all(70 <= n <= 130 for n in decades), decades  # uniform on the values: 0 or 1 below 1e-4
    del spec["count"], spec["seed"]
    path = _sweep_file(tmp_path, spec)
    runs = sweep.expand(path)
    assert [r.overrides for r in runs] == [r.overrides for r in sweep.expand(path)] and len(runs) == 10
    spec["seed"] = 0
    assert [r.overrides for r in sweep.expand(_sweep_file(tmp_path, spec))] == [r.overrides for r in runs]


def test_printed_commands_and_written_configs_parse_to_the_same_runs(tmp_path, capsys):
    """Values YAML writes differently from Python (null, true, a mapping) and a key whose parent the recipe lacks
    (`trainer.mesh`): every run's printed `amt train` command and its `--write` config parse to its values."""
    spec = {"name": "v", "config_path": TINY_RECIPE, "parameters": {
        "trainer.max_eval_batches": [None, 2], "model.fused_attention": [True],
        "trainer.mesh.axes": [{"data": -1, "replica": 1, "model": 2}], "optimizer.learning_rate": [1e-4]}}
    path = _sweep_file(tmp_path, spec)
    written = tmp_path / "runs"
    assert sweep.main(str(path), write=str(written)) == 0
    printed = [shlex.split(line) for line in capsys.readouterr().out.splitlines() if line.startswith("amt train")]
    runs = sweep.expand(path)
    assert [run.command() for run in runs] == printed and len(runs) == 2
    for run, command in zip(runs, printed):
        for config in (draccus.parse(TrainConfig, config_path=command[3], args=command[4:]),
                       draccus.parse(TrainConfig, config_path=str(written / f"{run.run_id}.yaml"), args=[])):
            assert config.trainer.max_eval_batches == run.overrides["trainer.max_eval_batches"]
            assert config.model.fused_attention is True and config.optimizer.learning_rate == 1e-4
            assert dict(config.trainer.mesh.axes) == {"data": -1, "replica": 1, "model": 2}
            assert config.trainer.id == run.run_id and config.model.hidden_dim == 128  # the recipe's own


def test_wandb_sweep_of_recipes_and_a_grid(tmp_path, monkeypatch):
    """The recipe varied (no top-level config_path): wandb's values are the recipes; a grid's count is no run cap
    (the grid is every combination, as `amt sweep` expands it); the metric is minimized."""
    monkeypatch.chdir(REPO)
    config = sweep.wandb_sweep_config("recipes/sweeps/lr-size-augment.yaml")
    assert config["parameters"]["config_path"] == {"values": ["recipes/amt-small.yaml", "recipes/amt-medium.yaml"]}
    assert config["metric"] == {"name": "eval/loss", "goal": "minimize"} and config["method"] == "grid"
    grid = _sweep_file(tmp_path, {"config_path": TINY_RECIPE, "count": 3, "parameters": {"trainer.seed": [0, 1, 2, 3]}})
    assert "run_cap" not in sweep.wandb_sweep_config(grid) and len(sweep.expand(grid)) == 4


def test_sweep_run_stops_at_the_first_failed_run(tmp_path, monkeypatch, capsys):
    path = _sweep_file(tmp_path, {"name": "f", "config_path": TINY_RECIPE, "parameters": {"trainer.seed": [0, 1, 2]}})
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args: calls.append(args) or subprocess.CompletedProcess(args, 3))
    assert sweep.main(str(path), run=True) == 3
    assert len(calls) == 1 and calls[0][:4] == [sys.executable, "-m", "amt.cli", "train"]
    assert "f-000 failed with status 3" in capsys.readouterr().err


def _dry_run_lines(capsys, *extra: str) -> list[str]:
    from amt import cli

    assert cli.main(["tpu", "--name", "run1", "--zone", "z", "--bucket", "gs://b/amt/", "--dry-run", *extra]) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_tpu_launch_copies_before_it_installs_and_the_extra_keys_win(capsys, monkeypatch):
    """The code archived, then copied to every host, installed, started; an on-demand slice; a bucket given with a
    trailing slash; the remote `amt train` parses (as draccus does) to the run's id and paths, and the extra keys
    given after them win over the launcher's own."""
    monkeypatch.chdir(REPO)
    lines = _dry_run_lines(capsys, "--on-demand", "--data.cache_dir", "gs://b/other", "--trainer.num_train_steps", "7")
    create, archive, copy, install, start = lines[:5]
    assert create.startswith("gcloud compute tpus tpu-vm create run1 ") and "--spot" not in create
    assert archive.startswith("git archive ") and "/tmp/amt-code.tar.gz" in archive
    assert copy.startswith("gcloud compute tpus tpu-vm scp --worker=all /tmp/amt-code.tar.gz 'run1:~/amt-code.tar.gz'")
    assert "--worker=all" in install and "pip install" in install and "--worker=all" in start
    assert "gs://b/amt//" not in "\n".join(lines)
    remote = shlex.split(tpu.TpuLaunch("run1", "z", "gs://b/amt", extra_args=(
        "--data.cache_dir", "gs://b/other", "--trainer.num_train_steps", "7")).train_command())
    args = remote[remote.index("train") + 1:remote.index(">")]
    config = draccus.parse(TrainConfig, config_path=args[1], args=args[2:])
    assert config.data.cache_dir == "gs://b/other" and config.trainer.num_train_steps == 7
    # the wandb run's id is the trainer's (Levanter's WandbConfig takes it where its own is unset): a restarted
    # launch continues the same wandb run (`--trainer.tracker.id` is no key draccus takes: the tracker is a union)
    assert config.trainer.id == "run1" and config.trainer.tracker.id is None and config.trainer.tracker.resume == "allow"
    assert config.trainer.checkpointer.base_path == "gs://b/amt/checkpoints/run1"


def test_printed_tpu_commands_expand_only_the_wandb_key_in_the_launching_shell(tmp_path, capsys, monkeypatch):
    """What --dry-run prints, run by a shell (gcloud stubbed): every argument arrives as the launcher builds it,
    ${WANDB_API_KEY} replaced by the launching shell's key (and nothing else expanded there)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(f"#!{sys.executable}\nimport json, sys\n"
                                    f"open({str(tmp_path / 'calls')!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    (bin_dir / "gcloud").chmod(0o755)
    lines = _dry_run_lines(capsys)
    job = tpu.TpuLaunch("run1", "z", "gs://b/amt")
    gcloud = [line for line in lines if line.startswith("gcloud ")]
    assert len(gcloud) == 4
    for line in gcloud:
        subprocess.run(["bash", "-c", line], check=True,
                       env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "WANDB_API_KEY": "k$1`x`"})
    calls = [json.loads(line) for line in (tmp_path / "calls").read_text().splitlines()]
    expected = [job.create(), job.copy_code(), job.install(), job.start()]
    expected[3] = [part.replace("${WANDB_API_KEY}", "k$1`x`") for part in expected[3]]
    assert calls == [command[1:] for command in expected]
    assert any("WANDB_API_KEY=k$1`x` nohup .venv/bin/amt train" in part for part in calls[3])


class _Stop(Exception):
    pass


def test_tpu_launch_runs_with_the_key_stops_on_a_failure_and_recreates_a_lost_slice(monkeypatch, capsys):
    job = tpu.TpuLaunch("n", "z", "gs://b")
    calls, sleeps, states, failing = [], [], iter(["READY\n", "PREEMPTED\n", ""]), []

    def run(command, capture_output=False, text=False):
        calls.append(command)
        if command == job.state():
            return subprocess.CompletedProcess(command, 0, stdout=next(states))
        return subprocess.CompletedProcess(command, 1 if command in failing else 0)

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) > 3:
            raise _Stop

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(tpu.time, "sleep", sleep)
    monkeypatch.setenv("WANDB_API_KEY", "key")
    launched = [[part.replace("${WANDB_API_KEY}", "key") for part in command] for command in job.commands()]
    assert any("WANDB_API_KEY=key nohup" in part for part in launched[-1])
    with pytest.raises(_Stop):
        tpu.launch(job, watch=True, poll_seconds=7)
    # READY: nothing; PREEMPTED, then gone (""): deleted, recreated, reinstalled, restarted
    assert calls == [*launched, job.state(), job.state(), job.delete(), *launched, job.state(), job.delete(),
                     *launched] and sleeps == [7] * 4
    err = capsys.readouterr().err
    assert "slice n is PREEMPTED" in err and "slice n is gone" in err and "not set" not in err
    calls.clear()
    failing.append(job.copy_code())
    monkeypatch.delenv("WANDB_API_KEY")
    assert tpu.launch(job, watch=True) == 1 and calls == [job.create(), job.archive_code(), job.copy_code()]
    assert "WANDB_API_KEY is not set" in capsys.readouterr().err
    assert tpu.launch(job, dry_run=True) == 0 and "WANDB_API_KEY" not in capsys.readouterr().err
