"""PolicySpec: the user's choice of cache policy as one frozen, hashable, serializable value.

The controls of a page and the CLI build it once; the engine runs it, the Trace stores it, the
URL and run bundles carry it. It holds the policy's name (one policy, or ``selector+store``),
every parameter resolved to its value (defaults filled in), and the budget: entries per layer and
KV head, or a ratio of the prompt.

Text form (CLI, URL): ``name[:key=value,...]``, e.g. ``h2o:recent=8,ratio=0.25``,
``snapkv+quant:window=8,quant.bits=4,budget=64``. Only parameters that differ from their
defaults are written.

This module imports no torch: ``create``/``parse`` (which validate against the policy classes)
and ``pipeline`` load the policies when they are called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kvviz import i18n
from kvviz.i18n import _
from kvviz.policies.params import Note

BUDGET_KEYS = ("budget", "ratio")

Params = tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]  # ((policy, ((param, value), ...)), ...)


@dataclass(frozen=True)
class PolicySpec:
    name: str  # "h2o", "snapkv+quant"
    params: Params = ()  # every parameter of every policy in ``name`` but budget/ratio, resolved
    budget: int | None = None  # kept entries per layer and KV head
    ratio: float | None = None  # kept fraction of the prompt, when no budget is given

    # ---------------------------------------------------------------- building

    @classmethod
    def create(cls, name: str, params: dict | None = None, budget: int | None = None, ratio: float | None = None) -> "PolicySpec":
        """Validate against the policy classes and resolve every parameter; raises PolicyError.

        ``params`` is flat ({"bits": 4}), prefixed ({"quant.bits": 4}) or nested
        ({"quant": {"bits": 4}}). A policy that takes no budget ignores ``budget``/``ratio``; one
        that does gets its default ratio when neither is given."""
        from kvviz import policies

        params = dict(params or {})
        for key in BUDGET_KEYS:  # a budget given among the parameters (text form, URL)
            if key in params:
                value = params.pop(key)
                if key == "budget":
                    budget = None if value in (None, "", "none") else _int(value, "budget")
                else:
                    ratio = None if value in (None, "", "none") else _float(value, "ratio")
        if not policies.takes_budget(name):
            budget = ratio = None
        elif budget is None and ratio is None:
            ratio = policies.BudgetSelector.params()["ratio"].default
        pipeline = policies.build(name, params, budget=budget, ratio=ratio)
        resolved = []
        for policy, values in pipeline.params().items():
            kept = tuple((k, v) for k, v in values.items() if k not in BUDGET_KEYS)
            resolved.append((policy, kept))
        return cls(pipeline.spec, tuple(resolved), None if budget is None else int(budget), None if budget is not None or ratio is None else float(ratio))

    @classmethod
    def parse(cls, text: str, budget: int | None = None, ratio: float | None = None) -> "PolicySpec":
        """``"snapkv:window=8,kernel=7"`` -> PolicySpec; ``budget``/``ratio`` apply unless the text sets one."""
        from kvviz.policies import PolicyError

        name, _colon, rest = (text or "").strip().partition(":")
        params: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise PolicyError(_("'{text}': parameters are key=value, separated by commas (got '{item}').").format(text=text, item=item))
            params[key.strip()] = value.strip()
        if any(k in params for k in BUDGET_KEYS):
            budget = ratio = None
        return cls.create(name.strip(), params, budget=budget, ratio=ratio)

    @classmethod
    def of(cls, value: "PolicySpec | str", params: dict | None = None, budget: int | None = None, ratio: float | None = None) -> "PolicySpec":
        """A spec as given, or built from a name or text form (``"snapkv:window=8"``) with
        ``params`` over the text's parameters and ``budget``/``ratio`` over the text's budget
        (the engine's and the CLI's convenience). Extra values with a ready spec are refused."""
        if isinstance(value, PolicySpec):
            if params or budget is not None or ratio is not None:
                raise TypeError("give params, budget and ratio inside the PolicySpec")
            return value
        parsed = cls.parse(value)
        if not params and budget is None and ratio is None:
            return parsed
        if budget is None and ratio is None:
            budget, ratio = parsed.budget, parsed.ratio
        return cls.create(parsed.name, {**parsed.changed_params(), **(params or {})}, budget=budget, ratio=ratio)

    def with_budget(self, budget: int | None = None, ratio: float | None = None) -> "PolicySpec":
        """The same policy and parameters with another budget (or ratio)."""
        return PolicySpec.create(self.name, self.params_dict(), budget=budget, ratio=ratio)

    # ---------------------------------------------------------------- reading

    @property
    def policies(self) -> list[str]:
        return self.name.split("+")

    @property
    def takes_budget(self) -> bool:
        return self.budget is not None or self.ratio is not None

    def params_dict(self) -> dict[str, dict[str, Any]]:
        """{policy: {param: value}} without budget/ratio."""
        return {policy: dict(values) for policy, values in self.params}

    def changed_params(self) -> dict[str, Any]:
        """Parameters that differ from their defaults, keyed as in the text form."""
        from kvviz import policies

        out = {}
        prefix = len(self.params) > 1
        for policy, values in self.params:
            specs = policies.get(policy).params()
            for key, value in values:
                if key in specs and value != specs[key].default:
                    out[f"{policy}.{key}" if prefix else key] = value
        return out

    def pipeline(self):
        """The policy objects (kvviz.policies.Pipeline) this spec describes."""
        from kvviz import policies

        return policies.build(self.name, self.params_dict(), budget=self.budget, ratio=self.ratio)

    def resolve_budget(self, prompt_len: int) -> int | None:
        """Kept entries per layer and KV head for a prompt of ``prompt_len`` tokens (None = no
        limit); raises PolicyError when the budget cannot work for this prompt."""
        selector = self.pipeline().selector
        return None if selector is None else selector.resolve_budget(prompt_len)

    # ---------------------------------------------------------------- text, dict, label

    def to_text(self) -> str:
        """The short text form: name, changed parameters, budget or ratio."""
        items = [f"{k}={_fmt(v, exact=True)}" for k, v in self.changed_params().items()]
        if self.budget is not None:
            items.append(f"budget={self.budget}")
        elif self.ratio is not None:
            items.append(f"ratio={_fmt(self.ratio, exact=True)}")
        return self.name + (":" + ",".join(items) if items else "")

    def label(self) -> str:
        """For legends and titles: ``h2o recent=8 · 25%``, ``snapkv · 64/head``."""
        parts = [self.name]
        changed = " ".join(f"{k}={_fmt(v)}" for k, v in self.changed_params().items())
        if changed:
            parts.append(changed)
        if self.budget is not None:
            parts.append(f"· {self.budget}/head")
        elif self.ratio is not None:
            parts.append(f"· {_fmt(100 * self.ratio)}%")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {"policy": self.name, "params": self.params_dict(), "budget": self.budget, "ratio": self.ratio}

    @classmethod
    def from_dict(cls, d: dict) -> "PolicySpec":
        """Inverse of ``to_dict``; validated again (a bundle or URL is untrusted input)."""
        from kvviz.policies import PolicyError

        if not isinstance(d, dict) or not isinstance(d.get("policy"), str):
            raise PolicyError(_("A policy spec needs a 'policy' name."))
        params = d.get("params") or {}
        if not isinstance(params, dict):
            raise PolicyError(_("A policy spec's 'params' must be an object."))
        return cls.create(d["policy"], params, budget=d.get("budget"), ratio=d.get("ratio"))

    def __str__(self) -> str:
        return self.to_text()


def _fmt(v: Any, exact: bool = False) -> str:
    """A value for people (6 digits) or, ``exact``, for a link or bundle: 12 digits, so a ratio
    like 0.9921875 reads back as itself (6 digits made it 0.992188, another spec) while a slider's
    0.35000000000000003 still reads 0.35."""
    if isinstance(v, float):
        return f"{v:.12g}" if exact else f"{v:g}"
    return str(v)


def _int(value, what: str) -> int:
    from kvviz.policies import PolicyError

    try:
        f = float(value)
        if not math.isfinite(f) or f != int(f):
            raise ValueError
        return int(f)
    except (TypeError, ValueError):
        raise PolicyError(_("{what} must be a whole number, not {value}.").format(what=what, value=repr(value))) from None


def _float(value, what: str) -> float:
    from kvviz.policies import PolicyError

    try:
        f = float(value)
        if not math.isfinite(f):
            raise ValueError
        return f
    except (TypeError, ValueError):
        raise PolicyError(_("{what} must be a number, not {value}.").format(what=what, value=repr(value))) from None


def budget_notes(spec: PolicySpec, prompt_len: int) -> list[Note]:
    """Notes on the budget this spec gets on a prompt of ``prompt_len`` tokens, each a
    ``Note(level, text)``: "info" says what the policy always keeps (named by its parameters),
    "warning" that its settings ask for more than the budget holds or fill it. Raises PolicyError
    when the budget cannot work for this prompt."""
    budget = spec.resolve_budget(prompt_len)
    selector = spec.pipeline().selector
    return [] if selector is None else selector.budget_notes(budget)


def saved_budget_notes(spec: PolicySpec, prompt_len: int) -> list[str]:
    """The texts of ``budget_notes`` in English whatever the session's language: what a run saves
    in its JSON (``shown_budget_notes`` gives them back in the page's language)."""
    with i18n.speaking(i18n.ENGLISH):
        return [text for _level, text in budget_notes(spec, prompt_len)]


def shown_budget_notes(spec: PolicySpec, prompt_len: int, saved: list[str]) -> list[str]:
    """Saved notes in the session's language: each of ``saved_budget_notes`` becomes the same note
    in that language; any other note stays as saved."""
    from kvviz.policies import PolicyError

    try:
        shown = dict(zip(saved_budget_notes(spec, prompt_len), (text for _level, text in budget_notes(spec, prompt_len))))
    except PolicyError:
        return list(saved)
    return [shown.get(note, note) for note in saved]
