"""Recall of the true top-k: how many of the entries a step's full attention weighs most a
retriever's read set holds (issue 27), beside the attention mass it did not read."""

import torch


def topk_recall(probs: torch.Tensor, read: torch.Tensor, reading: torch.Tensor | None = None) -> torch.Tensor:
    """probs (kv_heads, n): the step query's full attention weights per KV head (its query heads'
    mean, as ``scoring.attention_probs``); read (kv_heads, k): the entries read, or with
    ``reading`` (kv_heads, k) bool the columns that are (a fixed-capacity layer's read set, whose
    other columns are not read). Returns the share of each head's m highest-weighted entries that
    are read, m = the entries it read, averaged over heads (a 0-d float32). Ties in the weights
    rank the older entry first."""
    k = read.shape[1]
    top = probs.argsort(dim=-1, descending=True, stable=True)[:, :k]  # (kv_heads, k)
    marks = torch.ones(read.shape, dtype=torch.bool, device=read.device) if reading is None else reading
    was_read = torch.zeros(probs.shape, dtype=torch.bool, device=probs.device).scatter_(1, read, marks)
    count = marks.sum(-1)  # (kv_heads,) m
    within = torch.arange(k, device=probs.device) < count[:, None]  # the first m of the ranking
    return ((was_read.gather(1, top) & within).sum(-1) / count).float().mean()
