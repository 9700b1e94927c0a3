"""LagKV: score each chunk of the prompt by how its keys and values stand against the next chunk's.

Follows kvpress's ``LagKVPress.score`` and ``_get_states_score`` (NVIDIA/kvpress, commit
08a43bf, kvpress/presses/lagkv_press.py, lines 55-97): after ``n_sink`` sinks the prompt is cut
into chunks of ``lag_size``; the last whole chunk and the remainder (the tail) are kept with the
sinks; every other chunk is scored against the min/max of the chunk after it.
"""

from dataclasses import dataclass

import torch

from kvviz.i18n import N_
from kvviz.policies.params import param
from kvviz.policies.selector import ScoredSelector
from kvviz.record.trace import Protection


@dataclass
class LagKV(ScoredSelector):
    name = "lagkv"
    family = N_("eviction")
    paper = "Liang et al., 2025. LagKV: Lag-Relative Information of the KV Cache Tells Which Tokens Are Important"
    paper_url = "https://arxiv.org/abs/2504.04704"
    summary = N_("""Needs no attention. After the `n_sink` first tokens, the prompt is cut into
    chunks of `lag_size` tokens; each chunk is scored against the chunk after it (its lag
    reference): every key and value is min-max normalised per channel by the next chunk's
    minimum and maximum, the spread (standard deviation) of the normalised channels is turned
    into a softmax over the chunk, and the key and value parts are averaged. The sinks and the
    tail (the last whole chunk and what is left after it) score 1 and are kept. By default
    (`cross_scoring` off) scores are replaced by their rank within the chunk, so the budget is
    shared out evenly between chunks; with it on, the raw scores compete across chunks. A prompt
    shorter than `n_sink` + 2 × `lag_size` is not scored: the sinks and the newest tokens are
    kept. As kvpress's LagKVPress, kvviz compresses the prompt once, after prefill (the paper
    also compresses chunk by chunk while decoding), and where equal scores straddle the cut
    (equal ranks in different chunks) top-k picks among them, as kvpress's does, maybe not
    the same ones. kvviz always ranks the sinks first; when the budget is smaller than the
    sinks and the tail, kvpress's top-k picks among them, kvviz keeps the sinks.""")
    acts_at_decode = False
    protection_params = {"n_sink": "n_sink"}
    others = N_("ranked by lag-relative scores (tail first)")

    n_sink: int = param(4, N_("First tokens always kept (attention sinks), part of the budget."), min=0, max=1024)
    lag_size: int = param(128, N_("Chunk length: each chunk is scored against the next one."), min=2, max=4096)
    cross_scoring: bool = param(False, N_("Let raw scores compete across chunks instead of ranks within each chunk."))

    def score(self, layer, ctx):
        keys, values = layer.keys.float(), layer.values.float()  # (kv_heads, n, d)
        kv, n, d = keys.shape
        sink, lag = self.n_sink, self.lag_size
        score = torch.ones(kv, n, device=keys.device)
        if n < sink + 2 * lag:  # not scored: the newest rank highest after the sinks
            if n > sink:
                score[:, sink:] = torch.arange(n - sink, device=keys.device) / (n - sink)
            return score
        end = sink + (n - sink) // lag * lag  # chunks [sink, end); the last whole one is the tail's
        chunks = ((self.lag_scores(keys[:, sink:end].reshape(kv, -1, lag, d))
                   + self.lag_scores(values[:, sink:end].reshape(kv, -1, lag, d))) / 2)  # (kv, chunks - 1, lag)
        if not self.cross_scoring:
            chunks = chunks.argsort(dim=-1).argsort(dim=-1) / lag  # rank within the chunk, in [0, 1)
        score[:, sink:end - lag] = chunks.reshape(kv, -1)
        return score

    def lag_scores(self, x):
        """x (kv, chunks, lag, d) -> (kv, chunks - 1, lag): each chunk but the last, normalised by
        the next chunk's per-channel min and max, its channels' spread softmaxed over the chunk."""
        ref, cur = x[:, 1:], x[:, :-1]
        lo, hi = ref.amin(dim=2, keepdim=True), ref.amax(dim=2, keepdim=True)  # (kv, chunks - 1, 1, d)
        return ((cur - lo) / (hi - lo)).std(dim=-1).softmax(dim=-1)

    def protection(self, budget):
        return Protection(n_sink=min(self.n_sink, budget or 0))
