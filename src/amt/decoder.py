"""Levanter's GPT-2 as plain JAX with a key/value cache: prefill once, then one jitted step per token.

Why a focused cache of our own: Levanter's paged KV cache serves only Llama-family models and its GPT-2 has no
incremental decoding. This module reads the weights out of a trained `Gpt2LMHeadModel` (haliax named arrays)
and runs the same computation (pre-LayerNorm blocks, `gelu_new`, attention scaled by 1/sqrt(head size) and,
with `scale_attn_by_inverse_layer_idx`, by 1/(layer + 1); tied unembedding) on fixed-shape arrays: a cache of
(layers, batch, heads, context, head size) for keys and values, so nothing recompiles per token.
A test holds its logits to the full Levanter forward pass at every position (f32, 1e-4).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class DecoderWeights:
    wte: jax.Array  # (vocab, embed)
    wpe: jax.Array  # (context, embed)
    ln1_w: jax.Array  # (layers, embed) ...
    ln1_b: jax.Array
    attn_w: jax.Array  # (layers, embed, 3, heads, head)
    attn_b: jax.Array  # (layers, 3, heads, head)
    attn_proj_w: jax.Array  # (layers, heads, head, embed)
    attn_proj_b: jax.Array  # (layers, embed)
    ln2_w: jax.Array
    ln2_b: jax.Array
    fc_w: jax.Array  # (layers, embed, mlp)
    fc_b: jax.Array  # (layers, mlp)
    proj_w: jax.Array  # (layers, mlp, embed)
    proj_b: jax.Array  # (layers, embed)
    lnf_w: jax.Array  # (embed,)
    lnf_b: jax.Array
    eps: float = 1e-5
    scale_by_layer: bool = True

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(layers, heads, head size, context)"""
        return self.attn_w.shape[0], self.attn_w.shape[3], self.attn_w.shape[4], self.wpe.shape[0]


# static fields: not traced
jax.tree_util.register_dataclass(
    DecoderWeights,
    data_fields=[f for f in DecoderWeights.__dataclass_fields__ if f not in ("eps", "scale_by_layer")],
    meta_fields=["eps", "scale_by_layer"],
)


def decoder_weights(model, dtype=jnp.float32) -> DecoderWeights:
    """The weights of a Levanter `Gpt2LMHeadModel`, in a fixed axis order."""
    blocks = model.transformer.blocks.stacked
    config = model.config

    def arr(named, *axes):
        return jnp.asarray(named.rearrange(axes).array if axes else named.array, dtype=dtype)

    return DecoderWeights(
        wte=arr(model.embeddings.token_embeddings.weight, "vocab", "embed"),
        wpe=arr(model.embeddings.position_embeddings.weight, "position", "embed"),
        ln1_w=arr(blocks.ln_1.weight, "layers", "embed"), ln1_b=arr(blocks.ln_1.bias, "layers", "embed"),
        attn_w=arr(blocks.attn.c_attn.weight, "layers", "embed", "qkv", "heads", "head_size"),
        attn_b=arr(blocks.attn.c_attn.bias, "layers", "qkv", "heads", "head_size"),
        attn_proj_w=arr(blocks.attn.c_proj.weight, "layers", "heads", "head_size", "embed"),
        attn_proj_b=arr(blocks.attn.c_proj.bias, "layers", "embed"),
        ln2_w=arr(blocks.ln_2.weight, "layers", "embed"), ln2_b=arr(blocks.ln_2.bias, "layers", "embed"),
        fc_w=arr(blocks.mlp.c_fc.weight, "layers", "embed", "mlp"), fc_b=arr(blocks.mlp.c_fc.bias, "layers", "mlp"),
        proj_w=arr(blocks.mlp.c_proj.weight, "layers", "mlp", "embed"),
        proj_b=arr(blocks.mlp.c_proj.bias, "layers", "embed"),
        lnf_w=arr(model.transformer.ln_f.weight, "embed"), lnf_b=arr(model.transformer.ln_f.bias, "embed"),
        eps=float(config.layer_norm_epsilon), scale_by_layer=bool(config.scale_attn_by_inverse_layer_idx),
    )


def _layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * w + b


@dataclass(frozen=True)
class KVCache:
    keys: jax.Array  # (layers, batch, heads, context, head)
    values: jax.Array


jax.tree_util.register_dataclass(KVCache, data_fields=["keys", "values"], meta_fields=[])


