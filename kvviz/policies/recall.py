"""Recall of the true top-k: how many of the entries a step's full attention weighs most a
retriever's read set holds (issue 27), beside the attention mass it did not read."""

import torch


def topk_recall(probs: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """probs (kv_heads, n): the step query's full attention weights per KV head (its query heads'
    mean, as ``scoring.attention_probs``); read (kv_heads, k): the entries read. Returns the share
    of each head's k highest-weighted entries that are read, averaged over heads (a 0-d float32).
    Ties in the weights are broken by ``topk``'s order."""
    k = read.shape[1]
    top = probs.topk(k, dim=-1).indices
    was_read = torch.zeros(probs.shape, dtype=torch.bool, device=probs.device).scatter_(1, read, True)
    return was_read.gather(1, top).float().mean()
