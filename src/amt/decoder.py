"""Levanter's GPT-2 as plain JAX with a key/value cache: prefill once, then one jitted step per token.

Why a focused cache of our own: Levanter's paged KV cache serves only Llama-family models and its GPT-2 has no
incremental decoding. This module reads the weights out of a trained `Gpt2LMHeadModel` (haliax named arrays)
and runs the same computation (pre-LayerNorm blocks, `gelu_new`, attention scaled by 1/sqrt(head size) and,
with `scale_attn_by_inverse_layer_idx`, by 1/(layer + 1); tied unembedding) on fixed-shape arrays: a cache of
(layers, batch, heads, context, head size) for keys and values, so nothing recompiles per token.
A test holds its logits to the full Levanter forward pass at every position (f32, 1e-4). On CPU a step is
memory-bound: per-layer weight matrices (not slices of stacked arrays), per-layer cache arrays, the
unembedding pre-transposed, and elementwise attention for single tokens each cut the step time severalfold.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class LayerWeights:
    """One block's weights as plain matrices (per layer, not stacked: XLA's CPU matrix-vector products on
    slices of a stacked array ran about 6x slower)."""

    ln1_w: jax.Array  # (embed,)
    ln1_b: jax.Array
    attn_w: jax.Array  # (embed, 3 * heads * head): q, k, v
    attn_b: jax.Array  # (3 * heads * head,)
    attn_proj_w: jax.Array  # (heads * head, embed)
    attn_proj_b: jax.Array  # (embed,)
    ln2_w: jax.Array
    ln2_b: jax.Array
    fc_w: jax.Array  # (embed, mlp)
    fc_b: jax.Array
    proj_w: jax.Array  # (mlp, embed)
    proj_b: jax.Array


@dataclass(frozen=True)
class DecoderWeights:
    wte: jax.Array  # (vocab, embed)
    lm_head: jax.Array  # (embed, vocab): wte transposed once (tied), so no step transposes 55,028 x embed
    wpe: jax.Array  # (context, embed)
    layers: tuple[LayerWeights, ...]
    lnf_w: jax.Array  # (embed,)
    lnf_b: jax.Array
    heads: int = 12
    eps: float = 1e-5
    scale_by_layer: bool = True

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(layers, heads, head size, context)"""
        return len(self.layers), self.heads, self.wte.shape[1] // self.heads, self.wpe.shape[0]


jax.tree_util.register_dataclass(LayerWeights, data_fields=list(LayerWeights.__dataclass_fields__), meta_fields=[])
jax.tree_util.register_dataclass(
    DecoderWeights, data_fields=["wte", "lm_head", "wpe", "layers", "lnf_w", "lnf_b"],
    meta_fields=["heads", "eps", "scale_by_layer"],
)


def decoder_weights(model, dtype=jnp.float32) -> DecoderWeights:
    """The weights of a Levanter `Gpt2LMHeadModel`, as per-layer matrices."""
    blocks = model.transformer.blocks.stacked
    config = model.config

    def arr(named, *axes):
        return np.asarray(named.rearrange(axes).array if axes else named.array, dtype=np.float32)

    stacked = {
        "ln1_w": arr(blocks.ln_1.weight, "layers", "embed"), "ln1_b": arr(blocks.ln_1.bias, "layers", "embed"),
        "attn_w": arr(blocks.attn.c_attn.weight, "layers", "embed", "qkv", "heads", "head_size"),
        "attn_b": arr(blocks.attn.c_attn.bias, "layers", "qkv", "heads", "head_size"),
        "attn_proj_w": arr(blocks.attn.c_proj.weight, "layers", "heads", "head_size", "embed"),
        "attn_proj_b": arr(blocks.attn.c_proj.bias, "layers", "embed"),
        "ln2_w": arr(blocks.ln_2.weight, "layers", "embed"), "ln2_b": arr(blocks.ln_2.bias, "layers", "embed"),
        "fc_w": arr(blocks.mlp.c_fc.weight, "layers", "embed", "mlp"), "fc_b": arr(blocks.mlp.c_fc.bias, "layers", "mlp"),
        "proj_w": arr(blocks.mlp.c_proj.weight, "layers", "mlp", "embed"),
        "proj_b": arr(blocks.mlp.c_proj.bias, "layers", "embed"),
    }
    embed = config.hidden_dim

    def layer(i):
        weights = {name: value[i] for name, value in stacked.items()}
        weights["attn_w"] = weights["attn_w"].reshape(embed, -1)
        weights["attn_b"] = weights["attn_b"].reshape(-1)
        weights["attn_proj_w"] = weights["attn_proj_w"].reshape(-1, embed)
        return LayerWeights(**{name: jnp.asarray(value, dtype=dtype) for name, value in weights.items()})

    wte = arr(model.embeddings.token_embeddings.weight, "vocab", "embed")
    return DecoderWeights(
        wte=jnp.asarray(wte, dtype), lm_head=jnp.asarray(np.ascontiguousarray(wte.T), dtype),
        wpe=jnp.asarray(arr(model.embeddings.position_embeddings.weight, "position", "embed"), dtype),
        layers=tuple(layer(i) for i in range(config.num_layers)),
        lnf_w=jnp.asarray(arr(model.transformer.ln_f.weight, "embed"), dtype),
        lnf_b=jnp.asarray(arr(model.transformer.ln_f.bias, "embed"), dtype),
        heads=config.num_heads, eps=float(config.layer_norm_epsilon),
        scale_by_layer=bool(config.scale_attn_by_inverse_layer_idx),
    )


