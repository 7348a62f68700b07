"""Models in and out: Levanter checkpoints and Hugging Face GPT-2 folders, both ways, offline.

`amt train` writes the run's model config beside its checkpoints (`<base_path>/amt-model.yaml`), so a
checkpoint path alone is enough to load a model (`load_model`), to export it (`export_hf`), to sample from it
or to evaluate it. Hugging Face folders (ours, or the released `stanford-crfm/music-*` GPT-2s with vocabulary
55,028) load through Levanter's converter; transformers must load them with `attn_implementation="eager"`,
since its SDPA path ignores `scale_attn_by_inverse_layer_idx`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
from pathlib import Path

import draccus
import fsspec
import yaml

from amt import vocab
from amt.train import MusicGpt2Config, TrainConfig

logger = logging.getLogger("amt.checkpoints")
MODEL_CONFIG_FILE = "amt-model.yaml"


def save_model_config(config: TrainConfig) -> str:
    """Write the run's model config beside its checkpoints; returns its path."""
    base = config.trainer.checkpointer.base_path
    if config.trainer.checkpointer.append_run_id_to_base_path and config.trainer.id:
        base = os.path.join(base, config.trainer.id)
    path = os.path.join(base, MODEL_CONFIG_FILE)
    fs, plain = fsspec.core.url_to_fs(path)
    fs.makedirs(os.path.dirname(plain), exist_ok=True)
    fields = {f.name: getattr(config.model, f.name) for f in dataclasses.fields(config.model)}
    fields = {k: v.value if isinstance(v, enum.Enum) else v for k, v in fields.items()}
    with fsspec.open(path, "w") as file:
        yaml.safe_dump(fields, file, sort_keys=True)
    return path


def _exists(path: str) -> bool:
    """Local or remote (gs://...) paths alike."""
    fs, plain = fsspec.core.url_to_fs(path)
    return fs.exists(plain)


def is_hf_folder(path: str | os.PathLike) -> bool:
    return _exists(os.path.join(os.fspath(path), "config.json"))


def model_config_for(checkpoint: str | os.PathLike) -> MusicGpt2Config:
    """The model config saved by `amt train` for a checkpoint (in its folder or the one above), local or remote."""
    checkpoint = os.fspath(checkpoint).rstrip("/")
    for folder in (checkpoint, os.path.dirname(checkpoint)):
        path = os.path.join(folder, MODEL_CONFIG_FILE)
        if _exists(path):
            with fsspec.open(path) as file:
                fields = yaml.safe_load(file)
            # written before marin-levanter: the context was `seq_len`, and the loss had a block size
            fields.setdefault("max_seq_len", fields.pop("seq_len", 1024))
            fields.pop("cross_entropy_block_size", None)
            return draccus.decode(MusicGpt2Config, fields)
    raise FileNotFoundError(
        f"{checkpoint}: no {MODEL_CONFIG_FILE} beside this checkpoint (written by `amt train`); "
        "pass the model config explicitly"
    )


