"""The attention every prompt entry receives from every prompt query, without the q × n matrix.

H2O and ObservedAttention score an entry by the causal softmax attention it received, summed over
the prompt's queries: ``c_j = sum_{i >= j} exp(s_ij - lse_i)`` with ``s_ij = q_i . k_j / sqrt(d)``
and ``lse_i`` the log of row i's softmax denominator. ``scoring.accumulated_attention`` computes it
in chunks of rows of probabilities: at 8k tokens that is several passes over 2 GB per layer, memory
traffic a GPU spends ~9 ms per layer on.

On CUDA in bf16/fp16 the same sums come out of two calls of the fused (flash) attention kernel,
which never writes the matrix and returns each row's log-sum-exp:

1. ``lse_i``: the log-sum-exp of an ordinary causal attention of the queries over the keys.
2. The sums are the same kernel run with the roles swapped: the keys ask, the queries answer, and
   each answering query carries ``-lse_i`` in two extra dimensions (its high and low bf16 halves,
   against a 1 in the asking key's), so the kernel's logit is ``s_ij - lse_i`` and its log-sum-exp
   over ``i >= j`` is ``log c_j``. Reversing both sequences turns ``i >= j`` into the kernel's
   causal ``i' <= j'``.

The inputs are the stored bf16 keys and queries, as the float32 path reads them; the kernel
accumulates in float32. What differs is rounding: ``-lse_i`` in two bf16 halves (relative error
about 2^-16) and the kernel's own exp. ``tests/gpu/test_column_sums.py`` checks it against the
chunked float32 path on the GPU.
"""

from __future__ import annotations

import math

import torch

_HEAD_DIM_STEP = 8  # the flash kernel takes head dims in multiples of 8, up to 256


def usable(queries: torch.Tensor, keys: torch.Tensor) -> bool:
    """Whether the fused path applies: CUDA, half precision, head dim + 2 within the kernel's."""
    d = keys.shape[-1]
    return (keys.is_cuda and queries.is_cuda and keys.dtype in (torch.bfloat16, torch.float16)
            and queries.dtype == keys.dtype and queries.shape[-1] == d and _padded(d + 2) <= 256
            and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention"))


def _padded(d: int) -> int:
    return -(-d // _HEAD_DIM_STEP) * _HEAD_DIM_STEP


def _flash_lse(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Log-sum-exp of each row of a causal attention: q, k (1, heads, n, d) -> (heads, n) float32."""
    out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, torch.zeros_like(k), 0.0, True, False, scale=scale)
    return out[1][0, :, : q.shape[2]]


def prefill_column_sums(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(kv_heads, n) float32: per KV head, the mean over its query heads of the causal attention
    each entry received from all queries. queries (q_heads, n, d), keys (kv_heads, n, d): the
    prompt's own tokens in order (entry i is query i's token)."""
    kv_heads, n, d = keys.shape
    q_heads = queries.shape[0]
    group = q_heads // kv_heads
    scale = 1.0 / math.sqrt(d)
    width = _padded(d + 2)
    k_rep = keys.repeat_interleave(group, dim=0)  # (q_heads, n, d): each query head's keys

    lse = _flash_lse(queries[None], k_rep[None], scale)  # (q_heads, n) float32

    # Swapped roles, both sequences reversed. Asking: keys with [1, 1] in the extra dims.
    # Answering: queries with -lse / scale in two bf16 halves (the kernel multiplies by scale).
    shift = -lse / scale
    hi = shift.to(keys.dtype)
    lo = (shift - hi.float()).to(keys.dtype)
    ask = keys.new_zeros(q_heads, n, width)
    ask[..., :d] = k_rep
    ask[..., d : d + 2] = 1
    answer = keys.new_zeros(q_heads, n, width)
    answer[..., :d] = queries
    answer[..., d] = hi
    answer[..., d + 1] = lo
    log_sums = _flash_lse(ask.flip(1)[None], answer.flip(1)[None], scale).flip(1)  # (q_heads, n)
    return log_sums.exp().reshape(kv_heads, group, n).mean(dim=1)
