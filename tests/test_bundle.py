"""The bundled-model format (amt.bundle): what it keeps, what it shares, and that the unpacked model is the
packed one for every token its training data holds."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from amt import bundle, vocab

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_like(make_tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    """(a Hugging Face folder, the training cache it stands for): a tiny random model whose embedding rows of
    the tokens in the cache are scaled up to a spread of 0.5, as training makes them, and the others left at
    their tiny initial scale (training only pushes them down). Its predictions then depend on every kept row
    (at the initial scale a model's logits are nearly uniform whatever the rows hold: no test of them)."""
    from safetensors.numpy import load_file, save_file

    from amt import preprocess
    from amt.checkpoints import single_device_mesh

    tmp = tmp_path_factory.mktemp("bundle")
    midi = tmp / "midi"
    midi.mkdir()
    for name in ("npm_misc/fur-elise.mid", "miditok_multitrack/Funkytown.mid"):
        shutil.copy(REPO / "demo" / "midi" / name, midi)
    preprocess.run(preprocess.PreprocessConfig(source=str(midi), out=str(tmp / "data"), split="none", augment=2))
    folder = tmp / "hf"
    model = make_tiny_model(seq_len=1024)
    with single_device_mesh():
        model.config.hf_checkpoint_converter().save_pretrained(model, str(folder), save_tokenizer=False)
    tensors = load_file(str(folder / "model.safetensors"))
    seen = bundle.training_token_ids(tmp / "data" / "train")
    tensors["wte.weight"][seen] *= 0.5 / tensors["wte.weight"].std()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder, tmp / "data" / "train"


def test_blocks_cover_each_vocabulary_once():
    for size in (vocab.VOCAB_SIZE, vocab.MIDI_VOCAB_SIZE):
        blocks = bundle.vocabulary_blocks(size)
        assert blocks[0][0] == 0 and blocks[-1][1] == size
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(blocks, blocks[1:]))
    with pytest.raises(ValueError, match="1000 tokens"):
        bundle.vocabulary_blocks(1000)


def test_blocks_are_the_vocabularies_own():
    """The blocks are the vocabulary's kinds of token, not only a cover: two kinds merged (onsets with
    durations, notes with REST, note-ons with note-offs) would share one fill row between tokens the model
    tells apart, which the round trip below (one block's mean against a close one) cannot see."""
    assert bundle.vocabulary_blocks(vocab.VOCAB_SIZE) == [
        (0, 10_000), (10_000, 11_000), (11_000, 27_512), (27_512, 27_513), (27_513, 37_513), (37_513, 38_513),
        (38_513, 55_025), (55_025, 55_028)]
    assert bundle.vocabulary_blocks(vocab.MIDI_VOCAB_SIZE) == [(0, 1_000), (1_000, 17_512), (17_512, 34_024),
                                                               (34_024, 34_025)]


def test_kept_rows_round_trip_and_the_others_share_their_blocks_mean():
    rng = np.random.default_rng(0)
    tensors = {"wte.weight": rng.normal(0, 0.1, (vocab.VOCAB_SIZE, 16)).astype(np.float32),
               "h.0.ln_1.weight": rng.normal(1, 0.1, 16).astype(np.float32)}
    seen = np.array([0, 5, 9_999, vocab.DUR_OFFSET + 3, vocab.NOTE_OFFSET + 60, vocab.SEPARATOR, vocab.AUTOREGRESS])
    packed = bundle.pack_weights(tensors, seen)
    assert packed["wte.int8"].dtype == np.int8 and packed["wte.int8"].shape == (len(seen), 16)
    assert packed["h.0.ln_1.weight"].dtype == np.float16
    out = bundle.unpack_weights(packed)
    original = tensors["wte.weight"]
    error = np.abs(out["wte.weight"][seen] - original[seen])
    assert (error <= np.abs(original[seen]).max(1, keepdims=True) / 127 * 0.51 + 1e-4).all()  # half an int8 step
    onsets = np.setdiff1d(np.arange(vocab.MAX_TIME), seen)
    np.testing.assert_allclose(out["wte.weight"][onsets], np.broadcast_to(original[onsets].mean(0), (len(onsets), 16)),
                               atol=1e-3)
    controls = np.arange(vocab.ANOTE_OFFSET, vocab.SPECIAL_OFFSET)  # a block none of whose tokens was seen
    np.testing.assert_allclose(out["wte.weight"][controls[0]], original[controls].mean(0), atol=1e-3)
    np.testing.assert_allclose(out["h.0.ln_1.weight"], tensors["h.0.ln_1.weight"], atol=1e-3)


def test_the_unpacked_model_scores_training_data_as_the_packed_one(trained_like, tmp_path):
    from amt.checkpoints import load_model
    from amt.perplexity import read_cache, token_scores

    hf_folder, cache = trained_like
    path = bundle.pack(hf_folder, cache, tmp_path / "model.npz", about="a tiny random model")
    assert bundle.about(path) == "a tiny random model"
    assert path.stat().st_size < 0.1 * (hf_folder / "model.safetensors").stat().st_size  # 2 files hold few tokens
    unpacked = bundle.unpack(path, tmp_path / "unpacked")
    stamp = (unpacked / "model.safetensors").stat().st_mtime_ns
    assert bundle.unpack(path, tmp_path / "unpacked") == unpacked  # a second call finds it done
    assert (unpacked / "model.safetensors").stat().st_mtime_ns == stamp
    # a bundle packed again at the same path (another model there now) is unpacked again; a deleted model too
    first = (unpacked / "model.safetensors").read_bytes()
    bundle.pack(hf_folder, cache, path, about="the same model, described anew")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # even within one clock tick
    assert bundle.unpack(path, tmp_path / "unpacked") == unpacked
    assert (unpacked / "model.safetensors").stat().st_mtime_ns != stamp
    assert (unpacked / "model.safetensors").read_bytes() == first  # the same weights, written again
    (unpacked / "model.safetensors").unlink()
    bundle.unpack(path, tmp_path / "unpacked")
    assert (unpacked / "model.safetensors").read_bytes() == first

    sequences = read_cache(cache, max_sequences=2)
    (before, masses_before), (after, masses_after) = (token_scores(load_model(m)[0], sequences, batch_size=2)
                                                      for m in (hf_folder, unpacked))
    assert before.std() > 1  # the model's predictions depend on the tokens
    np.testing.assert_allclose(after, before, atol=0.1)  # int8 embedding: within 0.1 nats a token
    assert np.abs(after - before).mean() < 0.05  # (unpacking without the kept rows: several nats)
    np.testing.assert_allclose(masses_after, masses_before, atol=0.01)