@contextlib.contextmanager
def single_device_mesh(device=None):
    """A one-device mesh (Levanter's loaders and converters need one), on `device` (default: the first)."""
    import haliax
    import jax
    from haliax.partitioning import ResourceAxis

    device = device or jax.devices()[0]
    # Auto axes, as Levanter's own meshes (jax >= 0.8 makes Explicit ones by default, whose sharding types
    # then reach Levanter's GPT-2 and fail in its attention)
    mesh = jax.make_mesh((1, 1, 1), (ResourceAxis.REPLICA, ResourceAxis.DATA, ResourceAxis.MODEL), devices=[device],
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with haliax.partitioning.set_mesh(mesh):
        yield mesh


def load_model(checkpoint: str | os.PathLike, model_config: MusicGpt2Config | None = None):
    """(model, model config) from a Levanter checkpoint (a `step-N` folder, or a run folder: its latest)
    or a Hugging Face GPT-2 folder. Parameters in float32, on one device."""
    with single_device_mesh():
        return _load_model(checkpoint, model_config)


def _load_model(checkpoint, model_config):
    import equinox as eqx
    import haliax as hax
    import jax
    import jax.numpy as jnp
    from levanter.checkpoint import load_checkpoint
    from levanter.utils.jax_utils import is_inexact_arrayish

    checkpoint = os.fspath(checkpoint)
    if not os.path.exists(checkpoint) and "://" not in checkpoint:
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if is_hf_folder(checkpoint):
        converter = MusicGpt2Config().hf_checkpoint_converter().replaced(reference_checkpoint=checkpoint)
        config = model_config or converter.config_from_hf_checkpoint(checkpoint)
        model = converter.load_pretrained(config.model_type, ref=checkpoint, config=config, dtype=jnp.float32)
        return model, config
    config = model_config or model_config_for(checkpoint)
    Vocab = hax.Axis("vocab", stored_vocab_size(checkpoint))  # 55,028, or 34,025 for an interarrival model
    shapes = eqx.filter_eval_shape(config.build, Vocab, key=jax.random.PRNGKey(0))
    trainable, static = eqx.partition(shapes, is_inexact_arrayish)
    serialization = logging.getLogger("levanter.tensorstore_serialization")
    level = serialization.level
    serialization.setLevel(logging.ERROR)  # it warns "Unknown leaf type NoneType" for every static (None) field
    try:
        trainable = load_checkpoint(trainable, _latest(checkpoint), subpath="model")
    finally:
        serialization.setLevel(level)
    return eqx.combine(trainable, static), config


def _latest(checkpoint: str) -> str:
    """The checkpoint itself (a `step-N` folder), or the latest complete one under a run folder."""
    from levanter.checkpoint import discover_checkpoint_candidates

    candidates = discover_checkpoint_candidates(checkpoint)
    if not candidates:
        raise FileNotFoundError(f"{checkpoint}: no complete Levanter checkpoint (a step-N folder with metadata.json)")
    return candidates[-1].path


def stored_vocab_size(checkpoint: str | os.PathLike) -> int:
    """The vocabulary a Levanter checkpoint was trained with (the rows of its stored token embedding: 55,028
    arrival-time or 34,025 interarrival), read from the array's zarr metadata; 55,028 if it is not found."""
    import json

    step = _latest(os.fspath(checkpoint))
    array = "model/embeddings/token_embeddings/weight"
    if _exists(f"{step}/manifest.ocdbt"):  # marin-levanter: every array inside one OCDBT key-value store
        import tensorstore as ts
        from levanter.tensorstore_serialization import build_kvstore_spec

        spec = {"driver": "zarr3", "kvstore": {"driver": "ocdbt", "base": build_kvstore_spec(step), "path": array}}
        return int(ts.open(spec, open=True).result().shape[0])
    for name in (".zarray", "zarr.json"):  # Levanter 1.2: a zarr folder per array
        path = f"{step}/{array}/{name}"
        if _exists(path):
            with fsspec.open(path) as file:
                return int(json.load(file)["shape"][0])
    return vocab.VOCAB_SIZE


def logits(model, tokens):
    """Next-token logits (positions, vocab) of one token sequence through a Levanter model, dropout off
    (the full forward pass: the reference for the KV-cached decoder, and what evaluation scores)."""
    import haliax as hax
    import jax.numpy as jnp
    import numpy as np
    from levanter.layers.attention import AttentionMask
    from levanter.utils.tree_utils import inference_mode

    with single_device_mesh():
        ids = hax.named(jnp.asarray(tokens, dtype=jnp.int32), "position")
        return np.asarray(inference_mode(model, True)(ids, attn_mask=AttentionMask.causal(), key=None).array)


def export_hf(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a checkpoint as a Hugging Face GPT-2 folder (config.json with vocabulary 55,028 and our
    special ids, and safetensors weights)."""
    model, config = load_model(checkpoint)
    with single_device_mesh():
        config.hf_checkpoint_converter().save_pretrained(model, os.fspath(out), save_tokenizer=False)
    logger.info("wrote %s", out)
    return Path(out)
