"""Training with Levanter's `train_lm` on the caches `amt preprocess` writes, with no network at any point.

The recipes in `recipes/` are Levanter's own `TrainLmConfig` (marin-levanter), extended only where the
passthrough-token path breaks offline or a run's end misbehaves. Each workaround lives here, named for what it
fixes; each was re-checked against marin-levanter 0.2.20 and 0.2.227 (the maintained Levanter) and is still needed:

1. `MusicDataConfig.build_caches`: Levanter opens a cache of a text-format dataset through its
   `BatchTokenizer`, whose row exemplar comes from encoding "hi there", which the passthrough tokenizer cannot
   parse. Its `prebuilt` format needs no tokenizer but maps each stored row to one example, so it only works
   with `max_seq_len` equal to the row length (1,024) and warns that our ledgers' metadata differ. Our caches
   hold token ids already: they are opened directly as `TreeCache`s and cut into `max_seq_len` windows
   (Levanter's `TokenSeqDataset`), any context length.
2. `evaluation_without_bytes`: Levanter's evaluator counts bytes per token to report bits per byte. Upstream no
   longer crashes on the passthrough tokenizer, but it counts the decimal digits of each token id as its bytes:
   a number about how ids are spelled, not about music. Evaluation runs without a tokenizer (loss and
   perplexity are still logged; bits per *second* are in `amt eval`).
3. `MusicGpt2Config.hf_checkpoint_converter`: Levanter's GPT-2 converter still reads its reference config
   from the `gpt2` repository on the Hugging Face hub (its new `tokenizer` field covers only the tokenizer);
   ours takes its reference config from `amt/hf_reference/config.json` (a GPT-2 config with our vocabulary and
   special ids, shipped with the package) and the passthrough tokenizer. Levanter's config conversion drops the
   residual dropout both ways: ours exports and reads it.
4. `ending_runs_once`: after the last step Levanter runs every hook again, forced (the last loss logged twice,
   the last evaluation run twice), and returns without waiting for the asynchronous checkpoint writes. Only hooks that
   did not fire at the last step run again; the last step is saved (Levanter saved it in that forced pass)
   and the writes are waited for.
5. `one_process_unless_a_cluster`: Levanter decides a run is multi-process when any of JAX's cluster
   environments says it is present, including the opt-in-only `Mpi4pyCluster`, which says so whenever mpi4py
   is importable (JAX itself never auto-detects it). On a machine that merely has mpi4py installed (common on GPU
   images; found on this project's H100 machine) every `amt train` then stopped in `jax.distributed.initialize`
   with "coordinator_address should be defined". Where nothing but opt-in-only environments is detected, the
   recipe names no coordinator, processes or devices and the run is no Iris job (Levanter starts those its own
   way), the run stays one process, as JAX's own detection would. (It reads JAX's private cluster registry,
   `jax._src.clusters`, as Levanter does: re-check it with each jax upgrade.)
6. `xla_loss_on_gpus`: on a GPU, Levanter's fused cross-entropy runs its batched XLA variant first, with block
   sizes from a table that has no entry for our shapes (55,028 classes; on an H100 the inferred 1,024 x 512 x 64
   is the only candidate within the card's shared memory, 128-wide vocabulary blocks already exceed it), and
   that variant unrolls the vocabulary: 860 blocks. For GPT-2 Small's micro-step (32,768 positions x 768)
   the loss alone, forward and backward, compiled for an H100 in 236-249 s on this 2-core machine (27 MB of
   HLO, 1,824 kernels: `python benchmarks/gpu_compile.py loss --implementation batched_xla`), against 2-4 s
   and 13 kernels for Levanter's plain XLA kernel (a scan over 8,192-wide blocks), the one CPU and TPU runs
   use; and Levanter's autotune compiles a copy of it before the train step (while tracing, it takes the first
   candidate that compiles). The first training run on an H100 had not logged 10 steps after 220 s. Runs use the XLA
   kernel on GPUs too, there with the backward Levanter offers as an opt-in (`xla_fast_bwd`, 0.2.227): the
   XLA kernel's backward multiplies float32 copies of the activations and weights by float32 logit gradients
   (TF32 tensor cores on a GPU, at half bf16's rate, and 1 GiB of gradients an 8,192-wide block at Small's
   micro-step, written by a scatter), the opt-in one bf16 gradients on bf16 tensor cores, no scatter (the
   compiled loss, `gpu_compile.py loss --implementation xla_fast_bwd`); the loss itself is bitwise the same,
   and Levanter measured its gradients closer to float32's. `LEVANTER_CE_XLA_FAST_BWD=0` switches it off.
   (Found on 0.2.227; 0.2.20's GPU default, a Pallas kernel, is replaced by the XLA kernel without having
   been measured.)

Dropped with the move to marin-levanter: `trainer.ray` (Levanter no longer starts a Ray cluster) and
`model.cross_entropy_block_size` (the 55,028-way loss is now always Levanter's fused, vocabulary-blocked
kernel; its XLA form everywhere, with workaround 6). A second `amt train` of a finished run returns at once
(`finished_checkpoint`) instead of loading the model to run final hooks again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from amt import vocab
from amt.preprocess import CACHE_EXEMPLAR, verify_cache  # the caches' row layout, defined with the job that writes them

logger = logging.getLogger("amt.train")

# Levanter's config classes are imported at module level: recipes are these classes written down.
from levanter.compat.hf_checkpoints import HFCheckpointConverter  # noqa: E402
from levanter.data.passthrough_tokenizer import PassthroughTokenizer  # noqa: E402
from levanter.data.text.datasets import BlockShuffleConfig, DatasetComponent, LmDataConfig  # noqa: E402
from levanter.main.train_lm import TrainLmConfig  # noqa: E402
from levanter.models.gpt2 import Gpt2Config  # noqa: E402
from levanter.models.lm_model import LmConfig  # noqa: E402
from levanter.store.cache import TreeCache  # noqa: E402

HF_REFERENCE = os.path.join(os.path.dirname(__file__), "hf_reference")  # a local GPT-2 config: no hub look-up
# special ids written into exported Hugging Face configs
HF_SPECIAL_IDS = {"bos_token_id": vocab.AUTOREGRESS, "eos_token_id": vocab.SEPARATOR, "pad_token_id": None}


@LmConfig.register_subclass("amt_gpt2")
@dataclass(frozen=True)
class MusicGpt2Config(Gpt2Config):
    """Levanter's GPT-2 (the model the paper trained), with an offline Hugging Face converter.

    `fused_attention`: `amt train` computes causal attention with `jax.nn.dot_product_attention`, cuDNN's fused
    (flash) attention on an NVIDIA GPU in bf16, XLA's form elsewhere (see `fused_attention`). Off by default.

    `grad_in_forward_token_block_size`: `amt train` computes the training loss with Levanter's kernel that takes
    its gradients in the forward pass, this many positions at a time (see `loss_gradients_in_forward`). Off
    (None) by default; needs a Levanter that has the kernel (marin-levanter 0.2.227, Python 3.12)."""

    fused_attention: bool = False
    grad_in_forward_token_block_size: Optional[int] = None

    def hf_checkpoint_converter(self, ref_checkpoint: Optional[str] = None) -> HFCheckpointConverter:
        """Workaround 3 (see the module docstring)."""
        from transformers import GPT2Config as HfGpt2Config

        return HFCheckpointConverter(
            type(self), reference_checkpoint=ref_checkpoint or HF_REFERENCE, HfConfigClass=HfGpt2Config,
            tokenizer=PassthroughTokenizer(vocab.VOCAB_SIZE), ignore_prefix="transformer",
            config_overrides=dict(HF_SPECIAL_IDS),
        )

    def to_hf_config(self, vocab_size, config_overrides=None):
        # Levanter's leaves out the residual dropout: Hugging Face's default (0.1) was exported, whatever the model's
        return super().to_hf_config(vocab_size, {"resid_pdrop": self.resid_pdrop, **(config_overrides or {})})

    @classmethod
    def from_hf_config(cls, hf_config) -> "MusicGpt2Config":
        # Levanter's returns a plain Gpt2Config and drops the residual dropout
        base = Gpt2Config.from_hf_config(hf_config)
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        return cls(**{**fields, "resid_pdrop": hf_config.resid_pdrop})


DATASET = "music"  # the one dataset component: Levanter logs its validation loss as eval/loss and eval/music/loss


@dataclass(frozen=True)
class MusicDataConfig(LmDataConfig):
    """Levanter's data config with one dataset, the caches of `amt preprocess` (`cache_dir/{train,validation}`)."""

    tokenizer: str = "passthrough"
    vocab_size: Optional[int] = vocab.VOCAB_SIZE
    enforce_eos: bool = False
    shuffle: bool | BlockShuffleConfig = True  # a full-dataset permutation: the paper warns a local shuffle is not enough
    permutation_type: str = "feistel"

    def __post_init__(self):
        if not self.components:
            object.__setattr__(self, "components", {DATASET: DatasetComponent()})
        super().__post_init__()

    def build_caches(self, split: str) -> dict[str, TreeCache]:
        """Workaround 1: open our caches directly (no text tokenizer, no source URLs)."""
        if self.cache_dir is None:
            raise ValueError("data.cache_dir: no cache folder given (the --out of `amt preprocess`)")
        path = os.path.join(self.cache_dir, split)
        if not os.path.exists(os.path.join(path, "shard_ledger.json")) and "://" not in path:
            if split == "train":
                raise FileNotFoundError(
                    f"data.cache_dir: no finished training cache at {path}; run `amt preprocess SRC --out {self.cache_dir}`"
                )
            logger.warning("no %s cache at %s: skipping it", split, path)
            return {}
        verify_cache(path, missing_ok=True, max_rows=1 << 20)  # a damaged cache is refused before any step
        return {DATASET: TreeCache.load(path, CACHE_EXEMPLAR)}