def empty_cache(weights: DecoderWeights, batch: int) -> KVCache:
    layers, heads, head, context = weights.shape
    shape = (layers, batch, heads, context, head)
    return KVCache(jnp.zeros(shape, weights.wte.dtype), jnp.zeros(shape, weights.wte.dtype))


def _forward(weights: DecoderWeights, cache: KVCache, tokens: jax.Array, start: jax.Array):
    """Logits (batch, T, vocab) of `tokens` (batch, T) placed at positions start..start+T-1, attending to the
    cache's earlier positions; returns them with the cache holding these positions too."""
    layers, heads, head, context = weights.shape
    T = tokens.shape[1]
    positions = start + jnp.arange(T)
    x = weights.wte[tokens] + weights.wpe[positions][None]
    key_positions = jnp.arange(context)
    visible = key_positions[None, :] <= positions[:, None]  # (T, context): causal, and only what is written

    def block(x, layer):
        w, index = layer
        h = _layer_norm(x, w["ln1_w"], w["ln1_b"], weights.eps)
        qkv = jnp.einsum("btd,dqhk->qbhtk", h, w["attn_w"]) + w["attn_b"][:, None, :, None, :]
        q, k, v = qkv[0], qkv[1], qkv[2]
        if weights.scale_by_layer:
            q = q / (index + 1.0)
        keys = jax.lax.dynamic_update_slice(w["keys"], k, (0, 0, start, 0))
        values = jax.lax.dynamic_update_slice(w["values"], v, (0, 0, start, 0))
        scores = jnp.einsum("bhtk,bhsk->bhts", q, keys) / jnp.sqrt(jnp.asarray(head, x.dtype))
        scores = jnp.where(visible[None, None], scores, jnp.finfo(scores.dtype).min)
        attention = jnp.einsum("bhts,bhsk->bthk", jax.nn.softmax(scores, axis=-1), values)
        x = x + jnp.einsum("bthk,hkd->btd", attention, w["attn_proj_w"]) + w["attn_proj_b"]
        h = _layer_norm(x, w["ln2_w"], w["ln2_b"], weights.eps)
        h = jax.nn.gelu(jnp.einsum("btd,dm->btm", h, w["fc_w"]) + w["fc_b"], approximate=True)
        x = x + jnp.einsum("btm,md->btd", h, w["proj_w"]) + w["proj_b"]
        return x, (keys, values)

    stacked = {
        "ln1_w": weights.ln1_w, "ln1_b": weights.ln1_b, "attn_w": weights.attn_w, "attn_b": weights.attn_b,
        "attn_proj_w": weights.attn_proj_w, "attn_proj_b": weights.attn_proj_b, "ln2_w": weights.ln2_w,
        "ln2_b": weights.ln2_b, "fc_w": weights.fc_w, "fc_b": weights.fc_b, "proj_w": weights.proj_w,
        "proj_b": weights.proj_b, "keys": cache.keys, "values": cache.values,
    }
    x, (keys, values) = jax.lax.scan(block, x, (stacked, jnp.arange(layers)))
    x = _layer_norm(x, weights.lnf_w, weights.lnf_b, weights.eps)
    logits = jnp.einsum("btd,vd->btv", x, weights.wte)
    return logits, KVCache(keys, values)


@functools.partial(jax.jit, donate_argnums=(1,))
def prefill(weights: DecoderWeights, cache: KVCache, tokens: jax.Array, length: jax.Array):
    """Run a whole window (batch, context) of tokens, of which the first `length` are real; returns the
    logits for the next token (after position length - 1) and the filled cache."""
    logits, cache = _forward(weights, cache, tokens, jnp.asarray(0))
    return logits[:, length - 1], cache


@functools.partial(jax.jit, donate_argnums=(1,))
def step(weights: DecoderWeights, cache: KVCache, tokens: jax.Array, position: jax.Array):
    """Feed one token per sequence (batch,) at `position`; returns the next-token logits and the cache."""
    logits, cache = _forward(weights, cache, tokens[:, None], position)
    return logits[:, 0], cache


@jax.jit
def full_logits(weights: DecoderWeights, tokens: jax.Array) -> jax.Array:
    """Logits at every position of (batch, context) tokens, without a cache (the reference's way to sample:
    the whole context again for every token)."""
    return _forward(weights, empty_cache(weights, tokens.shape[0]), tokens, jnp.asarray(0))[0]


def pad_window(tokens: np.ndarray, context: int) -> np.ndarray:
    """(batch, n) tokens padded with zeros to (batch, context)."""
    out = np.zeros((tokens.shape[0], context), dtype=np.int32)
    out[:, : tokens.shape[1]] = tokens
    return out
