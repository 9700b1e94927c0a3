"""A cache policy of your own: keep the entries whose values have the largest L2 norm.

Copy this file anywhere on the server's disk, then load it (README, "Your own policy"):
    python -m kvviz --policy-file docs/policy_template.py run --policy valuenorm --budget 16 --prompt "Hi"
    KVVIZ_POLICY_PATH=docs/policy_template.py streamlit run app.py
"""

from dataclasses import dataclass

from kvviz.policies import PolicyError
from kvviz.policies.params import param
from kvviz.policies.selector import ScoredSelector
from kvviz.record.trace import Protection


@dataclass
class ValueNorm(ScoredSelector):
    name = "valuenorm"  # what --policy, URLs and the pages call it; a built-in's name is refused
    family = "eviction"
    paper = "kvviz policy template (a plugin of your own)"
    summary = """Keeps, per layer and KV head, the `n_sink` first tokens and then the entries
    whose values have the largest L2 norm. The base class owns the budget or ratio, the top-k
    and the gather; this file only scores."""

    n_sink: int = param(0, "First tokens always kept, part of the budget.", min=0, max=1024)

    def check_budget(self, budget):
        if self.n_sink > budget:
            raise PolicyError(f"valuenorm: n_sink ({self.n_sink}) exceeds the budget {budget}.")

    def score(self, layer, ctx):  # layer.values: (kv_heads, n, head_dim); higher is kept
        return layer.values.float().norm(dim=-1)

    def protection(self, budget):
        return Protection(n_sink=self.n_sink)