@dataclass
class TrainConfig(TrainLmConfig):
    """`amt train`: Levanter's TrainLmConfig with our data and model classes."""

    data: MusicDataConfig = field(default_factory=MusicDataConfig)
    model: MusicGpt2Config = field(default_factory=MusicGpt2Config)
    dry_run: bool = False
    """Print the model's parameter count and the batch/mesh arithmetic, then stop."""


@contextlib.contextmanager
def evaluation_without_bytes():
    """Workaround 2: run Levanter's evaluator without a tokenizer (no bits-per-byte for music tokens)."""
    import levanter.eval

    original = levanter.eval.cb_tagged_lm_evaluate

    @functools.wraps(original)
    def without_tokenizer(EvalBatch, tagged_eval_sets, tokenizer=None, *args, **kwargs):
        return original(EvalBatch, tagged_eval_sets, None, *args, **kwargs)

    levanter.eval.cb_tagged_lm_evaluate = without_tokenizer
    try:
        yield
    finally:
        levanter.eval.cb_tagged_lm_evaluate = original


@contextlib.contextmanager
def xla_loss_on_gpus(backend: Optional[str] = None):
    """Workaround 6: Levanter's fused cross-entropy in its XLA form on GPUs too (its default elsewhere), not the
    batched variant whose 860 unrolled vocabulary blocks take minutes to compile; on a GPU with its bf16 backward
    where Levanter has it (see the module docstring). `backend`: the one to choose for (default: jax's)."""
    import jax
    from levanter.kernels.pallas.fused_cross_entropy_loss import api

    def implementations() -> tuple[str, ...]:
        if (backend or jax.default_backend()) == "gpu" and "xla_fast_bwd" in api.IMPLEMENTATIONS:
            return ("xla_fast_bwd",)
        return ("xla",)

    original = api._default_implementations
    api._default_implementations = implementations
    try:
        yield
    finally:
        api._default_implementations = original


