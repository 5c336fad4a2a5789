"""`LeanLlamaForward`: the decode loop's forward passes for Llama models, without the per-call
machinery of transformers' `forward`.

Decoding the tiny CPU model, a transformers forward pass took 2.6 ms a token (transformers
5.24, 8 rows), most of it Python around ~0.4 ms of kernels: mask building, cache objects,
output records, deprecation and capture wrappers. This computes the same functions from the
same model's weights (and its own rotary-embedding module), in fewer calls: q/k/v and
gate/up each as one matrix product, a KV cache preallocated per layer, a boolean mask for
left padding, one SDPA call per layer.

    ids_BN (the new tokens), mask_BL (every position so far), positions_BN
      ─► embed ─► per layer: norm ─► qkv ─► rotary ─► K,V written at [t, t+N) ─► SDPA over [0, t+N)
                  ─► o + residual ─► norm ─► gate/up ─► act(gate)·up ─► down + residual
      ─► final norm ─► LM head at the last new position ─► logits_BV

Only models whose layers are transformers' own `LlamaAttention` / `LlamaMLP`, with the
default attention implementation features (no sliding window, tensor-parallel splits or
dropout at inference), take this path (`unsupported_reason`); every other model runs through
transformers as before. A test holds both paths to the same tokens and log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional

from trainers.policy.prefix_cache import CachedPrefix

__all__ = ["LeanLlamaForward", "unsupported_reason"]


def unsupported_reason(model: Any) -> str | None:
    """None if `LeanLlamaForward` computes exactly what `model` does, else why not."""
    if type(model).__name__ != "LlamaForCausalLM":
        return f"{type(model).__name__} is not LlamaForCausalLM"
    config = model.config
    layer = model.model.layers[0]
    if type(layer.self_attn).__name__ != "LlamaAttention" or type(layer.mlp).__name__ != "LlamaMLP":
        return "its layers are not transformers' own Llama attention and MLP"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1 splits its projections"
    if getattr(config, "sliding_window", None):
        return "sliding-window attention"
    return None


class LeanLlamaForward:
    """One decode batch's KV-cached forward: call it with the prompt block, then one token a step."""

    def __init__(self, model: Any, batch: int, capacity: int, *, layers: list[_Layer] | None = None) -> None:
        """`capacity`: positions the cache holds (the prompt width plus the most new tokens).
        `layers`: another forward's concatenated weights (see `sibling`)."""
        config = model.config
        self._model = model
        self._heads, self._kv_heads = config.num_attention_heads, config.num_key_value_heads
        attention = model.model.layers[0].self_attn
        self._head_dim, self._scale = attention.head_dim, attention.scaling
        # Projections that read the same input, as one matrix each (per batch: weights change between batches).
        self._layers = layers if layers is not None else [_Layer.of(layer) for layer in model.model.layers]
        shape = (batch, self._kv_heads, capacity, self._head_dim)
        weight = model.lm_head.weight
        self._keys = [weight.new_zeros(shape) for _ in self._layers]
        self._values = [weight.new_zeros(shape) for _ in self._layers]
        self._length = 0

    def __call__(self, ids_BN: torch.Tensor, mask_BL: torch.Tensor, positions_BN: torch.Tensor) -> torch.Tensor:
        """Logits (float32) at the last of the new positions. `mask_BL` covers every position so
        far, the new ones included (1 real, 0 padding)."""
        start, new = self._length, ids_BN.shape[1]
        end = start + new
        allowed_B1NL = self._allowed(mask_BL[:, :end].bool(), start, new)
        model = self._model.model
        x_BNH = functional.embedding(ids_BN, model.embed_tokens.weight)
        cos, sin = model.rotary_emb(x_BNH, positions_BN)
        cos_B1ND, sin_B1ND = cos[:, None], sin[:, None]
        q_width, kv_width = self._heads * self._head_dim, self._kv_heads * self._head_dim
        for layer, keys, values in zip(self._layers, self._keys, self._values, strict=True):
            qkv_BNX = functional.linear(_rms_norm(x_BNH, layer.input_norm), layer.qkv, layer.qkv_bias)
            q, k, v = qkv_BNX.split((q_width, kv_width, kv_width), dim=-1)
            keys[:, :, start:end] = _rotate(self._split(k, self._kv_heads), cos_B1ND, sin_B1ND)
            values[:, :, start:end] = self._split(v, self._kv_heads)
            out = functional.scaled_dot_product_attention(
                _rotate(self._split(q, self._heads), cos_B1ND, sin_B1ND),
                keys[:, :, :end],
                values[:, :, :end],
                attn_mask=allowed_B1NL,
                scale=self._scale,
                enable_gqa=self._kv_heads != self._heads,
            )
            x_BNH = x_BNH + functional.linear(out.transpose(1, 2).reshape(*ids_BN.shape, -1), layer.o, layer.o_bias)
            gate_up = functional.linear(_rms_norm(x_BNH, layer.post_norm), layer.gate_up, layer.gate_up_bias)
            gate, up = gate_up.chunk(2, dim=-1)
            x_BNH = x_BNH + functional.linear(layer.act(gate) * up, layer.down, layer.down_bias)
        self._length = end
        last_BH = _rms_norm(x_BNH[:, -1], model.norm)
        return functional.linear(last_BH, self._model.lm_head.weight, self._model.lm_head.bias).float()

    def select(self, index_K: torch.Tensor) -> None:
        """Keep only these rows (finished rows leave the batch)."""
        self._keys = [k[index_K] for k in self._keys]
        self._values = [v[index_K] for v in self._values]

    @property
    def length(self) -> int:
        """Slots written so far (the next call's first token goes to this one)."""
        return self._length

    def sibling(self, batch: int, capacity: int) -> LeanLlamaForward:
        """An empty forward over the same weights, without concatenating them again (a copy of
        every projection: ~0.5 GB for a 135M model), for rows that will `join` this one."""
        return LeanLlamaForward(self._model, batch, capacity, layers=self._layers)

    def join(self, other: LeanLlamaForward, capacity: int) -> tuple[int, int]:
        """Append `other`'s rows to this batch, both right-aligned at the longer length (the shorter
        one's rows shift right; the slots before them stay zero, which callers mask as padding), in a
        cache of `capacity` slots. How far this batch's rows and `other`'s moved right."""
        length = max(self._length, other._length)
        shifts = (length - self._length, length - other._length)

        def joined(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
            rows = mine.shape[0]
            out = mine.new_zeros((rows + theirs.shape[0], self._kv_heads, capacity, self._head_dim))
            out[:rows, :, shifts[0] : length] = mine[:, :, : self._length]
            out[rows:, :, shifts[1] : length] = theirs[:, :, : other._length]
            return out

        self._keys = [joined(a, b) for a, b in zip(self._keys, other._keys, strict=True)]
        self._values = [joined(a, b) for a, b in zip(self._values, other._values, strict=True)]
        self._length = length
        return shifts

    def trim(self, slots: int) -> None:
        """Drop the first `slots` slots (padding in every row), so the cache does not grow with the
        age of the batch; the free capacity after the last slot is unchanged."""
        self._keys = [k[:, :, slots:] for k in self._keys]
        self._values = [v[:, :, slots:] for v in self._values]
        self._length -= slots

    def load(self, row: int, at: int, prefix: CachedPrefix) -> None:
        """Put a stored prefix's keys and values in `row`'s cache from slot `at` on."""
        end = at + len(prefix.tokens)
        for keys, values, k, v in zip(self._keys, self._values, prefix.keys, prefix.values, strict=True):
            keys[row, :, at:end] = k
            values[row, :, at:end] = v

    def skip_to(self, slot: int) -> None:
        """The next call's first token goes to `slot`: the slots before it are loaded already."""
        self._length = slot

    def prefix(self, row: int, first: int, tokens: tuple[int, ...]) -> CachedPrefix:
        """`row`'s keys and values from slot `first` to the last one written, as `tokens`'."""
        assert self._length - first == len(tokens), "the tokens must be the ones fed from `first` on"
        return CachedPrefix(
            tokens,
            [k[row, :, first : self._length].clone() for k in self._keys],
            [v[row, :, first : self._length].clone() for v in self._values],
        )

    def _split(self, x_BNX: torch.Tensor, heads: int) -> torch.Tensor:
        return x_BNX.view(*x_BNX.shape[:2], heads, self._head_dim).transpose(1, 2)

    @staticmethod
    def _allowed(valid_BL: torch.Tensor, start: int, new: int) -> torch.Tensor:
        """Which keys each new query attends to: real keys at or before it. A padding query
        attends to itself alone, so no row is empty (an empty row's softmax is NaN, and a NaN
        written into the cache would poison every later query through its zero weight)."""
        if new == 1:  # a decode step: its query is real and last, so the mask is the keys' validity
            return valid_BL[:, None, None, :]
        length = valid_BL.shape[1]
        key_L = torch.arange(length, device=valid_BL.device)
        query_N1 = torch.arange(start, start + new, device=valid_BL.device)[:, None]
        causal_NL = key_L <= query_N1
        return (causal_NL & valid_BL[:, None, :] | (key_L == query_N1))[:, None]


@dataclass(frozen=True, slots=True)
class _Layer:
    """One decoder layer's weights, q/k/v and gate/up each concatenated into one projection."""

    input_norm: Any
    post_norm: Any
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None
    act: Any

    @classmethod
    def of(cls, layer: Any) -> _Layer:
        attention, mlp = layer.self_attn, layer.mlp
        return cls(
            input_norm=layer.input_layernorm,
            post_norm=layer.post_attention_layernorm,
            qkv=torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]),
            qkv_bias=_cat_biases(attention.q_proj, attention.k_proj, attention.v_proj),
            o=attention.o_proj.weight,
            o_bias=attention.o_proj.bias,
            gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
            gate_up_bias=_cat_biases(mlp.gate_proj, mlp.up_proj),
            down=mlp.down_proj.weight,
            down_bias=mlp.down_proj.bias,
            act=mlp.act_fn,
        )


def _cat_biases(*linears: Any) -> torch.Tensor | None:
    return torch.cat([linear.bias for linear in linears]) if linears[0].bias is not None else None


def _rms_norm(x: torch.Tensor, norm: Any) -> torch.Tensor:
    """transformers' `LlamaRMSNorm.forward`, step for step (float32 inside, the input's dtype out)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, as transformers' `apply_rotary_pos_emb` computes it."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
