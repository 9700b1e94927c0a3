"""Expected Attention: the attention future queries are expected to pay, from the statistics of
the prompt's queries, RoPE-rotated forward to the coming positions.

Follows ``ExpectedAttentionPress`` of NVIDIA/kvpress (commit 08a43bf,
kvpress/presses/expected_attention_press.py: ``get_query_statistics`` and ``score``).
"""

from dataclasses import dataclass

import torch

from kvviz.i18n import N_, _
from kvviz.policies.params import PolicyError, param
from kvviz.policies.selector import ScoredSelector
from kvviz.record.trace import Protection


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float):
    """Llama's rotary embedding at ``positions`` (m,): cos, sin (m, head_dim) float64."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.double()[:, None] * inv_freq[None]  # (m, head_dim / 2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


@dataclass
class ExpectedAttention(ScoredSelector):
    name = "expected_attention"
    family = N_("eviction")
    paper = "Devoto et al., 2025. Expected Attention: KV Cache Compression by Estimating Attention from Future Queries Distribution"
    paper_url = "https://arxiv.org/abs/2510.00636"
    summary = N_("""At the end of prefill, the prompt's queries (all but the first `n_sink`) are
    summarized per query head by their mean and covariance; both are rotated by the RoPE
    rotation averaged over the next `n_future_positions` positions, and each key's expected
    attention logit is mean·k/√d (+ kᵀΣk/2d with `use_covariance`), soft-maxed over the keys
    after the sinks and averaged over a KV head's query heads. With `use_vnorm` the score is
    (expected attention + `epsilon`) × the value's L2 norm. The first `n_sink` tokens are always
    kept. Generated tokens are never evicted (the press compresses the prompt). As kvpress's
    ExpectedAttentionPress, with one difference in how the statistics are reached: kvpress
    projects the layer's hidden states by W_q; kvviz's selectors see the RoPE-rotated queries,
    so kvviz rotates them back with Llama's RoPE of base `rope_theta` (the model's config is not
    given to a policy: set it to your model's; SmolLM2: 100000). Same mean and covariance; RoPE
    scaling (Llama 3.1) is not modelled.""")
    needs_queries = True
    acts_at_decode = False
    protection_params = {"n_sink": "n_sink"}
    others = N_("with the highest expected attention")

    n_future_positions: int = param(512, N_("Coming positions whose RoPE rotation is averaged."), min=1, max=65536)
    n_sink: int = param(4, N_("First tokens always kept, and left out of the query statistics."), min=0, max=1024)
    use_covariance: bool = param(True, N_("Add the queries' covariance term kᵀΣk/2d to the expected logit."))
    use_vnorm: bool = param(True, N_("Multiply the score by the value's L2 norm."))
    epsilon: float = param(0.0, N_("Added to the expected attention before the value-norm rescaling."), min=0.0, max=1.0)
    rope_theta: float = param(100000.0, N_("The model's RoPE base, to rotate queries back and forward (SmolLM2: 100000)."), min=1.0)

    def check_budget(self, budget: int) -> None:
        if self.n_sink > budget:
            raise PolicyError(_("expected_attention: n_sink ({n_sink}) exceeds the budget {budget}.").format(n_sink=self.n_sink, budget=budget))

    def query_statistics(self, queries, query_positions, prompt_len):
        """queries (q_heads, q, d) rotated -> mean (q_heads, d) and covariance (q_heads, d, d) of
        the unrotated queries (sinks left out), rotated by the RoPE averaged over the future."""
        d = queries.shape[-1]
        cos, sin = rope_cos_sin(query_positions, d, self.rope_theta)  # (q, d)
        q = queries.double()
        q = q * cos - rotate_half(q) * sin  # undo RoPE: R(t)^T q
        q = q[:, self.n_sink :]
        mean = q.mean(dim=1)  # (q_heads, d)
        centred = q - mean[:, None]
        cov = centred.transpose(1, 2) @ centred / q.shape[1] if self.use_covariance else None
        future = torch.arange(prompt_len, prompt_len + self.n_future_positions, device=q.device)
        fcos, fsin = rope_cos_sin(future, d, self.rope_theta)
        eye = torch.eye(d, dtype=torch.float64, device=q.device)
        p = rotate_half(eye).T  # (d, d): p @ x == rotate_half(x)
        rot = (fcos[:, :, None] * eye + fsin[:, :, None] * p).mean(dim=0)  # (d, d): R(t) averaged
        mean = mean @ rot.T
        if cov is not None:
            cov = rot @ cov @ rot.T
        return mean, cov

    def score(self, layer, ctx):
        s = self.n_sink
        mean, cov = self.query_statistics(layer.queries, layer.query_positions, ctx.prompt_len)
        keys = layer.keys[:, s:].double()  # (kv_heads, m, d)
        kv_heads, m, d = keys.shape
        group = mean.shape[0] // kv_heads
        k = keys.repeat_interleave(group, dim=0)  # (q_heads, m, d)
        logits = torch.einsum("hd,hmd->hm", mean, k) / d**0.5
        if cov is not None:
            logits += torch.einsum("hmi,hij,hmj->hm", k, cov, k) / d / 2
        probs = logits.softmax(dim=-1).view(kv_heads, group, m).mean(dim=1)  # (kv_heads, m)
        if self.use_vnorm:
            probs = (probs + self.epsilon) * layer.values[:, s:].double().norm(dim=-1)
        top = probs.max()  # sinks rank with the best, as the press pads them (they are protected too)
        return torch.cat([top.expand(kv_heads, s), probs], dim=1).float()

    def protection(self, budget):
        return Protection(n_sink=min(self.n_sink, budget or 0))
