"""Training with Levanter's `train_lm` on the caches `amt preprocess` writes, with no network at any point.

The recipes in `recipes/` are Levanter's own `TrainLmConfig`, extended only where the passthrough-token path
breaks offline. Each workaround lives here, named for what it fixes (three for the passthrough path offline, one for the end of runs):

1. `MusicDataConfig.build_or_load_cache`: Levanter opens a cache through a text `BatchTokenizer`, which asks
   the tokenizer to encode "hi there" (the passthrough tokenizer cannot). Our caches hold token ids already,
   so they are opened directly as `TreeCache`s.
2. `evaluation_without_bytes`: Levanter's evaluator decodes every id of the vocabulary to count bytes for
   bits-per-byte, which the passthrough tokenizer cannot do and which means nothing for music; evaluation
   runs without a tokenizer (loss and perplexity are still logged; bits per *second* are in `amt eval`).
3. `MusicGpt2Config.hf_checkpoint_converter`: Levanter's GPT-2 converter loads the `gpt2` config and
   tokenizer from the Hugging Face hub; ours takes its reference config from `amt/hf_reference/config.json`
   (a GPT-2 config with our vocabulary and special ids, shipped with the package) and our tokenizer.
4. `saving_the_last_step`: the checkpoint Levanter means to force after the last step is never written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import numpy as np

from amt import vocab
from amt.preprocess import CACHE_EXEMPLAR, verify_cache  # the caches' row layout, defined with the job that writes them

logger = logging.getLogger("amt.train")

# Levanter's config classes are imported at module level: recipes are these classes written down.
from levanter.compat.hf_checkpoints import HFCheckpointConverter  # noqa: E402
from levanter.data.passthrough_tokenizer import PassthroughTokenizer  # noqa: E402
from levanter.data.text import UrlSingleDatasetLMConfig  # noqa: E402
from levanter.main.train_lm import TrainLmConfig  # noqa: E402
from levanter.models.gpt2 import Gpt2Config  # noqa: E402
from levanter.models.lm_model import LmConfig  # noqa: E402
from levanter.store.cache import TreeCache  # noqa: E402

HF_REFERENCE = os.path.join(os.path.dirname(__file__), "hf_reference")  # a local GPT-2 config: no hub look-up
# special ids written into exported Hugging Face configs
HF_SPECIAL_IDS = {"bos_token_id": vocab.AUTOREGRESS, "eos_token_id": vocab.SEPARATOR, "pad_token_id": None}


class MusicTokenizer(PassthroughTokenizer):
    """Token ids as space-separated integers (Levanter's passthrough), for the 55,028-id vocabulary."""

    def __init__(self, vocab_size: int = vocab.VOCAB_SIZE, **kwargs):
        super().__init__(vocab_size, **kwargs)
        self.name_or_path = "amt-arrival-time"


@LmConfig.register_subclass("amt_gpt2")
@dataclass(frozen=True)
class MusicGpt2Config(Gpt2Config):
    """Levanter's GPT-2 (the model the paper trained), with an offline Hugging Face converter."""

    def hf_checkpoint_converter(self, ref_checkpoint: Optional[str] = None) -> HFCheckpointConverter:
        from transformers import GPT2Config as HfGpt2Config

        return HFCheckpointConverter(
            type(self), reference_checkpoint=ref_checkpoint or HF_REFERENCE, HfConfigClass=HfGpt2Config,
            tokenizer=MusicTokenizer(), ignore_prefix="transformer", config_overrides=dict(HF_SPECIAL_IDS),
        )

    @classmethod
    def from_hf_config(cls, hf_config) -> "MusicGpt2Config":
        # Levanter's returns a plain Gpt2Config and drops the residual dropout
        base = Gpt2Config.from_hf_config(hf_config)
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        return cls(**{**fields, "resid_pdrop": hf_config.resid_pdrop})


@dataclass(frozen=True)
class MusicDataConfig(UrlSingleDatasetLMConfig):
    """Levanter's single-dataset config, reading the caches of `amt preprocess` (`cache_dir/{train,validation}`)."""

    tokenizer: str = "passthrough"
    vocab_size: Optional[int] = vocab.VOCAB_SIZE
    enforce_eos: bool = False
    shuffle: bool | int = True  # a full-dataset permutation: the paper warns a local shuffle is not enough
    permutation_type: Optional[str] = "feistel"

    @cached_property
    def the_tokenizer(self) -> MusicTokenizer:
        return MusicTokenizer(self.vocab_size)

    def build_or_load_cache(self, split: str, monitors=True) -> Optional[TreeCache]:
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
            return None
        verify_cache(path, missing_ok=True, max_rows=1 << 20)  # a damaged cache is refused before any step
        return TreeCache.load(path, CACHE_EXEMPLAR)


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
def saving_the_last_step():
    """Workaround 4: Levanter forces a checkpoint after the last step, but the checkpointer's hook drops the
    `force` flag, and train_lm returns without waiting for asynchronous saves; so a run's last steps were never
    saved unless they fell on a checkpoint interval. Keep the checkpointers train_lm creates, save the final
    step with them, and wait for the writes before returning."""
    from levanter.checkpoint import CheckpointerConfig
    from levanter.trainer import Trainer

    original_create, original_train = CheckpointerConfig.create, Trainer.train
    created = []

    def create_and_keep(self, *args, **kwargs):
        checkpointer = original_create(self, *args, **kwargs)
        created.append(checkpointer)
        return checkpointer

    def train_and_save_the_last_step(self, state, train_loader):
        info = original_train(self, state, train_loader)
        for checkpointer in created:
            if checkpointer._last_save_step != info.step:
                checkpointer.on_step(info, force=True)
            checkpointer.wait_until_finished()
        return info

    CheckpointerConfig.create, Trainer.train = create_and_keep, train_and_save_the_last_step
    try:
        yield
    finally:
        CheckpointerConfig.create, Trainer.train = original_create, original_train


def parameter_count(model_config: MusicGpt2Config) -> int:
    """Parameters of the model (the paper: Small 128M, Medium 360M, Large 780M), without building it."""
    import equinox as eqx
    import haliax as hax
    import jax

    Vocab = hax.Axis("vocab", vocab.VOCAB_SIZE)
    shapes = eqx.filter_eval_shape(lambda: model_config.build(Vocab, key=jax.random.PRNGKey(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes) if hasattr(x, "shape"))


def describe_run(config: TrainConfig) -> str:
    """The batch and mesh arithmetic of a run, for --dry-run."""
    t = config.trainer
    devices = t.num_devices if hasattr(t, "num_devices") else None
    lines = [
        f"model: {config.model.num_layers} layers, {config.model.hidden_dim} wide, {config.model.num_heads} heads,"
        f" context {config.model.seq_len}: {parameter_count(config.model) / 1e6:.1f}M parameters",
        f"batch: {t.train_batch_size} sequences x {config.model.seq_len} tokens = "
        f"{t.train_batch_size * config.model.seq_len:,} tokens a step; {t.num_train_steps:,} steps = "
        f"{t.train_batch_size * config.model.seq_len * t.num_train_steps / 1e9:.1f}B tokens",
        f"mesh: model axis {t.model_axis_size}, batch axis '{t.batch_axis}', FSDP over {t.fsdp_axis!r}, "
        f"per-device parallelism {t.per_device_parallelism}" + (f", {devices} devices" if devices else ""),
        f"optimizer: {type(config.optimizer).__name__} lr {config.optimizer.learning_rate} "
        f"warmup {config.optimizer.warmup} {config.optimizer.lr_schedule} min_lr_ratio {config.optimizer.min_lr_ratio}",
        f"data: {config.data.cache_dir} (shuffle {config.data.shuffle})",
    ]
    return "\n".join(lines)


def train(config: TrainConfig) -> None:
    """Run Levanter's train_lm with the workarounds above. Resumes from the checkpoint folder if it holds one."""
    from levanter.main import train_lm

    if config.dry_run:
        print(describe_run(config))
        return
    from amt.checkpoints import save_model_config

    save_model_config(config)  # so that a checkpoint path alone can be loaded, sampled, evaluated, exported
    with evaluation_without_bytes(), saving_the_last_step():
        train_lm.main(config)
