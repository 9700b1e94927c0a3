"""A policy's parameters: a small dataclass whose fields carry a ``Param`` (type, range, help) in
their metadata, so the pages and the CLI build their controls from it. No torch here: the
registry, the spec and the pages read parameters without loading a model.

Two kinds of policy exist, and one of each may be composed (``snapkv+quant``): a selector
(``selector.py``) decides which entries of a layer stay; a store (``store.py``) decides how the
kept entries are held.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, NamedTuple, TypeVar

from kvviz.i18n import _


class PolicyError(ValueError):
    """A policy name, parameter or budget that cannot be used; the message names the problem."""


def ratio_budget(ratio: float, prompt_len: int) -> int:
    """Kept entries per layer and KV head for a fraction ``ratio`` of a ``prompt_len``-token
    prompt: the one rounding rule of kvviz (policies, cache, paged cache and pages all use it).

    ratio x prompt_len rounded to the nearest whole number, a half to the even one (Python's
    ``round``), and at least 1. The ratio is taken as the decimal it is written as, so that float
    noise cannot move a half: 0.07 of 150 is 10.5 -> 10 (in floats 10.500000000000002 -> 11)."""
    return max(1, round(Fraction(str(ratio)) * prompt_len))


class Note(NamedTuple):
    """A note on a policy's settings for one prompt: ``level`` "info" (what it keeps) or
    "warning" (settings that do not fit the budget), and the text to show."""

    level: str
    text: str


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


_T = TypeVar("_T")


def param(default: _T, help: str, *, type=None, min=None, max=None, choices=None, optional=False) -> _T:
    """A dataclass field that is a policy parameter (typed as its default, like ``field(default=...)``)."""
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
    paper_url: ClassVar[str] = ""  # a link to the paper (arXiv), optional
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
            "paper_url": cls.paper_url,
            "summary": " ".join(cls.summary.split()),
            "params": [p.as_dict(n) for n, p in cls.params().items()],
        }

    @classmethod
    def from_params(cls, values: dict[str, Any]) -> "Policy":
        specs = cls.params()
        unknown = sorted(set(values) - set(specs))
        if unknown:
            raise PolicyError(_("Policy '{policy}' has no parameter {unknown} (it has: {known}).").format(
                policy=cls.name, unknown=", ".join(map(repr, unknown)), known=", ".join(specs) or _("none")))
        kwargs = {k: coerce(cls.name, k, specs[k], v) for k, v in values.items()}
        policy = cls(**kwargs)
        policy.validate()
        return policy

    def validate(self) -> None:
        for name, spec in self.params().items():
            value = getattr(self, name)
            if value is None:
                if not spec.optional:
                    raise PolicyError(_("{policy}: parameter '{name}' needs a value.").format(policy=self.name, name=name))
                continue
            if spec.choices and value not in spec.choices:
                raise PolicyError(_("{policy}: {name} must be one of {choices}, not {value}.").format(
                    policy=self.name, name=name, choices=", ".join(map(str, spec.choices)), value=repr(value)))
            if spec.min is not None and value < spec.min:
                raise PolicyError(_("{policy}: {name} must be at least {min}, not {value}.").format(
                    policy=self.name, name=name, min=spec.min, value=value))
            if spec.max is not None and value > spec.max:
                raise PolicyError(_("{policy}: {name} must be at most {max}, not {value}.").format(
                    policy=self.name, name=name, max=spec.max, value=value))

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
        raise PolicyError(_("{policy}: {name} must be a {type}, not {value}.").format(
            policy=policy, name=name, type=spec.type.__name__, value=repr(value))) from None
