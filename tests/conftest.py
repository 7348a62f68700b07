"""Shared fixtures: the real MIDI files and reference outputs in ../shared (tests skip cleanly without them)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
PARITY = SHARED / "parity"
MIDI = SHARED / "midi"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available (the ../shared folder beside the checkout)")
    return path


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return _need(PARITY)


@pytest.fixture(scope="session")
def midi_dir() -> Path:
    return _need(MIDI)


@pytest.fixture(scope="session")
def reference_events(parity_dir) -> list[tuple[Path, str, list[int]]]:
    """(path, status, tokens) for every file of the parity manifest."""
    rows = []
    for line in (parity_dir / "reference_events.tsv").read_text().splitlines():
        path, status, tokens = line.split("\t")
        rows.append((parity_dir / path, status, [int(t) for t in tokens.split()]))
    return rows


@pytest.fixture(scope="session")
def real_events(reference_events):
    """Events of the files that pass the paper's filters (from our parser), keyed by file name."""
    from amt import midi, ops

    return {p.name: ops.as_triples(midi.midi_to_events(p)) for p, status, _ in reference_events if status == "ok"}


@pytest.fixture(scope="session")
def make_tiny_model():
    """make_tiny_model(seq_len): a tiny random GPT-2 (2 layers, 32 wide) of our vocabulary, dropout off."""

    def make(seq_len: int):
        import haliax as hax
        import jax
        from levanter.utils.tree_utils import inference_mode

        from amt import vocab
        from amt.checkpoints import single_device_mesh
        from amt.train import MusicGpt2Config

        config = MusicGpt2Config(max_seq_len=seq_len, hidden_dim=32, num_layers=2, num_heads=2,
                                 scale_attn_by_inverse_layer_idx=True)
        with single_device_mesh():
            model = config.build(hax.Axis("vocab", vocab.VOCAB_SIZE), key=jax.random.PRNGKey(0))
        return inference_mode(model, True)

    return make
