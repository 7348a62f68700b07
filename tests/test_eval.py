"""Evaluation: Table 1's numbers checked against the model's own logits; generation metrics on real clips."""

import dataclasses
import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amt import (
    augment,
    clip_metrics,
    generation_eval,
    midi,
    ops,
    perplexity,
    preprocess,
    sequences,
    sources,
    vocab,
)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "midi"
ENV = {"HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "WANDB_MODE": "offline",
       "PYTHONPATH": str(REPO / "src")}  # the checkout's code, whichever copy the environment installed


@pytest.fixture(scope="module")
def tiny_model(make_tiny_model):
    return make_tiny_model(seq_len=1024)  # the full context: evaluation scores whole 1,024-token sequences


@pytest.fixture(scope="module")
def hf_folder(tiny_model, tmp_path_factory) -> Path:
    from amt.checkpoints import single_device_mesh

    folder = tmp_path_factory.mktemp("hf")
    with single_device_mesh():
        tiny_model.config.hf_checkpoint_converter().save_pretrained(tiny_model, str(folder), save_tokenizer=False)
    return folder


@pytest.fixture(scope="module")
def real_sequences() -> np.ndarray:
    """Training sequences of two real pieces, two copies each (a plain one, then an anticipatory one):
    events, controls and a SEPARATOR between files."""
    packer = sequences.SequencePacker()
    rows = []
    for key, name in enumerate(["npm_misc/fur-elise.mid", "miditok_multitrack/Funkytown.mid"]):
        events = ops.as_triples(midi.midi_to_events(DEMO / name))
        for copy in sequences.file_copies(events, 2, seed=0, file_key=key):
            rows += packer.add(copy)
    return np.stack(rows)


def test_perplexity_is_the_mean_loss_of_the_models_own_logits(tiny_model, real_sequences):
    from amt.checkpoints import logits

    chosen = real_sequences[[0, 3, len(real_sequences) - 1]]
    assert (ops.is_control(ops.as_triples(chosen[:, 1:].ravel())).any() and ops.is_separator(ops.as_triples(chosen[:, 1:].ravel())).any())
    losses = perplexity.token_losses(tiny_model, chosen, batch_size=2)  # 3 rows: the last batch is padded
    direct = []
    for sequence in chosen:
        z = logits(tiny_model, sequence)[:-1].astype(np.float64)
        log_probs = z - z.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        direct.append(-log_probs[np.arange(len(z)), sequence[1:]])
    direct = np.stack(direct)
    np.testing.assert_allclose(losses, direct, rtol=1e-4, atol=1e-4)

    m = perplexity.metrics(chosen, losses)
    assert m["tokens"] == 3 * 1023 and m["loss"] == pytest.approx(direct.mean(), rel=1e-5)
    # kinds from the triples themselves (ops), per predicted token
    triples = ops.as_triples(chosen[:, 1:].reshape(-1))
    control = np.repeat(ops.is_control(triples), 3).reshape(3, 1023)
    event = ~control & ~np.repeat(ops.is_separator(triples), 3).reshape(3, 1023)
    slot = np.arange(1023) % 3
    assert m["event_perplexity"] == pytest.approx(math.exp(3 * direct[event].mean()), rel=1e-4)
    assert m["control_perplexity"] == pytest.approx(math.exp(3 * direct[control].mean()), rel=1e-4)
    for s, name in enumerate(["onset", "duration", "note"]):
        assert m[f"event_{name}_perplexity"] == pytest.approx(math.exp(direct[event & (slot == s)].mean()), rel=1e-4)
    assert abs(m["loss"] - math.log(vocab.VOCAB_SIZE)) < 0.5  # a random model: near-uniform over 55,028 tokens
    # a diverged checkpoint reports infinite perplexity instead of stopping an evaluation of many
    assert perplexity.metrics(chosen, np.full_like(losses, 300.0))["event_perplexity"] == math.inf


def test_onset_masses_split_the_models_onset_distribution_at_the_previous_event(tiny_model, real_sequences):
    """The masses that say whether a model has learned that time runs forward, against its own logits: the
    previous event is found by walking the triples (controls and a SEPARATOR in between), the split by sums."""
    from amt.checkpoints import logits

    by_hand = [vocab.AUTOREGRESS, 5, 10_010, 11_060, vocab.ATIME_OFFSET + 40, vocab.ADUR_OFFSET, vocab.ANOTE_OFFSET + 1,
               30, 10_010, 11_062, *[vocab.SEPARATOR] * 3, 7, 10_010, 11_064, 9, 10_010, 11_065]
    previous = perplexity.previous_onsets(np.array([by_hand + [vocab.SEPARATOR] * (1024 - len(by_hand))]))[0]
    assert {i: int(p) for i, p in enumerate(previous) if p >= 0} == {6: 5, 15: 7}  # not across the SEPARATOR

    chosen = real_sequences[[0, 3, len(real_sequences) - 1]]
    losses, masses = perplexity.token_scores(tiny_model, chosen, batch_size=2)
    previous = perplexity.previous_onsets(chosen)
    assert (previous >= 0).sum() > 300
    expected = []
    for row, sequence in enumerate(chosen):
        z = logits(tiny_model, sequence)[:-1, vocab.TIME_OFFSET : vocab.TIME_OFFSET + vocab.MAX_TIME].astype(np.float64)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        for column in np.flatnonzero(previous[row] >= 0):
            t = previous[row, column]
            past = p[column, :t].sum()
            expected.append((past, p[column, t : t + 101].sum() / (1 - past)))
            assert chosen[row, column + 1] >= t  # the truth is never in the past ...
            assert chosen[row, column + 1] <= t + 100  # ... and always within the second (RESTs)
    np.testing.assert_allclose(masses[previous >= 0], np.array(expected), rtol=1e-3, atol=1e-5)
    assert not masses[previous < 0].any()
    m = perplexity.metrics(chosen, losses, masses)
    assert m["onset_past_mass"] == pytest.approx(np.mean([e[0] for e in expected]), rel=1e-3)
    assert m["onset_next_second_mass"] == pytest.approx(np.mean([e[1] for e in expected]), rel=1e-3)
    # a random model spreads its onsets over all 100 s: about half before a mid-window onset, 1% in a second
    assert 0.005 < m["onset_next_second_mass"] < 0.05
    assert perplexity.metrics(chosen, losses)["onset_past_mass"] is None


def test_bits_per_second_use_the_seconds_of_the_actual_sequences(real_sequences):
    # by hand: a file stretch 0 -> 2.5 s, a SEPARATOR, then the next file 0.3 -> 1.3 s (and a control, ignored)
    body = [[0, 10_010, 11_060], [250, 10_000, vocab.REST], [vocab.SEPARATOR] * 3, [30, 10_020, 11_064],
            [130, 10_020, 11_067], [vocab.ATIME_OFFSET + 900, vocab.ADUR_OFFSET + 5, vocab.ANOTE_OFFSET + 60]]
    sequence = np.array([vocab.ANTICIPATE] + sum(body, []))
    assert perplexity.sequence_seconds(sequence) == pytest.approx(2.5 + 1.0)

    # real sequences: a window of one file covers its first to last event onset
    first = real_sequences[1]
    triples = ops.as_triples(first[1:])
    assert not ops.is_separator(triples).any()
    events = triples[~ops.is_control(triples)]
    assert perplexity.sequence_seconds(first) == pytest.approx((events[:, 0].max() - events[:, 0].min()) / 100)

    losses = np.random.default_rng(0).uniform(1, 3, (len(real_sequences), 1023))
    m = perplexity.metrics(real_sequences, losses)
    seconds = sum(perplexity.sequence_seconds(s) for s in real_sequences)
    assert 10 < seconds and m["seconds"] == pytest.approx(seconds)
    assert m["bits_per_second"] == pytest.approx(losses.sum() / math.log(2) / seconds)
    # the same tokens at half the tempo: twice the seconds, half the bits per second
    slow = real_sequences.copy()
    body = slow[:, 1:].reshape(len(slow), -1, 3)
    is_event = body[:, :, 2] <= vocab.REST
    body[:, :, 0] = np.where(is_event, body[:, :, 0] * 2, body[:, :, 0])
    assert perplexity.metrics(slow, losses)["bits_per_second"] == pytest.approx(m["bits_per_second"] / 2)


