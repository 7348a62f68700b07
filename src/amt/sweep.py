"""Config-driven sweeps: a sweep file expands into run configs (grid or random over dotted config keys).

A sweep file (YAML):

    name: lr-size                     # run ids are <name>-<index>
    method: grid                      # grid (every combination) or random (`count` draws, `seed`)
    config_path: recipes/amt-small.yaml
    base_path: checkpoints/sweeps     # each run checkpoints to <base_path>/<run id>
    parameters:
      config_path: [recipes/amt-small.yaml, recipes/amt-medium.yaml]   # the recipe itself may vary
      optimizer.learning_rate: [3.0e-4, 6.0e-4]
      data.cache_dir: [data/lakh-a1, data/lakh-a30]                    # augmentation = another cache
      trainer.seed: {distribution: int_uniform, min: 0, max: 1000}     # random sweeps only
      optimizer.weight_decay: {distribution: log_uniform_values, min: 0.01, max: 0.3}

Each run is a recipe plus overrides. `amt sweep FILE` prints the `amt train` commands, `--write DIR` writes
each run's full YAML config, `--run` trains them one after another, `--wandb FILE` writes the equivalent
wandb sweep config (`wandb sweep FILE`, then `wandb agent ...` runs `amt train` with the same keys).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

DISTRIBUTIONS = ("uniform", "log_uniform_values", "int_uniform")


@dataclass(frozen=True)
class Run:
    run_id: str
    config_path: str
    overrides: dict  # dotted key -> value

    def command(self) -> list[str]:
        args = ["amt", "train", "--config_path", self.config_path]
        for key, value in self.overrides.items():
            args += [f"--{key}", _cli_value(value)]
        return args

    def config(self) -> dict:
        """The recipe with the overrides applied: a complete config for `amt train --config_path`."""
        with open(self.config_path) as file:
            config = yaml.safe_load(file)
        for key, value in self.overrides.items():
            node = config
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return config


def _cli_value(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


def _check(spec: dict, source: str) -> None:
    allowed = {"name", "method", "config_path", "base_path", "parameters", "count", "seed"}
    unknown = set(spec) - allowed
    if unknown:
        raise KeyError(f"{source}: unknown sweep keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    if spec.get("method", "grid") not in ("grid", "random"):
        raise ValueError(f"{source}: method must be grid or random, got {spec['method']!r}")
    if not isinstance(spec.get("parameters"), dict) or not spec["parameters"]:
        raise ValueError(f"{source}: 'parameters' must map dotted config keys to values")
    for key, values in spec["parameters"].items():
        if isinstance(values, dict):
            if values.get("distribution") not in DISTRIBUTIONS or not {"min", "max"} <= set(values):
                raise ValueError(f"{source}: parameter {key}: a distribution needs distribution ({', '.join(DISTRIBUTIONS)}), min, max")
            if spec.get("method", "grid") == "grid":
                raise ValueError(f"{source}: parameter {key}: distributions need method: random")
        elif not isinstance(values, list) or not values:
            raise ValueError(f"{source}: parameter {key}: give a non-empty list of values or a distribution")
    if "config_path" not in spec and "config_path" not in spec["parameters"]:
        raise ValueError(f"{source}: no config_path (a recipe) given")


def _draw(values, rng: np.random.Generator):
    if isinstance(values, list):
        return values[int(rng.integers(len(values)))]
    low, high = values["min"], values["max"]
    if values["distribution"] == "int_uniform":
        return int(rng.integers(low, high + 1))
    if values["distribution"] == "log_uniform_values":
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(rng.uniform(low, high))


def expand(sweep_file: str | os.PathLike) -> list[Run]:
    """The runs of a sweep file, in a fixed order."""
    with open(sweep_file) as file:
        spec = yaml.safe_load(file)
    _check(spec, os.fspath(sweep_file))
    name = spec.get("name", Path(sweep_file).stem)
    parameters = spec["parameters"]
    if spec.get("method", "grid") == "grid":
        keys = list(parameters)
        combos = [dict(zip(keys, values)) for values in itertools.product(*(parameters[k] for k in keys))]
    else:
        rng = np.random.default_rng(spec.get("seed", 0))
        combos = [{k: _draw(v, rng) for k, v in parameters.items()} for _ in range(int(spec.get("count", 10)))]
    runs = []
    for index, combo in enumerate(combos):
        combo = copy.deepcopy(combo)
        config_path = combo.pop("config_path", spec.get("config_path"))
        run_id = f"{name}-{index:03d}"
        overrides = {**combo, "trainer.id": run_id}
        if "base_path" in spec:
            overrides["trainer.checkpointer.base_path"] = os.path.join(spec["base_path"], run_id)
        runs.append(Run(run_id, config_path, overrides))
    return runs


def wandb_sweep_config(sweep_file: str | os.PathLike) -> dict:
    """The same sweep for wandb agents (their `${args}` are `--key=value`, which `amt train` accepts)."""
    with open(sweep_file) as file:
        spec = yaml.safe_load(file)
    _check(spec, os.fspath(sweep_file))
    parameters = {}
    for key, values in spec["parameters"].items():
        if isinstance(values, list):
            parameters[key] = {"values": values}
        else:
            parameters[key] = {"distribution": values["distribution"], "min": values["min"], "max": values["max"]}
    if "config_path" not in parameters:
        parameters["config_path"] = {"value": spec["config_path"]}
    config = {
        "name": spec.get("name", Path(sweep_file).stem),
        "method": spec.get("method", "grid"),
        "metric": {"name": "eval/loss", "goal": "minimize"},
        "program": "amt",
        "command": ["${env}", "amt", "train", "${args}"],
        "parameters": parameters,
    }
    if "count" in spec and config["method"] == "random":
        config["run_cap"] = int(spec["count"])
    return config


def main(sweep_file: str, write: str | None = None, run: bool = False, wandb: str | None = None) -> int:
    runs = expand(sweep_file)
    if write:
        os.makedirs(write, exist_ok=True)
        for r in runs:
            with open(os.path.join(write, f"{r.run_id}.yaml"), "w") as file:
                yaml.safe_dump(r.config(), file, sort_keys=False)
        print(f"wrote {len(runs)} run configs to {write}")
    if wandb:
        with open(wandb, "w") as file:
            yaml.safe_dump(wandb_sweep_config(sweep_file), file, sort_keys=False)
        print(f"wrote {wandb}: start it with `wandb sweep {wandb}` and `wandb agent <sweep id>`")
    for r in runs:
        print(shlex.join(r.command()))
        if run:
            status = subprocess.run([sys.executable, "-m", "amt.cli", *r.command()[1:]]).returncode
            if status:
                print(f"{r.run_id} failed with status {status}", file=sys.stderr)
                return status
    return 0