def _plain_causal(mask) -> bool:
    """Whether `mask` is Levanter's causal mask and nothing more (what a fused kernel's is_causal means)."""
    from levanter.layers.attention import AttentionMask

    extras = ("causal_offset", "explicit_mask", "segment_ids", "sliding_window", "bidirectional_window")
    return (isinstance(mask, AttentionMask) and mask.is_causal
            and all(getattr(mask, name, None) is None for name in extras))


def fused_causal_attention(QPos, KPos, Key, query, key, value, *, scaling_factor=None, implementation=None):
    """Causal attention of haliax arrays through `jax.nn.dot_product_attention`, in its (batch, positions, heads,
    head size) layout: the last axis but the positions and `Key` is its heads (GPT-2's `heads`), the axes before it
    folded into its batch. That is the order GPT-2's projection computes (Levanter's rearrangement to heads before
    positions and ours back cancel in XLA's layouts): Small's step compiled for an H100 moves no transposed copy of
    q, k, v or their gradients, where folding the heads into the batch, as before, transposed every layer's
    gradients (its floor 1.10 -> 1.07 s)."""
    import haliax as hax
    import jax

    QPos, KPos, Key = query.resolve_axis(QPos), key.resolve_axis(KPos), query.resolve_axis(Key)
    others = [axis for axis in query.axes if axis.name not in (QPos.name, Key.name)]
    batch, heads = others[:-1], others[-1:]  # (no other axis: one head, a batch of one)

    def laid_out(array, Pos):
        return array.rearrange((*batch, Pos, *heads, Key)).array.reshape(
            -1, Pos.size, heads[0].size if heads else 1, Key.size)

    scale = scaling_factor if scaling_factor is not None else Key.size ** -0.5
    out = jax.nn.dot_product_attention(laid_out(query, QPos), laid_out(key, KPos), laid_out(value, KPos),
                                       is_causal=True, scale=scale, implementation=implementation)
    axes = (*batch, QPos, *heads, Key)
    return hax.named(out.reshape(tuple(axis.size for axis in axes)), axes)


