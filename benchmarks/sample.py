"""Sampling speed at a full 1,024-token context, GPT-2 Small size (random weights, fixed seed), like for like.

Same weights (ours exported to a Hugging Face folder), same machine, one run; every figure is per event (three
tokens) of one sample, after a real prompt that fills the context:
- the reference's method, as `anticipation.sample.add_token` runs it: Hugging Face GPT-2 in torch (eager
  attention), the whole window (flag + the latest 1,017 tokens + the event's tokens so far) through the model
  again for every token, with its masks and nucleus; timed over a few tokens. It has no batch: B samples cost
  B times one.
- Hugging Face's own KV cache (torch, eager attention, which these models need for correctness: SDPA ignores
  `scale_attn_by_inverse_layer_idx`; SDPA is also timed, as a speed bound only), one token at a time after a
  prefill of the context, at batch 1 and batch B.
- ours: `amt.sampling.Sampler` (JAX, KV cache, one jitted call per `--events-per-call` events, each row's
  window moved and prefilled again when its context fills), at batch 1 and batch B; its time includes the
  prompt's prefill and the window moves. With several values (`--events-per-call 1,8`), each is timed in the same
  run (the samples are the same whatever the value; the first is the ratios' and the trace's). In float32 (the default, and the others' precision) and, with `--dtypes float32,bfloat16`,
  again with bfloat16 weights and cache (`amt generate --dtype bfloat16`: for a GPU; slower on CPU).

For ours at batch 1 it also says how much of an event's time the host spends inside its device calls until
they return (dispatch, argument handling, CUDA graph launches: the device runs on after they return), measured
without a profiler (whose own cost inflated the H100 trace's launches). Ours launches each call before the last
one's result is read where the sampler chooses to (`SamplingOptions.launch_ahead`: one sample on a GPU); with
`--launch-ahead`, ours not launched ahead, then again launched ahead, both timed and their samples compared
(the same seed: the same music token for token, or which samples differ). With
`--back-to-back N`, then: ours at
batch 1, one event a call, N calls dispatched back to back, each on the one before's outputs, with no read-back
between them: what an event would cost if the host's launches overlapped the device's work (a sampler that did
not wait for each result), once with one executable and once alternating two (a CUDA graph's launch may wait for
the same graph's run before it: the H100's loop of 8 events a call left the card idle 39% of a call).

Ratios are the point: publish them from one run, on an idle machine (load hurts torch's threads more than
XLA's and moves the ratios by a third). The measured figures, with the machine, are in the README's Sampling
section.

Usage: python benchmarks/sample.py [--events 150] [--batch 8] [--reference-tokens 3] [--hf-tokens 30]
       [--layers 12 --width 768 --heads 12] [--dtypes float32[,bfloat16]] [--events-per-call 8[,1]] [--only-ours]
       [--trace DIR [--trace-events 20]] [--launch-ahead] [--back-to-back N]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from amt import midi, ops, reference, sampling, vocab
from amt.train import MusicGpt2Config

DEMO = Path(__file__).resolve().parents[1] / "demo" / "midi"


class Paced(sampling.Sampler):
    """Random weights jump far in time at every onset; real music does not. Onsets are sampled as usual but
    replaced by one 50 ms after the current time (Lakh's density is ~20 events a second), so that windows
    move as they do for music (the computation per event is the same)."""

    def forced_step(self, s):
        return 5, 10 ** 9  # (for the rest)


def reference_method(torch_model, tokens: list[int], z: int, current_time: int, tokens_timed: int) -> float:
    """Seconds a token, `anticipation.sample.add_token`'s way: the window again for every token."""
    import torch

    device = torch_model.device

    history = tokens[max(len(tokens) - 1017, 0):]
    offset = reference.min_time(history, seconds=False)
    history = reference.translate(history, -offset)
    new_token, elapsed = [], 0.0
    with torch.no_grad():
        for i in range(tokens_timed):
            begin = time.perf_counter()
            input_tokens = torch.tensor([z] + history + new_token, device=device).unsqueeze(0)
            logits = torch_model(input_tokens).logits[0, -1]
            allowed, _ = reference.add_token_masks(tokens, new_token, current_time, z=z)  # its masks, as NumPy
            logits[torch.from_numpy(~allowed).to(device)] = -float("inf")
            keep = reference.nucleus(logits.cpu().numpy().astype(np.float64), 0.98)
            logits[torch.from_numpy(~keep).to(device)] = -float("inf")
            token = int(torch.multinomial(torch.softmax(logits, -1), 1))
            elapsed += time.perf_counter() - begin
            new_token = new_token + [token] if len(new_token) < 2 else []  # the next token of the event
    return elapsed / tokens_timed


def hf_cached(torch_model, window: np.ndarray, batch: int, tokens_timed: int) -> float:
    """Seconds a token of Hugging Face's KV-cached GPT-2 at batch `batch`, after a prefill of the window."""
    import torch

    context = torch.tensor(np.repeat(window[None, : vocab.CONTEXT_SIZE - tokens_timed - 1], batch, 0), dtype=torch.long,
                           device=torch_model.device)
    synchronize = torch.cuda.synchronize if torch_model.device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        output = torch_model(context, use_cache=True)
        past, token = output.past_key_values, output.logits[:, -1].argmax(-1, keepdim=True)
        synchronize()
        begin = time.perf_counter()
        for _ in range(tokens_timed):
            output = torch_model(token, past_key_values=past, use_cache=True)
            past, token = output.past_key_values, output.logits[:, -1].argmax(-1, keepdim=True)
        synchronize()
        return (time.perf_counter() - begin) / tokens_timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=150, help="events sampled by ours (the window moves once)")
    parser.add_argument("--batch", type=int, default=8, help="samples of one request in one batch")
    parser.add_argument("--reference-tokens", type=int, default=3, help="tokens timed for the reference's method")
    parser.add_argument("--hf-tokens", type=int, default=30)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dtypes", default="float32",
                        help="ours in each of these precisions, comma-separated: float32, bfloat16")
    parser.add_argument("--events-per-call", default="auto",
                        help="ours with each of these events per device call, comma-separated (the first: the "
                             "ratios'); auto: the sampler's own choice for the batch and the device")
    parser.add_argument("--only-ours", action="store_true",
                        help="time ours alone (no Hugging Face export or torch): e.g. to compare XLA_FLAGS")
    parser.add_argument("--trace", default=None, metavar="DIR",
                        help="then trace --trace-events events of ours at batch 1 into DIR (a JAX profiler trace) "
                             "and say where a call's time goes (benchmarks/trace_summary.py)")
    parser.add_argument("--trace-events", type=int, default=20)
    parser.add_argument("--launch-ahead", action="store_true",
                        help="ours not launched ahead, then again with the first --events-per-call, each call "
                             "dispatched before the last one's result is read (SamplingOptions.launch_ahead; without "
                             "this flag: the sampler's choice, launched ahead for one sample on a GPU)")
    parser.add_argument("--back-to-back", type=int, default=0, metavar="N",
                        help="then time N calls of ours (the first dtype, batch 1, one event a call) dispatched back "
                             "to back with no read-back between them, with one executable and alternating two")
    parser.add_argument("--torch-device", default=None,
                        help="where the Hugging Face models run (default: cuda when torch sees a GPU, else cpu)")
    args = parser.parse_args()
    dtypes = args.dtypes.split(",")
    if not dtypes or any(d not in ("float32", "bfloat16") for d in dtypes):
        parser.error(f"--dtypes {args.dtypes!r}: a comma-separated list of float32, bfloat16")
    try:
        per_call = [None if k == "auto" else int(k) for k in args.events_per_call.split(",")]
        assert per_call and all(k is None or k >= 1 for k in per_call)
    except (ValueError, AssertionError):
        parser.error(f"--events-per-call {args.events_per_call!r}: a comma-separated list of positive integers "
                     "and auto")
    if args.back_to_back < 0:
        parser.error(f"--back-to-back {args.back_to_back}: a number of calls (0: none)")
    logging.getLogger("amt.sampling").setLevel(logging.ERROR)  # (max_events ends every timed run, on purpose)

    import haliax as hax
    from levanter.utils.tree_utils import inference_mode

    from amt.checkpoints import single_device_mesh

    config = MusicGpt2Config(num_layers=args.layers, hidden_dim=args.width, num_heads=args.heads,
                             scale_attn_by_inverse_layer_idx=True)
    with single_device_mesh():
        model = inference_mode(config.build(hax.Axis("vocab", vocab.VOCAB_SIZE), key=jax.random.PRNGKey(0)), True)
    torch_device, torch_threads = "none", 0
    if not args.only_ours:  # (torch only where the others are timed)
        import torch
        from transformers import GPT2LMHeadModel

        torch_device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_threads = torch.get_num_threads()
        with tempfile.TemporaryDirectory() as tmp, single_device_mesh():
            config.hf_checkpoint_converter().save_pretrained(model, tmp, save_tokenizer=False)
            eager = GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="eager").eval().to(torch_device)
            sdpa = GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="sdpa").eval().to(torch_device)
    samplers = {dtype: Paced(model, dtype=dtype) for dtype in dtypes}
    sampler = samplers[dtypes[0]]  # (the trace's)
    piece = ops.as_triples(midi.midi_to_events(DEMO / "npm_misc" / "the-entertainer.mid"))
    start = ops.times(piece)[339] / vocab.TIME_RESOLUTION  # ~340 events: the prompt fills the context
    load = os.getloadavg()[0]
    platform = jax.devices()[0].platform

    def described(events_per_call: int | None) -> str:  # "auto" as the sampler resolves it here, batch by batch
        if events_per_call is not None:
            return str(events_per_call)
        one, batched = (sampling.default_events_per_call(b, platform) for b in (1, args.batch))
        return f"auto ({one} at batch 1, {batched} at batch {args.batch})"

    def described_ahead() -> str:  # the sampler's choice where --launch-ahead does not set it
        if args.launch_ahead:
            return "not launched ahead (then launched ahead, as named)"
        one, batched = ("launched ahead" if sampling.default_launch_ahead(b, platform) else "not launched ahead"
                        for b in (1, args.batch))
        return f"auto launching ({one} at batch 1, {batched} at batch {args.batch})"

    print(f"model: {args.layers} layers x {args.width}, {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, "
          f"torch on {torch_device} ({torch_threads} threads), load average {load:.1f}; "
          f"ours {described(per_call[0])} events a device call, {described_ahead()}; "
          f"prompt {start:.1f} s of The Entertainer (a full context); XLA_FLAGS {os.environ.get('XLA_FLAGS', '')!r}")

    dispatching = {}  # (name, batch) -> seconds an event the host spent inside the device calls
    generated = {}  # (name, batch) -> the sampled events of each sample (launched ahead: compared with the base's)

    def ours(sampler, batch: int, events: int, name: str, events_per_call: int | None,
             launch_ahead: bool | None) -> float:
        warm = sampling.SamplingOptions(seed=0, max_events=2, num_samples=batch, events_per_call=events_per_call,
                                        launch_ahead=launch_ahead)
        sampling.continuation(sampler, piece, start, start + 1000, warm)  # compile
        options = sampling.SamplingOptions(seed=0, max_events=events, num_samples=batch, events_per_call=events_per_call,
                                           launch_ahead=launch_ahead)
        # the host's time in the rows' transfer, `_stage` and `_events` until each returns (they return before the
        # device has finished: dispatch, argument handling and graph launches), without a profiler's cost
        spent = [0.0]
        originals = {(sampling, call): getattr(sampling, call) for call in ("_stage", "_events")}
        originals[jax, "device_put"] = jax.device_put  # (the sampler's rows, a call)

        def clocked(call):
            def wrapper(*args, **kwargs):
                begin = time.perf_counter()
                try:
                    return call(*args, **kwargs)
                finally:
                    spent[0] += time.perf_counter() - begin
            return wrapper

        for (module, attribute), call in originals.items():
            setattr(module, attribute, clocked(call))
        try:
            begin = time.perf_counter()
            sampling.continuation(sampler, piece, start, start + 1000, options)
            elapsed = time.perf_counter() - begin
        finally:
            for (module, attribute), call in originals.items():
                setattr(module, attribute, call)
        assert all(len(g) == events for g in sampler.last_generated), [len(g) for g in sampler.last_generated]
        dispatching[name, batch] = spent[0] / events
        generated[name, batch] = [np.array(g) for g in sampler.last_generated]
        return elapsed / (batch * events)

    def same_music(name: str, base_name: str) -> str:  # launched ahead against not, each batch: token for token?
        said = []
        for batch in (1, args.batch):
            ours_, theirs = generated[name, batch], generated[base_name, batch]
            differ = [i for i, (a, b) in enumerate(zip(ours_, theirs)) if a.shape != b.shape or (a != b).any()]
            said.append(f"batch {batch}: " + (f"samples {differ} differ" if differ else "the same, token for token"))
        return f"ours ({name}) against ({base_name}): " + "; ".join(said)

    lakh_events_per_second = 125_050_497 / 3 / (560.98 * 3600)  # the paper's test split: tokens / 3 over its hours

    def music(seconds_an_event: float) -> float:  # seconds of music a second
        return 1 / seconds_an_event / lakh_events_per_second

    timed = {}  # "dtype" (the first --events-per-call) or "dtype, k a call" -> (batch 1, batch B) seconds an event
    for dtype, s in samplers.items():
        # (with --launch-ahead, the others explicitly not launched ahead; else as the sampler chooses)
        base = False if args.launch_ahead else None
        variants = [(k, base) for k in per_call] + ([(per_call[0], True)] if args.launch_ahead else [])
        for k, ahead in variants:
            name = dtype if (k, ahead) == (per_call[0], base) else f"{dtype}, {described(k)} a call"
            name += ", launched ahead" if ahead else ""
            timed[name] = one, batched = (ours(s, 1, args.events, name, k, ahead),
                                          ours(s, args.batch, max(args.events // 2, 1), name, k, ahead))
            if args.only_ours:  # (each as it is timed: a device step cut short still reports those before)
                print(f"ours (JAX, KV cache, {name}): {one * 1000:.1f} ms an event (batch 1), {batched * 1000:.1f} "
                      f"(batch {args.batch}): {music(one):.2f} / {music(batched):.2f} seconds of music a second",
                      flush=True)
            if ahead:  # (the same seed: the same music as not launched ahead, up to rounding of near-ties)
                print(same_music(name, dtype), flush=True)

    def trace() -> None:  # after the figures (a profiler that fails or runs long costs none of them)
        from trace_summary import summarize

        options = sampling.SamplingOptions(seed=0, max_events=args.trace_events, num_samples=1,
                                           events_per_call=per_call[0])
        try:
            with jax.profiler.trace(args.trace, create_perfetto_trace=True):  # the first dtype's batch-1 run, shorter
                sampling.continuation(sampler, piece, start, start + 1000, options)
            lines = summarize(args.trace, "_events")
        except Exception as error:  # noqa: BLE001 (reported: the figures above stand)
            lines = [f"the trace failed: {type(error).__name__}: {error}"]
        print(f"trace of {args.trace_events} events at batch 1 (the prompt's prefill before them), in {args.trace}:")
        print("\n".join(lines), flush=True)

    def back_to_back(calls: int) -> None:
        """Seconds a call of `_events` (batch 1, one event) dispatched `calls` times back to back on the first
        dtype's sampler, each on the outputs of the call before (donated: their buffers stay) and the rows it
        leaves, no read-back in between; once its one executable, once alternating two (`_events`' `copy`). Run
        inside a short continuation, at its first call (its music is not the point: the host's replay of the
        last call, on the host's rows, still checks the device's state; the chain's rows idle once their few
        events are taken, at the same cost a call)."""
        real, result = sampling._events, {}

        def probing(weights, unembed, cache, hidden, rows, keys, out, temperature, **static):
            if not result:
                other = dict(static, copy=1 - static.get("copy", 0))
                chained = jnp.array(rows, copy=True)  # (donated along the chain; the host's stay for its call)
                for variant in ("one executable", "two alternating"):
                    for count in (2, calls):  # (the first: to compile)
                        jax.block_until_ready(out)
                        begin = time.perf_counter()
                        for k in range(count):
                            options = other if variant != "one executable" and k % 2 else static
                            out, hidden, cache, keys, chained = real(weights, unembed, cache, hidden, chained, keys,
                                                                     out, temperature, **options)
                        jax.block_until_ready(out)
                    result[variant] = (time.perf_counter() - begin) / calls
            return real(weights, unembed, cache, hidden, rows, keys, out, temperature, **static)

        options = sampling.SamplingOptions(seed=0, max_events=3, num_samples=1, events_per_call=1, launch_ahead=False)
        sampling._events = probing
        try:
            sampling.continuation(sampler, piece, start, start + 1000, options)
        finally:
            sampling._events = real
        print(f"ours ({dtypes[0]}), batch 1, one event a call, {calls} calls back to back with no read-back between "
              "them: " + ", ".join(f"{seconds * 1000:.2f} ms a call with {variant}"
                                   for variant, seconds in result.items()), flush=True)

    def dispatch_line(name) -> str:
        one = timed[name][0]
        return (f"ours ({name}), batch 1: the host dispatches an event's share of the transfers and calls in "
                f"{dispatching[name, 1] * 1000:.2f} "
                f"ms of its {one * 1000:.2f} (the rest: waiting for the device, the sampler's own loop)")

    if args.only_ours:
        for dtype in timed:
            print(dispatch_line(dtype))
        if args.back_to_back:
            back_to_back(args.back_to_back)
        if args.trace:
            trace()
        return
    # the others continue the same prompt: its latest 1,017 tokens, time relative (the reference's window)
    start_bins = int(start * vocab.TIME_RESOLUTION)
    prompt = ops.pad(ops.clip(piece, 0, start_bins, clip_duration=False, seconds=False), start_bins)
    sequence = ops.flatten(prompt).tolist()
    history = sequence[-1017:]
    window = np.asarray([vocab.AUTOREGRESS] + reference.translate(history, -reference.min_time(history, seconds=False)))
    with torch.no_grad():  # torch's first calls on a device (CUDA context, cuBLAS, kernels) are not a method's cost
        for torch_model in (eager, sdpa):
            torch_model(torch.tensor(window[None], device=torch_device))
    torch.manual_seed(0)
    ref = 3 * reference_method(eager, sequence, vocab.AUTOREGRESS, ops.max_time(prompt, seconds=False),
                               args.reference_tokens)
    hf_one = 3 * hf_cached(eager, window, 1, args.hf_tokens)
    hf_batch = 3 * hf_cached(eager, window, args.batch, max(args.hf_tokens // 3, 1)) / args.batch
    sdpa_one = 3 * hf_cached(sdpa, window, 1, args.hf_tokens)

    rows = [("the reference's method (HF torch, whole window per token)", ref, ref),
            ("Hugging Face KV cache (eager)", hf_one, hf_batch),
            ("Hugging Face KV cache (SDPA: wrong scaling, speed bound only)", sdpa_one, None)]
    rows += [(f"ours (JAX, KV cache, {dtype})", one, batched) for dtype, (one, batched) in timed.items()]
    ours_one, ours_batch = timed[dtypes[0]]  # the ratios: ours in the first precision named (float32 by default)
    print(f"{'ms an event of one sample':<66}{'batch 1':>10}{f'batch {args.batch}':>10}")
    for name, one, batched in rows:
        print(f"{name:<66}{one * 1000:>10.1f}{(batched * 1000 if batched else float('nan')):>10.1f}")
    print(f"ours ({dtypes[0]}) vs the reference's method: {ref / ours_one:.0f}x one vs one, {ref / ours_batch:.0f}x "
          "batch vs batch (it runs samples one at a time)")
    print(f"ours ({dtypes[0]}) vs Hugging Face's KV cache (eager): {hf_one / ours_one:.2f}x one vs one, "
          f"{hf_batch / ours_batch:.2f}x batch vs batch; vs SDPA {sdpa_one / ours_one:.2f}x one vs one")
    for dtype, (one, batched) in timed.items():
        print(f"seconds of music a second, ours in {dtype}, at Lakh's density ({lakh_events_per_second:.1f} events a "
              f"second of music): {music(one):.2f} (one sample), {music(batched):.2f} ({args.batch} samples a batch, "
              "all of them)", flush=True)
    for dtype in timed:
        print(dispatch_line(dtype))
    if args.back_to_back:
        back_to_back(args.back_to_back)
    if args.trace:
        trace()


if __name__ == "__main__":
    main()
