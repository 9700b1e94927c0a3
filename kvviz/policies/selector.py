"""Selectors: a policy that decides which entries of a layer stay (and may merge the ones that go).

The cache calls ``Selector.step(layer, ctx)`` after every update of the layer: once after the
prefill, then after each decoded token. Most selectors are a ``ScoredSelector``: they only say
how they score entries and what they always keep (``protection``); the base owns the budget, the
protected entries, the top-k and the selection, as kvpress's ScorerPress does.

Shapes (batch is always 1 and squeezed away):
  keys, values         (kv_heads, n, head_dim)   materialized in the compute dtype
  positions            (kv_heads, n)             true token position of each entry
  queries              (q_heads, q_len, head_dim) the new queries, RoPE applied
  stats[name]          (kv_heads, n)             per-entry running statistics of the policy
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from kvviz.i18n import N_, _, ngettext
from kvviz.policies.params import Note, Policy, PolicyError, param, ratio_budget
from kvviz.policies.scoring import first_mask, keep_top, recent_mask
from kvviz.record.trace import Protection


@dataclass
class LayerView:
    """What a selector sees of one layer at one step. Tensors live on the model's device."""

    layer_idx: int
    n_layers: int
    keys: torch.Tensor  # (kv_heads, n, head_dim)
    values: torch.Tensor  # (kv_heads, n, head_dim)
    positions: torch.Tensor  # (kv_heads, n) long
    stats: dict[str, torch.Tensor]  # name -> (kv_heads, n); new entries start at 0
    queries: torch.Tensor | None  # (q_heads, q_len, head_dim), RoPE applied; None if not captured
    query_positions: torch.Tensor | None  # (q_len,)
    n_new: int  # entries appended by this update (the last n_new of n)
    # a fixed-capacity layer (kvviz.storage.fixed_capacity): (1,) long on the device, how many of
    # the n slots hold entries (the first ones; the others are zeros); None = all n are entries
    length: torch.Tensor | None = None
    # what a selector derives from this view once and reuses within the step (SparQ's scores)
    scratch: dict[str, torch.Tensor] = field(default_factory=dict)

    def captured_queries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(queries, query_positions), for a selector that sets ``needs_queries`` (the cache
        captures them for it); RuntimeError when they were not captured."""
        if self.queries is None or self.query_positions is None:
            raise RuntimeError("this selector reads the layer's queries, but none were captured: it must set needs_queries")
        return self.queries, self.query_positions

    @property
    def kv_heads(self) -> int:
        return self.keys.shape[0]

    @property
    def n(self) -> int:
        return self.keys.shape[1]

    def valid(self) -> torch.Tensor:
        """(n,) bool: the slots that hold entries (all n outside a fixed-capacity layer)."""
        slots = torch.arange(self.n, device=self.keys.device)
        return slots < (self.n if self.length is None else self.length)

    def newest(self) -> torch.Tensor:
        """(1,) long on the device: the slot of the entry this step appended last."""
        if self.length is None:
            return torch.full((1,), self.n - 1, dtype=torch.long, device=self.keys.device)
        return self.length - 1


@dataclass
class StepContext:
    step: int  # 0 = prefill, k = after the k-th decoded token entered the cache
    prompt_len: int
    seq_len: int  # tokens the model has processed so far (true length of a full cache)
    budget: int | None  # kept entries per KV head for this layer; None = no limit
    generator: torch.Generator | None = None  # for random choices, seeded per run

    @property
    def is_prefill(self) -> bool:
        return self.step == 0


@dataclass
class Selection:
    """What to keep. ``keep`` indexes the layer's current entries, per KV head, ascending."""

    keep: torch.Tensor  # (kv_heads, k) long
    scores: torch.Tensor | None = None  # (kv_heads, n) the scores that decided, for the trace
    keys: torch.Tensor | None = None  # (kv_heads, k, head_dim) replacement for merged entries
    values: torch.Tensor | None = None


