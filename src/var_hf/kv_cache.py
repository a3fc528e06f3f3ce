"""What scale-by-scale sampling of the VAR transformer keeps between scales: the key/value cache of every block
([`VARKVCache`]) and the per-run constants computed once from the class condition ([`SamplingConstants`]).

Used by `VARTransformer.forward_scale` (see `modeling_var.py`), the pipeline and the CUDA-graph runner.
"""

from typing import List, NamedTuple, Optional

import torch


class VARKVCache:
    """Per-layer key/value cache for scale-by-scale sampling.

    With `max_len` the cache is pre-allocated once and filled in place (no concatenation per scale); without it, keys
    and values are concatenated as in the reference. Both give the same numbers.
    """

    def __init__(self, num_layers: int, max_len: Optional[int] = None):
        self.max_len = max_len
        self.keys: List[Optional[torch.Tensor]] = [None] * num_layers
        self.values: List[Optional[torch.Tensor]] = [None] * num_layers
        self.lengths = [0] * num_layers

    def update(self, layer_idx: int, k_BHlc: torch.Tensor, v_BHlc: torch.Tensor):
        """Append this scale's keys/values (B, H, l, c) and return all of them so far (B, H, L_so_far, c).

        A pre-allocated cache holds everything but the last scale: that scale's keys/values are only attended to by
        its own queries, so they are concatenated for this call and not stored.
        """
        start, end = self.lengths[layer_idx], self.lengths[layer_idx] + k_BHlc.shape[2]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self.max_len is None:
            if keys is not None:
                k_BHlc, v_BHlc = torch.cat((keys, k_BHlc), dim=2), torch.cat((values, v_BHlc), dim=2)
            self.keys[layer_idx], self.values[layer_idx] = k_BHlc, v_BHlc
            self.lengths[layer_idx] = end
            return k_BHlc, v_BHlc
        if end > self.max_len:  # the last scale: attend, don't store
            if keys is None:
                return k_BHlc, v_BHlc
            return torch.cat((keys[:, :, :start], k_BHlc), dim=2), torch.cat((values[:, :, :start], v_BHlc), dim=2)
        if keys is None:
            B, H, _, c = k_BHlc.shape
            keys = self.keys[layer_idx] = k_BHlc.new_empty(B, H, self.max_len, c)
            values = self.values[layer_idx] = v_BHlc.new_empty(B, H, self.max_len, c)
        keys[:, :, start:end] = k_BHlc
        values[:, :, start:end] = v_BHlc
        self.lengths[layer_idx] = end
        return keys[:, :, :end], values[:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def allocate(self, batch_size: int, num_heads: int, head_dim: int, dtype: torch.dtype, device) -> "VARKVCache":
        """Allocate every layer's buffers now rather than at the first update: buffers that never move are what a
        captured CUDA graph needs. Pre-allocated caches only."""
        if self.max_len is None:
            raise ValueError("Only a pre-allocated cache (max_len set) can be allocated up front.")
        shape = (batch_size, num_heads, self.max_len, head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in self.keys]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in self.values]
        return self

    def seek(self, length: int):
        """Treat the first `length` positions of every layer as filled: the next update writes from there. Lets a
        replayed scale rewrite its own slot instead of appending."""
        if self.max_len is None or not 0 <= length <= self.max_len:
            raise ValueError(f"seek({length}) needs a pre-allocated cache and 0 <= length <= {self.max_len}.")
        self.lengths = [length] * len(self.lengths)


class SamplingConstants(NamedTuple):
    """What every scale of a sampling run would recompute from the class condition and the weights alone, computed
    once per run instead (same operations, same numbers): the AdaLN vectors of every block (B, 1, 6, C) and of the
    head (B, 1, 2, C), and each attention's qkv bias (3C,) and query scale ((1, H, 1, 1), or None without
    `attn_l2_norm`)."""

    block_modulations: List[torch.Tensor]
    head_modulation: torch.Tensor
    qkv_biases: List[torch.Tensor]
    query_scales: List[Optional[torch.Tensor]]

    def tensors(self) -> List[torch.Tensor]:
        """All of them, in a fixed order (for static buffers)."""
        return [*self.block_modulations, self.head_modulation, *self.qkv_biases,
                *(scale for scale in self.query_scales if scale is not None)]


__all__ = ["SamplingConstants", "VARKVCache"]
