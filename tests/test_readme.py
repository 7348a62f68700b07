"""Documentation check: every `amt ...` command in README.md, recipes/README.md and the commands' --help examples
still parses (and the `python script.py --config_path FILE` entry points name files that exist),
and the cheap ones run, so that the documented path cannot drift from the code.

- A concrete command (no placeholders) is parsed by the real `amt` parser; `amt train`'s dotted keys by
  draccus against the recipe it names (so a renamed Levanter key fails here).
- A synopsis (placeholders such as SRC, [--augment K], ...) has each of its --options checked against the
  command's parser.
- Paths into this repository (recipes/, demo/, preprocess/, eval/) must exist.
- Commands whose inputs ship with the repository and cost seconds (preprocessing the demo corpus) run for real.
"""

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from amt import cli

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", REPO / "recipes" / "README.md"]
PLACEHOLDER = re.compile(r"[\[\]|]|\.\.\.|(?<![a-z])[A-Z]{2,}[0-9]*(?![a-z])|^(N|K|T[01]|S|E|I,J|B|P|T)$")
REPO_PATH = re.compile(r"^(recipes|demo|preprocess|eval)/")


def _commands_in_markdown(text: str) -> list[str]:
    """`amt ...` commands: lines of fenced bash blocks (continuations joined, comments dropped, && split) and
    inline code spans."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = re.sub(r"\n[ \t]+(?=\S)", " ", block.replace("\\\n", "\n "))  # continuation lines joined
        for line in block.splitlines():
            commands += [part for part in line.split(" #")[0].split("&&")]
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", text)]
    commands += [span for span in spans if re.search(r"\bamt ", span) or span.startswith("python ")]
    found = []
    for command in commands:
        command = command.replace("\\|", "|").strip()
        words = command.split()
        while words and "=" in words[0] and not words[0].startswith("-"):  # WANDB_MODE=offline amt ...
            words.pop(0)
        if words and words[0] in ("amt", ".venv/bin/amt") and len(words) > 1:
            found.append(" ".join(["amt", *words[1:]]))
        elif len(words) > 1 and words[0] == "python" and words[1].endswith(".py"):
            found.append(" ".join(words))  # the draccus entry points: their script and config must exist
    return found


def _commands_in_help() -> list[str]:
    """The "Example: amt ..." sentences of every command's description."""
    parser = cli.build_parser()
    texts = []
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            texts.append(sub.description or "")
            for inner in getattr(sub, "_subparsers", None) and sub._subparsers._group_actions or []:
                texts += [s.description or "" for s in inner.choices.values()]
    found = []
    for text in texts:
        for example in re.findall(r"Examples?: (amt [^;]*)", text):
            found.append(example.rstrip(". "))
    return found


README_COMMANDS = [c for path in DOCUMENTS for c in _commands_in_markdown(path.read_text())]
HELP_COMMANDS = _commands_in_help()


def _subparser(words: list[str]):
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices[words[1]]
    if words[1] == "eval" and len(words) > 2 and not words[2].startswith("-"):
        sub = sub._subparsers._group_actions[0].choices[words[2]]
    return sub