def test_every_table_1_number_is_the_mean_of_its_own_tokens(real_sequences):
    """The model test above scores a near-uniform random model, whose every token costs about ln 55,028 nats:
    a wrong mask (SEPARATOR tokens left out of the loss, the controls' bits in the event bits) moves no number
    past its tolerance there. Here each kind of token and each slot of a triple has losses of its own size, and
    every number is checked against masks built from the triples themselves (ops), not from `triple_kinds`."""
    n = len(real_sequences)
    triples = ops.as_triples(real_sequences[:, 1:].reshape(-1))
    control = np.repeat(ops.is_control(triples), 3).reshape(n, 1023)
    separator = np.repeat(ops.is_separator(triples), 3).reshape(n, 1023)
    event = ~control & ~separator
    assert control.any() and separator.any()
    slot = np.broadcast_to(np.arange(1023) % 3, (n, 1023))
    losses = np.random.default_rng(1).uniform(0.5, 1.5, (n, 1023)) * (1 + slot) * np.where(control, 2.0, 1.0) + 20 * separator
    m = perplexity.metrics(real_sequences, losses)
    assert m["loss"] == pytest.approx(losses.mean()) and m["perplexity"] == pytest.approx(math.exp(losses.mean()))
    assert (m["event_tokens"], m["control_tokens"]) == (event.sum(), control.sum())
    for name, mask in (("event", event), ("control", control)):
        assert m[f"{name}_loss"] == pytest.approx(losses[mask].mean())
        assert m[f"{name}_perplexity"] == pytest.approx(math.exp(3 * losses[mask].mean()))
        for s, slot_name in enumerate(["onset", "duration", "note"]):
            assert m[f"{name}_{slot_name}_perplexity"] == pytest.approx(math.exp(losses[mask & (slot == s)].mean()))
    seconds = sum(perplexity.sequence_seconds(s) for s in real_sequences)
    assert m["bits_per_second"] == pytest.approx(losses.sum() / math.log(2) / seconds)
    # the event tokens' bits only: the anticipatory copies' controls (and the SEPARATORs) are left out
    assert m["event_bits_per_second"] == pytest.approx(losses[event].sum() / math.log(2) / seconds)

    # interarrival rows: the loss is the mean over every predicted token (the uniform baseline above cannot tell)
    _, interarrival = _both_encodings(["npm_misc/fur-elise.mid"])
    losses = np.random.default_rng(2).uniform(0, 10, (len(interarrival), 1023)) * np.arange(1, 1024) / 1023
    m = perplexity.metrics(interarrival, losses)
    seconds = sum(perplexity.interarrival_seconds(s) for s in interarrival)
    assert m["loss"] == pytest.approx(losses.mean()) and m["perplexity"] == pytest.approx(math.exp(losses.mean()))
    assert m["bits_per_second"] == pytest.approx(losses.sum() / math.log(2) / seconds)


def _both_encodings(names):
    """Test-split rows of the same files in both encodings, packed as `amt preprocess` packs them."""
    arrival, interarrival = sequences.SequencePacker(), sequences.InterarrivalPacker()
    rows_a, rows_i = [], []
    for key, name in enumerate(names):
        notes = midi.parse_midi(DEMO / name)
        events, _ = midi.notes_to_events(notes)
        rows_a += arrival.add(next(sequences.file_copies(ops.as_triples(events), 1, seed=0, file_key=key)))
        rows_i += interarrival.add(notes.interarrival)
    return np.stack(rows_a), np.stack(rows_i)


def test_interarrival_bits_per_second_are_over_the_same_seconds_as_arrival_time():
    names = ["npm_misc/fur-elise.mid", "miditok_multitrack/Funkytown.mid", "npm_misc/the-entertainer.mid",
             "miditok_multitrack/Aicha.mid"]
    arrival, interarrival = _both_encodings(names)
    assert perplexity.encoding_of(arrival) == "arrival" and perplexity.encoding_of(interarrival) == "interarrival"
    # the model-free baseline: uniform over each vocabulary (every token costs log V nats)
    uniform_a = np.full((len(arrival), 1023), math.log(vocab.VOCAB_SIZE))
    uniform_i = np.full((len(interarrival), 1023), math.log(vocab.MIDI_VOCAB_SIZE))
    m_a, m_i = perplexity.metrics(arrival, uniform_a), perplexity.metrics(interarrival, uniform_i)
    assert m_a["seconds"] > 300 and m_i["seconds"] == pytest.approx(m_a["seconds"], rel=0.01)
    for m, size, rows in ((m_a, vocab.VOCAB_SIZE, arrival), (m_i, vocab.MIDI_VOCAB_SIZE, interarrival)):
        assert m["loss"] == pytest.approx(math.log(size))
        assert m["bits_per_second"] == pytest.approx(math.log2(size) * rows.shape[0] * 1023 / m["seconds"])
    assert m_i["event_perplexity"] is None and m_i["encoding"] == "interarrival"  # no events: none claimed

    # by hand: shifts count from a stretch's first note-on to its last, not before it or after it
    on, off = vocab.MIDI_START_OFFSET + 60, vocab.MIDI_END_OFFSET + 60
    by_hand = np.array([50, on, 100, off, 30, on, 20, off, vocab.MIDI_SEPARATOR, 70, on, 10, on, 40, off])
    assert perplexity.interarrival_seconds(by_hand) == pytest.approx(1.3 + 0.1)
    with pytest.raises(ValueError, match="neither an arrival-time cache"):
        perplexity.encoding_of(np.full((1, 1024), vocab.ANOTE_OFFSET))  # control notes, no flag


def test_eval_perplexity_command_on_a_cache_and_a_hugging_face_folder(tiny_model, hf_folder, tmp_path):
    source = tmp_path / "midi"
    source.mkdir()
    for name in ["npm_misc/fur-elise.mid", "npm_misc/the-entertainer.mid"]:
        shutil.copy(DEMO / name, source)
    preprocess.run(preprocess.PreprocessConfig(source=str(source), out=str(tmp_path / "data"), split="none",
                                               progress_bar=False))
    out = tmp_path / "eval"
    done = subprocess.run([sys.executable, "-m", "amt.cli", "eval", "perplexity", "--checkpoint", str(hf_folder),
                           "--cache", str(tmp_path / "data" / "train"), "--max-sequences", "3", "--out", str(out)],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "perplexity.json").read_text())["results"]
    assert len(result) == 1 and result[0]["step"] is None and result[0]["sequences"] == 3
    rows = perplexity.read_cache(tmp_path / "data" / "train", 3)
    assert result[0]["loss"] == pytest.approx(float(perplexity.token_losses(tiny_model, rows).mean()), rel=1e-4)
    assert (out / "perplexity.csv").read_text().count("\n") == 2 and (out / "perplexity.png").stat().st_size > 5_000
    assert "| event ppl |" in done.stdout

    missing = subprocess.run([sys.executable, "-m", "amt.cli", "eval", "perplexity", "--checkpoint", str(hf_folder),
                              "--cache", str(tmp_path / "nowhere")], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert missing.returncode == 2 and "nowhere: not a finished cache" in missing.stderr

    # an interarrival cache of the same files is recognized, and an arrival-time model refuses to score it
    preprocess.run(preprocess.PreprocessConfig(source=str(source), out=str(tmp_path / "ia"), split="none",
                                               encoding="interarrival", progress_bar=False))
    assert perplexity.encoding_of(perplexity.read_cache(tmp_path / "ia" / "train")) == "interarrival"
    mismatch = subprocess.run([sys.executable, "-m", "amt.cli", "eval", "perplexity", "--checkpoint", str(hf_folder),
                               "--cache", str(tmp_path / "ia" / "train")], capture_output=True, text=True, env=ENV,
                              cwd=tmp_path)
    assert mismatch.returncode == 2 and "cannot score" in mismatch.stderr and "interarrival cache" in mismatch.stderr


def test_every_step_of_a_run_in_step_order(tmp_path):
    run = tmp_path / "checkpoints"
    for step in (10, 3, 100, 200):
        (run / f"step-{step}").mkdir(parents=True)
        if step != 200:  # step-200 is still being written: Levanter writes metadata.json last
            (run / f"step-{step}" / "metadata.json").write_text("{}")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    found = perplexity.expand_checkpoints([str(run), str(tmp_path / "hf"), str(run / "step-3")])
    assert [step for _, step in found] == [3, 10, 100, None, 3]
    with pytest.raises(FileNotFoundError, match="neither a step-N"):
        perplexity.expand_checkpoints([str(tmp_path)])


def test_markdown_table_puts_each_number_under_its_own_header():
    """The README's Table 1 is read by its headers: every number of a row, each made distinct here, is in the
    column its header names (the onset, duration and note perplexities are neighbours of one format; a swap would
    print plausible numbers under the wrong slot)."""
    row = {"checkpoint": "runs/x/step-7", "step": 7, "encoding": "arrival", "loss": 1.234, "event_perplexity": 5.678,
           "event_onset_perplexity": 11.11, "event_duration_perplexity": 22.22, "event_note_perplexity": 33.33,
           "seconds": 44.4, "bits_per_second": 55.5, "onset_past_mass": 0.066, "onset_next_second_mass": 0.077}
    header, rule, line = perplexity.markdown_table([row]).split("\n")
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in line.strip("|").split("|")]))
    assert cells == {"checkpoint": "runs/x/step-7", "step": "7", "encoding": "arrival", "loss": "1.234",
                     "event ppl": "5.678", "onset": "11.11", "duration": "22.22", "note": "33.33", "seconds": "44.4",
                     "bits/s": "55.5", "onset mass in the past": "0.066", "in the next second": "0.077"}
    assert rule.count("|---") == len(cells)


