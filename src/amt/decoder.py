"""Levanter's GPT-2 as plain JAX with a key/value cache: prefill a window once, then a few tokens at a time.

Why a focused cache of our own: Levanter's paged KV cache serves only Llama-family models and its GPT-2 has no
incremental decoding. This module reads the weights out of a trained `Gpt2LMHeadModel` (haliax named arrays)
and runs the same computation (pre-LayerNorm blocks, `gelu_new`, attention scaled by 1/sqrt(head size) and,
with `scale_attn_by_inverse_layer_idx`, by 1/(layer + 1); tied unembedding) on fixed-shape arrays: a cache of
keys, (batch, heads, context, head size), and values, transposed (`KVCache`), a layer, so nothing recompiles
per token. Each row of a
batch has its own position (`start` per row; `set_row` replaces one row's window), so the samples of one
request keep their own lengths, finish and move their windows at their own times.
A test holds its logits to the full Levanter forward pass at every position (f32, 1e-4).

On CPU a step is memory-bound (GPT-2 Small, batch 1: reading the weights and the cache once takes ~15 ms at
this machine's ~24 GB/s): per-layer weight matrices (not slices of stacked arrays), per-layer cache arrays
and the unembedding pre-transposed each cut the step time severalfold. Attention is an einsum for one token
too: on jax 0.7.2 elementwise products were faster, on jax 0.10 they took ~9 ms a layer against ~0.3 (one
step ~120 -> ~25 ms under load). Steps only read the cache (`forward`; `write_into` puts an event's keys and
values in place), and a prefill runs only the real tokens and one position's unembedding: with the sampler
unembedding only the sampled slot's block, and ~2.5 -> ~1.5 s for a 640-token window.

Precision: float32 by default. `decoder_weights(model, jnp.bfloat16)` keeps the matrices, the embeddings and
the cache in bfloat16 for an accelerator, where a step reads all the weights for a few tokens and is
memory-bound: half the bytes. Only the matrix products' inputs are bfloat16 (accumulated and returned in
float32: XLA's `preferred_element_type`); the residual stream, LayerNorms, softmax and logits stay float32
(for one row the blocks' LayerNorm scales are folded into the bf16 matrices and the residual stream is rounded
before the product instead of the normalized one: `_normalized_dot`),
more precise than the bf16 compute it was trained under (`mp: p=f32,c=bfloat16`): on a trained model's
11,253 tokens of real MIDI the mean loss moved 3.96468 -> 3.96447 nats, logits by at most 0.11 (spread ~2.6).
Medium on an H100 (benchmarks/gpu_compile.py): an event reads at least 4.34 -> 2.17 GB at batch 1 (1.30 ->
0.65 ms at the card's bandwidth), in 1,171 -> 1,123 launches; at batch 8 1,098 -> 1,194 (the activations'
casts before the products: upcasting the weights inside them instead made batch 1 1,195). Not on CPU: XLA's
CPU matrix-vector products measured 3.5-12x slower in bfloat16 on jax 0.10 (8x on 0.7.2), on a CPU with
AVX512_BF16. With float32 weights every cast is a no-op: the same program and samples as before it existed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class LayerWeights:
    """One block's weights as plain matrices (per layer, not stacked: XLA's CPU matrix-vector products on
    slices of a stacked array ran about 6x slower). The two output projections are stored transposed,
    (embed, in), and contracted along their rows: for one token XLA's GPU compiler turns a matrix-vector
    product into a multiply and a sum, and summed down the columns of an (in, embed) matrix it wrote out the
    whole product (4,096 x 1,024 floats for Medium's MLP) and summed it in a second kernel; along rows it is
    one kernel (benchmarks/gpu_compile.py: 119 fewer launches an event for Medium at batch 1, 32 at batch 8).
    On CPU the same at batch 1, ~10% slower at batch 8 (GPT-2 Small)."""

    attn_w: jax.Array  # (embed, 3 * heads * head): q, k, v, with ln_1's scale folded in (see `_normalized_dot`)
    attn_sum: jax.Array  # (3 * heads * head,): attn_w's column sums
    attn_b: jax.Array  # (3 * heads * head,): with ln_1's shift folded in
    attn_proj_w: jax.Array  # (embed, heads * head): transposed
    attn_proj_b: jax.Array  # (embed,)
    fc_w: jax.Array  # (embed, mlp), ln_2's scale folded in
    fc_sum: jax.Array
    fc_b: jax.Array
    proj_w: jax.Array  # (embed, mlp): transposed
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
    """The weights of a Levanter `Gpt2LMHeadModel`, as per-layer matrices: the matrices and embeddings in
    `dtype` (float32 or bfloat16), the biases and column sums in float32; each block's two LayerNorms folded into
    the products they feed (`_normalized_dot`: the scaled matrices in float32, the biases and column sums summed
    in float64, then all rounded)."""
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.float32, jnp.bfloat16):
        raise ValueError(f"decoder weights: dtype {dtype} is not float32 or bfloat16")
    matrices = {"attn_w", "attn_proj_w", "fc_w", "proj_w"}
    folded = {"attn_w": ("ln1_w", "ln1_b", "attn_b", "attn_sum"), "fc_w": ("ln2_w", "ln2_b", "fc_b", "fc_sum")}
    blocks = model.transformer.blocks.stacked
    config = model.config

    def arr(named, *axes):
        return np.asarray(named.rearrange(axes).array if axes else named.array, dtype=np.float32)

    stacked = {
        "ln1_w": arr(blocks.ln_1.weight, "layers", "embed"), "ln1_b": arr(blocks.ln_1.bias, "layers", "embed"),
        "attn_w": arr(blocks.attn.c_attn.weight, "layers", "embed", "qkv", "heads", "head_size"),
        "attn_b": arr(blocks.attn.c_attn.bias, "layers", "qkv", "heads", "head_size"),
        "attn_proj_w": arr(blocks.attn.c_proj.weight, "layers", "embed", "heads", "head_size"),
        "attn_proj_b": arr(blocks.attn.c_proj.bias, "layers", "embed"),
        "ln2_w": arr(blocks.ln_2.weight, "layers", "embed"), "ln2_b": arr(blocks.ln_2.bias, "layers", "embed"),
        "fc_w": arr(blocks.mlp.c_fc.weight, "layers", "embed", "mlp"), "fc_b": arr(blocks.mlp.c_fc.bias, "layers", "mlp"),
        "proj_w": arr(blocks.mlp.c_proj.weight, "layers", "embed", "mlp"),
        "proj_b": arr(blocks.mlp.c_proj.bias, "layers", "embed"),
    }
    embed = config.hidden_dim

    def layer(i):
        weights = {name: value[i] for name, value in stacked.items()}
        weights["attn_w"] = weights["attn_w"].reshape(embed, -1)
        weights["attn_b"] = weights["attn_b"].reshape(-1)
        weights["attn_proj_w"] = weights["attn_proj_w"].reshape(embed, -1)
        for matrix, (scale, shift, bias, column_sums) in folded.items():
            # LayerNorm(x) @ W + c = r (x @ (s W) - mean (1 s W)) + (t W + c), r = 1/std: see _normalized_dot
            w = weights[matrix]
            weights[bias] = weights[bias] + weights.pop(shift).astype(np.float64) @ w
            weights[matrix] = weights.pop(scale)[:, None] * w
            # the column sums of the matrix as stored (rounded to `dtype`), so that x @ W - mean (1 W) = (x - mean) @ W
            weights[column_sums] = np.asarray(jnp.asarray(weights[matrix], dtype), np.float64).sum(0)
        return LayerWeights(**{name: jnp.asarray(value, dtype=dtype if name in matrices else jnp.float32)
                               for name, value in weights.items()})

    wte = arr(model.embeddings.token_embeddings.weight, "vocab", "embed")
    return DecoderWeights(
        wte=jnp.asarray(wte, dtype), lm_head=jnp.asarray(np.ascontiguousarray(wte.T), dtype),
        wpe=jnp.asarray(arr(model.embeddings.position_embeddings.weight, "position", "embed"), dtype),
        layers=tuple(layer(i) for i in range(config.num_layers)),
        lnf_w=jnp.asarray(arr(model.transformer.ln_f.weight, "embed"), jnp.float32),
        lnf_b=jnp.asarray(arr(model.transformer.ln_f.bias, "embed"), jnp.float32),
        heads=config.num_heads, eps=float(config.layer_norm_epsilon),
        scale_by_layer=bool(config.scale_attn_by_inverse_layer_idx),
    )


def _normalized_dot(x, w, column_sums, b, eps):
    """LayerNorm(x) @ W + c with the LayerNorm's scale s folded into the matrix (w = s W) and its shift t into the
    bias (b = t W + c): r (x @ w - mean (1 w)) + b, where r = 1/sqrt(var + eps) and 1 w are w's column sums. Why:
    XLA's GPU compiler runs the normalization as a kernel of its own between the statistics and the product (it
    will not recompute it inside the matrix-vector product), and the folded form leaves it nothing to run: the
    statistics are one kernel, the product another, and what comes after r and the bias joins what the product's
    result feeds (benchmarks/gpu_compile.py, an event at batch 1: Medium 1,125 -> 1,005 launches in float32,
    1,077 -> 1,008 in bfloat16; Small 608 -> 548 and 585 -> 562). For one row only: for more, XLA runs the usual
    normalization (x - mean) / std as one kernel with its statistics, the form used there. On CPU the same
    samples bit for bit (5 seeded configurations) and a step no slower (a trained 2-layer model at batch 1: 5.2 ->
    3.7 ms an event). Precision: a trained model's mean loss, stepping 900 tokens one at a time, 4.06135 nats in
    float32 before and after; in bfloat16 4.06151 -> 4.06131 (the matrices rounded with the scale folded in, the
    residual stream rounded before the product instead of the normalized one). The statistics as in
    `_moments`."""
    mean, var = _moments(x)
    if x.size != x.shape[-1]:  # more rows: normalized first (XLA makes it one kernel with the statistics)
        return _dot((x - mean) * jax.lax.rsqrt(var + eps), w) + b
    return jax.lax.rsqrt(var + eps) * (_dot(x, w) - mean * column_sums) + b


def _layer_norm(x, w, b, eps):
    """LayerNorm over the last axis (the final one; the blocks' are folded into their products, `_normalized_dot`)."""
    mean, var = _moments(x)
    return (x - mean) * jax.lax.rsqrt(var + eps) * w + b


def _moments(x):
    """The mean and variance over the last axis, a LayerNorm's statistics. For a single row (one token of one
    sample: decoding at batch 1) the mean and the mean square are summed in one pass (var = E[x^2] - E[x]^2):
    XLA's GPU compiler makes that one kernel, and the usual two passes (the mean, then the squares about it) two kernels and a third to
    normalize; for more rows it makes the two-pass form one kernel (a Triton normalization fusion) and the
    one-pass form two. Per event of Medium (benchmarks/gpu_compile.py): batch 1, 1,318 -> 1,171 launches;
    batch 8 stays at 1,098 (the one-pass form everywhere: 1,314). The cancellation the one-pass form risks
    needs |mean| >> spread, which a residual stream does not have: the cached logits stay within 1e-4 of
    Levanter's LayerNorm (tests/test_sampling.py), as close as the two-pass form on trained models."""
    mean = x.mean(-1, keepdims=True)
    if x.size == x.shape[-1]:
        return mean, jnp.maximum((x * x).mean(-1, keepdims=True) - mean * mean, 0)
    return mean, x.var(-1, keepdims=True)


@dataclass(frozen=True)
class KVCache:
    """Each layer's keys, (batch, heads, positions, head), and values, transposed: (batch, heads, head,
    positions). Why transposed: a token's attention sums the values over positions, and with positions the
    minor axis that is one row-reducing kernel on a GPU; along the middle axis XLA's GPU compiler wrote out the
    whole product of the probabilities and the values (16 x 1,024 x 64 floats a layer and token at Medium size)
    and summed it in a second kernel (benchmarks/gpu_compile.py, Medium, an event: batch 1 1,173 -> 1,125
    launches in float32, 1,125 -> 1,077 in bfloat16; batch 8 in bfloat16 1,196 -> 1,100), and 4 MB a layer and
    token written and read again. On CPU the same speed and, here, the same samples bit for bit. The keys stay
    as they are: their product with the query sums over the head's axis, already minor."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]


jax.tree_util.register_dataclass(KVCache, data_fields=["keys", "values"], meta_fields=[])


def empty_cache(weights: DecoderWeights, batch: int, positions: int) -> KVCache:
    layers, heads, head, _ = weights.shape
    return KVCache(tuple(jnp.zeros((batch, heads, positions, head), weights.wte.dtype) for _ in range(layers)),
                   tuple(jnp.zeros((batch, heads, head, positions), weights.wte.dtype) for _ in range(layers)))


def _dot(x, w):
    """x (..., in) @ w (in, out): x in w's dtype, accumulated and returned in float32 (see the module's note on
    precision; with float32 weights the plain product)."""
    return jnp.matmul(x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def _dot_transposed(x, w):
    """x (batch, T, in) @ w.T for w stored transposed, (out, in) (see LayerWeights), like `_dot`."""
    return jnp.einsum("btm,em->bte", x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def unembed(hidden, lm_head):
    """Logits (float32) of hidden states (..., embed) against the unembedding `lm_head` or a block of it."""
    return _dot(hidden, lm_head)


def _scores(q, keys):
    """(batch, heads, T, S) from q (batch, heads, T, head) and keys (batch, heads, S, head). An einsum for one
    token too: on jax 0.7.2 elementwise products beat XLA CPU's batched matrix-vector products, on jax 0.10
    (marin-levanter's) they are 20-60x slower than the einsum (3.2 against 0.14 ms a layer at Small size)."""
    return jnp.einsum("bhtk,bhsk->bhts", q.astype(keys.dtype), keys, preferred_element_type=jnp.float32)


def _weighted(probabilities, values):
    """(batch, heads, T, head): the values, transposed (batch, heads, head, S), weighted by probabilities
    (batch, heads, T, S)."""
    return jnp.einsum("bhts,bhks->bhtk", probabilities.astype(values.dtype), values,
                      preferred_element_type=jnp.float32)


def forward(weights: DecoderWeights, cache: KVCache | None, recent: KVCache, tokens: jax.Array, start):
    """Hidden states (batch, T, embed), after the final LayerNorm, of `tokens` (batch, T) at positions
    start + R .. start + R + T - 1, where `start` is one position per row (batch,) or one for all (each row of
    a batch is its own sequence, at its own length) and R the positions in `recent`: the keys and values of
    positions start .. start + R - 1 (a few, or none), not yet in the cache. They attend to the cache's
    positions before the row's `start` (read only; none if `cache` is None), to `recent` and to each other
    (causally). Returns the hidden states and `recent` with the tokens' keys and values appended (R + T).

    The cache is only read: the new keys and values go to the small `recent`, and `write_into` puts them into the
    cache in place (donated) once per event; a step that returned an updated cache copied all of it (the
    whole cache, at every call: 75 MB a sample at GPT-2 Small size). `recent` grows by concatenation (its
    length is static: each of an event's tokens compiles its own shapes), not by writes into a buffer of the
    event's three slots: on a GPU the writes were two kernels a layer and token; the concatenations are as
    many at batch 1 and fewer at batch 8 (Medium: 24 fewer launches an event, benchmarks/gpu_compile.py),
    and the first token's attention to `recent` needs no mask. The layers are unrolled: a scan over layers,
    or one stacked array, copied more still."""
    _, heads, head, context = weights.shape
    batch, T = tokens.shape
    R = recent.keys[0].shape[2]
    own = R + jnp.arange(T)  # the tokens' positions, from `start`
    start = jnp.broadcast_to(jnp.asarray(start), (batch,))
    x = weights.wte[tokens].astype(jnp.float32) + weights.wpe[start[:, None] + own[None]].astype(jnp.float32)
    sees_recent = jnp.arange(R + T)[None, :] <= own[:, None]  # (T, R + T): causal
    sees_cache = (jnp.arange(context)[None] < start[:, None])[:, None, None]  # (batch, 1, 1, context)
    keys, values = list(recent.keys), list(recent.values)
    for index, w in enumerate(weights.layers):
        qkv = _normalized_dot(x, w.attn_w, w.attn_sum, w.attn_b, weights.eps)
        q, k, v = jnp.moveaxis(qkv.reshape(batch, T, 3, heads, head), (2, 3), (0, 2))  # each (batch, heads, T, head)
        q = q / (np.sqrt(head) * (index + 1.0 if weights.scale_by_layer else 1.0))
        keys[index] = jnp.concatenate([keys[index], k.astype(keys[index].dtype)], axis=2)
        values[index] = jnp.concatenate([values[index], jnp.swapaxes(v, 2, 3).astype(values[index].dtype)], axis=3)
        # one softmax over the scores against the cache, then against `recent`
        sources = [(keys[index], values[index], sees_recent[None, None])]
        if cache is not None:
            sources.insert(0, (cache.keys[index], cache.values[index], sees_cache))
        scores = jnp.concatenate([jnp.where(sees, _scores(q, k_), jnp.finfo(x.dtype).min) for k_, _, sees in sources],
                                 axis=-1)
        probabilities = jnp.split(jax.nn.softmax(scores, axis=-1), np.cumsum([k_.shape[2] for k_, _, _ in sources[:-1]]),
                                  axis=-1)
        attention = sum(_weighted(p, v_) for p, (_, v_, _) in zip(probabilities, sources))
        attention = jnp.moveaxis(attention, 1, 2).reshape(batch, T, heads * head)
        x = x + _dot_transposed(attention, w.attn_proj_w) + w.attn_proj_b
        h = jax.nn.gelu(_normalized_dot(x, w.fc_w, w.fc_sum, w.fc_b, weights.eps), approximate=True)
        x = x + _dot_transposed(h, w.proj_w) + w.proj_b
    return _layer_norm(x, weights.lnf_w, weights.lnf_b, weights.eps), KVCache(tuple(keys), tuple(values))


def write_into(cache: KVCache, recent: KVCache, start, rows=None) -> KVCache:
    """`recent` written into the cache at positions start.. (`start`: one per row, or one for all); only into the
    rows where `rows` (batch,) is true, if given (the others keep what they hold)."""
    batch = cache.keys[0].shape[0]
    start = jnp.broadcast_to(jnp.asarray(start), (batch,))
    rows = jnp.ones(batch, bool) if rows is None else rows

    def put(a, b, s, write, axis):  # one row: b into a at s along axis (keys: positions in the middle; values: last)
        at = tuple(s if i == axis else 0 for i in range(a.ndim))
        return jax.lax.dynamic_update_slice(a, jnp.where(write, b, jax.lax.dynamic_slice(a, at, b.shape)), at)

    return KVCache(tuple(jax.vmap(functools.partial(put, axis=1))(a, b, start, rows) for a, b in zip(cache.keys, recent.keys)),
                   tuple(jax.vmap(functools.partial(put, axis=2))(a, b, start, rows)
                         for a, b in zip(cache.values, recent.values)))


@functools.partial(jax.jit, donate_argnums=0)
def set_row(cache: KVCache, row: KVCache, index) -> KVCache:
    """The cache with row `index` replaced by `row` (batch 1), in place: one sample's window moved."""
    return jax.tree.map(lambda a, b: jax.lax.dynamic_update_slice_in_dim(a, b, index, axis=0), cache, row)


@jax.jit
def prefill(weights: DecoderWeights, tokens: jax.Array, length: jax.Array):
    """Run a window (batch, T) of tokens, of which the first `length` are real (one length per row, or one
    for all); returns the hidden state of position length - 1 (the next token's logits are
    `unembed(hidden, weights.lm_head)`, or a block of it) and the cache, holding positions 0..T-1 of its
    `context`. Only the real tokens and one position's logits are computed: T is the window's length rounded
    up (`pad_window`), and the unembedding (55,028 wide) of every position was a third of a full window's
    cost."""
    batch, T = tokens.shape
    hidden, recent = forward(weights, None, empty_cache(weights, batch, 0), tokens, 0)
    length = jnp.broadcast_to(jnp.asarray(length), (batch,))
    return hidden[jnp.arange(batch), length - 1], write_into(empty_cache(weights, batch, weights.shape[3]), recent, 0)


@jax.jit
def full_logits(weights: DecoderWeights, tokens: jax.Array) -> jax.Array:
    """Logits at every position of (batch, T) tokens, without a cache (the reference's way to sample: the
    whole context again for every token)."""
    hidden, _ = forward(weights, None, empty_cache(weights, tokens.shape[0], 0), tokens, 0)
    return unembed(hidden, weights.lm_head)


def pad_window(tokens: np.ndarray, context: int, multiple: int = 128) -> np.ndarray:
    """(batch, n) tokens padded with zeros to a multiple of `multiple` columns, at most `context` (so that
    prefills compile for a few lengths only)."""
    out = np.zeros((tokens.shape[0], min(-(-tokens.shape[1] // multiple) * multiple, context)), dtype=np.int32)
    out[:, : tokens.shape[1]] = tokens
    return out