@functools.cache
def _table1_mini():
    import importlib.util

    spec = importlib.util.spec_from_file_location("table1_mini", REPO / "experiments" / "table1_mini.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(command: str) -> None:
    words = shlex.split(command)
    if words[0] == "python":
        for word in words[1:]:
            if word.endswith((".py", ".yaml")):
                assert (REPO / word).exists(), f"{command}: {word} does not exist in the repository"
        if words[1] == "experiments/table1_mini.py" and not any(PLACEHOLDER.search(w) for w in words[2:]):
            _table1_mini().parse(words[2:])  # its own argument checks (exits 2 on an unknown option or value)
        return
    if words[1] == "COMMAND":  # "amt COMMAND -h"
        return
    assert words[1] in cli.COMMANDS, f"{command}: no command {words[1]!r}"
    for word in words:
        if REPO_PATH.match(word) and not PLACEHOLDER.search(word):
            assert (REPO / word.rstrip(",")).exists(), f"{command}: {word} does not exist in the repository"
    sub = _subparser(words)
    if not any(w.startswith("-") for w in words):  # a mention of a command in the prose ("`amt generate`")
        return
    options = {s for a in sub._actions for s in a.option_strings}
    levanter = words[1] in ("train", "tpu")
    if any(PLACEHOLDER.search(w) for w in words[1:] if not w.startswith("--")):  # a synopsis: its options exist
        recipe = next((w for w in words if w.startswith("recipes/")), "recipes/amt-tiny.yaml")
        for word in words:
            flag = re.match(r"^\[?(--?[a-z][\w.-]*)", word)
            if not flag or flag.group(1) in options or flag.group(1) == "--key":
                continue
            assert levanter, f"{command}: {flag.group(1)} is not an option of amt {words[1]}"
            assert _levanter_key_exists(recipe, flag.group(1)[2:]), f"{command}: {flag.group(1)} is not a config key"
        return
    try:
        args, rest = cli.build_parser().parse_known_args(words[1:])
    except SystemExit as exit:
        assert exit.code == 0 and ("-h" in words or "--help" in words), f"{command}: does not parse"
        return
    if levanter:
        _check_levanter_keys(command, args.config_path if words[1] == "train" else args.recipe, rest)
    else:
        assert not rest, f"{command}: unrecognized {rest}"


@functools.lru_cache
def _recipe(recipe: str):
    import draccus

    from amt.train import TrainConfig

    return draccus.parse(TrainConfig, config_path=str(REPO / recipe), args=[])


def _levanter_key_exists(recipe: str, key: str) -> bool:
    node = _recipe(recipe)
    for part in key.split("."):
        if not hasattr(node, part):
            return False
        node = getattr(node, part)
    return True


def _check_levanter_keys(command: str, recipe: str, keys: list[str]) -> None:
    import draccus

    from amt.train import TrainConfig

    try:
        draccus.parse(TrainConfig, config_path=str(REPO / recipe), args=keys)
    except SystemExit:
        pytest.fail(f"{command}: draccus refuses {keys}")


def test_commands_were_found():
    """The extraction itself: README's set-up, demo, evaluation and fine-tuning commands are all seen."""
    assert len(README_COMMANDS) >= 20 and len(HELP_COMMANDS) >= 5
    assert "amt demo" in README_COMMANDS
    assert any(c.startswith("amt train --config_path recipes/amt-medium.yaml --initialize_from_hf") for c in README_COMMANDS)
    assert any(c.startswith("amt preprocess demo/midi --out runs/demo/data") for c in HELP_COMMANDS)


@pytest.mark.parametrize("command", sorted(set(README_COMMANDS + HELP_COMMANDS)))
def test_documented_command_parses(command):
    _check(command)


def test_cheap_documented_commands_run(tmp_path):
    """Commands whose inputs ship with the repository and take seconds run for real, in a scratch folder that
    looks like a checkout (twice: the second run must say it had nothing to do)."""
    cheap = sorted({c for c in README_COMMANDS + HELP_COMMANDS if c.startswith("amt preprocess demo/midi ")})
    sweeps = sorted({c for c in README_COMMANDS + HELP_COMMANDS if re.fullmatch(r"amt sweep recipes/\S+", c)})
    assert cheap and sweeps
    for name in ("demo", "recipes"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "JAX_PLATFORMS": "cpu"}
    for command in cheap:
        for attempt in ("first", "second"):
            done = subprocess.run([sys.executable, "-m", "amt.cli", *shlex.split(command)[1:], "--no-progress"],
                                  cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
            assert ("already built" in done.stdout) == (attempt == "second"), done.stdout
    for command in sweeps:  # prints the runs' amt train commands
        done = subprocess.run([sys.executable, "-m", "amt.cli", *shlex.split(command)[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "amt train --config_path" in done.stdout, f"{command}: {done.stderr[-2000:]}"