@contextlib.contextmanager
def fused_attention(enabled: bool = True, backend: Optional[str] = None):
    """`model.fused_attention`: GPT-2's attention through `jax.nn.dot_product_attention` for the run. On a GPU in
    bf16 or fp16 that is cuDNN's fused flash attention; Levanter's GPU default is Transformer Engine's, and
    without it installed its own JAX "flash" attention, whose block is the whole 1,024-position context (one
    block: the 384 x 1,024 x 1,024 scores of Small's micro-step written out and read back, each layer, forward,
    recomputation and backward): on one H100, Small's recipe made 1.61x the tokens/s with it (16.4% -> 26.3% MFU),
    so the GPU recipes set it. Elsewhere XLA's form, the same
    arithmetic, but the whole score matrix written out: slower than a TPU's Splash attention, so it is for GPUs.
    Only plain causal masks without bias, dropout, precision or soft cap take it; anything else goes to Levanter's
    attention as before. Batch and heads stay two axes, heads after positions (only the batch is sharded in our recipes;
    XLA's form tested on a simulated 8-device mesh, cuDNN's on several GPUs not run). `backend`: the one to choose
    for (default: jax's)."""
    if not enabled:
        yield
        return
    import jax
    import jax.numpy as jnp
    from levanter.models import gpt2

    backend = backend or jax.default_backend()
    original = gpt2.dot_product_attention

    def attention(QPos, KPos, Key, query, key, value, mask=None, **options):
        dropout = options.get("dropout", 0.0) or 0.0
        plain = (_plain_causal(mask) and all(options.get(name) is None for name in
                                             ("bias", "attention_dtype", "precision", "logits_soft_cap", "attn_sink"))
                 and (dropout == 0.0 or options.get("inference")))
        if not plain:
            return original(QPos, KPos, Key, query, key, value, mask=mask, **options)
        on_gpu = backend == "gpu" and query.dtype in (jnp.bfloat16, jnp.float16)
        return fused_causal_attention(QPos, KPos, Key, query, key, value,
                                      scaling_factor=options.get("scaling_factor"),
                                      implementation="cudnn" if on_gpu else None)

    if backend != "gpu":
        logger.warning("model.fused_attention is for GPUs (cuDNN's fused attention); on %s it is XLA's plain "
                       "attention, likely slower than Levanter's", backend)
    gpt2.dot_product_attention = attention
    try:
        yield
    finally:
        gpt2.dot_product_attention = original


def _weighted_sum_kernel():
    """Levanter's linear cross-entropy that computes its gradients in the forward pass, or None where the installed
    Levanter lacks it (0.2.20, the newest on Python 3.11)."""
    try:
        from levanter.kernels.pallas.fused_cross_entropy_loss import linear_softmax_cross_entropy_weighted_sum
    except ImportError:
        return None
    return linear_softmax_cross_entropy_weighted_sum


def grad_in_forward_problem(model_config) -> Optional[str]:
    """Why `model.grad_in_forward_token_block_size` cannot run here (one line), or None."""
    size = getattr(model_config, "grad_in_forward_token_block_size", None)
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return f"model.grad_in_forward_token_block_size must be a positive number of positions, not {size!r}"
    if _weighted_sum_kernel() is None:
        import importlib.metadata

        return (f"model.grad_in_forward_token_block_size needs Levanter's grad-in-forward loss kernel, which "
                f"marin-levanter {importlib.metadata.version('marin-levanter')} lacks (0.2.227 has it: Python 3.12)")
    return None


