"""experiments/table1_mini.py: its options are checked before anything runs, finished stages are recognized, and
the report is built from the evaluations' own outputs (the training itself is the experiment: hours)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table1():
    spec = importlib.util.spec_from_file_location("table1_mini", REPO / "experiments" / "table1_mini.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, message", [
    (["--stages", "train,eval"], "--stages: unknown eval"),
    (["--models", "anticipatory,lstm"], "--models: unknown lstm"),
    (["--steps", "0"], "--steps: must be >= 1, got 0"),
    (["--steps", "600", "--schedule-steps", "400"], "--schedule-steps: must be >= --steps (600), got 400"),
    (["--steps", "2100", "--schedule-steps", "8000"], "--steps must be a multiple of it, got 2100"),
])
def test_bad_options_are_one_line_errors(table1, capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        table1.parse(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_a_missing_start_from_folder_stops_the_experiment_before_any_stage(table1, tmp_path):
    with pytest.raises(SystemExit, match="--start-from: no folder .*no-such-folder"):
        table1.main(["--out", str(tmp_path / "out"), "--start-from", str(tmp_path / "no-such-folder"),
                     "--stages", "report"])
    assert not (tmp_path / "out").exists()


def test_the_three_recipes_differ_only_in_data_and_run_folders(table1):
    import yaml

    recipes = {name: yaml.safe_load((REPO / recipe).read_text()) for name, (recipe, _) in table1.MODELS.items()}
    base = recipes["anticipatory"]
    for name, recipe in recipes.items():
        assert recipe["model"] == base["model"] and recipe["optimizer"] == base["optimizer"]
        assert {k: v for k, v in recipe["trainer"].items() if k not in ("checkpointer", "log_dir")} == \
            {k: v for k, v in base["trainer"].items() if k not in ("checkpointer", "log_dir")}
        assert name in recipe["trainer"]["checkpointer"]["base_path"] and name in recipe["trainer"]["log_dir"]
    assert [recipes[n]["data"]["cache_dir"] for n in ("anticipatory", "autoregressive", "interarrival")] == \
        ["data/mini-a10", "data/mini-a1", "data/mini-interarrival"]
    # a run stopped on a longer schedule ends at a kept checkpoint (the script checks --steps against KEEP_EVERY)
    assert all(r["trainer"]["checkpointer"]["keep"] == [{"every": table1.KEEP_EVERY}] for r in recipes.values())
    assert recipes["interarrival"]["data"]["vocab_size"] == 34025 and "vocab_size" not in base["data"]
    # the arrival-time models are both measured on the test split without controls (Table 1's)
    assert table1.MODELS["anticipatory"][1] == table1.MODELS["autoregressive"][1] == "data/mini-a1"


def test_last_step_counts_only_complete_checkpoints(table1, tmp_path):
    run = tmp_path / "run"
    assert table1.last_step(run) is None
    (run / "checkpoints" / "step-200").mkdir(parents=True)
    (run / "checkpoints" / "step-200" / "metadata.json").write_text("{}")
    (run / "checkpoints" / "step-400").mkdir()  # being written: no metadata.json yet
    assert table1.last_step(run) == 200


def test_report_puts_each_model_next_to_its_uniform_floor_and_the_paper(table1, tmp_path, capsys):
    args = table1.parse(["--out", str(tmp_path), "--steps", "600"])
    rows = {"anticipatory": ("arrival", 4.0, 9000, 3000.0), "autoregressive": ("arrival", 4.1, 9000, 3000.0),
            "interarrival": ("interarrival", 4.5, 8000, 2990.0)}
    for name, (encoding, loss, tokens, seconds) in rows.items():
        result = {"checkpoint": f"{name}/step-600", "step": 600, "encoding": encoding, "loss": loss, "tokens": tokens,
                  "seconds": seconds, "bits_per_second": loss / math.log(2) * tokens / seconds,
                  "event_perplexity": 50.0 if encoding == "arrival" else None, "event_onset_perplexity": None,
                  "event_duration_perplexity": None, "event_note_perplexity": None}
        if name == "anticipatory":  # an evaluation from before the onset masses has none: their cells stay empty
            result.update(onset_past_mass=0.625, onset_next_second_mass=0.194)
        (tmp_path / name / "perplexity").mkdir(parents=True)
        (tmp_path / name / "perplexity" / "perplexity.json").write_text(json.dumps({"results": [result]}))
    table1.stage_report(args, tmp_path / "log.txt")
    text = (tmp_path / "results.md").read_text()
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["model"] for row in results["rows"]] == ["anticipatory", "autoregressive", "interarrival"]
    uniform = results["rows"][2]["uniform_bits_per_second"]
    assert uniform == pytest.approx(8000 * math.log2(34025) / 2990.0)
    assert f"| interarrival | 600 | 2990.0 | 4.500 |" in text and f"{uniform:.1f} |" in text
    assert "Small, arrival-time, anticipatory | 15.0 | 80.7" in text
    assert text.count("| 0.625 | 0.194 |") == 1 and [line.endswith("|  |  |") for line in text.splitlines()
                                                      if line.startswith("| autoregressive |")] == [True]


# A stand-in for `amt train`: writes a complete checkpoint every 0.05 s (step-200, step-400, ...) under the
# --trainer.checkpointer.base_path it is given, and exits 0 by itself after step 4,000.
FAKE_TRAIN = """
import sys, time
from pathlib import Path
base = Path(sys.argv[sys.argv.index("--trainer.checkpointer.base_path") + 1])
for step in range(800, 4001, 200):
    (base / f"step-{step}").mkdir(parents=True, exist_ok=True)
    (base / f"step-{step}" / "metadata.json").write_text("{}")
    time.sleep(0.05)
"""


def test_a_run_on_a_longer_schedule_starts_from_another_experiment_and_stops_at_its_checkpoint(table1, tmp_path,
                                                                                                   monkeypatch):
    import subprocess
    import sys

    source = tmp_path / "short" / "anticipatory" / "checkpoints" / "step-599"
    source.mkdir(parents=True)
    (source / "metadata.json").write_text("{}")
    started, popen = [], subprocess.Popen

    def fake_popen(command, cwd):
        started.append(command)
        return popen([sys.executable, "-c", FAKE_TRAIN, *command[3:]])

    monkeypatch.setattr(table1.subprocess, "Popen", fake_popen)
    monkeypatch.setattr(table1, "POLL_SECONDS", 0.01)
    args = table1.parse(["--out", str(tmp_path / "long"), "--start-from", str(tmp_path / "short"), "--steps", "2200",
                         "--schedule-steps", "8000", "--models", "anticipatory"])
    table1.stage_train(args, tmp_path / "log.txt")
    command = started[0]
    assert command[command.index("--trainer.num_train_steps") + 1] == "8000"  # the longer run's schedule
    checkpoints = tmp_path / "long" / "anticipatory" / "checkpoints"
    assert (checkpoints / "step-599" / "metadata.json").exists()  # seeded from the other experiment
    steps = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("step-*"))
    assert 2200 in steps and max(steps) < 4000  # stopped, not run to its end
    assert table1._final_checkpoint(args, "anticipatory") == str(checkpoints / "step-2200")
    table1.stage_train(args, tmp_path / "log.txt")  # done: not started again
    assert len(started) == 1