@dataclass
class Selector(Policy):
    """A policy that chooses which entries stay."""

    kind: ClassVar[str] = "select"
    needs_queries: ClassVar[bool] = False  # whether ``layer.queries`` must be captured
    # True when a decode step reads nothing back to the host, uses no per-step Python number in
    # tensor math and draws nothing at random: its steps can be replayed from a CUDA graph
    graph_safe: ClassVar[bool] = False
    # False for selectors that only compress the prompt (SnapKV): decode steps then skip them
    acts_at_decode: ClassVar[bool] = True

    def resolve_budget(self, prompt_len: int) -> int | None:
        """Kept entries per layer and KV head for this prompt; None = no limit."""
        return None

    def layer_budget(self, budget: int | None, layer_idx: int, n_layers: int, prompt_len: int | None = None) -> int | None:
        """Budget of one layer (for a prompt of ``prompt_len`` tokens); PyramidKV overrides this."""
        return budget

    def budget_notes(self, budget: int | None) -> list[Note]:
        """What this selector keeps with ``budget``, and warnings when its settings do not fit."""
        return []

    def prepare(self, model, tokenizer, prompt_ids: list[int]) -> None:
        """Called by the engine before the prefill, with the run's model: a selector that needs
        more than one layer's tensors (the model's weights, an extra pass over the prompt) reads
        it here, and leaves nothing on the model. A cache built without the engine never calls
        it; such a selector says in its help what it does then."""

    def run_details(self) -> dict[str, str]:
        """What this selector found in its last run that a page shows in the run's details
        (a label -> a line of plain text): duo_attention's streaming heads. Default: nothing."""
        return {}

    def step(self, layer: LayerView, ctx: StepContext) -> Selection | None:
        """Update running stats and return what to keep, or None to keep everything."""
        raise NotImplementedError

    def read(self, layer: LayerView, ctx: StepContext) -> torch.Tensor | None:
        """(kv_heads, k) long, ascending: the held entries this decode step's attention reads
        (a ``Retriever``); None = all of them. Nothing leaves the cache."""
        return None

    def layer_kind(self, layer_idx: int):
        """What sets this layer's decode step apart from another layer's, beyond its budget: a
        fused step (``kvviz.runtime.fused_steps``) is compiled once per kind and budget and serves
        every layer of that kind. None (the default): a decode step reads no layer index."""
        return None

    def protection(self, budget: int | None) -> Protection:
        """What this selector always keeps with a layer budget of ``budget`` entries per KV head
        (sinks, a recent window); recorded on the Trace so views can tell protected entries apart."""
        return Protection()


@dataclass
class BudgetSelector(Selector):
    """A selector with a budget of kept entries per layer and KV head, given directly or as a ratio."""

    # For the budget notes: the parameter that sets each protected part of ``protection`` (a
    # field of Protection -> a parameter name); a part that grows with the budget is no setting
    protection_params: ClassVar[dict[str, str]] = {}
    # the entries the budget holds beyond the protected ones, for the notes: "the other 16 ..."
    others: ClassVar[str] = N_("chosen by its scores")

    budget: int | None = param(None, N_("Kept entries per layer and KV head (or give a ratio)."), type=int, min=1, optional=True)
    ratio: float | None = param(0.25, N_("Kept fraction of the prompt, when no budget is given."), type=float, min=0.001, max=1.0, optional=True)

    def resolve_budget(self, prompt_len: int) -> int:
        """Kept entries per layer and KV head: the one place a budget or ratio becomes entries
        (a ratio through ``ratio_budget``); raises PolicyError when the budget cannot work for
        this prompt (``check_budget``)."""
        if self.budget is not None:
            if self.budget <= 0:
                raise PolicyError(_("{policy}: budget must be positive, not {budget}.").format(policy=self.name, budget=self.budget))
            if self.budget > prompt_len:
                raise PolicyError(_("{policy}: budget {budget} is larger than the prompt ({prompt_len} tokens).").format(
                    policy=self.name, budget=self.budget, prompt_len=prompt_len))
            budget = int(self.budget)
        elif self.ratio is None:
            raise PolicyError(_("{policy}: give a budget or a ratio.").format(policy=self.name))
        elif not 0 < self.ratio <= 1:
            raise PolicyError(_("{policy}: ratio must be in (0, 1], not {ratio}.").format(policy=self.name, ratio=self.ratio))
        else:
            budget = ratio_budget(self.ratio, prompt_len)
        self.check_budget(budget)
        return budget

    def check_budget(self, budget: int) -> None:
        """Raise PolicyError when this policy cannot work with ``budget`` entries per KV head."""

    def budget_notes(self, budget: int | None) -> list[Note]:
        """What the protected parts hold at this budget, named by the parameters that set them; a
        warning when those parameters ask for more than the budget holds (the policy caps them)
        or fill it (nothing is left for the other entries)."""
        if budget is None:
            return []
        real = self.protection(budget)
        # a part set by a parameter stays the same under any larger budget; a part that grows
        # with the budget (a sliding window) is what the budget leaves, not a setting
        big, bigger = self.protection(10**9), self.protection(10**9 + 1)
        kept, asked = [], []  # asked: (parameter name, entries it asks to protect)
        for part in ("n_sink", "recent"):
            n, setting = getattr(real, part), getattr(big, part) == getattr(bigger, part)
            name = self._setting_name(part, getattr(big, part))
            if setting and getattr(big, part):
                asked.append((name, getattr(big, part)))
            if n:
                what = _("the first {n} tokens") if part == "n_sink" else (
                    _("the {n} last tokens of the prompt") if real.anchored_at_prompt else _("the {n} most recent tokens"))
                why = name if setting else _("the whole budget") if n == budget else _("the rest of the budget")
                kept.append(_("{what} ({why})").format(what=what.format(n=n), why=why))
        if not kept:
            return []
        rest = budget - real.n_sink - real.recent
        said_kept = kept[0] if len(kept) == 1 else _("{one} and {other}").format(one=kept[0], other=kept[1])
        others = _(self.others)
        values = dict(budget=budget, policy=self.name, kept=said_kept, rest=rest, others=others)
        if rest > 0:
            text = ngettext("With {budget} entries per layer and KV head, {policy} keeps {kept}, and the {rest} other entry {others}.",
                            "With {budget} entries per layer and KV head, {policy} keeps {kept}, and the {rest} other entries {others}.",
                            rest).format(**values)
        else:
            text = _("With {budget} entries per layer and KV head, {policy} keeps {kept}.").format(**values)
        notes = [Note("info", text)]
        names, total = " + ".join(n for n, _a in asked), sum(a for _n, a in asked)
        said = f"{names} = " + " + ".join(str(a) for _n, a in asked)
        values.update(said=said, names=names, protected=real.n_sink + real.recent)
        if total > budget:
            notes.append(Note("warning", _(
                "{said} asks to protect more entries than the budget holds ({budget} per layer and KV head): {policy}"
                " protects only {protected} and keeps no entries {others}. Raise the budget or lower {names}.").format(**values)))
        elif asked and total == budget == real.n_sink + real.recent:
            notes.append(Note("warning", _(
                "{said} fills the whole budget ({budget} entries per layer and KV head): no room is left for entries "
                "{others}. Raise the budget or lower {names}.").format(**values)))
        return notes

    def _setting_name(self, part: str, value: int) -> str:
        """The parameter that sets a protected part: as declared in ``protection_params``, else
        the one parameter whose value it is."""
        if part in self.protection_params:
            return self.protection_params[part]
        same = [n for n, v in self.values().items() if n not in ("budget", "ratio") and v == value and not isinstance(v, bool)]
        return same[0] if len(same) == 1 else _("its settings")


