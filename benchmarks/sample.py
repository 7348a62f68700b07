"""Sampling speed at a full 1,024-token context, GPT-2 Small size (random weights, fixed seed), on this machine.

Three ways, same weights, same run:
- ours: `amt.sampling.Sampler` (KV cache, one jitted call per event, the window moved and prefilled again when
  the context fills), generating events after a real prompt that fills the context; its time includes both
  prefills of a 640-token window (the prompt's and the moved window's, ~1.5 s each: ~20 ms of each event);
- the reference's method: the whole context through the model again for every token (`decoder.full_logits`
  on the 1,024-token window), timed over a few tokens;
- Hugging Face transformers' GPT-2 with its own KV cache (torch, eager attention), same weights, timed per token.

Measured (this 2-core CPU, otherwise idle, two runs): ours 91-95 ms an event for one sample, 64 ms batched (8);
full recompute 6,447-6,939 ms; Hugging Face 139-143 ms: 71-73x / 101-109x the reference's method, 1.50-1.52x /
2.18-2.25x Hugging Face's KV cache (with other jobs sharing the CPU: 56x and 1.22x). Before one call per event:
171 / 167 ms, 42x, 0.89x.

Usage: python benchmarks/sample.py [--events 30] [--reference-tokens 3] [--layers 12 --width 768 --heads 12]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from amt import decoder, midi, ops, sampling, vocab
from amt.train import MusicGpt2Config

DEMO = Path(__file__).resolve().parents[1] / "demo" / "midi"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=150, help="events sampled by ours (the window moves once)")
    parser.add_argument("--batch", type=int, default=8, help="samples of one request in one batch, for throughput")
    parser.add_argument("--reference-tokens", type=int, default=3, help="tokens timed for the full-recompute method")
    parser.add_argument("--hf-tokens", type=int, default=30)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    args = parser.parse_args()

    import haliax as hax
    from levanter.utils.tree_utils import inference_mode

    from amt.checkpoints import single_device_mesh

    config = MusicGpt2Config(num_layers=args.layers, hidden_dim=args.width, num_heads=args.heads,
                             scale_attn_by_inverse_layer_idx=True)
    with single_device_mesh():
        model = inference_mode(config.build(hax.Axis("vocab", vocab.VOCAB_SIZE), key=jax.random.PRNGKey(0)), True)
    sampler = sampling.Sampler(model)
    piece = ops.as_triples(midi.midi_to_events(DEMO / "npm_misc" / "the-entertainer.mid"))
    start = ops.times(piece)[339] / vocab.TIME_RESOLUTION  # ~340 events: the prompt fills the context
    print(f"model: {args.layers} layers x {args.width}, {jax.devices()[0].device_kind}; prompt {start:.1f} s of "
          "The Entertainer (a full context)")

    # ours (compile first with a short run, then time)
    options = sampling.SamplingOptions(seed=0, max_events=2)
    sampling.continuation(sampler, piece, start, start + 1000, options)
    options = sampling.SamplingOptions(seed=0, max_events=args.events)
    begin = time.perf_counter()
    out = sampling.continuation(sampler, piece, start, start + 1000, options)[0]
    ours = (time.perf_counter() - begin) / args.events
    assert len(out) - len(ops.clip(piece, 0, start, clip_duration=False)) == args.events
    print(f"ours (KV cache): {ours * 1000:8.1f} ms an event   {1 / ours:8.2f} events/s  (one sample; prefills of the "
          "prompt and of the moved window included)")
    batch_options = sampling.SamplingOptions(seed=0, max_events=args.events // 2, num_samples=args.batch)
    sampling.continuation(sampler, piece, start, start + 1000, sampling.SamplingOptions(seed=0, max_events=2, num_samples=args.batch))
    begin = time.perf_counter()
    sampling.continuation(sampler, piece, start, start + 1000, batch_options)
    batched = (time.perf_counter() - begin) / (args.batch * (args.events // 2))
    print(f"ours, {args.batch} samples a batch: {batched * 1000:8.1f} ms an event   {1 / batched:8.2f} events/s")

    # the reference's method: the full 1,024-token context for every token
    window = np.asarray(sampler.last_sequences[0][-vocab.CONTEXT_SIZE:], dtype=np.int32)[None]
    tokens = jnp.asarray(window)
    decoder.full_logits(sampler.weights, tokens).block_until_ready()
    begin = time.perf_counter()
    for _ in range(args.reference_tokens):
        decoder.full_logits(sampler.weights, tokens).block_until_ready()
    reference = 3 * (time.perf_counter() - begin) / args.reference_tokens
    print(f"reference method (full recompute): {reference * 1000:8.1f} ms an event   {1 / reference:8.3f} events/s")

    # Hugging Face transformers with its KV cache, same weights
    hf = None
    try:
        import tempfile

        import torch
        from transformers import GPT2LMHeadModel

        with tempfile.TemporaryDirectory() as tmp, single_device_mesh():
            config.hf_checkpoint_converter().save_pretrained(model, tmp, save_tokenizer=False)
            torch_model = GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="eager").eval()
        context = torch.tensor(window[:, : vocab.CONTEXT_SIZE - args.hf_tokens - 1], dtype=torch.long)
        with torch.no_grad():
            output = torch_model(context, use_cache=True)
            past, token = output.past_key_values, output.logits[:, -1].argmax(-1, keepdim=True)
            begin = time.perf_counter()
            for _ in range(args.hf_tokens):
                output = torch_model(token, past_key_values=past, use_cache=True)
                past, token = output.past_key_values, output.logits[:, -1].argmax(-1, keepdim=True)
            hf = 3 * (time.perf_counter() - begin) / args.hf_tokens
        print(f"Hugging Face GPT-2 with KV cache: {hf * 1000:8.1f} ms an event   {1 / hf:8.2f} events/s")
    except ImportError:
        print("Hugging Face comparison skipped (torch not installed: pip install -e '.[test]')")

    print(f"speed-up over the reference's method: {reference / ours:.0f}x one sample, {reference / batched:.0f}x batched" +
          (f"; over Hugging Face's KV cache: {hf / ours:.2f}x one sample, {hf / batched:.2f}x batched" if hf else ""))
    # seconds of music per second: random weights jump in time, so count at real music's density instead
    lakh_events_per_second = 125_050_497 / 3 / (560.98 * 3600)  # the paper's test split: tokens / 3 over its hours
    print(f"seconds of music a second, at Lakh's density ({lakh_events_per_second:.1f} events a second of music): "
          f"{1 / ours / lakh_events_per_second:.2f} (one sample), "
          f"{args.batch / batched / lakh_events_per_second:.2f} ({args.batch} samples a batch, all of them)")


if __name__ == "__main__":
    main()
