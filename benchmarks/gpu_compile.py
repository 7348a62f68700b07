"""What our programs become on a GPU, found on a machine that has none: kernel launches and memory.

JAX compiles for a GPU it does not have when the CUDA plugin is installed: ahead-of-time ("deviceless")
compilation for a topology made from a target description, the card's properties as XLA's GPU compiler
reads them (`gpu_targets/h100.txtpb`). Nothing runs and nothing is autotuned, so no figure here is a time;
what it does give, before a short visit to a GPU:

- `sample`: the kernel launches of sampled events: `amt.sampling._events` (a call of `--events-per-call` steps,
  each three tokens through the model, sampled under the constraints, their keys and values into the cache) and
  `_stage` (the rows' inputs into their buffer), on random weights of the size asked for, per call and per event.
  Each fusion, library call or copy of the optimized program is a launch, a loop's body's once a trip
  (`kernel_costs`). At batch 1 an event is bound by its launches, not by arithmetic (on this project's H100 a step
  of 8 samples cost what a step of 1 did), so the count is the figure to bring down between visits to a GPU. How
  XLA will run them is read from its thunk sequence (dumped for these programs): the top-level thunks, where
  `kCommandBuffer` is a CUDA graph (its kernels launched by the card, one after another, not by the host one at a
  time) and `kWhile` a loop whose body the host runs, iteration by iteration. With them, the bytes an event must
  read (each of its three tokens reads every layer's matrices and the whole cache, each slot's unembedding block
  is read once) and the time that takes at the card's memory bandwidth: the floor under an event's time, which
  `--dtype bfloat16` (the sampler's weights and cache) halves; and what XLA's kernels move (`kernel_costs`: each
  kernel's operands and result once), with its time at the bandwidth (`--bandwidth` TB/s for another card).
- `train`: a recipe's train step compiled for the card: whether it compiles, how long that takes (without
  autotuning, which the card adds), and XLA's own memory figure for it (parameters and optimizer state, and the
  step's temporaries) against the card's memory. The step is Levanter's, rebuilt from its parts as
  `Trainer._train_step` puts them together: the loss under the recipe's mixed precision, its gradient
  accumulated over micro-steps of `per_device_parallelism` (`levanter.grad_accum.microbatched`), the recipe's
  optimizer update; no hooks or metrics. The loss is the kernel `amt train` chooses on a GPU (workaround 6 in
  `amt.train`: Levanter's XLA kernel with its bf16 backward; with `-- --model.grad_in_forward_token_block_size N`
  Levanter's grad-in-forward kernel, as that option runs it). With `--roofline N`, an estimate of the step's
  floor: each kernel's bytes (its operands and result once; a slice of a stacked buffer, or an update in place,
  counted as the slice or the update) and its matrix products' flops, times its loops' known trip counts, at the
  card's bandwidth or its bf16 peak, whichever bounds it; the MFU that floor would allow; the N slowest JAX
  operations. A floor, not a time: no launch gaps, no cache reuse, every kernel at the card's best (the H200 ran
  Small's recipe as written at 1.42 times it).
- `loss`: the 55,028-way loss alone (forward and backward, bf16 activations and weights, a micro-step's
  positions) in one of Levanter's fused cross-entropy implementations: `xla` (what `amt train` uses on CPU and
  TPU), `xla_fast_bwd` (the same forward, a bf16 backward: on GPUs) or `batched_xla` (Levanter's own first choice
  on a GPU, with the block sizes it infers for the card): how long it takes to trace and compile, its launches and
  the size of its program (`--dump` it to read its products' types). GPT-2 Small's micro-step: `xla` 2-4 s, 13
  launches; `xla_fast_bwd` 2 s, 15; `batched_xla` 236-249 s, 1,824 launches, 27 MB of HLO (860 unrolled
  vocabulary blocks).

Usage: pip install "jax[cuda13]==<this venv's jax>"   (about 3 GB; a second venv is fine)
       python benchmarks/gpu_compile.py sample [--layers 24 --width 1024 --heads 16] [--batch 1 8] [--by-name]
                                               [--events-per-call 1 8]
                                               [--dtype float32|bfloat16]
       python benchmarks/gpu_compile.py train [--recipe recipes/amt-small-gpu.yaml] [--roofline N [--bandwidth 4.8]]
                                              [-- recipe overrides...]
       python benchmarks/gpu_compile.py loss [--implementation xla|xla_fast_bwd|batched_xla]
                                             [--positions 32768 --width 768]
       (all: [--target benchmarks/gpu_targets/h100.txtpb] [--dump DIR])
"""

