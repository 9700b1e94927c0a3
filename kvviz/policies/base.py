"""What every cache policy shares: its parameter spec and the two ways a policy acts on a layer.

A policy is a small dataclass whose fields are its parameters. Each field carries a ``Param``
in its metadata (type, range, help) so the pages and the CLI build their controls from it.

Two kinds of policy exist, and one of each may be composed (``snapkv+quant``):

* a **selector** decides which entries of a layer stay (and may merge the ones that go). The
  cache calls ``Selector.step(layer, ctx)`` after every update of the layer: once after the
  prefill, then after each decoded token. Most selectors are a ``ScoredSelector``: they only
  say how they score entries and what they always keep (``protection``); the base owns the
  budget, the protected entries, the top-k and the selection, as kvpress's ScorerPress does.
* a **store** decides how the kept entries are held: quantized and packed, projected to a
  low rank, pooled into fewer heads. ``Storage.make_store(...)`` builds one per layer; a lossy
  store reports its reconstruction error as a ``LayerError``.

Shapes (batch is always 1 and squeezed away):
  keys, values         (kv_heads, n, head_dim)   materialized in the compute dtype
  positions            (kv_heads, n)             true token position of each entry
  queries              (q_heads, q_len, head_dim) the new queries, RoPE applied
  stats[name]          (kv_heads, n)             per-entry running statistics of the policy
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from kvviz.fixed_capacity import FixedRows
from kvviz.scoring import first_mask, keep_top, recent_mask
from kvviz.trace import Protection


class PolicyError(ValueError):
    """A policy name, parameter or budget that cannot be used; the message names the problem."""


@dataclass(frozen=True)
class Param:
    type: type
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    optional: bool = False  # None is allowed (e.g. budget when ratio is used)

    def as_dict(self, name: str) -> dict:
        return {
            "name": name,
            "type": self.type.__name__,
            "default": self.default,
            "min": self.min,
            "max": self.max,
            "choices": list(self.choices) if self.choices else None,
            "optional": self.optional,
            "help": self.help,
        }


def param(default, help: str, *, type=None, min=None, max=None, choices=None, optional=False):
    """A dataclass field that is a policy parameter."""
    t = type or (builtins_type(default) if default is not None else float)
    spec = Param(t, default, help, min, max, tuple(choices) if choices else None, optional)
    return field(default=default, metadata={"param": spec})


def builtins_type(value):
    return bool if isinstance(value, bool) else int if isinstance(value, int) else float if isinstance(value, float) else str


@dataclass
class Policy:
    """Base of every policy. Subclasses set the class variables and add ``param`` fields."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # citation, e.g. "Xiao et al., 2023. Efficient Streaming Language Models with Attention Sinks"
    summary: ClassVar[str] = ""  # a paragraph: what it does, and how kvviz simplifies it
    kind: ClassVar[str] = "select"  # "select" or "store"

    @classmethod
    def params(cls) -> dict[str, Param]:
        return {f.name: f.metadata["param"] for f in dataclasses.fields(cls) if "param" in f.metadata}

    @classmethod
    def describe(cls) -> dict:
        return {
            "name": cls.name,
            "family": cls.family,
            "kind": cls.kind,
            "paper": cls.paper,
            "summary": " ".join(cls.summary.split()),
            "params": [p.as_dict(n) for n, p in cls.params().items()],
        }

    @classmethod
    def from_params(cls, values: dict[str, Any]) -> "Policy":
        specs = cls.params()
        unknown = sorted(set(values) - set(specs))
        if unknown:
            raise PolicyError(
                f"Policy '{cls.name}' has no parameter {', '.join(map(repr, unknown))}"
                f" (it has: {', '.join(specs) or 'none'})."
            )
        kwargs = {k: coerce(cls.name, k, specs[k], v) for k, v in values.items()}
        policy = cls(**kwargs)
        policy.validate()
        return policy

    def validate(self) -> None:
        for name, spec in self.params().items():
            value = getattr(self, name)
            if value is None:
                if not spec.optional:
                    raise PolicyError(f"{self.name}: parameter '{name}' needs a value.")
                continue
            if spec.choices and value not in spec.choices:
                raise PolicyError(
                    f"{self.name}: {name} must be one of {', '.join(map(str, spec.choices))}, not {value!r}."
                )
            if spec.min is not None and value < spec.min:
                raise PolicyError(f"{self.name}: {name} must be at least {spec.min}, not {value}.")
            if spec.max is not None and value > spec.max:
                raise PolicyError(f"{self.name}: {name} must be at most {spec.max}, not {value}.")

    def values(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in self.params()}


def coerce(policy: str, name: str, spec: Param, value):
    """Turn a CLI/URL string (or a number) into the parameter's type, with a clear error."""
    if value is None:
        return None
    if isinstance(value, str) and value.lower() in ("none", "null", "") and spec.optional:
        return None
    try:
        if spec.type is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if spec.type is int:
            f = float(value)
            if not math.isfinite(f) or f != int(f):
                raise ValueError
            return int(f)
        if spec.type is float:
            f = float(value)
            if not math.isfinite(f):
                raise ValueError
            return f
        return str(value)
    except (TypeError, ValueError):
        raise PolicyError(f"{policy}: {name} must be a {spec.type.__name__}, not {value!r}.") from None


