"""Sweeps expand into runs; the TPU launcher's commands (dry run)."""

import subprocess
import sys
from pathlib import Path

import draccus
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
    assert any("jax[tpu]==$(.venv/bin/python -c 'import jax; print(jax.__version__)')" in line for line in lines)
    assert "--watch" in lines[-1]


def test_tpu_launch_wants_gcs():
    with pytest.raises(ValueError, match="gs://"):
        tpu.launch(tpu.TpuLaunch("n", "z", "/local/path"), dry_run=True)