def _clip(name: str, start: float, seconds: float = 15.0) -> clip_metrics.Clip:
    events = ops.as_triples(midi.midi_to_events(DEMO / name))
    t = ops.times(events)
    part = events[(t >= start * 100) & (t < (start + seconds) * 100)].copy()
    part[:, 0] -= int(start * 100)
    return clip_metrics.Clip.from_events(part, seconds)


CLIPS = {  # real clips of different character: solo piano, a band with drums, a ragtime piano
    "fur-elise": ("npm_misc/fur-elise.mid", 10.0),
    "funkytown": ("miditok_multitrack/Funkytown.mid", 20.0),
    "entertainer": ("npm_misc/the-entertainer.mid", 30.0),
}


def test_generation_metrics_are_perfect_against_the_same_clip_and_not_against_another():
    clips = {name: _clip(*where) for name, where in CLIPS.items()}
    for name, clip in clips.items():
        assert len(clip) > 40
        same = clip_metrics.compare(clip, clip, prompt_instruments=set(clip.instrument.tolist()))
        assert same == pytest.approx({**clip_metrics.PERFECT, "instrument_f1_vs_prompt": 1.0}), name
    names = list(clips)
    for name, other in zip(names, names[1:] + names[:1]):  # each clip against the next: a shuffled pairing
        scores = clip_metrics.compare(clips[other], clips[name])
        for metric, perfect in clip_metrics.PERFECT.items():
            if metric == "instrument_f1" and {name, other} == {"fur-elise", "entertainer"}:
                assert scores[metric] == 1.0  # both are a piano alone: the one metric that should agree
                continue
            assert scores[metric] != pytest.approx(perfect, abs=1e-3), (name, other, metric)


def test_features_of_a_known_clip():
    # a C major triad held 1 s, then C alone, on a piano; a drum hit with each onset
    events = np.array([[0, 10_100, 11_060], [0, 10_100, 11_064], [0, 10_100, 11_067], [100, 10_050, 11_060],
                       [0, 10_010, vocab.NOTE_OFFSET + 128 * vocab.DRUMS + 36],
                       [100, 10_010, vocab.NOTE_OFFSET + 128 * vocab.DRUMS + 36]])
    clip = clip_metrics.Clip.from_events(events, seconds=2.0)
    f = clip_metrics.features(clip)
    assert f["notes"] == 6 and f["note_density"] == 3.0 and f["instruments"] == 2
    assert f["pitch_class_entropy"] == pytest.approx(-(0.5 * math.log2(0.5) + 2 * 0.25 * math.log2(0.25)))
    np.testing.assert_allclose(clip_metrics.pitch_class_histogram(clip)[[0, 4, 7]], [0.5, 0.25, 0.25])
    np.testing.assert_allclose(clip_metrics.inter_onset_intervals(clip), [1.0])
    patterns = clip_metrics.onset_grid(clip)
    assert patterns.shape == (1, 16) and patterns[0].nonzero()[0].tolist() == [0, 8]


def test_durations_are_seconds_of_10_ms_bins():
    """A duration token counts 10 ms bins (vocab.TIME_RESOLUTION = 100 a second): notes of 50 and 200 bins last
    0.5 s and 2 s, and fall in the duration histogram's bins of 0.5 s and 2 s (18 and 24 of the 32 log bins
    from 10 ms to 10 s), which the duration intersection and mgeval's note-length histogram compare."""
    events = np.array([[0, vocab.DUR_OFFSET + 50, vocab.NOTE_OFFSET + 60], [100, vocab.DUR_OFFSET + 200, vocab.NOTE_OFFSET + 64]])
    clip = clip_metrics.Clip.from_events(events, seconds=3.0)
    np.testing.assert_allclose(clip.duration, [0.5, 2.0])
    histogram = clip_metrics.set_features(clip)["note_length_histogram"]
    assert np.flatnonzero(histogram).tolist() == [18, 24] and histogram[[18, 24]].tolist() == [0.5, 0.5]
    # the same two notes at 0.05 s and 0.2 s (5 and 20 bins) share no duration bin with them
    short = clip_metrics.Clip.from_events(np.array([[0, vocab.DUR_OFFSET + 5, vocab.NOTE_OFFSET + 60],
                                                   [100, vocab.DUR_OFFSET + 20, vocab.NOTE_OFFSET + 64]]), seconds=3.0)
    np.testing.assert_allclose(short.duration, [0.05, 0.2])
    assert clip_metrics.compare(short, clip)["duration_histogram_intersection"] == 0.0
    assert clip_metrics.compare(clip, clip)["duration_histogram_intersection"] == 1.0


def test_clip_comparisons_are_symmetric_and_differences_never_negative():
    """`compare(a, b)` measures how far apart two clips are: the same number either way round, and a difference
    is a distance (a signed one would let a system's too-dense clips cancel its too-sparse ones in the means)."""
    clips = {name: _clip(*where) for name, where in CLIPS.items()}
    for a in clips.values():
        for b in clips.values():
            ab, ba = clip_metrics.compare(a, b), clip_metrics.compare(b, a)
            assert ab == pytest.approx(ba)
            assert all(ab[k] >= 0 for k in ab if k.endswith("_difference"))


