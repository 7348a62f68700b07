"""Kernels one sampled event launches on a GPU, counted on a machine that has none.

JAX compiles for a GPU it does not have when the CUDA plugin is installed: ahead-of-time ("deviceless")
compilation for a topology made from a target description, the card's properties as XLA's GPU compiler
reads them (`gpu_targets/h100.txtpb`). The optimized program's entry computation lists what runs, in order:
each fusion, library call or copy is a kernel launch (XLA's thunks; a while loop or a conditional holds
more, run from the host). At batch 1 an event is bound by those launches, not by arithmetic (on this
project's H100 a step of 8 samples cost what a step of 1 did), so the count is the figure to bring down
between visits to a GPU. It is not a time: nothing is autotuned and nothing runs.

What is compiled is the sampler's own: `amt.sampling._event` (one event of every row: three tokens through
the model, each sampled under the constraints) and `_write` (its keys and values into the cache), on
random weights of the size asked for (the program depends only on the shapes).

Usage: pip install "jax[cuda13]==<this venv's jax>"   (about 3 GB; a second venv is fine)
       python benchmarks/gpu_kernels.py [--layers 24 --width 1024 --heads 16] [--batch 1 8]
       [--target benchmarks/gpu_targets/h100.txtpb] [--dump DIR] [--by-name]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

TARGETS = Path(__file__).resolve().parent / "gpu_targets"
NOT_LAUNCHES = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id",
                "replica-id"}  # entry instructions that are no kernel of their own
HOST_DRIVEN = {"while", "conditional", "call"}  # run their bodies kernel by kernel, from the host


def entry_launches(hlo_text: str) -> list[tuple[str, str]]:
    """(opcode, what it runs) of each kernel launch in an optimized HLO module's entry computation, in order:
    for a fusion its kind and computation ("kLoop fused_add"), for a custom call its target, else the opcode."""
    start = hlo_text.index("\nENTRY ")
    body = hlo_text[start: hlo_text.index("\n}", start)]
    launches = []
    for line in body.splitlines()[1:]:
        match = re.match(r"\s*(?:ROOT\s+)?%\S+\s*=\s*.*?\s([a-z][a-z0-9\-]*)\(", line)
        if not match or match.group(1) in NOT_LAUNCHES:
            continue
        opcode = match.group(1)
        if opcode == "fusion":
            kind = re.search(r"kind=(\w+)", line)
            calls = re.search(r"calls=%([\w.\-]+)", line)
            computation = re.sub(r"\.[0-9]+", "", calls.group(1)) if calls else "?"  # numbering dropped
            what = f"{kind.group(1) if kind else '?'} {computation}"
        elif opcode == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', line)
            what = target.group(1) if target else "?"
        else:
            what = opcode
        launches.append((opcode, what))
    return launches


def summary(launches: list[tuple[str, str]]) -> tuple[int, int, collections.Counter]:
    """(kernel launches, host-driven loops and conditionals, launches by what they run)."""
    return (len(launches), sum(opcode in HOST_DRIVEN for opcode, _ in launches),
            collections.Counter(what for _, what in launches))


def gpu_device(target: Path):
    """A device of a one-GPU topology described by `target`, for compilation only; a clear exit without the plugin."""
    import jax
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc("deviceless", "cuda", target_config=target.read_text(),
                                                topology="1x1x1")
    except Exception as error:  # no CUDA plugin: jax names the platform it could not find
        sys.exit(f"gpu_kernels: no deviceless CUDA compiler ({type(error).__name__}: {str(error).splitlines()[0]}); "
                 f"install the plugin: pip install 'jax[cuda13]=={jax.__version__}'")
    return topology.devices[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--target", type=Path, default=TARGETS / "h100.txtpb")
    parser.add_argument("--dump", type=Path, help="write each program's optimized HLO here")
    parser.add_argument("--by-name", action="store_true", help="also list the launches of an event by what they run")
    args = parser.parse_args()
    if not args.target.is_file():
        sys.exit(f"gpu_kernels: no target description at {args.target}")

    import haliax as hax
    import jax
    import jax.numpy as jnp

    from amt import decoder, sampling, vocab
    from amt.checkpoints import single_device_mesh
    from amt.train import MusicGpt2Config

    device = gpu_device(args.target)
    config = MusicGpt2Config(num_layers=args.layers, hidden_dim=args.width, num_heads=args.heads,
                             scale_attn_by_inverse_layer_idx=True)
    with single_device_mesh():
        sampler = sampling.Sampler(config.build(hax.Axis("vocab", vocab.VOCAB_SIZE), key=jax.random.PRNGKey(0)))
    on_gpu = jax.sharding.SingleDeviceSharding(device)

    def abstract(tree):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=on_gpu), tree)

    weights, unembed = abstract(sampler.weights), abstract(sampler.unembed)
    print(f"kernel launches a sampled event, compiled for {device.device_kind} without one (jax {jax.__version__}); "
          f"{args.layers} layers x {args.width}, {args.heads} heads, f32 weights")
    print(f"{'batch':>5} {'_event':>7} {'_write':>7} {'an event':>9} {'host loops':>11}")
    for batch in args.batch:
        cache = abstract(jax.eval_shape(lambda: decoder.empty_cache(sampler.weights, batch, sampler.context)))
        event_args = (weights, unembed, cache, abstract(jax.ShapeDtypeStruct((batch, args.width), jnp.float32)),
                      abstract(jax.ShapeDtypeStruct((batch, sampling.ROW_INPUTS), jnp.int32)),
                      abstract(jax.ShapeDtypeStruct((2,), jnp.uint32)))
        temperature = abstract(jax.ShapeDtypeStruct((), jnp.float32))
        event = sampling._event.lower(*event_args, top_p=0.98, temperature=temperature).compile().as_text()
        _, _, recent, _ = jax.eval_shape(lambda *a: sampling._event(*a, top_p=0.98, temperature=1.0), *event_args)
        write = sampling._write.lower(cache, abstract(recent), event_args[4]).compile().as_text()
        counts = {}
        for name, text in (("event", event), ("write", write)):
            counts[name] = summary(entry_launches(text))
            if args.dump:
                args.dump.mkdir(parents=True, exist_ok=True)
                (args.dump / f"{name}-batch{batch}.hlo.txt").write_text(text)
        (event_n, event_loops, event_by), (write_n, write_loops, _) = counts["event"], counts["write"]
        print(f"{batch:>5} {event_n:>7} {write_n:>7} {event_n + write_n:>9} {event_loops + write_loops:>11}")
        if args.by_name:
            for what, n in event_by.most_common():
                print(f"{'':>8}{n:>6}  {what}")


if __name__ == "__main__":
    main()