@dataclass
class ScoredSelector(BudgetSelector):
    """A selector that scores the entries and keeps, per KV head, its protected entries and
    then the highest scores up to the budget.

    A subclass says what it keeps track of (``observe``, every step, within budget or not), how
    it scores (``score``, higher is kept) and what it always keeps (``protection``); this base
    owns the rest: nothing is evicted while the layer holds at most its budget, protected entries
    rank above every score, top-k per KV head, and the scores go to the trace.
    """

    def observe(self, layer: LayerView, ctx: StepContext) -> None:
        """Update running statistics in ``layer.stats`` (they are gathered on eviction)."""

    def score(self, layer: LayerView, ctx: StepContext) -> torch.Tensor:
        """(kv_heads, n) float: higher is kept."""
        raise NotImplementedError

    def choose(self, scores: torch.Tensor, budget: int, protect: torch.Tensor) -> torch.Tensor:
        """Indices (kv_heads, budget), ascending, of the entries kept: ``protect`` (kv_heads, n)
        bool first, then the highest scores."""
        return keep_top(scores, budget, protect)

    def protected(self, positions: torch.Tensor, budget: int) -> torch.Tensor:
        """(kv_heads, n) bool: the entries ``protection(budget)`` names. At prefill, a window
        anchored at the prompt's end is the newest entries too."""
        p = self.protection(budget)
        mask = torch.zeros(positions.shape, dtype=torch.bool, device=positions.device)
        if p.n_sink:
            mask |= first_mask(positions, p.n_sink)
        if p.recent:
            mask |= recent_mask(positions, p.recent)
        return mask

    def step(self, layer, ctx):
        if not (ctx.is_prefill or self.acts_at_decode):
            return None
        self.observe(layer, ctx)
        if ctx.budget is None or layer.n <= ctx.budget:
            return None
        scores = self.score(layer, ctx)  # (kv_heads, n)
        return Selection(keep=self.choose(scores, ctx.budget, self.protected(layer.positions, ctx.budget)), scores=scores)