@contextlib.contextmanager
def loss_gradients_in_forward(token_block_size: Optional[int]):
    """`model.grad_in_forward_token_block_size`: the training loss (a weighted mean over every position, as
    `train_lm` asks for it) through Levanter's `linear_softmax_cross_entropy_weighted_sum`, which finishes both
    gradients while each block of `token_block_size` positions' logits is live (Liger-Kernel's fused linear
    cross-entropy): 3 products of the 55,028-way head a block instead of the 4 of its streaming kernel (the
    logits computed again in the backward), and one pass over float32 logits fewer. Small's recipe compiled for an
    H100 (`gpu_compile.py train --roofline`) at 4,096 positions: 504 TFLOP of products a step instead of 556,
    2.60 TB moved instead of 2.85, the floor 1.07 -> 0.98 s (MFU at most 40.7% -> 44.7%). The loss is the same
    arithmetic (float32 logits; gradients in the compute dtype, as workaround 6's bf16 backward). Every other call
    of the loss (per-position losses for evaluation, a soft cap, a sharded position axis) stays Levanter's. On a
    mesh each shard sums its positions (the head replicated, as Levanter's kernels take it) and the sums and
    weights are added over the mesh axes the positions are on. `None`: nothing changes."""
    if token_block_size is None:
        yield
        return
    kernel = _weighted_sum_kernel()
    if kernel is None:
        raise ValueError(grad_in_forward_problem(MusicGpt2Config(grad_in_forward_token_block_size=token_block_size)))
    import haliax as hax
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec
    from levanter.models import lm_model
    from levanter.models.loss import next_token_loss_weight
    original = lm_model.maybe_fused_next_token_loss

    def loss(Pos, Embed, Vocab, pred_embeddings, pred_lm_head, true_ids, loss_weight=None, reduction=hax.mean,
             reduction_axis=None, logsumexp_weight=None, block_size=None, dtype=jnp.float32, logit_soft_cap=None,
             precision=None):
        Pos, Embed = pred_embeddings.resolve_axis(Pos), pred_embeddings.resolve_axis(Embed)
        Vocab = pred_lm_head.resolve_axis(Vocab)
        mapping = hax.partitioning.current_thread_local_mapping() or {}
        positions_sharded = hax.partitioning.physical_axis_name(Pos, mapping) is not None
        if (reduction not in (hax.mean, hax.sum) or reduction_axis is not None or logit_soft_cap is not None
                or positions_sharded):
            return original(Pos, Embed, Vocab, pred_embeddings, pred_lm_head, true_ids, loss_weight=loss_weight,
                            reduction=reduction, reduction_axis=reduction_axis, logsumexp_weight=logsumexp_weight,
                            block_size=block_size, dtype=dtype, logit_soft_cap=logit_soft_cap, precision=precision)
        # the targets and weights as Levanter's loss makes them: the next token, the last position weighted 0
        target = hax.roll(true_ids, -1, Pos)
        if loss_weight is not None:
            dtype = loss_weight.dtype
        weight = next_token_loss_weight(Pos, loss_weight)
        rows = tuple(axis for axis in pred_embeddings.axes if axis.name != Embed.name)
        x = pred_embeddings.rearrange((*rows, Embed)).array
        labels = target.rearrange(rows).array.astype(jnp.int32)
        weights = hax.broadcast_to(weight, rows).rearrange(rows).array
        head = pred_lm_head.rearrange((Embed, Vocab)).array

        # the mesh axes the rows are on (none without a mesh): each shard sums its own, the sums are added over them
        mesh = hax.partitioning._get_mesh()  # (as Levanter's own loss finds it)
        specs = [hax.partitioning.physical_axis_name(axis, mapping) for axis in rows]
        mesh_axes = () if mesh is None or getattr(mesh, "empty", False) else tuple(
            name for spec in specs if spec is not None for name in ((spec,) if isinstance(spec, str) else spec))

        def on_shard(x, labels, weights, head):
            flat = weights.reshape(-1)
            block = min(token_block_size, flat.shape[0])  # (a block past the positions would be padding only)
            total = kernel(x.reshape(-1, x.shape[-1]), labels.reshape(-1), head, flat,
                           logsumexp_weight=logsumexp_weight, token_block_size=block, dtype=dtype,
                           precision=precision)
            count = jnp.sum(flat.astype(jnp.float32))
            if mesh_axes:
                total, count = jax.lax.psum((total, count), mesh_axes)
            return total if reduction is hax.sum else jnp.where(count != 0, total / count, jnp.zeros_like(total))

        if not mesh_axes:
            return hax.named(on_shard(x, labels, weights, head), ())
        rows_spec = PartitionSpec(*specs)
        sharded = jax.shard_map(on_shard, mesh=mesh, in_specs=(PartitionSpec(*specs, None), rows_spec, rows_spec,
                                                               PartitionSpec(None, None)),
                                out_specs=PartitionSpec(), check_vma=False)
        return hax.named(sharded(x, labels, weights, head), ())

    lm_model.maybe_fused_next_token_loss = loss
    try:
        yield
    finally:
        lm_model.maybe_fused_next_token_loss = original


class _OncePerStep:
    """A Levanter hook's callback that a forced call does not run again at a step it already ran at."""

    def __init__(self, callback):
        self.callback, self.step = callback, None

    def on_step(self, info, force=False):
        if force and self.step == info.step:
            return None
        self.step = info.step
        return self.callback.on_step(info, force=force)

    def __getattr__(self, name):  # anything else Levanter asks of the callback (e.g. on_event)
        return getattr(self.callback, name)


