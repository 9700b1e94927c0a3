"""The policy registry. Every module in this package that defines a ``Policy`` subclass with a
``name`` registers it: adding a policy is adding one file.

Policies from outside kvviz (files on the server's disk, entry points) join after the built-ins:
``kvviz/policies/plugins.py`` loads them; ``add_policy_file`` adds a file at run time,
``plugin_problems`` says which did not load, ``reset_registry`` forgets everything (tests).

A run names one policy or a composition ``selector+store`` (e.g. ``snapkv+quant``). Parameters
are given flat (``bits=4``) when only one policy of the composition has that name, or prefixed
(``quant.bits=4``).
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from dataclasses import dataclass

from typing import TYPE_CHECKING

from kvviz.i18n import _
from kvviz.policies.params import Param, Policy, PolicyError  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from kvviz.policies.plugins import PluginProblem
    from kvviz.policies.selector import Selector
    from kvviz.policies.store import Storage

# Importing this package loads no torch (the spec, the CLI's --help and the chart modules read it);
# the selector and store classes, which compute on tensors, load when first asked for.
_LAZY = {name: "selector" for name in ("BudgetSelector", "LayerView", "ScoredSelector", "Selection", "Selector", "StepContext")}
_LAZY.update({name: "store" for name in ("LayerError", "Storage", "Store")})
_NOT_POLICIES = {"params", "selector", "store", "spec", "scoring", "plugins"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_REGISTRY: dict[str, type[Policy]] = {}
_PLUGINS: dict[str, str] = {}  # plugin policy name -> where it came from (a path or an entry point)
_PROBLEMS: list[PluginProblem] = []
_LOCK = threading.Lock()  # sessions of the app discover at once


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_POLICIES:
            importlib.import_module(f"{__name__}.{info.name}")
    found: dict[str, type[Policy]] = {}
    stack = list(Policy.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__dict__.get("name") and cls.__module__.startswith(f"{__name__}."):  # plugins come below
            found[cls.name] = cls
    from kvviz.policies import plugins

    loaded, problems = plugins.load(set(found))
    _PLUGINS.clear()
    _PLUGINS.update({name: where for name, (_, where) in loaded.items()})
    _PROBLEMS[:] = problems
    _REGISTRY.update(found | {name: cls for name, (cls, _) in loaded.items()})


def _ensure() -> None:
    with _LOCK:
        if not _REGISTRY:
            _discover()


def discovered() -> bool:
    """Whether the policies were looked for (a command that never needed them loads no torch)."""
    return bool(_REGISTRY)


def plugin_source(name: str) -> str | None:
    """Where a plugin policy came from (its file, or its entry point); None for a built-in."""
    _ensure()
    return _PLUGINS.get(name)


def plugin_problems() -> list[PluginProblem]:
    """The plugins that did not load or were refused, each with a one-line message naming it."""
    _ensure()
    return list(_PROBLEMS)


def add_policy_file(path) -> None:
    """Load the policies of a ``.py`` file too (the CLI's ``--policy-file``); problems are reported
    by ``plugin_problems``, never raised."""
    from kvviz.policies import plugins

    with _LOCK:
        plugins.add_file(path)
        _REGISTRY.clear()  # discovered again, with the file, when next asked


def reset_registry() -> None:
    """Forget every policy, plugin, problem and added file (tests): the next call discovers again."""
    from kvviz.policies import plugins

    with _LOCK:
        plugins.forget_files()
        _REGISTRY.clear()
        _PLUGINS.clear()
        _PROBLEMS.clear()


def registry() -> dict[str, type[Policy]]:
    """Name -> policy class, in a stable order (baseline first, then by family and name)."""
    _ensure()
    order = ["baseline", "eviction", "sparse", "merging", "quantization", "low-rank", "head sharing"]
    rank = {f: i for i, f in enumerate(order)}
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (rank.get(kv[1].family, 99), kv[0] != "full", kv[0])))


def get(name: str) -> type[Policy]:
    reg = registry()
    if name not in reg:
        broken = "".join(_(" Not loaded: {what}.").format(what=p.short()) for p in _PROBLEMS)  # no server paths: pages show this
        raise PolicyError(_("Unknown policy '{name}'. Known policies: {known}.").format(name=name, known=", ".join(reg)) + broken)
    return reg[name]


def is_selector(name: str) -> bool:
    from kvviz.policies.selector import Selector

    return issubclass(get(name), Selector)


def companions(name: str) -> list[str]:
    """Policies that compose with ``name``: the stores for a selector, the selectors (but the
    full cache) for a store."""
    from kvviz.policies.selector import Selector
    from kvviz.policies.store import Storage

    reg = registry()
    if name not in reg or name == "full":
        return []
    want = Storage if is_selector(name) else Selector
    return [n for n, cls in reg.items() if n not in ("full", name) and issubclass(cls, want)]


def compose(name: str, companion: str | None = None) -> str:
    """The spec of ``name`` with an optional companion, selector first: ``snapkv+quant``."""
    if not companion:
        return name
    return f"{name}+{companion}" if is_selector(name) else f"{companion}+{name}"


def takes_budget(spec: str) -> bool:
    """Whether a policy name or composition (``snapkv+quant``) has a budget/ratio."""
    from kvviz.policies.selector import BudgetSelector

    return any(issubclass(get(n.strip()), BudgetSelector) for n in (spec or "").split("+") if n.strip())


def tunable_params(name: str) -> dict[str, Param]:
    """A policy's parameters without budget/ratio (pages give those one shared control)."""
    from kvviz.policies.selector import BudgetSelector

    params = get(name).params()
    if issubclass(get(name), BudgetSelector):
        params = {k: v for k, v in params.items() if k not in ("budget", "ratio")}
    return params


@dataclass
class Pipeline:
    """A parsed policy spec: at most one selector and at most one store, and a retriever after
    an evicting selector (``snapkv+quest``: evict first, then read)."""

    spec: str
    selector: Selector | None
    storage: Storage | None
    reader: Selector | None = None  # a Retriever composed after ``selector``

    @property
    def policies(self) -> list[Policy]:
        return [p for p in (self.selector, self.reader, self.storage) if p is not None]

    def params(self) -> dict[str, dict]:
        return {p.name: p.values() for p in self.policies}


def build(spec: str, params: dict | None = None, budget: int | None = None, ratio: float | None = None) -> Pipeline:
    """Parse ``spec`` ("h2o", "snapkv+quant") and its parameters into policy objects.

    ``params`` is flat ({"bits": 4}), prefixed ({"quant.bits": 4}) or nested ({"quant": {"bits": 4}}).
    ``budget``/``ratio`` go to the selector.
    """
    from kvviz.policies.selector import BudgetSelector, Retriever, Selector
    from kvviz.policies.store import Storage

    names = [n.strip() for n in (spec or "").split("+") if n.strip()]
    if not names:
        raise PolicyError(_("No policy given."))
    classes = [get(n) for n in names]
    selectors = [c for c in classes if issubclass(c, Selector)]
    stores = [c for c in classes if issubclass(c, Storage)]
    readers = [c for c in selectors if issubclass(c, Retriever)] if len(selectors) == 2 else []
    if len(readers) == 1:
        selectors = [c for c in selectors if c is not readers[0]]  # snapkv+quest: evict, then read
    if len(selectors) > 1 or len(stores) > 1:
        raise PolicyError(_("'{spec}': compose at most one selector and one store (e.g. snapkv+quant), and a retriever (snapkv+quest).").format(spec=spec))
    per_policy: dict[str, dict] = {c.name: {} for c in classes}
    for key, value in (params or {}).items():
        if isinstance(value, dict) and key in per_policy:
            per_policy[key].update(value)
            continue
        if "." in key:
            owner, _dot, pname = key.partition(".")
            if owner not in per_policy:
                raise PolicyError(_("'{key}': '{owner}' is not part of '{spec}'.").format(key=key, owner=owner, spec=spec))
            per_policy[owner][pname] = value
            continue
        owners = [c.name for c in classes if key in c.params()]
        if not owners:
            raise PolicyError(_("Unknown parameter '{key}' for '{spec}'.").format(key=key, spec=spec))
        if len(owners) > 1:
            raise PolicyError(_("Parameter '{key}' is ambiguous in '{spec}': write {owner}.{key}.").format(key=key, spec=spec, owner=owners[0]))
        per_policy[owners[0]][key] = value
    if budget is not None or ratio is not None:
        budgeted = [c for c in selectors if issubclass(c, BudgetSelector)]
        if not budgeted:
            raise PolicyError(_("'{spec}' takes no budget.").format(spec=spec))
        per_policy[budgeted[0].name]["budget"] = budget
        per_policy[budgeted[0].name]["ratio"] = ratio if budget is None else None
    built = {c.name: c.from_params(per_policy[c.name]) for c in classes}
    selector = next((built[c.name] for c in selectors), None)  # at most one of each (checked above)
    storage = next((p for p in built.values() if isinstance(p, Storage)), None)
    reader = built[readers[0].name] if len(readers) == 1 else None
    assert (selector is None or isinstance(selector, Selector)) and (reader is None or isinstance(reader, Selector))
    return Pipeline(spec="+".join(names), selector=selector, storage=storage, reader=reader)