@dataclass
class Retriever(Selector):
    """A selector that evicts nothing and, at each decode step of one new token, picks the
    entries the attention reads (Quest, SparQ, a hashed key summary): the cache keeps every entry
    and its summary, the attention reads ``read_budget`` of them per KV head, gathered.

    A subclass only ranks the held entries for the step's query (``rank``, higher is read); this
    base always reads the newest entry (the token itself) and the top of the rest. With a read
    budget of at least the entries held it reads all of them, in order: the same as ``full``.
    The prefill, and a step of several new tokens, read everything. In a fixed-capacity layer
    (the CUDA graph path) ``read_fixed`` picks the same entries in shapes that never change.
    """

    family = N_("retrieval")
    needs_queries = True

    read_budget: int = param(64, N_("Entries each decode step reads per layer and KV head (the cache keeps them all)."), min=1, max=1_000_000)

    def step(self, layer, ctx):
        return None  # nothing is evicted

    def rank(self, layer: LayerView, ctx: StepContext) -> torch.Tensor:
        """(kv_heads, n) float: how much each held entry matters to this step's query."""
        raise NotImplementedError

    @staticmethod
    def chooses(layer: LayerView, ctx: StepContext) -> bool:
        """Whether this step picks a read set: a decode step of one new token, its query captured."""
        return not ctx.is_prefill and layer.n_new == 1 and layer.queries is not None

    @staticmethod
    def read_all(layer: LayerView) -> torch.Tensor:
        """(kv_heads, n): every held entry, in order (the gather then changes nothing)."""
        return torch.arange(layer.n, device=layer.keys.device).expand(layer.kv_heads, layer.n)

    def read(self, layer, ctx):
        if not self.chooses(layer, ctx):
            return None
        if layer.length is not None:
            raise ValueError("a fixed-capacity layer reads through read_fixed")
        count = self.read_count(layer.layer_idx, layer.n)
        if count >= layer.n:
            return self.read_all(layer)
        return first_true(self.chosen(layer, ctx), count)

    def read_fixed(self, layer: LayerView, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The read set of a decode step over a fixed-capacity layer (``layer.length`` set), in
        shapes that do not depend on how many entries it holds, so a CUDA graph can replay it:
        (slots, reading), each (kv_heads, w) with w = ``read_width(layer_idx, capacity)``: the
        slots read, ascending, in the first columns, then slots that are not read
        (``reading`` False), which the attention masks. The slots read are those ``read`` picks
        from the same entries held in the growing layout."""
        chosen = self.chosen(layer, ctx)  # (kv_heads, capacity) bool
        slots = first_true(chosen, self.read_width(layer.layer_idx, layer.n))
        return slots, chosen.gather(1, slots)

    def chosen(self, layer: LayerView, ctx: StepContext) -> torch.Tensor:
        """(kv_heads, n) bool: the entries this step reads, ``read_count`` of them per KV head
        (slots past ``layer.length`` never): the newest, then the highest ranks (ties read the
        older entry), or every entry held when the read budget covers them."""
        valid = layer.valid()  # (n,)
        rank = self.rank(layer, ctx).float().masked_fill(~valid, float("-inf"))  # (kv_heads, n)
        rank.index_fill_(1, layer.newest(), float("inf"))  # the new token reads itself
        top = rank.argsort(dim=-1, descending=True, stable=True)[:, : min(self.read_budget, layer.n)]
        # with fewer entries than the budget every entry is read: their ranks are above -inf
        return torch.zeros(rank.shape, dtype=torch.bool, device=rank.device).scatter_(1, top, True) & valid

    def read_count(self, layer_idx: int, n: int) -> int:
        """Entries a decode step reads per KV head when the layer holds ``n`` (the new one included)."""
        return min(self.read_budget, n)

    def read_width(self, layer_idx: int, capacity: int) -> int:
        """Columns of ``read_fixed``: the most ``read_count`` gives for any n up to ``capacity``."""
        return min(self.read_budget, capacity)

    def summary_bytes(self, kv_heads: int, n: int, head_dim: int) -> int:
        """Bytes of the key summary beside ``n`` entries of one layer (0 when none is kept)."""
        return 0

    def mix(
        self, layer: LayerView, ctx: StepContext, read: torch.Tensor, reading: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """What the step's attention output is mixed with, for a retriever that corrects for the
        entries it did not read: ``(alpha, v)`` with alpha (heads,) float and v (kv_heads, d), so
        query head h's output becomes ``alpha[h] * out[h] + (1 - alpha[h]) * v[h // group]``.
        ``read`` (kv_heads, k) as ``read`` gives it, or the slots of ``read_fixed`` with
        ``reading`` (kv_heads, k) bool, the columns read. None (the default) leaves the output as
        the read entries give it."""
        return None


def first_true(mask: torch.Tensor, k: int) -> torch.Tensor:
    """(rows, k) long: per row of ``mask`` (rows, n) bool, the indices of its True entries in
    ascending order, then of its False ones (ascending too), the first k of them: what a stable
    argsort of ``~mask`` gives, as a prefix sum and one scatter (no data-dependent shape, and no
    sort: on CUDA a sort of a few thousand slots per row is several kernels)."""
    on = mask.to(torch.int32)
    slots = torch.arange(mask.shape[-1], device=mask.device)
    before = on.cumsum(dim=-1) - on  # True entries before each slot
    place = torch.where(mask, before, on.sum(dim=-1, keepdim=True) + slots - before).long()  # each slot's rank
    return torch.empty_like(place).scatter_(1, place, slots.expand_as(place))[:, :k]