# ----------------------------------------------------------------------------------------------
# Selectors


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

    @property
    def kv_heads(self) -> int:
        return self.keys.shape[0]

    @property
    def n(self) -> int:
        return self.keys.shape[1]


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
        return None

    def layer_budget(self, budget: int | None, layer_idx: int, n_layers: int) -> int | None:
        """Budget of one layer; PyramidKV overrides this."""
        return budget

    def step(self, layer: LayerView, ctx: StepContext) -> Selection | None:
        """Update running stats and return what to keep, or None to keep everything."""
        raise NotImplementedError

    def protection(self, budget: int | None) -> Protection:
        """What this selector always keeps with a layer budget of ``budget`` entries per KV head
        (sinks, a recent window); recorded on the Trace so views can tell protected entries apart."""
        return Protection()


@dataclass
class BudgetSelector(Selector):
    """A selector with a budget of kept entries per layer and KV head, given directly or as a ratio."""

    budget: int | None = param(None, "Kept entries per layer and KV head (or give a ratio).", type=int, min=1, optional=True)
    ratio: float | None = param(0.25, "Kept fraction of the prompt, when no budget is given.", type=float, min=0.001, max=1.0, optional=True)

    def resolve_budget(self, prompt_len: int) -> int:
        """Kept entries per KV head; raises PolicyError when the budget cannot work for this prompt."""
        if self.budget is not None:
            if self.budget <= 0:
                raise PolicyError(f"{self.name}: budget must be positive, not {self.budget}.")
            if self.budget > prompt_len:
                raise PolicyError(
                    f"{self.name}: budget {self.budget} is larger than the prompt ({prompt_len} tokens)."
                )
            return int(self.budget)
        if self.ratio is None:
            raise PolicyError(f"{self.name}: give a budget or a ratio.")
        if not 0 < self.ratio <= 1:
            raise PolicyError(f"{self.name}: ratio must be in (0, 1], not {self.ratio}.")
        return max(1, int(round(self.ratio * prompt_len)))


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


# ----------------------------------------------------------------------------------------------
# Stores


@dataclass(frozen=True)
class LayerError:
    """A lossy store's reconstruction error in one layer (see ``kvviz.trace.StoreError``)."""

    key: float  # ‖k − k̂‖ / ‖k‖ over every key appended
    value: float
    full_precision_keys: int | None = None  # newest tokens whose keys are held unquantized; None: not a quantizer
    full_precision_values: int | None = None


class Store:
    """How one layer holds its entries. The default holds them as they are."""

    # True for a store whose prefill attention reads the prompt's original keys and values, and
    # which holds them compressed from then on: what quantized caches do (KIVI, transformers'
    # QuantizedCache, vLLM's fp8 cache quantize what they store after the prompt's attention).
    # False where the compression is part of the model (pooled heads, a projection in the weights).
    full_precision_prefill: ClassVar[bool] = False

    def __init__(self, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        self.kv_heads, self.head_dim, self.dtype, self.device = kv_heads, head_dim, dtype, device
        self.keys = torch.empty(kv_heads, 0, head_dim, dtype=dtype, device=device)
        self.values = torch.empty(kv_heads, 0, head_dim, dtype=dtype, device=device)

    def __len__(self) -> int:
        return self.keys.shape[1]

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """keys, values: (kv_heads, q, head_dim) in the compute dtype."""
        self.keys = torch.cat([self.keys, keys], dim=1)
        self.values = torch.cat([self.values, values], dim=1)

    def materialize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values in the compute dtype, (kv_heads, n, head_dim) each."""
        return self.keys, self.values

    def keep(self, keep: torch.Tensor, keys: torch.Tensor | None = None, values: torch.Tensor | None = None) -> None:
        """Keep the entries ``keep`` (kv_heads, k); ``keys``/``values`` replace them when given (merging)."""
        idx = keep.unsqueeze(-1).expand(-1, -1, self.head_dim)
        self.keys = keys if keys is not None else self.keys.gather(1, idx)
        self.values = values if values is not None else self.values.gather(1, idx)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the store holds (for kv_bytes)."""
        return [self.keys, self.values]

    def row_paths(self) -> list[tuple[str, ...]] | None:
        """Attribute paths of the tensors that grow by one row (dim 1) per appended token, and
        only those: ``kvviz.fixed_capacity`` holds them in preallocated buffers. None for a store
        that cannot be held so (one whose appends also change other tensors' shapes)."""
        return [("keys",), ("values",)]

    def can_hold_fixed(self) -> bool:
        """Whether ``hold_fixed`` can move this store into fixed-capacity buffers."""
        return self.row_paths() is not None

    def hold_fixed(self, capacity: int, n: int, length: torch.Tensor):
        """Move the ``n`` entries held into buffers of ``capacity`` (``kvviz.fixed_capacity``);
        ``length`` (1,) long on the device counts the entries held, advanced by the layer.
        Returns what appends to the buffers (``FixedRows`` over ``row_paths``)."""
        return FixedRows(self, self.row_paths(), capacity, n)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def error(self) -> LayerError | None:
        """The reconstruction error of a lossy store; None for one that holds entries as they are."""
        return None


@dataclass
class Storage(Policy):
    """A policy that changes how entries are stored."""

    kind: ClassVar[str] = "store"

    def make_store(self, layer_idx: int, n_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device) -> Store:
        raise NotImplementedError