@contextlib.contextmanager
def ending_runs_once():
    """Workaround 4: at the end of a run Levanter runs every hook again, forced, at the last step; so the last
    step's loss was logged twice and its evaluation run twice when it fell on an evaluation interval, and
    train_lm returns without waiting for the asynchronous checkpoint writes. Here the forced pass runs only the
    hooks that did not fire at that step; the checkpointers train_lm creates are kept, save the last step
    (unless already saved) and are waited for before returning."""
    from levanter.checkpoint import CheckpointerConfig
    from levanter.trainer import Trainer, TrainerHooks

    original_create, original_train, original_run = CheckpointerConfig.create, Trainer.train, TrainerHooks.run_hooks
    created = []

    def create_and_keep(self, *args, **kwargs):
        checkpointer = original_create(self, *args, **kwargs)
        created.append(checkpointer)
        return checkpointer

    def run_hooks_once(self, info, force=False):
        for hook in self.hooks:
            if not isinstance(hook.fn, _OncePerStep):
                hook.fn = _OncePerStep(hook.fn)
        return original_run(self, info, force=force)

    def train_and_save_the_last_step(self, state, train_loader):
        info = original_train(self, state, train_loader)
        for checkpointer in created:
            if checkpointer._last_save_step != info.step:
                checkpointer.on_step(tree=info.state.saveable_state, step=info.step, force=True)
            checkpointer.wait_until_finished()
        return info

    CheckpointerConfig.create, Trainer.train, TrainerHooks.run_hooks = (
        create_and_keep, train_and_save_the_last_step, run_hooks_once)
    try:
        yield
    finally:
        CheckpointerConfig.create, Trainer.train, TrainerHooks.run_hooks = original_create, original_train, original_run