def _layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * w + b


@dataclass(frozen=True)
class KVCache:
    keys: tuple[jax.Array, ...]  # one (batch, heads, context, head) array a layer: each updated in place
    values: tuple[jax.Array, ...]


jax.tree_util.register_dataclass(KVCache, data_fields=["keys", "values"], meta_fields=[])


def empty_cache(weights: DecoderWeights, batch: int) -> KVCache:
    layers, heads, head, context = weights.shape
    shape = (batch, heads, context, head)
    return KVCache(tuple(jnp.zeros(shape, weights.wte.dtype) for _ in range(layers)),
                   tuple(jnp.zeros(shape, weights.wte.dtype) for _ in range(layers)))


def _forward(weights: DecoderWeights, cache: KVCache, tokens: jax.Array, start: jax.Array):
    """Logits (batch, T, vocab) of `tokens` (batch, T) placed at positions start..start+T-1, attending to the
    cache's earlier positions; returns them with the cache holding these positions too.

    The layers are unrolled and each writes only its new keys and values into its own cache array: a scan
    over layers, or one stacked array, copied the whole cache at every token (several times slower)."""
    layers, heads, head, context = weights.shape
    batch, T = tokens.shape
    positions = start + jnp.arange(T)
    x = weights.wte[tokens] + weights.wpe[positions][None]
    visible = jnp.arange(context)[None, :] <= positions[:, None]  # (T, context): causal, and only what is written
    keys, values = list(cache.keys), list(cache.values)
    scale = 1.0 / np.sqrt(head)
    for index, w in enumerate(weights.layers):
        h = _layer_norm(x, w.ln1_w, w.ln1_b, weights.eps)
        qkv = h @ w.attn_w + w.attn_b
        q, k, v = jnp.moveaxis(qkv.reshape(batch, T, 3, heads, head), (2, 3), (0, 2))  # each (batch, heads, T, head)
        if weights.scale_by_layer:
            q = q / (index + 1.0)
        keys[index] = jax.lax.dynamic_update_slice(keys[index], k, (0, 0, start, 0))
        values[index] = jax.lax.dynamic_update_slice(values[index], v, (0, 0, start, 0))
        if T == 1:  # one new token: elementwise products beat XLA CPU's batched matrix-vector products
            scores = (q * keys[index]).sum(-1)[:, :, None, :] * scale
        else:
            scores = jnp.einsum("bhtk,bhsk->bhts", q, keys[index]) * scale
        scores = jnp.where(visible[None, None], scores, jnp.finfo(scores.dtype).min)
        probabilities = jax.nn.softmax(scores, axis=-1)
        if T == 1:
            attention = (probabilities[:, :, 0, :, None] * values[index]).sum(2)[:, None]  # (batch, 1, heads, head)
        else:
            attention = jnp.einsum("bhts,bhsk->bthk", probabilities, values[index])
        x = x + attention.reshape(batch, T, heads * head) @ w.attn_proj_w + w.attn_proj_b
        h = _layer_norm(x, w.ln2_w, w.ln2_b, weights.eps)
        h = jax.nn.gelu(h @ w.fc_w + w.fc_b, approximate=True)
        x = x + h @ w.proj_w + w.proj_b
    x = _layer_norm(x, weights.lnf_w, weights.lnf_b, weights.eps)
    logits = x @ weights.lm_head
    return logits, KVCache(tuple(keys), tuple(values))


@jax.jit
def prefill(weights: DecoderWeights, cache: KVCache, tokens: jax.Array, length: jax.Array):
    """Run a whole window (batch, context) of tokens, of which the first `length` are real; returns the
    logits for the next token (after position length - 1) and the filled cache."""
    logits, cache = _forward(weights, cache, tokens, jnp.asarray(0))
    return logits[:, length - 1], cache


@jax.jit  # not donating the cache: measured faster on CPU (donation serializes the steps)
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