from __future__ import annotations

import argparse
import collections
import functools
import math
import os
import re
import shutil
import sys
import tempfile
import time
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


def top_level_thunks(thunk_sequence: str) -> collections.Counter:
    """The kinds of an XLA GPU thunk sequence's top-level thunks (nested ones, a command buffer's kernels or a
    loop's body, are indented): {"kCommandBuffer": 1} is one CUDA graph for the whole program."""
    return collections.Counter(re.findall(r"^\d+: (k\w+)", thunk_sequence, flags=re.MULTILINE))


def newest_thunk_sequence(directory: Path, module: str) -> str:
    """The thunk sequence XLA dumped last for `module` (jit__event, ...): after its thunk passes, or as emitted
    where no pass ran (with command buffers switched off XLA writes only that)."""
    files = list(directory.glob(f"module_*.{module}.thunk_sequence*.txt"))
    if not files:
        return ""
    number = max(files, key=lambda path: path.stat().st_mtime_ns).name.split(".")[0]
    after_passes = directory / f"{number}.{module}.thunk_sequence_after_thunk_passes.txt"
    return (after_passes if after_passes.exists() else directory / f"{number}.{module}.thunk_sequence.txt").read_text()


def described(thunks: collections.Counter) -> str:
    return ", ".join(f"{n} {kind[1:]}" for kind, n in thunks.most_common()) or "?"


def gpu_device(target: Path):
    """A device of a one-GPU topology described by `target`, for compilation only; a clear exit without the plugin."""
    import jax
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc("deviceless", "cuda", target_config=target.read_text(),
                                                topology="1x1x1")
    except Exception as error:  # no CUDA plugin: jax names the platform it could not find
        sys.exit(f"gpu_compile: no deviceless CUDA compiler ({type(error).__name__}: {str(error).splitlines()[0]}); "
                 f"install the plugin (pip install 'jax[cuda13]=={jax.__version__}') and leave JAX_PLATFORMS=cpu "
                 f"(now {os.environ.get('JAX_PLATFORMS')!r})")
    return topology.devices[0]


def on_device(tree, device):
    """The arrays (or shapes) of `tree` as abstract arrays placed on `device`: what `.lower` compiles for."""
    import jax

    sharding = jax.sharding.SingleDeviceSharding(device)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


PEAK_TFLOPS = 989.0  # H100 and H200 SXM, dense bf16
ARRAY = re.compile(r"\b(pred|[a-z]+(\d+)[a-z0-9]*)\[([0-9,]*)\]")  # bf16[32,1024], s4[8], f8e4m3fn[2], pred[3]
NO_KERNEL = NOT_LAUNCHES | HOST_DRIVEN | {"opt-barrier", "slice"}  # (a slice of the entry: a view)


def array_bytes(type_text: str) -> float:
    """Bytes of the arrays in an HLO type ("bf16[32,1024]{1,0}", or a tuple of them): an element's bits are in
    its type's name (pred: a byte)."""
    return sum((1 if dtype == "pred" else int(bits) / 8) * math.prod(int(d) for d in dims.split(",") if d)
               for dtype, bits, dims in ARRAY.findall(type_text))


def array_dims(type_text: str) -> list[int]:
    match = ARRAY.search(type_text)
    return [int(d) for d in match.group(3).split(",") if d] if match else []


Instruction = collections.namedtuple("Instruction", "name type opcode operands line")