class _StepLines(logging.Handler):
    """One console line per training step (and per evaluation) from Levanter's json_logger records."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps, self.begin = steps, time.perf_counter()
        self.printed: set[tuple[str, int]] = set()  # Levanter logs the last step's metrics twice

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = json.loads(record.getMessage())
        except ValueError:
            return
        metrics = entry.get("metrics", {}) if entry.get("event") == "log" else {}
        elapsed = time.perf_counter() - self.begin
        step = entry.get("step", -1)
        if "train/loss" in metrics and ("train", step) not in self.printed:
            self.printed.add(("train", step))
            print(f"  step {entry['step'] + 1:>4}/{self.steps}  loss {metrics['train/loss']:.3f}  ({elapsed:.0f} s)",
                  flush=True)
        if "eval/loss" in metrics and ("eval", step) not in self.printed:
            self.printed.add(("eval", step))
            print(f"  validation loss {metrics['eval/loss']:.3f}", flush=True)


def _console_filter(record: logging.LogRecord) -> bool:
    """The console keeps warnings and our own messages (steps and evaluations print as compact lines);
    the log file keeps everything."""
    if record.name == "levanter.checkpoint" and record.levelno == logging.WARNING:
        return False  # "No checkpoints found" on a fresh start (the demo says itself when it resumes)
    if record.name == "levanter.tensorstore_serialization" and record.getMessage().startswith("Unknown leaf type"):
        return False  # once per static (None) field of the model when resuming: harmless
    if record.name == "fray.device_flops" or record.name == "levanter.callbacks.profiler":
        return False  # "Unknown device type: cpu" (no peak FLOPs for MFU on a CPU); the profiler's step window
    return record.levelno >= logging.WARNING or record.name.startswith("amt")


@contextlib.contextmanager
def compact_console(steps: int, verbose: bool = False):
    """The console of `amt train` and `amt demo`: one line per logged step and per evaluation. Levanter replaces
    the logging handlers when training starts and prints every metric as a JSON line: its console handler is
    filtered once it exists (unless `verbose`; the log file keeps everything), and it is left quiet afterwards."""
    import levanter.utils.logging as levanter_logging

    original = levanter_logging.init_logging
    progress = _StepLines(steps)

    def init_logging(log_dir, run_id, *args, **kwargs):
        # Levanter's trainer passes "<id>.log" and init_logging adds ".log" again: <id>.log, not <id>.log.log
        original(log_dir, run_id.removesuffix(".log"), *args, **kwargs)
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler and not verbose:
                handler.addFilter(_console_filter)

    root_level = logging.getLogger().level
    levanter_logging.init_logging = init_logging
    logging.getLogger("levanter.json_logger").addHandler(progress)
    try:
        yield
    finally:
        levanter_logging.init_logging = original
        logging.getLogger("levanter.json_logger").removeHandler(progress)
        if not verbose:  # Levanter's init_logging set these to INFO: quiet again for what follows (the demo's stages)
            logging.getLogger().setLevel(root_level)
            for name in ("levanter", "tqdm_loggable"):
                logging.getLogger(name).setLevel(logging.NOTSET)


def parameter_count(model_config: MusicGpt2Config, vocab_size: int = vocab.VOCAB_SIZE) -> int:
    """Parameters of the model (the paper: Small 128M, Medium 360M, Large 780M), without building it; `vocab_size`
    is the run's (`data.vocab_size`: 34,025 for an interarrival model, whose embedding is 38% smaller)."""
    import equinox as eqx
    import haliax as hax
    import jax

    Vocab = hax.Axis("vocab", vocab_size)
    shapes = eqx.filter_eval_shape(lambda: model_config.build(Vocab, key=jax.random.PRNGKey(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes) if hasattr(x, "shape"))


def describe_run(config: TrainConfig) -> str:
    """The parameter count and the batch and mesh arithmetic of a run, for --dry_run (nothing is loaded)."""
    import jax

    t, m, o = config.trainer, config.model, config.optimizer
    batch, steps, context = t.train_batch_size, t.num_train_steps, m.max_seq_len
    fixed = [size for size in {"data": -1, "replica": 1, "model": 1, **t.mesh.axes}.values()]
    devices = int(np.prod(fixed)) if -1 not in fixed else jax.device_count()  # a recipe may name its devices
    axes, _ = t.mesh.axis_shapes(devices, 1)
    data = axes.get("data", 1) * axes.get("replica", 1)
    per_device = t.per_device_parallelism if t.per_device_parallelism > 0 else batch // data
    micro = data * per_device
    accumulation = batch // micro if micro and batch % micro == 0 else None
    vocab_size = config.data.vocab_size or vocab.VOCAB_SIZE
    parameters = parameter_count(m, vocab_size)
    tokens = batch * context
    lines = [
        f"model: {m.num_layers} layers, {m.hidden_dim} wide, {m.num_heads} heads, context {context}: "
        f"{parameters / 1e6:.1f}M parameters"
        + ("; attention fused (jax.nn.dot_product_attention: cuDNN's on a GPU)"
           if getattr(m, "fused_attention", False) else "")
        + (f"; the loss's gradients in its forward, {m.grad_in_forward_token_block_size:,} positions a block"
           if getattr(m, "grad_in_forward_token_block_size", None) else ""),
        f"batch: {batch} sequences x {context} tokens = {tokens:,} tokens a step; {steps:,} steps = "
        f"{_si(tokens * steps)} tokens; about {_si(training_flops_per_token(m, vocab_size) * tokens, 'kMGTP')}FLOP a step "
        f"(6N + attention)",
        f"devices: {devices}" + (" (the recipe's mesh)" if -1 not in fixed else
                                 f" (all of this machine's: {jax.devices()[0].device_kind})")
        + f"; mesh {dict(axes)}: {data} data-parallel "
        f"x {per_device} sequences a device = {micro} a micro-step, "
        + (f"{accumulation} micro-step(s) of gradient accumulation a step" if accumulation
           else f"which does not divide the batch of {batch} (set trainer.per_device_parallelism)"),
        f"sharding: batch over {t.mesh.resolved_compute_mapping.get(t.batch_axis_name)}, parameters "
        f"{dict(t.mesh.resolved_param_mapping)}; compute {t.mp.compute_dtype.dtype}, parameters {t.mp.param_dtype.dtype}",
        f"optimizer: {type(o).__name__} lr {o.learning_rate} warmup {o.warmup} {o.lr_schedule} "
        f"min_lr_ratio {o.min_lr_ratio}",
        f"data: {config.data.cache_dir} (shuffle {config.data.shuffle})",
    ]
    return "\n".join(lines)


def _si(value: float, prefixes: str = "kMBT") -> str:
    """A count with a prefix: 3.1B, 2.46M, 41k tokens (the default) or, with "kMGTP", 1.23P, 64.5T FLOP."""
    for power in range(len(prefixes), 0, -1):
        if value >= 1000.0 ** power:
            return f"{value / 1000.0 ** power:.3g}{prefixes[power - 1]}"
    return f"{value:.3g}"


def training_flops_per_token(model_config: MusicGpt2Config, vocab_size: int = vocab.VOCAB_SIZE) -> float:
    """Training FLOPs a token: 6 x parameters (forward and backward of every weight) + the attention scores,
    6 x layers x context x width (the usual estimate, as in the PaLM paper's MFU)."""
    n = parameter_count(model_config, vocab_size)
    return 6 * n + 6 * model_config.num_layers * model_config.max_seq_len * model_config.hidden_dim


def finished_checkpoint(config: TrainConfig) -> Optional[str]:
    """The run's checkpoint that already holds its last step, if there is one (a rerun of a finished run).
    Levanter names a checkpoint for the 0-based index of its last step: a 100-step run ends in `step-99`."""
    from levanter.checkpoint import discover_checkpoint_candidates

    t = config.trainer
    if t.load_checkpoint is False or (t.id is None and t.checkpointer.append_run_id_to_base_path):
        return None
    candidates = discover_checkpoint_candidates(*t.checkpoint_search_paths(t.id or ""))
    if candidates and candidates[-1].step + 1 >= t.num_train_steps:
        return candidates[-1].path
    return None


def platforms_problem(platforms: str) -> Optional[str]:
    """The one-line error for a JAX_PLATFORMS that names platforms but not the CPU (e.g. `cuda`): Levanter builds a
    dataset's examples on the CPU device (`jax.local_devices(backend="cpu")` in its CausalLmDataset), and Haliax
    gathers exported weights there, so such a run fails before its first step ("Unknown backend cpu"; the H100
    visit's tests). Read as jax reads it: split at commas, nothing stripped. None where it is fine."""
    if platforms and "cpu" not in platforms.split(","):
        return (f"JAX_PLATFORMS={platforms} leaves out the CPU, which Levanter uses beside the accelerator (a "
                f"dataset's examples, exported weights): set JAX_PLATFORMS={platforms},cpu (the accelerator stays "
                f"the default) or leave it unset")
    return None


def warmup_warning(config: TrainConfig) -> Optional[str]:
    """Levanter clips a warmup longer than the run to the run, and reads a warmup of at most 1 as a fraction of the
    run, so 1 (or 1.0) is all of it: where the warmup is the whole run (the learning rate then only rises), say so."""
    warmup, steps = config.optimizer.warmup, config.trainer.num_train_steps
    if warmup == 1:
        given = "1, which Levanter reads as a fraction: all of the run"
    elif warmup > 1 and int(warmup) >= steps:
        given = f"{int(warmup)} steps"
    else:
        return None
    return (f"optimizer.warmup ({given}) is not shorter than trainer.num_train_steps ({steps}): "
            "the learning rate warms up over the whole run and never decays (set a lower "
            "--optimizer.warmup, e.g. 0.1 for a tenth of the run)")


def one_process_unless_a_cluster(config: TrainConfig) -> TrainConfig:
    """Workaround 5: keep a run one process where only opt-in-only cluster environments (mpi4py installed) are
    detected, the recipe names no coordinator, process count, process id or devices, and no Iris job runs it."""
    from iris.cluster.client.job_info import get_job_info  # what Levanter asks first (levanter.distributed)
    from jax._src import clusters  # where Levanter's own detection looks (levanter.distributed)

    distributed = config.trainer.distributed
    named = (distributed.coordinator_address, distributed.num_processes, distributed.process_id,
             distributed.local_device_ids)
    if not distributed.initialize_jax_distributed or any(value is not None for value in named) or get_job_info():
        return config
    present = [env for env in clusters.ClusterEnv._cluster_types if env.is_env_present()]
    if not present or any(not env.opt_in_only_method for env in present):
        return config  # no cluster (Levanter does not initialize) or a real one (Slurm, TPU, ...): Levanter's way
    logger.info("one process: only opt-in cluster environments are present (%s); jax.distributed is not "
                "initialized", ", ".join(env.__name__ for env in present))
    return dataclasses.replace(config, trainer=dataclasses.replace(
        config.trainer, distributed=dataclasses.replace(distributed, initialize_jax_distributed=False)))


def train(config: TrainConfig) -> None:
    """Run Levanter's train_lm with the workarounds above. Resumes from the checkpoint folder if it holds one;
    a run whose last step is already saved does nothing and says so."""
    from levanter.main import train_lm

    if (problem := grad_in_forward_problem(config.model)) is not None:
        raise ValueError(problem)
    if config.dry_run:
        print(describe_run(config))
        return
    done = finished_checkpoint(config)
    if done is not None:
        print(f"{done} already holds the last of the run's {config.trainer.num_train_steps} steps: nothing to "
              "train (raise --trainer.num_train_steps to train further)")
        return
    if (message := warmup_warning(config)) is not None:
        logger.warning(message)
    from amt.checkpoints import save_model_config

    save_model_config(config)  # so that a checkpoint path alone can be loaded, sampled, evaluated, exported
    with evaluation_without_bytes(), ending_runs_once(), xla_loss_on_gpus(), \
            fused_attention(getattr(config.model, "fused_attention", False)), \
            loss_gradients_in_forward(getattr(config.model, "grad_in_forward_token_block_size", None)):
        train_lm.main(one_process_unless_a_cluster(config))
