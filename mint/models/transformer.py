"""A plain dense decoder (Llama, Mistral, Qwen2, Qwen3) over a flattened ragged batch.

Every forward takes T tokens from any number of sequences laid end to end, with their positions; the
`Attention` object passed in knows where each sequence starts and where its keys and values live. The same
module therefore serves continuous batching in the engine and packed training in the trainer.

Projections are packed the way vLLM packs them: q, k and v are one `qkv_proj`, gate and up are one
`gate_up_proj`, so a layer runs three matmuls fewer. LoRA for q/k/v or gate/up is applied later, by module
swapping, to slices of these packed outputs (`packed_slices`); this file knows nothing about LoRA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mint.models.attention import Attention
from mint.models.config import ModelConfig

# Rows of cos/sin computed up front; longer positions grow the cache to the next power of two.
_ROPE_CACHE_MIN = 4096


def packed_slices(config: ModelConfig) -> dict[str, list[int]]:
    """Output widths of the parts of each packed projection, in the order of `Transformer.packed_modules`."""
    return {
        "qkv_proj": [config.q_size, config.kv_size, config.kv_size],
        "gate_up_proj": [config.intermediate_size, config.intermediate_size],
    }


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.normalized_shape = (dim,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in float32 and cast back before scaling, in the order transformers uses, so bf16 results
        # agree with it; both casts are no-ops in float32.
        return self.weight * F.rms_norm(x.float(), self.normalized_shape, eps=self.eps).to(x.dtype)


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Inverse frequencies [head_dim / 2] in float32, with Llama 3 scaling when configured (as transformers
    computes them, so positions rotate identically)."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    if config.rope_scaling is None:
        return inv_freq
    factor = config.rope_scaling["factor"]
    low_freq_factor = config.rope_scaling["low_freq_factor"]
    high_freq_factor = config.rope_scaling["high_freq_factor"]
    old_context = config.rope_scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are stretched by `factor`, short ones kept, and the band between interpolated.
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [T, heads, head_dim] by cos/sin [T, 1, head_dim] in the rotate-half layout of HF weights.

    Whole-row products are about twice as fast on CPU as working on the two half-width column blocks.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat((-x2, x1), dim=-1), sin)


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.slices = packed_slices(config)["qkv_proj"]
        self.qkv_proj = nn.Linear(config.hidden_size, sum(self.slices), bias=config.attention_bias)
        self.o_proj = nn.Linear(config.q_size, config.hidden_size, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: Attention) -> torch.Tensor:
        num_tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.slices, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        out = attn(self.layer_idx, apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SelfAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: Attention) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, attn)
        return h + self.mlp(self.post_attention_layernorm(h))


class Transformer(nn.Module):
    packed_modules: dict[str, tuple[str, ...]] = {
        "qkv_proj": ("q_proj", "k_proj", "v_proj"),
        "gate_up_proj": ("gate_proj", "up_proj"),
    }

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()
        # [positions, 2 (cos, sin), head_dim] in float32, on the device of the last forward. A plain attribute,
        # not a buffer: it is derived, never saved, and must survive building the model on the meta device.
        self._rope_cache: torch.Tensor | None = None

    def tie_weights(self) -> None:
        """Share the embedding matrix with lm_head when the config ties them (call again after replacing
        embed_tokens.weight)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: Attention) -> torch.Tensor:
        """input_ids, positions: [T] (sequences back to back) -> final-normed hidden states [T, hidden]."""
        h = self.embed_tokens(input_ids)
        cos, sin = self._rope(positions, h.dtype)
        for layer in self.layers:
            h = layer(h, cos, sin, attn)
        return self.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] (only the rows that need a next-token distribution) -> float32 logits [N, vocab]."""
        return self.lm_head(hidden).float()

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        needed = int(positions.max()) + 1 if positions.numel() else 0
        cache = self._rope_cache
        if cache is None or cache.shape[0] < needed or cache.device != positions.device:
            rows = max(_ROPE_CACHE_MIN, 1 << max(needed - 1, 0).bit_length())
            # positions * inv_freq as a float32 outer product: the same rounding as transformers' rotary.
            steps = torch.arange(rows, dtype=torch.float32, device="cpu")
            freqs = torch.outer(steps, rope_inv_freq(self.config))
            angles = torch.cat((freqs, freqs), dim=-1)
            cache = torch.stack((angles.cos(), angles.sin()), dim=1).to(positions.device)
            self._rope_cache = cache
        cos, sin = cache[positions].to(dtype).unbind(dim=1)
        return cos.unsqueeze(1), sin.unsqueeze(1)