def computations(hlo_text: str) -> tuple[dict[str, list[Instruction]], str]:
    """An optimized HLO module's computations, each a list of its instructions (parameters included), and the
    entry's name."""
    found, entry, current = {}, None, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(ENTRY )?%([\w.\-]+) \(.*\) -> .* \{$", line)
        if header:
            current = header.group(2)
            entry = current if header.group(1) else entry
            found[current] = []
        elif line.startswith("}"):
            current = None
        elif current is not None:
            match = re.match(r"\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\((.*)$", line)
            if match:
                name, type_text, opcode, rest = match.groups()
                arguments = rest.split("), kind=")[0] if opcode.startswith("fusion") else rest.split(")", 1)[0]
                found[current].append(Instruction(name, type_text, opcode, re.findall(r"%([\w.\-]+)", arguments), line))
    return found, entry


IN_PLACE = {"dynamic-update-slice": 1, "scatter": 2}  # opcodes that write into their first operand: the update's index


def _fusion_bytes(module: dict, called: str) -> int:
    """What a fusion reads and writes: each parameter once, or only the slices it takes of it; its result, or
    only the update where it writes into a buffer in place (dynamic-update-slice, scatter)."""
    body = module[called]
    uses = collections.defaultdict(list)
    for instruction in body:
        for position, operand in enumerate(instruction.operands):
            uses[operand].append((instruction, position))
    total = 0
    for parameter in (i for i in body if i.opcode == "parameter"):
        use = uses.get(parameter.name, [])
        if use and all(i.opcode in ("dynamic-slice", "slice", "gather") and k == 0 for i, k in use):
            total += sum(array_bytes(i.type) for i, _ in use)
        elif not (use and all(i.opcode in IN_PLACE and k == 0 for i, k in use)):
            total += array_bytes(parameter.type)
    root = next((i for i in body if i.line.lstrip().startswith("ROOT")), body[-1])
    if root.opcode in IN_PLACE:
        update = next((i for i in body if i.name == root.operands[IN_PLACE[root.opcode]]), None)
        return total + array_bytes(update.type if update else root.type)
    return total + array_bytes(root.type)


def _product_flops(module: dict, called: str) -> int:
    """2 x M x N x K of each matrix product in a fused computation (nested fusions included)."""
    table = {i.name: i for i in module[called]}
    flops = 0
    for instruction in module[called]:
        if instruction.opcode == "dot":
            lhs = array_dims(table[instruction.operands[0]].type)
            contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", instruction.line)
            depth = math.prod(lhs[int(d)] for d in contracting.group(1).split(",") if d) if contracting else 1
            flops += 2 * math.prod(array_dims(instruction.type)) * depth
        elif instruction.opcode == "fusion":
            flops += _product_flops(module, re.search(r"calls=%([\w.\-]+)", instruction.line).group(1))
    return flops


KernelCost = collections.namedtuple("KernelCost", "runs what bytes flops")


def _operation(op_name: str) -> str:
    """A kernel's JAX operation, short: its pass (forward, recomputed, backward) and the last three named scopes
    ("backward: GptBlock/GptMlp/Linear/reduce_sum")."""
    phase = ("recomputed" if "rematted_computation" in op_name else "backward" if "transpose(" in op_name
             else "forward")
    scopes = [scope for scope in re.sub(r"\d+|<locals>\.", "", op_name).split("/")
              if scope.strip(" ,->") and not re.fullmatch(r"jit\(.*\)|while|body|eval_jaxpr|checkpoint|"
                                                             r"rematted_computation|compute|cond|branch__fun", scope)]
    return f"{phase}: {'/'.join(scopes[-3:])}"


def _library_call_cost(instruction: Instruction, table: dict) -> tuple[float, float]:
    """(bytes, flops) of a library call: its operands and outputs (not the byte arrays of a cuBLAS or cuDNN
    workspace); a cuBLAS product's flops from its dimension numbers, cuDNN's fused attention's as 4 x batch x
    heads x S^2 x head, half of it under a causal mask, 2.5 times that backward."""
    outputs = [array.group(0) for array in ARRAY.finditer(instruction.type) if array.group(1) not in ("s8", "u8")]
    moved = sum(array_bytes(element) for element in outputs) + sum(
        array_bytes(table[operand].type) for operand in instruction.operands if operand in table)
    target = re.search(r'custom_call_target="([^"]+)"', instruction.line)
    target = target.group(1) if target else ""
    first = array_dims(table[instruction.operands[0]].type) if instruction.operands and \
        instruction.operands[0] in table else []
    if "fmha" in target and len(first) == 4:
        batch, positions, heads, head = first
        masked = 0.5 if '"mask_type":"CAUSAL"' in instruction.line.replace(" ", "") else 1.0
        return moved, 4 * batch * heads * positions ** 2 * head * masked * (2.5 if "Backward" in target else 1.0)
    contracting = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', instruction.line)
    if ("gemm" in target or "matmul" in target) and contracting and outputs:
        depth = math.prod(first[int(d)] for d in re.findall(r"\d+", contracting.group(1)))
        return moved, 2 * math.prod(array_dims(outputs[0])) * depth
    return moved, 0


def kernel_costs(hlo_text: str) -> list[KernelCost]:
    """Each kernel of an optimized GPU module, with how often one run of the module launches it (a while loop's
    known trip count multiplies its body's; of a conditional's branches the costliest is counted), what it
    computes (the JAX operation it came from, numbers dropped), the bytes it must move and the flops of its
    matrix products. A loop without a known trip count is counted once, with a warning."""
    module, entry = computations(hlo_text)
    unknown_trips = []

    def walk(name: str, runs: int) -> list[KernelCost]:
        costs = []
        table = {i.name: i for i in module[name]}
        for instruction in module[name]:
            opcode, line = instruction.opcode, instruction.line
            if opcode == "while":
                trips = re.search(r'known_trip_count":\{"n":"(\d+)"', line)
                if not trips:
                    unknown_trips.append(instruction.name)
                costs += walk(re.search(r"body=%([\w.\-]+)", line).group(1), runs * int(trips.group(1) if trips else 1))
            elif opcode == "conditional":  # one branch runs: the costliest (time-weighted at 200 flops a byte)
                branches = re.search(r"branch_computations=\{([^}]*)\}", line)
                names = re.findall(r"%([\w.\-]+)", branches.group(1)) if branches else \
                    re.findall(r"(?:true|false)_computation=%([\w.\-]+)", line)
                costs += max((walk(branch, runs) for branch in names), default=[],
                             key=lambda branch: sum(c.runs * max(c.bytes, c.flops / 200) for c in branch))
            elif opcode == "call":
                costs += walk(re.search(r"to_apply=%([\w.\-]+)", line).group(1), runs)
            elif opcode in NO_KERNEL or opcode.endswith(("-done", "-update")):  # (an async op's wait)
                continue
            else:
                called = re.search(r"calls=%([\w.\-]+)", line)
                if opcode in ("fusion", "fusion-start", "async-start") and called:
                    moved, flops = _fusion_bytes(module, called.group(1)), _product_flops(module, called.group(1))
                else:
                    moved, flops = _library_call_cost(instruction, table)
                op_name = re.search(r'op_name="([^"]*)"', line)
                costs.append(KernelCost(runs, _operation(op_name.group(1)) if op_name else opcode, moved, flops))
        return costs

    costs = walk(entry, 1)
    if unknown_trips:
        print(f"gpu_compile: {len(unknown_trips)} loop(s) without a known trip count counted once "
              f"({', '.join(unknown_trips[:3])})", file=sys.stderr)
    return costs


def roofline(costs: list[KernelCost], bandwidth: float, peak_flops: float) -> tuple[float, list]:
    """The floor under a module's time: each kernel at the card's memory bandwidth or its peak arithmetic,
    whichever bounds it (no launch gaps, no partial use of the card); and the kernels grouped by what they
    compute, (seconds, runs, bytes, flops, what), the slowest first."""
    groups = collections.defaultdict(lambda: [0.0, 0, 0, 0])
    for cost in costs:
        group = groups[cost.what]
        group[0] += cost.runs * max(cost.bytes / bandwidth, cost.flops / peak_flops)
        group[1] += cost.runs
        group[2] += cost.runs * cost.bytes
        group[3] += cost.runs * cost.flops
    ranked = sorted(((s, n, b, f, what) for what, (s, n, b, f) in groups.items()), reverse=True)
    return sum(s for s, *_ in ranked), ranked


def card_bandwidth(args) -> float:
    """Bytes a second: --bandwidth (TB/s) where given, else the target card's."""
    return args.bandwidth * 1e12 if args.bandwidth else card_figure(args.target, "memory_bandwidth")


def card_figure(target: Path, field: str) -> int:
    """A number from the card's description: device_memory_size (bytes), memory_bandwidth (bytes a second)."""
    return int(re.search(rf"{field}:\s*(\d+)", target.read_text()).group(1))


def nbytes(tree) -> int:
    """Bytes of a pytree's arrays (concrete or abstract)."""
    import jax
    import numpy as np

    return sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def dump(directory: Path | None, name: str, text: str) -> None:
    if directory:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}.hlo.txt").write_text(text)