def test_accompaniment_is_measured_without_the_given_melody_and_after_the_prompt():
    events = ops.as_triples(midi.midi_to_events(DEMO / "miditok_multitrack" / "Funkytown.mid"))
    events = events[ops.times(events) < 2000]
    melody = generation_eval.melody_instrument(events, min_notes=8)
    others, given = augment.extract_instruments(events, [melody])
    given = ops.from_controls(given)
    start = int(ops.times(others)[len(others) // 3])  # a prompt ending exactly on a note of the accompaniment
    first, last = start + 1, 2000
    systems = {"truth itself": events, "melody only": given, "prompt only": ops.clip(events, 0, start / 100)}
    row = generation_eval._measure("funkytown", others, {k: generation_eval._without(v, given) for k, v in systems.items()},
                                   first, last, prompt_instruments=set())
    assert row["vs_truth"]["truth itself"] == pytest.approx({**clip_metrics.PERFECT, "instrument_f1_vs_prompt": 0.0})
    assert row["features"]["melody only"]["notes"] == 0 and row["features"]["prompt only"]["notes"] == 0
    assert row["features"]["truth"]["notes"] == ((ops.times(others) > start) & (ops.times(others) < last)).sum() > 50

    # checks: the given notes come back; the share of them the model saw; notes added to the melody's instrument
    context = np.concatenate([[vocab.ANTICIPATE], ops.flatten(ops.to_controls(given[: len(given) // 2]))])
    extra = np.array([[first + 5, vocab.DUR_OFFSET + 10, vocab.NOTE_OFFSET + vocab.MAX_PITCH * melody + 90]])
    checks = generation_eval._accompaniment_checks(np.concatenate([events, extra]), given, context, melody, first, last)
    assert checks == {"controls_kept": 1.0, "controls_in_context": pytest.approx((len(given) // 2) / len(given)),
                      "new_notes_in_melody_instrument": 1}
    assert generation_eval._accompaniment_checks(others, given, None, melody, first, last)["controls_kept"] == 0.0
    # a given note arriving exactly at the end (the reference's clips keep it, cut to duration 0) is not asked of
    # a sampler that generates up to the end; one before the end is
    at_end = np.array([[last, vocab.DUR_OFFSET, given[0, 2]]])
    with_it = np.concatenate([given, at_end])
    assert generation_eval._accompaniment_checks(events, with_it, None, melody, first, last)["controls_kept"] == 1.0
    assert generation_eval._accompaniment_checks(events, with_it, None, melody, first, last + 1)["controls_kept"] == 0.0


def test_the_measured_part_starts_after_the_prompt_and_is_moved_to_zero():
    """`_part(events, first, last)`: the notes arriving in [first, last) bins, as a clip that starts at `first`
    and lasts last - first (density and the onset grid's windows are over that length, so a part left at its
    place in the clip would lose its last seconds from the grid)."""
    events = _notes(0, 60, [500, 501, 1000, 1999, 2000])  # at the prompt's end (its own), after it, the clip's end
    part = generation_eval._part(events, 501, 2000)
    np.testing.assert_allclose(part.onset, [0.0, 4.99, 14.98])
    assert part.seconds == pytest.approx(14.99)
    assert clip_metrics.onset_grid(part).sum() == 3  # every onset on the grid, the last in its last window


def test_eval_generation_command_reports_model_and_baselines(hf_folder, tmp_path):
    source = tmp_path / "midi"
    source.mkdir()
    for name in ["miditok_multitrack/Funkytown.mid", "miditok_multitrack/Aicha.mid", "npm_misc/fur-elise.mid"]:
        shutil.copy(DEMO / name, source)
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "amt.cli", "eval", "generation", "--checkpoint", str(hf_folder),
                           "--midi", str(source), "--split", "all", "--clips", "3", "--clip-seconds", "6",
                           "--prompt-seconds", "2", "--min-melody-notes", "8", "--examples", "1", "--out", str(out),
                           "--autoregressive-checkpoint", str(hf_folder)],  # (any arrival-time model serves here)
                          capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["protocol"] == "paper" and set(report["summary"]) == {"continuation", "accompaniment"}
    continuation = report["summary"]["continuation"]
    assert report["clips"]["continuation"] == len(report["per_clip"]["continuation"]) >= 2
    assert set(continuation) == {"model", "autoregressive model", "retrieval (same song)", "retrieval (other file)", "truth"}
    assert continuation["retrieval (other file)"]["onset_grid_jaccard"] < 1.0
    accompaniment = report["summary"]["accompaniment"]
    assert report["clips"]["accompaniment"] >= 2  # the band pieces pass melody-select.py's rules; the piano piece not
    assert "fur-elise.mid" in report["skipped_files"]["accompaniment"]
    assert set(accompaniment) == {"anticipatory", "autoregressive", "autoregressive model", "retrieval (same song)",
                                  "retrieval (other file)", "truth"}
    for system in ("anticipatory", "autoregressive", "autoregressive model", "retrieval (same song)", "retrieval (other file)"):
        assert accompaniment[system]["controls_kept"] == 1.0
    for system in ("anticipatory", "autoregressive", "autoregressive model"):  # conditioned on the melody (a model that stops early sees less)
        assert 0 < accompaniment[system]["controls_in_context"] <= 1
    assert accompaniment["retrieval (same song)"]["controls_in_context"] is None
    areas = report["set_overlapping_areas"]["continuation"]["retrieval (same song)"]
    assert set(areas) == set(clip_metrics.SET_FEATURES)
    text = (out / "report.md").read_text()
    assert "## continuation (" in text and "## Definitions" in text and "onset grid jaccard:" in text
    assert len(list(out.glob("continuation-*-autoregressive-model.png"))) == 1
    assert len(list(out.glob("continuation-*-model.png"))) == 2 and (out / "accompaniment-metrics.png").exists()

    bad = subprocess.run([sys.executable, "-m", "amt.cli", "eval", "generation", "--checkpoint", str(hf_folder),
                          "--midi", str(source), "--tasks", "continuation,harmonize"],
                         capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert bad.returncode == 2 and "tasks: unknown ['harmonize']" in bad.stderr


def test_a_saved_interarrival_checkpoint_loads_with_its_own_vocabulary(tmp_path):
    """What `amt train` leaves (a Levanter checkpoint, OCDBT since marin-levanter, and amt-model.yaml beside it)
    loads with the vocabulary it was trained with: 34,025 for an interarrival model, not the default 55,028."""
    import haliax as hax
    import jax
    from levanter.checkpoint import save_checkpoint

    from amt import interarrival_sampling
    from amt.checkpoints import MODEL_CONFIG_FILE, load_model, single_device_mesh, stored_vocab_size
    from amt.train import MusicGpt2Config

    config = MusicGpt2Config(max_seq_len=64, hidden_dim=8, num_layers=1, num_heads=1)
    with single_device_mesh():
        model = config.build(hax.Axis("vocab", vocab.MIDI_VOCAB_SIZE), key=jax.random.PRNGKey(0))
        save_checkpoint({"model": model}, 0, str(tmp_path / "step-0"), is_temporary=False)
    (tmp_path / MODEL_CONFIG_FILE).write_text("max_seq_len: 64\nhidden_dim: 8\nnum_layers: 1\nnum_heads: 1\n")
    assert stored_vocab_size(tmp_path) == vocab.MIDI_VOCAB_SIZE
    loaded, _ = load_model(tmp_path)
    assert interarrival_sampling.is_interarrival_model(loaded)

    # `amt generate` takes it: a continuation of the prompt's first 2 s to 9 s, two samples, each a MIDI file
    from amt import cli

    out = tmp_path / "out" / "ia.mid"
    assert cli.main(["generate", "--checkpoint", str(tmp_path), "--prompt",
                     str(DEMO / "miditok_multitrack" / "Funkytown.mid"), "--start", "2", "--end", "9",
                     "--num-samples", "2", "--seed", "3", "-o", str(out)]) == 0
    given = ops.clip(ops.as_triples(midi.midi_to_events(DEMO / "miditok_multitrack" / "Funkytown.mid")), 0, 2,
                     clip_duration=False)
    for path in (out, out.with_name("ia-2.mid")):
        events = ops.as_triples(midi.midi_to_events(path))
        assert len(events) > len(given) and 2.0 < ops.max_time(events) < 9.0, path  # notes added, up to 9 s


def test_a_run_folder_loads_its_latest_step_and_a_step_folder_itself(tmp_path):
    """A run folder with checkpoints at steps 5 and 10 (different weights) loads step 10, the latest by number
    (not by name: "step-5" sorts after "step-10"), and a step folder loads that step, its model config found in
    the folder above. (Every other test saves one step, or loads the run folder in both the export and the
    model it is compared with, so the first step would pass them as well.)"""
    import haliax as hax
    import jax
    from levanter.checkpoint import save_checkpoint

    from amt.checkpoints import MODEL_CONFIG_FILE, load_model, single_device_mesh
    from amt.train import MusicGpt2Config

    config = MusicGpt2Config(max_seq_len=64, hidden_dim=8, num_layers=1, num_heads=1)
    embeddings = {}
    with single_device_mesh():
        for step, seed in ((5, 1), (10, 2)):
            model = config.build(hax.Axis("vocab", vocab.MIDI_VOCAB_SIZE), key=jax.random.PRNGKey(seed))
            save_checkpoint({"model": model}, step, str(tmp_path / f"step-{step}"), is_temporary=False)
            embeddings[step] = np.asarray(model.embeddings.token_embeddings.weight.array)
    (tmp_path / MODEL_CONFIG_FILE).write_text("max_seq_len: 64\nhidden_dim: 8\nnum_layers: 1\nnum_heads: 1\n")
    assert not np.allclose(embeddings[5], embeddings[10])
    for path, step in ((tmp_path, 10), (tmp_path / "step-5", 5), (tmp_path / "step-10", 10)):
        loaded, _ = load_model(path)
        np.testing.assert_array_equal(np.asarray(loaded.embeddings.token_embeddings.weight.array), embeddings[step])


def test_an_interarrival_sample_decodes_to_midi_that_mido_reads_back(tmp_path):
    import haliax as hax
    import jax
    import mido
    from levanter.utils.tree_utils import inference_mode

    from amt import interarrival_sampling
    from amt.checkpoints import single_device_mesh
    from amt.train import MusicGpt2Config

    config = MusicGpt2Config(max_seq_len=1024, hidden_dim=16, num_layers=1, num_heads=1)  # the full context, small else
    with single_device_mesh():
        model = inference_mode(config.build(hax.Axis("vocab", vocab.MIDI_VOCAB_SIZE), key=jax.random.PRNGKey(0)), True)
    assert interarrival_sampling.is_interarrival_model(model)
    events = ops.as_triples(midi.midi_to_events(DEMO / "miditok_multitrack" / "Funkytown.mid"))
    prompt = interarrival_sampling.prompt_tokens(events, 3.0)
    assert prompt[0] == vocab.MIDI_SEPARATOR and vocab.MIDI_START_OFFSET <= prompt[-1] < vocab.MIDI_END_OFFSET

    sampler = interarrival_sampling.InterarrivalSampler(model)
    options = interarrival_sampling.InterarrivalOptions(num_samples=2, seed=1)
    samples, streams = sampler.continuation(events, 3.0, 6.0, options)
    assert len(samples) == 2 and not np.array_equal(streams[0], streams[1])
    for sample, stream in zip(samples, streams):
        assert np.array_equal(stream[: len(prompt)], prompt)  # the prompt, then what the model added
        new = stream[len(prompt):]
        assert len(new) > 3 and vocab.MIDI_SEPARATOR not in new and 0 not in new  # the constraints hold
        shifts = new[new < vocab.MIDI_START_OFFSET]
        assert prompt[prompt < vocab.MIDI_START_OFFSET].sum() + shifts.sum() < 600  # stopped before 6 s
        path = tmp_path / "sample.mid"
        midi.interarrival_to_midi(stream, path)
        back = mido.MidiFile(path)
        assert sum(m.type == "note_on" for m in back) == ((stream >= vocab.MIDI_START_OFFSET) & (stream < vocab.MIDI_END_OFFSET)).sum()
        assert len(sample) and ops.max_time(sample, seconds=True) < 6.0
    again, _ = sampler.continuation(events, 3.0, 6.0, options)  # same seed, same music
    assert all(np.array_equal(a, b) for a, b in zip(samples, again))
    with pytest.raises(ValueError, match="not an interarrival model"):
        interarrival_sampling.InterarrivalSampler(_arrival_model())


def _arrival_model():
    import haliax as hax
    import jax

    from amt.checkpoints import single_device_mesh
    from amt.train import MusicGpt2Config

    with single_device_mesh():
        return MusicGpt2Config(max_seq_len=64, hidden_dim=8, num_layers=1, num_heads=1).build(
            hax.Axis("vocab", vocab.VOCAB_SIZE), key=jax.random.PRNGKey(0))


def _notes(instrument, pitch, onsets, duration=20):
    return np.array([[t, vocab.DUR_OFFSET + duration, vocab.NOTE_OFFSET + vocab.MAX_PITCH * instrument + pitch]
                     for t in onsets])


def test_paper_melody_rules_as_melody_select():
    every = range(0, 2000, 50)  # 40 notes over the 20 s clip
    band = np.concatenate([_notes(0, 90, every), _notes(73, 84, every), _notes(33, 40, every), _notes(25, 60, every),
                           _notes(vocab.DRUMS, 36, every)])
    # the piano is highest but may not be the melody; the flute (73) is
    assert generation_eval.paper_melody(ops.sort(band), 5, 20) == (73, None)
    assert generation_eval.paper_melody(band[band[:, 2] < vocab.NOTE_OFFSET + 128 * 33], 5, 20)[1] == \
        "2 instruments besides drums (needs 4-10)"  # piano and flute only
    late = band[~((ops.notes(band) // 128 == 73) & (ops.times(band) < 600))]  # the flute enters after the prompt
    assert generation_eval.paper_melody(late, 5, 20)[1] == "the melody does not play in the prompt"
    early = band[~((ops.notes(band) // 128 == 73) & (ops.times(band) > 1500))]  # and stops 5 s before the end
    assert generation_eval.paper_melody(early, 5, 20)[1] == "the melody ends early"
    sparse = band[~((ops.notes(band) // 128 == 73) & (ops.times(band) % 100 != 0))]  # 20 notes: still enough
    assert generation_eval.paper_melody(sparse, 5, 20)[0] == 73
    assert generation_eval.paper_melody(sparse[:-1] if ops.notes(sparse[-1:])[0] // 128 == 73 else sparse[1:], 5, 20,
                                        min_notes=21)[1] == "melody has fewer than 21 notes"
    assert generation_eval.paper_continuation_reason(band, 5) is None
    assert generation_eval.paper_continuation_reason(band[ops.times(band) >= 460], 5) == "fewer than 10 notes in the prompt"


def test_paper_rules_at_their_boundaries_as_the_reference_compares():
    """clip-select.py and melody-select.py compare with `>` / `<`: each rule's boundary case passes, one step past it
    fails (10 prompt notes, 15 instruments, 4-10 instruments besides drums, a melody entering exactly at the
    prompt's end and playing until exactly 2 s before the clip's end), and the excluded programs are never the melody
    even when they play highest."""
    ten = _notes(0, 60, range(50, 501, 50))  # 10 notes, the last exactly at the prompt's end (5 s, inclusive)
    assert generation_eval.paper_continuation_reason(ten, 5) is None
    assert generation_eval.paper_continuation_reason(ten[:-1], 5) == "fewer than 10 notes in the prompt"
    fifteen = np.concatenate([ten] + [_notes(i, 60, [1000]) for i in range(1, 15)])
    assert generation_eval.paper_continuation_reason(fifteen, 5) is None
    assert generation_eval.paper_continuation_reason(np.concatenate([fifteen, _notes(15, 60, [1000])]), 5) == \
        "more than 15 instruments"

    every = range(0, 2000, 50)

    def band(ensemble, melody_onsets=every):  # the flute (73) highest of the ensemble, drums
        parts = [_notes(73, 70, melody_onsets)] + [_notes(i, 40, every) for i in range(1, ensemble)]
        return ops.sort(np.concatenate(parts + [_notes(vocab.DRUMS, 36, every)]))

    for ensemble in (4, 10):
        assert generation_eval.paper_melody(band(ensemble), 5, 20) == (73, None)
    for ensemble in (3, 11):
        assert generation_eval.paper_melody(band(ensemble), 5, 20)[1] == \
            f"{ensemble} instruments besides drums (needs 4-10)"
    assert generation_eval.paper_melody(band(5, range(500, 1801, 50)), 5, 20) == (73, None)  # 5 s to 18 s exactly
    assert generation_eval.paper_melody(band(5, range(501, 1801, 50)), 5, 20)[1] == "the melody does not play in the prompt"
    assert generation_eval.paper_melody(band(5, range(500, 1800, 50)), 5, 20)[1] == "the melody ends early"
    # programs 0, 9, 112-127 and drums are never the melody, however high they play
    high = [_notes(program, 120, every) for program in (0, 9, 112, 127, vocab.DRUMS)]
    assert generation_eval.paper_melody(ops.sort(np.concatenate([band(4)] + high)), 5, 20) == (73, None)


def test_clips_come_from_the_asked_split_only():
    """The evaluation draws its clips from Lakh's test split (by MD5, as `amt preprocess` splits): a file of
    another split, which the model may have trained on, never gives a clip."""
    for split in ("test", "train"):
        config = generation_eval.GenerationEvalConfig(midi=str(DEMO), split=split, clips=2, clip_seconds=6,
                                                      prompt_seconds=2)
        clips, _ = generation_eval.choose_clips(config)
        names = {clip.name for task in clips.values() for clip in task}
        assert len(clips["continuation"]) == 2 and len(clips["accompaniment"]) >= 1
        assert {sources.split_of(sources.content_md5(name, (DEMO / name).read_bytes())) for name in names} == {split}


def test_same_song_retrieval_keeps_the_true_prompt_and_melody():
    song = ops.as_triples(midi.midi_to_events(DEMO / "miditok_multitrack" / "Funkytown.mid"))
    clip = generation_eval.TestClip("funkytown", generation_eval.cut_clip(song, 3000, 2000), None, song, 3000)
    melody = generation_eval.melody_instrument(clip.events, 8)
    rng = random.Random(0)
    spliced, start = generation_eval.same_song_retrieval(clip, 5, 20, rng, [melody])
    prompt = augment.extract_instruments(ops.clip(clip.events, 0, 5, clip_duration=False), [melody])[0]
    assert np.array_equal(spliced[ops.times(spliced) <= 500], ops.sort(prompt))  # the true prompt, unchanged
    assert melody not in ops.instruments(spliced)  # the given melody is added by the caller, not retrieved
    retrieved = augment.extract_instruments(generation_eval.cut_clip(song, start, 2000), [melody])[0]
    after = spliced[ops.times(spliced) > 500]
    assert len(after) and set(map(tuple, after.tolist())) <= set(map(tuple, ops.clip(retrieved, 5, 20).tolist()))


def _piano(*notes):
    """Piano events from (onset bin, duration bins, pitch) triples."""
    return np.array([[t, vocab.DUR_OFFSET + d, vocab.NOTE_OFFSET + pitch] for t, d, pitch in notes]).reshape(-1, 3)


def test_same_song_retrieval_splices_the_retrieved_part_just_after_the_prompt():
    """The retrieval baseline on a hand-built song: the segment drawn at 10 s (bins 1000-3000) gives its notes
    after its own prompt (after 15 s), moved to the clip's time; a note exactly at its prompt's end (15 s) is not
    spliced in (the true prompt keeps its own note at 5 s: no second note at the splice), one exactly at its end
    (30 s) comes with its duration cut to 0, and one held past its end is cut there. The segment's start is drawn
    from every start that leaves a whole clip in the song."""
    song = _piano((100, 40, 60), (300, 40, 62), (500, 40, 64),  # the true clip's prompt, the last exactly at 5 s
                  (1200, 40, 65), (1500, 30, 67), (1700, 50, 69), (2900, 300, 71), (3000, 50, 72), (3100, 50, 74))
    clip = generation_eval.TestClip("hand-built", generation_eval.cut_clip(song, 0, 2000), None, song, 0)

    class Draw:  # the retrieval's random start, fixed (and the range it was drawn from, recorded)
        def randrange(self, low, high):
            self.range = (low, high)
            return 1000

    draw = Draw()
    spliced, start = generation_eval.same_song_retrieval(clip, 5, 20, draw)
    assert start == 1000 and draw.range == (0, 3100 - 2000 + 1)
    assert spliced.tolist() == _piano((100, 40, 60), (300, 40, 62), (500, 40, 64),  # the true prompt
                                      (700, 50, 69), (1900, 100, 71), (2000, 0, 72)).tolist()  # the retrieved part
    # the reference's clip of a song (clip-select.py, accompany.py): [start, start + length], durations cut at its end
    assert generation_eval.cut_clip(song, 1000, 2000).tolist() == _piano(
        (200, 40, 65), (500, 30, 67), (700, 50, 69), (1900, 100, 71), (2000, 0, 72)).tolist()


def test_continuation_is_sampled_from_the_prompts_last_onset_and_measured_after_the_prompt(monkeypatch, tmp_path):
    """prompt.py continues a clip from its prompt's last onset (`start_time = ops.max_time(prompt)`), not from
    the prompt's end: a prompt whose last note is at 4.37 s is continued from 4.37 s under the paper's protocol
    (ours continues from 5 s). `run` is driven with a stub sampler that records what it was asked (start, end,
    prompt) and adds two notes, and with two hand-built clips instead of a MIDI folder: no model is needed. Every
    system is measured over (5 s, 20 s): a true note exactly at 5 s belongs to the prompt, and is in neither the
    truth's measured part nor the model's (whose output starts with the prompt)."""
    from amt import checkpoints, sampling

    last_onset = _piano((0, 20, 60), (100, 20, 62), (200, 20, 64), (300, 20, 65), (437, 20, 67),  # prompt to 4.37 s (int(100 * 4.37) = 437)
                        (600, 20, 69), (1000, 20, 71), (1500, 20, 72))
    at_the_end = _piano((0, 20, 60), (100, 20, 62), (200, 20, 64), (300, 20, 65), (400, 20, 67),
                        (500, 20, 69),  # exactly at the prompt's end: the prompt's
                        (700, 20, 71), (1200, 20, 72))
    clips = [generation_eval.TestClip("last-onset", last_onset, None), generation_eval.TestClip("at-the-end", at_the_end, None)]
    calls = []

    class StubSampler:
        def __init__(self, model, dtype="float32"):
            pass

        def generate(self, start_time, end_time, inputs=None, controls=None, options=None, anticipatory=True):
            calls.append((start_time, end_time, np.asarray(inputs).tolist(), options.top_p))
            return [ops.sort(np.concatenate([inputs, _piano((800, 20, 48), (900, 20, 50))]))]

    monkeypatch.setattr(checkpoints, "load_model", lambda path: (None, None))
    monkeypatch.setattr(sampling, "Sampler", StubSampler)
    monkeypatch.setattr(generation_eval, "choose_clips", lambda config: ({"continuation": list(clips)}, {"continuation": {}}))
    for protocol, starts in (("paper", {"last-onset": 4.37, "at-the-end": 5.0}), ("ours", {"last-onset": 5.0, "at-the-end": 5.0})):
        calls.clear()
        config = generation_eval.GenerationEvalConfig(protocol=protocol, tasks=["continuation"], retrieval=[], examples=0,
                                                      checkpoint=str(tmp_path), out=str(tmp_path / protocol))
        report = generation_eval.run(config)
        asked = {}
        for start_time, end_time, prompt, top_p in calls:
            name = "last-onset" if prompt == last_onset[:5].tolist() else "at-the-end"
            assert prompt == {"last-onset": last_onset[:5], "at-the-end": at_the_end[:6]}[name].tolist()  # to 5 s, inclusive
            asked[name] = (start_time, end_time, top_p)
        assert asked == {name: (start, 20.0, 0.98) for name, start in starts.items()}, protocol
        notes = {row["clip"]: {system: f["notes"] for system, f in row["features"].items()}
                 for row in report["per_clip"]["continuation"]}
        assert notes == {"last-onset": {"truth": 3, "model": 2}, "at-the-end": {"truth": 2, "model": 2}}, protocol


def test_our_protocol_rules_at_their_boundaries(monkeypatch):
    """`--protocol ours`: a clip needs at least 4 notes before the prompt's end and 4 from it on (3 either side
    fails); the accompaniment's melody is the highest pitched instrument with at least 8 notes (7 are too few),
    never the drums however high their note numbers, and only in a clip with another instrument to generate
    (a solo clip gives no accompaniment task). Songs are hand-built, each exactly one 20 s clip long (so its
    clip starts at 0)."""
    eight = [0, 250, 500, 750, 1000, 1250, 1500, 2000]  # 8 onsets over the clip, the last at its end

    melody = generation_eval.melody_instrument
    flute, piano = _notes(73, 80, eight), _notes(0, 60, eight)
    assert melody(ops.sort(np.concatenate([flute, piano])), 8) == 73  # the higher of two with 8 notes
    assert melody(ops.sort(np.concatenate([flute[1:], piano])), 8) == 0  # a flute of 7 notes is not a candidate
    assert melody(ops.sort(np.concatenate([_notes(vocab.DRUMS, 90, eight), piano])), 8) == 0  # drums never
    assert melody(piano, 8) is None  # a solo: nothing to accompany
    assert melody(ops.sort(np.concatenate([piano, _notes(vocab.DRUMS, 36, [1000])])), 8) == 0  # drums to generate

    songs = {"4 and 4": _notes(0, 60, [0, 100, 200, 300, 600, 1000, 1500, 2000]),
             "3 and 4": _notes(0, 60, [0, 100, 200, 600, 1000, 1500, 2000]),
             "4 and 3": _notes(0, 60, [0, 100, 200, 300, 1000, 1500, 2000]),
             "duet": ops.sort(np.concatenate([flute, piano])),
             "drums highest": ops.sort(np.concatenate([_notes(vocab.DRUMS, 90, eight), piano]))}
    monkeypatch.setattr(generation_eval, "_song_items", lambda config, skipped: iter(songs.items()))
    config = generation_eval.GenerationEvalConfig(protocol="ours", split="all", tries=1)
    clips, skipped = generation_eval.choose_clips(config)
    assert [c.name for c in clips["continuation"]] == ["4 and 4", "duet", "drums highest"]
    assert skipped["continuation"] == {"3 and 4": "too few notes (in 1 tries)", "4 and 3": "too few notes (in 1 tries)"}
    assert [(c.name, c.melody) for c in clips["accompaniment"]] == [("duet", 73), ("drums highest", 0)]
    assert skipped["accompaniment"] == {"4 and 4": "no melody and another instrument (in 1 tries)",
                                        **{name: "too few notes (in 1 tries)" for name in ("3 and 4", "4 and 3")}}


def test_set_overlapping_area_rewards_a_set_like_the_truth():
    clips = [_clip(name, start, 5.0) for name, start in [("npm_misc/fur-elise.mid", s) for s in (5, 15, 25, 35)]
             + [("miditok_multitrack/Funkytown.mid", s) for s in (20, 40, 60, 80)]]
    like = clip_metrics.set_overlapping_areas(clips[::-1], clips)
    silent_ish = [clip_metrics.Clip.from_events(_notes(0, 60, [0]), 5.0) for _ in clips]
    unlike = clip_metrics.set_overlapping_areas(silent_ish, clips)
    for name in clip_metrics.SET_FEATURES:
        assert like[name] > 0.5 and (unlike[name] or 0) < like[name], name
    assert clip_metrics.overlapping_area([1.0, 1.0], [0.0, 2.0]) is None  # one distinct value: no KDE


def test_set_overlapping_area_is_between_the_intra_and_the_inter_set_distances():
    """mgeval's comparison by hand on one feature: the intra-set distances are those of each pair of distinct true
    clips (no clip against itself), the inter-set ones those of the generated clip against each true clip (one
    generated clip is enough to have them)."""
    clips = [_clip(name, start, 5.0) for name, start in [("npm_misc/fur-elise.mid", s) for s in (5, 15, 25, 35)]
             + [("miditok_multitrack/Funkytown.mid", s) for s in (20, 40, 60, 80)]]
    counts = [len(c) for c in clips]
    generated = clips[0]
    intra = [abs(a - b) for i, a in enumerate(counts) for b in counts[i + 1:]]
    inter = [abs(len(generated) - b) for b in counts]
    areas = clip_metrics.set_overlapping_areas([generated], clips)
    assert areas["note_count"] == pytest.approx(clip_metrics.overlapping_area(intra, inter))
    assert all(area is not None for area in areas.values())


def test_protocols_are_named_options_with_the_papers_settings_by_default():
    paper = generation_eval.GenerationEvalConfig()
    assert paper.protocol == "paper" and paper.retrieval == ["same-song", "other-file"] and paper.melody_notes == 20
    assert [paper.top_p_for(s) for s in ("continuation", "accompaniment", "interarrival")] == [0.98, 0.95, 0.95]
    ours = generation_eval.GenerationEvalConfig(protocol="ours")
    assert ours.melody_notes == 8 and ours.top_p_for("accompaniment") == 0.98
    assert generation_eval.GenerationEvalConfig(top_p=0.9).top_p_for("continuation") == 0.9
    for bad, message in (({"protocol": "mine"}, "protocol: 'mine'"), ({"retrieval": ["nearest"]}, "retrieval: unknown")):
        with pytest.raises(ValueError, match=message):
            generation_eval.GenerationEvalConfig(**bad).validate()


def test_interarrival_sampling_moves_its_window_past_the_context():
    import haliax as hax
    import jax
    from levanter.utils.tree_utils import inference_mode

    from amt import interarrival_sampling
    from amt.checkpoints import single_device_mesh
    from amt.train import MusicGpt2Config

    with single_device_mesh():  # a 64-token context, so that the window moves many times
        model = inference_mode(MusicGpt2Config(max_seq_len=64, hidden_dim=16, num_layers=1, num_heads=1).build(
            hax.Axis("vocab", vocab.MIDI_VOCAB_SIZE), key=jax.random.PRNGKey(1)), True)
    sampler = interarrival_sampling.InterarrivalSampler(model)
    prompt = interarrival_sampling.prompt_tokens(midi.midi_to_events(DEMO / "npm_misc" / "fur-elise.mid"), 4.0)
    # samples that end at different times: a finished one stops growing while the others move their window
    options = interarrival_sampling.InterarrivalOptions(num_samples=4, seed=0, window_chunk=4, top_p=1.0)
    streams = sampler.continue_tokens(prompt, 9.0, options)
    lengths = [len(s) for s in streams]
    assert max(lengths) > 64 + 16 and min(lengths) < 64 - 4  # past the context; one ended before the window moved
    for stream in streams:
        assert np.array_equal(stream[: len(prompt)], prompt)
        assert (stream[stream < vocab.MIDI_START_OFFSET]).sum() < 900
    # several tokens a device call, one a call: the same samples (calls cut short by the window's moves and by
    # max_tokens, the generator split once a token either way)
    def run(end, **changes):
        return sampler.continue_tokens(prompt, end, dataclasses.replace(options, **changes))

    for tokens_per_call in (1, 5):
        assert all(np.array_equal(a, b) for a, b in zip(streams, run(9.0, tokens_per_call=tokens_per_call)))
    capped = [run(60.0, tokens_per_call=k, max_tokens=37) for k in (1, 8)]
    assert [len(s) - len(prompt) for s in capped[0]] == [37] * 4
    assert all(np.array_equal(a, b) for a, b in zip(*capped))
    with pytest.raises(ValueError, match="tokens_per_call=0"):
        run(9.0, tokens_per_call=0)


def _scripted_interarrival_sampler(*logits):
    """An interarrival sampler whose model says the same next-token logits after any context: a tiny model whose
    final LayerNorm is replaced by a constant hidden state (weight 0, bias a unit vector) and whose unembedding's
    first row is `logits` ((token or slice, logit) pairs; 0 elsewhere). What it samples then tells the sampler's rules
    (constraints, top-p, temperature, the end time) apart from what a random model happens to prefer: the random
    models above put ~1/34,025 on every token, so a rule dropped changes almost nothing they sample."""
    import haliax as hax
    import jax
    import jax.numpy as jnp
    from levanter.utils.tree_utils import inference_mode

    from amt import interarrival_sampling
    from amt.checkpoints import single_device_mesh
    from amt.train import MusicGpt2Config

    with single_device_mesh():
        model = inference_mode(MusicGpt2Config(max_seq_len=256, hidden_dim=16, num_layers=1, num_heads=1).build(
            hax.Axis("vocab", vocab.MIDI_VOCAB_SIZE), key=jax.random.PRNGKey(0)), True)
    sampler = interarrival_sampling.InterarrivalSampler(model)
    row = np.zeros(vocab.MIDI_VOCAB_SIZE, np.float32)
    for tokens, value in logits:
        row[tokens] = value
    lm_head = np.zeros(sampler.weights.lm_head.shape, np.float32)
    lm_head[0] = row
    unit = np.zeros(sampler.weights.lnf_b.shape, np.float32)
    unit[0] = 1
    sampler.weights = dataclasses.replace(sampler.weights, lm_head=jnp.asarray(lm_head),
                                          lnf_w=jnp.zeros_like(sampler.weights.lnf_w), lnf_b=jnp.asarray(unit))
    return sampler


def test_interarrival_sampling_draws_from_the_models_own_next_token_logits():
    """Near-greedy sampling (temperature 1e-4, top-p 1) of a model whose embeddings are scaled up (so that its
    logits depend on the context and positions: a random model's hardly do) picks, at every sampled position, the
    most likely token that the rules allow, by the full forward pass of the whole stream (`checkpoints.logits`):
    the KV-cached decoder is fed each sampled token at its own position and conditions on the prompt and on all
    that came before. (The other tests compare the sampler with itself or check its rules.)"""
    import equinox as eqx
    import haliax as hax
    import jax
    from levanter.utils.tree_utils import inference_mode

    from amt import interarrival_sampling
    from amt.checkpoints import logits, single_device_mesh
    from amt.train import MusicGpt2Config

    with single_device_mesh():
        model = MusicGpt2Config(max_seq_len=256, hidden_dim=16, num_layers=1, num_heads=1).build(
            hax.Axis("vocab", vocab.MIDI_VOCAB_SIZE), key=jax.random.PRNGKey(3))
    for get in (lambda m: m.embeddings.token_embeddings.weight, lambda m: m.embeddings.position_embeddings.weight):
        model = eqx.tree_at(get, model, get(model) * 25.0)
    model = inference_mode(model, True)
    prompt = interarrival_sampling.prompt_tokens(midi.midi_to_events(DEMO / "npm_misc" / "fur-elise.mid"), 2.0)
    options = interarrival_sampling.InterarrivalOptions(num_samples=2, seed=0, top_p=1.0, temperature=1e-4,
                                                        max_tokens=60)
    streams = interarrival_sampling.InterarrivalSampler(model).continue_tokens(prompt, 1000.0, options)
    for stream in streams:
        assert len(stream) == len(prompt) + 60 and len(stream) < 256  # the window never moved
        full = logits(model, stream)
        for k in range(len(prompt), len(stream)):
            row = full[k - 1].copy()
            row[[vocab.MIDI_SEPARATOR, vocab.MIDI_TIME_OFFSET]] = -np.inf
            used = _pitched_instruments(stream[:k])
            if len(used) >= 15:
                for instrument in set(range(vocab.DRUMS)) - used:
                    start = vocab.MIDI_START_OFFSET + instrument * vocab.MAX_PITCH
                    row[start:start + vocab.MAX_PITCH] = -np.inf
            assert row[stream[k]] >= row.max() - 1e-3, (k, stream[k], row.argmax(), row[stream[k]], row.max())


def test_interarrival_sampling_past_the_context_conditions_on_the_latest_tokens_of_its_moved_window():
    """Near-greedy sampling as above, on a 64-token context with the window moved many times: each sampled token is
    the most likely allowed one by the full forward pass of the window it was sampled in, worked out here from the
    options alone (the stream from 0; once a window holds the context, its last `context - window_chunk` tokens,
    at positions from 0). A window that kept the wrong tokens, or the right ones at other positions, fails it."""
    import equinox as eqx
    import haliax as hax
    import jax
    from levanter.utils.tree_utils import inference_mode

    from amt import interarrival_sampling
    from amt.checkpoints import logits, single_device_mesh
    from amt.train import MusicGpt2Config

    context, chunk = 64, 10
    with single_device_mesh():
        model = MusicGpt2Config(max_seq_len=context, hidden_dim=16, num_layers=1, num_heads=1).build(
            hax.Axis("vocab", vocab.MIDI_VOCAB_SIZE), key=jax.random.PRNGKey(3))
    for get in (lambda m: m.embeddings.token_embeddings.weight, lambda m: m.embeddings.position_embeddings.weight):
        model = eqx.tree_at(get, model, get(model) * 25.0)
    model = inference_mode(model, True)
    prompt = interarrival_sampling.prompt_tokens(midi.midi_to_events(DEMO / "npm_misc" / "fur-elise.mid"), 2.0)
    assert len(prompt) < context
    options = interarrival_sampling.InterarrivalOptions(num_samples=2, seed=0, top_p=1.0, temperature=1e-4,
                                                        max_tokens=150, window_chunk=chunk, tokens_per_call=4)
    streams = interarrival_sampling.InterarrivalSampler(model).continue_tokens(prompt, 1000.0, options)
    for stream in streams:
        assert len(stream) == len(prompt) + 150
        windows = {}  # window start -> the stream positions sampled in it
        start = 0
        for k in range(len(prompt), len(stream)):
            if k - start >= context:
                start = k - (context - chunk)
            windows.setdefault(start, []).append(k)
        assert len(windows) >= 4  # the window moved at least three times
        for start, sampled in windows.items():
            full = logits(model, stream[start:sampled[-1]])
            for k in sampled:
                row = full[k - 1 - start].copy()
                row[[vocab.MIDI_SEPARATOR, vocab.MIDI_TIME_OFFSET]] = -np.inf
                if len(_pitched_instruments(stream[:k])) >= 15:
                    continue  # the instrument rule: its own test
                assert row[stream[k]] >= row.max() - 1e-3, (start, k, stream[k], row.argmax())


def _pitched_instruments(tokens) -> set:
    tokens = np.asarray(tokens)
    on = tokens[(tokens >= vocab.MIDI_START_OFFSET) & (tokens < vocab.MIDI_END_OFFSET)]
    return set(((on - vocab.MIDI_START_OFFSET) // vocab.MAX_PITCH).tolist()) - {vocab.DRUMS}


def test_interarrival_sampling_never_draws_a_forbidden_token_and_keeps_to_15_instruments():
    """A model that prefers SEPARATOR and the zero shift (each ~2% of its mass) and then note-ons (of every
    instrument alike) over shifts and note-offs: in 2 x 400 tokens neither forbidden token is drawn, the pitched
    instruments (the prompt's counted, a multitrack prompt) reach 15 and never 16 (one that a device call's
    tokens added counts in the next call too), drums still play once 15 are in use, and the sample goes through
    MIDI. Kills: a constraint dropped, `>` for `>=` at 15, drums refused when full, the prompt's or earlier
    calls' instruments forgotten."""
    from amt import interarrival_sampling

    sampler = _scripted_interarrival_sampler((vocab.MIDI_SEPARATOR, 8.0), (vocab.MIDI_TIME_OFFSET, 8.0),
                                             (slice(vocab.MIDI_START_OFFSET, vocab.MIDI_END_OFFSET), 2.0))
    events = ops.as_triples(midi.midi_to_events(DEMO / "miditok_multitrack" / "Funkytown.mid"))
    prompt = interarrival_sampling.prompt_tokens(events, 3.0)
    assert 2 <= len(_pitched_instruments(prompt)) < 15
    options = interarrival_sampling.InterarrivalOptions(num_samples=2, seed=0, top_p=1.0, max_tokens=400)
    for stream in sampler.continue_tokens(prompt, 1000.0, options):
        new = stream[len(prompt):]
        assert len(new) == 400 and vocab.MIDI_SEPARATOR not in new and vocab.MIDI_TIME_OFFSET not in new
        assert len(_pitched_instruments(stream)) == 15
        full_at = next(k for k in range(len(stream)) if len(_pitched_instruments(stream[: k + 1])) == 15)
        later = stream[full_at + 1:]
        drums = vocab.MIDI_START_OFFSET + vocab.DRUMS * vocab.MAX_PITCH
        assert ((later >= drums) & (later < vocab.MIDI_END_OFFSET)).sum() > 0  # drums are never refused
        assert len(interarrival_sampling.tokens_to_events(stream))


def test_interarrival_top_p_and_temperature_shape_what_is_sampled():
    """12 note-ons (instrument 0, pitches 60-71) above the other 34,013 tokens: with logit 12 they hold 98.3% of
    the mass, so top-p 0.95 samples only them and top-p 1 a few others (1.7% a token); with logit 5 and
    temperature 0.25 (logit 20 as seen: 99.999%) only them again (temperature multiplying instead of dividing
    the logits would make them 0.1%)."""
    from amt import interarrival_sampling

    favourites = slice(vocab.MIDI_START_OFFSET + 60, vocab.MIDI_START_OFFSET + 72)
    prompt = np.array([vocab.MIDI_SEPARATOR, vocab.MIDI_START_OFFSET + 60])

    def others(logit, **changes):
        options = interarrival_sampling.InterarrivalOptions(num_samples=2, seed=0, max_tokens=200, **changes)
        streams = _scripted_interarrival_sampler((favourites, logit)).continue_tokens(prompt, 60.0, options)
        assert all(len(s) == len(prompt) + 200 for s in streams)
        return sum(int(((s[len(prompt):] < favourites.start) | (s[len(prompt):] >= favourites.stop)).sum())
                   for s in streams)

    assert others(12.0, top_p=0.95) == 0
    assert others(12.0, top_p=1.0) > 0
    assert others(5.0, top_p=1.0, temperature=0.25) == 0


def test_interarrival_sampling_stops_before_the_shift_that_reaches_the_end():
    """Shifts of 10 bins and piano note-ons, nothing else: from the prompt's last note-on at T0 to an end time
    T0 + 1 s the sample's time reaches T0 + 0.9 s exactly (the shift to the end itself is not kept), and its
    events, through MIDI and clipped at the end, neither start nor sound past it (the repeated, never released
    notes of the sample would otherwise run on)."""
    from amt import interarrival_sampling

    shift, note = vocab.MIDI_TIME_OFFSET + 10, vocab.MIDI_START_OFFSET + 60
    sampler = _scripted_interarrival_sampler((shift, 30.0), (note, 30.0))
    prompt = np.array([vocab.MIDI_SEPARATOR, vocab.MIDI_TIME_OFFSET + 123, note])
    end = (123 + 100) / vocab.TIME_RESOLUTION
    options = interarrival_sampling.InterarrivalOptions(num_samples=3, seed=0, top_p=1.0)
    for stream in sampler.continue_tokens(prompt, end, options):
        new = stream[len(prompt):]
        assert set(new.tolist()) <= {shift, note} and (new == note).sum() > 0
        assert int(stream[stream < vocab.MIDI_START_OFFSET].sum()) == 123 + 90
        events = interarrival_sampling.tokens_to_events(stream, end)
        onsets, durations = events[:, 0] - vocab.TIME_OFFSET, events[:, 1] - vocab.DUR_OFFSET
        assert onsets.max() <= 123 + 90 and (onsets + durations).max() <= 123 + 100


def test_interarrival_recipes_are_the_arrival_recipes_with_the_interarrival_vocabulary():
    import draccus

    from amt.train import TrainConfig

    for size in ("tiny", "small", "medium"):
        arrival = draccus.parse(TrainConfig, config_path=str(REPO / "recipes" / f"amt-{size}.yaml"), args=[])
        interarrival = draccus.parse(TrainConfig, config_path=str(REPO / "recipes" / f"amt-interarrival-{size}.yaml"), args=[])
        assert interarrival.data.vocab_size == vocab.MIDI_VOCAB_SIZE and arrival.data.vocab_size == vocab.VOCAB_SIZE
        assert interarrival.model == arrival.model and interarrival.optimizer == arrival.optimizer, size
        assert interarrival.trainer.train_batch_size == arrival.trainer.train_batch_size
        assert "interarrival" in interarrival.data.cache_dir and "interarrival" in interarrival.trainer.checkpointer.base_path