def sample(args, device) -> None:
    import haliax as hax
    import jax
    import jax.numpy as jnp

    from amt import decoder, sampling, vocab
    from amt.checkpoints import single_device_mesh
    from amt.train import MusicGpt2Config

    config = MusicGpt2Config(num_layers=args.layers, hidden_dim=args.width, num_heads=args.heads,
                             scale_attn_by_inverse_layer_idx=True)
    with single_device_mesh():
        sampler = sampling.Sampler(config.build(hax.Axis("vocab", vocab.VOCAB_SIZE), key=jax.random.PRNGKey(0)),
                                   dtype=args.dtype)
    abstract = functools.partial(on_device, device=device)
    weights, unembed = abstract(sampler.weights), abstract(sampler.unembed)
    print(f"kernel launches a sampled event, compiled for {device.device_kind} without one (jax {jax.__version__}); "
          f"{args.layers} layers x {args.width}, {args.heads} heads, {args.dtype} weights and cache")
    bandwidth = card_bandwidth(args)
    print(f"{'batch':>5} {'a call':>7} {'_events':>8} {'_stage':>7} {'an event':>9} {'host loops':>11} {'GB read':>8} "
          f"{'ms':>5} {'XLA GB':>7} {'ms':>5}   how XLA runs _events / _stage (top-level thunks; CommandBuffer: a "
          f"CUDA graph; While: a loop the host runs)")
    for batch in args.batch:
        for events in args.events_per_call:
            cache = abstract(jax.eval_shape(lambda: decoder.empty_cache(sampler.weights, batch, sampler.context)))
            rows = abstract(jax.ShapeDtypeStruct((batch, sampling._row_width(events)), jnp.int32))
            event_args = (weights, unembed, cache, abstract(jax.ShapeDtypeStruct((batch, args.width), jnp.float32)),
                          rows, abstract(jax.ShapeDtypeStruct((batch, 2), jnp.uint32)),
                          abstract(jax.ShapeDtypeStruct((batch, sampling.STATE + 3 * events), jnp.int32)),
                          abstract(jax.ShapeDtypeStruct((), jnp.float32)))
            programs = {"events": sampling._events.lower(*event_args, top_p=0.98, events=events,
                                                         anticipatory=True).compile().as_text(),
                        "stage": sampling._stage.lower(rows, rows).compile().as_text()}
            # what an event must read at least (XLA gives no cost analysis without a card): each of its three
            # tokens every layer's matrices and the whole cache, and each slot's unembedding block once
            moved = 3 * (nbytes(sampler.weights.layers) + nbytes(cache)) + nbytes(sampler.unembed)
            # what XLA's kernels move (each kernel's operands and result once: `kernel_costs`, a loop's body times
            # its trips), and at the bandwidth; a call's launches, its loop's body counted once a trip
            costs = {name: kernel_costs(text) for name, text in programs.items()}
            launches = {name: sum(c.runs for c in found) for name, found in costs.items()}
            loops = sum(loops for _, loops, _ in (summary(entry_launches(text)) for text in programs.values()))
            for name, text in programs.items():
                dump(args.dump, f"{name}-batch{batch}-{events}", text)
            graphs = " / ".join(described(top_level_thunks(newest_thunk_sequence(args.thunks, f"jit__{name}")))
                                for name in programs)
            every = [cost for found in costs.values() for cost in found]
            floor, _ = roofline(every, bandwidth, PEAK_TFLOPS * 1e12)
            print(f"{batch:>5} {events:>7} {launches['events']:>8} {launches['stage']:>7} "
                  f"{sum(launches.values()) / events:>9.0f} {loops:>11} {moved / 1e9:>8.2f} "
                  f"{1000 * moved / bandwidth:>5.2f} {sum(c.runs * c.bytes for c in every) / events / 1e9:>7.2f} "
                  f"{1000 * floor / events:>5.2f}   {graphs}")
            if args.by_name:
                by_name = collections.Counter()
                for cost in costs["events"]:
                    by_name[cost.what] += cost.runs
                for what, n in by_name.most_common():
                    print(f"{'':>8}{n:>6}  {what}")


def train(args, device) -> None:
    import draccus
    import equinox as eqx
    import haliax as hax
    import jax
    import jax.numpy as jnp
    import numpy as np
    from levanter.grad_accum import microbatched
    from levanter.layers.attention import AttentionMask
    from levanter.models.lm_model import LmExample

    from amt import vocab
    from amt.train import (TrainConfig, fused_attention, grad_in_forward_problem, loss_gradients_in_forward,
                           parameter_count, training_flops_per_token, xla_loss_on_gpus)

    config = draccus.parse(TrainConfig, config_path=args.recipe, args=args.overrides)
    model_config, trainer = config.model, config.trainer
    if problem := grad_in_forward_problem(model_config):
        sys.exit(problem)
    in_forward = model_config.grad_in_forward_token_block_size
    Batch = hax.Axis(trainer.batch_axis_name or "batch", trainer.train_batch_size)
    Pos = model_config.max_Pos
    micro = trainer.per_device_parallelism if trainer.per_device_parallelism > 0 else Batch.size
    optimizer = config.optimizer.build(trainer.num_train_steps)
    vocab_size = config.data.vocab_size or vocab.VOCAB_SIZE  # the recipe's: 34,025 for an interarrival model
    model = eqx.filter_eval_shape(lambda key: model_config.build(hax.Axis("vocab", vocab_size), key=key),
                                  jax.random.PRNGKey(0))
    opt_state = eqx.filter_eval_shape(lambda m: optimizer.init(eqx.filter(m, eqx.is_inexact_array)), model)

    def loss(model, example, key=None):  # Levanter's WrappedLossFunction: the loss in compute precision
        return trainer.mp.cast_to_compute(model).compute_next_token_loss(example, key=key).scalar(), {}

    def step(model, opt_state, tokens, key):  # Trainer._train_step without hooks and metrics
        weight = hax.broadcast_to((hax.arange(Pos) < Pos.size - 1).astype(jnp.float32), (Batch, Pos))
        example = LmExample(tokens=tokens, loss_weight=weight, attn_mask=AttentionMask.causal())
        grad = microbatched(lambda ex, key=None: eqx.filter_value_and_grad(loss, has_aux=True)(model, ex, key=key),
                            Batch, micro, trainer.parameter_axis_mapping, trainer.compute_axis_mapping)
        (value, _), grads = grad(example, key=key)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, value

    abstract = functools.partial(on_device, device=device)
    is_abstract = lambda leaf: isinstance(leaf, jax.ShapeDtypeStruct)  # noqa: E731
    params, model_static = eqx.partition(model, is_abstract)
    state, state_static = eqx.partition(opt_state, is_abstract)

    def pure(params, state, tokens, key):
        new_model, new_state, value = step(eqx.combine(params, model_static), eqx.combine(state, state_static),
                                           tokens, key)
        return eqx.filter(new_model, eqx.is_array), eqx.filter(new_state, eqx.is_array), value

    tokens = hax.NamedArray(abstract(jax.ShapeDtypeStruct((Batch.size, Pos.size), jnp.int32)), (Batch, Pos))
    # the recipe's mesh axes, all of size 1 on one card (microbatched asks for the batch axis's mapping)
    mesh = jax.sharding.Mesh(np.array([device]).reshape(1, 1, 1, 1), ("replica_dcn", "data", "replica", "model"))
    print(f"{args.recipe} {' '.join(args.overrides)}: GPT-2 {parameter_count(model_config, vocab_size) / 1e6:.0f}M, batch "
          f"{Batch.size} x {Pos.size} in micro-steps of {micro}, {trainer.mp}, attention "
          f"{'fused (cuDNN)' if model_config.fused_attention else model_config.attn_backend or 'default'}, "
          f"recomputation {model_config.gradient_checkpointing}, the loss as amt train runs it on a GPU "
          f"({f'gradients in its forward, {in_forward:,} positions a block' if in_forward else 'workaround 6'}); "
          f"compiled for {device.device_kind} without one "
          f"(jax {jax.__version__})")
    begin = time.monotonic()
    with hax.partitioning.set_mesh(mesh), hax.axis_mapping(trainer.compute_axis_mapping), \
            xla_loss_on_gpus(backend="gpu"), fused_attention(model_config.fused_attention, backend="gpu"), \
            loss_gradients_in_forward(in_forward):
        # (the host is a CPU: choose as amt train does on the card)
        lowered = jax.jit(pure, donate_argnums=(0, 1)).lower(abstract(params), abstract(state), tokens,
                                                             abstract(jax.ShapeDtypeStruct((2,), jnp.uint32)))
        compiled = lowered.compile()
    seconds = time.monotonic() - begin
    text = compiled.as_text()
    dump(args.dump, "train-step", text)
    memory = compiled.memory_analysis()
    held = memory.argument_size_in_bytes  # parameters and optimizer state (the step's outputs reuse them: donated)
    total = held + memory.temp_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
    card = card_figure(args.target, "device_memory_size")
    launches, loops, _ = summary(entry_launches(text))
    print(f"compiled in {seconds:.0f} s on this machine (no autotuning); memory: {held / 2**30:.1f} GiB of "
          f"parameters and optimizer state + {memory.temp_size_in_bytes / 2**30:.1f} GiB of temporaries = "
          f"{total / 2**30:.1f} GiB, {100 * total / card:.0f}% of the card's {card / 2**30:.0f} GiB; "
          f"{launches} launches in the step's entry ({loops} of them loops run from the host)")
    if args.roofline:
        bandwidth = card_bandwidth(args)
        floor, ranked = roofline(kernel_costs(text), bandwidth, args.peak_tflops * 1e12)
        model_flops = training_flops_per_token(model_config, vocab_size) * Batch.size * Pos.size
        print(f"roofline (an estimate, not a time): {sum(n for _, n, *_ in ranked):,} kernels a step moving "
              f"{sum(b for _, _, b, _, _ in ranked) / 1e12:.2f} TB, {sum(f for *_, f, _ in ranked) / 1e12:.0f} TFLOP in "
              f"matrix products ({model_flops / 1e12:.0f} in the model's count); at {bandwidth / 1e12:.2f} TB/s and "
              f"{args.peak_tflops:.0f} TFLOP/s at best {floor:.2f} s a step, MFU at most "
              f"{100 * model_flops / (floor * args.peak_tflops * 1e12):.1f}%; the slowest operations:")
        for seconds, runs, moved, flops, what in ranked[:args.roofline]:
            print(f"  {seconds:6.3f} s {100 * seconds / floor:5.1f}%  {runs:6,} x  {moved / 1e9:7.1f} GB "
                  f"{flops / 1e12:6.1f} TFLOP  {what}")


def loss(args, device) -> None:
    import types

    import jax
    import jax.numpy as jnp
    from levanter.kernels.pallas.fused_cross_entropy_loss import api, tuned_block_sizes

    from amt import vocab

    positions, width = args.positions, args.width
    block_sizes = None  # the XLA kernel: Levanter passes none (the kernel picks its vocabulary blocks)
    if args.implementation == "batched_xla":
        from levanter.kernels.pallas.fused_cross_entropy_loss import batched_xla

        # what Levanter would pick on the card: the tuned table, else its inference (its autotune, while tracing
        # a train step, takes the first candidate that compiles: this one)
        block_sizes, tuned = tuned_block_sizes.infer_block_sizes_with_tuned_match(
            positions, width, vocab.VOCAB_SIZE, dtype=jnp.float32, x_dtype=jnp.bfloat16, w_dtype=jnp.bfloat16,
            device_kind=device.device_kind)
        # it refuses to trace unless jax's default backend is a GPU; the host here is a CPU
        gpu_view = types.SimpleNamespace(**{name: getattr(jax, name) for name in dir(jax) if not name.startswith("__")})
        gpu_view.default_backend = lambda: "gpu"
        batched_xla.jax = gpu_view
        batched_xla._device_kind = lambda: device.device_kind.lower()
        print(f"block sizes {block_sizes} ({'tuned' if tuned else 'inferred: no tuned entry'} for "
              f"{device.device_kind})")
    kernel = api.IMPLEMENTATIONS[args.implementation]

    def mean_loss(x, labels, w):
        extra = {} if block_sizes is None else {"block_sizes": block_sizes}
        return kernel(x, labels, w, dtype=jnp.float32, **extra)[0].mean()

    inputs = on_device((jax.ShapeDtypeStruct((positions, width), jnp.bfloat16),
                        jax.ShapeDtypeStruct((positions,), jnp.int32),
                        jax.ShapeDtypeStruct((width, vocab.VOCAB_SIZE), jnp.bfloat16)), device)
    begin = time.monotonic()
    lowered = jax.jit(jax.value_and_grad(mean_loss, argnums=(0, 2))).lower(*inputs)
    traced = time.monotonic()
    text = lowered.compile().as_text()
    compiled = time.monotonic()
    dump(args.dump, f"loss-{args.implementation}", text)
    launches, loops, _ = summary(entry_launches(text))
    print(f"loss of {positions:,} positions x {width} -> {vocab.VOCAB_SIZE:,} classes (bf16, forward and backward) in "
          f"Levanter's {args.implementation!r} kernel, for {device.device_kind} (jax {jax.__version__}): traced in "
          f"{traced - begin:.1f} s, compiled in {compiled - traced:.1f} s on this machine (no autotuning); "
          f"{launches:,} launches ({loops} loops run from the host), {len(text) / 1e6:.1f} MB of optimized HLO")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", type=Path, default=TARGETS / "h100.txtpb")
    parser.add_argument("--dump", type=Path, help="write the optimized HLO here")
    modes = parser.add_subparsers(dest="mode", required=True)
    sampling = modes.add_parser("sample", help="kernel launches of one sampled event")
    sampling.add_argument("--layers", type=int, default=24)
    sampling.add_argument("--width", type=int, default=1024)
    sampling.add_argument("--heads", type=int, default=16)
    sampling.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    sampling.add_argument("--events-per-call", type=int, nargs="+", default=[1, 8],
                          help="the sampler's events a device call (SamplingOptions.events_per_call)")
    sampling.add_argument("--by-name", action="store_true", help="also list an event's launches by what they run")
    sampling.add_argument("--bandwidth", type=float, help="memory bandwidth in TB/s (default: the target's; an "
                                                          "H200: 4.8)")
    sampling.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                          help="the sampler's weights and cache (amt generate --dtype)")
    training = modes.add_parser("train", help="a recipe's train step: compile time and memory")
    training.add_argument("--recipe", default="recipes/amt-small-gpu.yaml")
    training.add_argument("--roofline", type=int, default=0, metavar="N",
                          help="also estimate the step's floor from its kernels' bytes and products, and list the "
                               "N slowest operations")
    training.add_argument("--bandwidth", type=float, help="memory bandwidth in TB/s (default: the target's; an "
                                                          "H200: 4.8)")
    training.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS,
                          help="the card's dense bf16 peak (H100 and H200 SXM: 989)")
    training.add_argument("overrides", nargs="*", help="recipe overrides, after --")
    losses = modes.add_parser("loss", help="the 55,028-way loss alone in one of Levanter's kernels: compile time")
    losses.add_argument("--implementation", choices=("xla", "xla_fast_bwd", "batched_xla"), default="xla")
    losses.add_argument("--positions", type=int, default=32 * 1024,
                        help="a micro-step's (Small's GPU recipe: 32 x 1,024)")
    losses.add_argument("--width", type=int, default=768)
    args = parser.parse_args()
    if args.mode == "sample" and min(args.events_per_call) < 1:
        sys.exit(f"gpu_compile: --events-per-call {args.events_per_call}: positive integers")
    if not args.target.is_file():
        sys.exit(f"gpu_compile: no target description at {args.target}")
    if args.mode == "train" and not Path(args.recipe).is_file():
        sys.exit(f"gpu_compile: no recipe at {args.recipe}")
    # the host side (random weights, shapes) on the CPU: with the CUDA plugin but no card, starting jax's CUDA
    # backend fails, and with it the plugin's compiler (the topology call says 'not implemented for cuda')
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.mode == "sample":  # XLA's thunk sequences of the two programs, read back (set before jax starts)
        args.thunks = Path(tempfile.mkdtemp(prefix="gpu_compile-"))
        os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={args.thunks} "
                                   "--xla_dump_hlo_module_re=^jit__(events|stage)$").strip()
    try:
        device = gpu_device(args.target)
        {"sample": sample, "train": train, "loss": loss}[args.mode](args, device)
    finally:
        if args.mode == "sample":
            shutil.rmtree(args.thunks, ignore_errors=True)


if __name__ == "__main__":
    main()
