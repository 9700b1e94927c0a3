"""Policies from outside kvviz, with the built-in API: ``.py`` files on the server's disk (named in
``KVVIZ_POLICY_PATH`` or added at run time by the CLI's ``--policy-file``) and entry points of the
group ``kvviz.policies`` (a module or a class). Code is only ever read from the server's disk.

A plugin that does not load is a ``PluginProblem`` (one line naming the file), never an exception:
the registry keeps every other policy. The registry (``kvviz.policies``) calls ``load`` after the
built-ins and refuses a plugin that takes a name already in use.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

from kvviz.i18n import _
from kvviz.policies.params import Policy

ENV = "KVVIZ_POLICY_PATH"  # os.pathsep-separated .py files or folders of them
GROUP = "kvviz.policies"  # entry point group
_files: list[Path] = []  # added at run time (the CLI's --policy-file)


@dataclass(frozen=True)
class PluginProblem:
    where: str  # the plugin file's path, or "entry point 'name' (module:attr)"
    error: str  # one line

    def __str__(self) -> str:
        return f"policy plugin {self.where}: {self.error}"

    def short(self) -> str:
        """The same with the file's name only (what a page shows: visitors get no server paths)."""
        where = Path(self.where).name if not self.where.startswith("entry point") else self.where
        return _("policy plugin {file}: {error}").format(file=where, error=self.error)


def add_file(path: str | os.PathLike) -> None:
    _files.append(Path(path).expanduser().resolve())


def forget_files() -> None:
    _files.clear()


def _paths() -> list[Path]:
    """The env variable's entries, then the files added at run time (folders as they are)."""
    listed = [Path(p).expanduser().resolve() for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]
    return list(dict.fromkeys(listed + _files))


def _one_line(exc: BaseException, path: Path | None = None) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} (line {exc.lineno})"
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if path and Path(f.filename) == path]
    return text + (f" (line {lines[-1]})" if lines else "")


def _import_file(path: Path) -> ModuleType:
    stem = re.sub(r"\W", "_", path.stem)
    name = f"kvviz_policy_plugin_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _policies_in(module: ModuleType) -> list[type]:
    return [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Policy)
            and c.__module__ == module.__name__ and c.__dict__.get("name")]


def _sources() -> list[tuple[str, Callable[[], list[type]] | Exception]]:
    """(where, loader) for every plugin: loader() returns the policy classes it defines; an
    exception in its place says why there is none."""
    out: list[tuple[str, Callable[[], list[type]] | Exception]] = []
    for path in _paths():
        if path.is_dir():
            out += [(str(f), (lambda f=f: _policies_in(_import_file(f)))) for f in sorted(path.glob("*.py"))]
        elif not path.exists():
            out.append((str(path), FileNotFoundError("no such file or folder")))
        elif path.suffix != ".py":
            out.append((str(path), ValueError("not a .py file")))
        else:
            out.append((str(path), lambda f=path: _policies_in(_import_file(f))))
    for ep in importlib.metadata.entry_points(group=GROUP):
        def load(ep=ep):
            obj = ep.load()
            if isinstance(obj, ModuleType):
                return _policies_in(obj)
            if isinstance(obj, type) and issubclass(obj, Policy):
                return [obj]
            raise TypeError(f"{ep.value} is neither a module nor a Policy class")
        out.append((f"entry point '{ep.name}' ({ep.value})", load))
    return out


def _refusal(cls: type, taken: dict[str, str]) -> str | None:
    """Why ``cls`` cannot be registered (``taken``: name -> where it is defined), or None."""
    from kvviz.policies.selector import Selector
    from kvviz.policies.store import Storage

    name = cls.__dict__["name"]
    if not issubclass(cls, (Selector, Storage)):
        return f"{cls.__name__} is neither a Selector nor a Storage (subclass ScoredSelector, say)"
    if not (isinstance(name, str) and name.isidentifier()):
        return f"policy name {name!r} must be a Python identifier (letters, digits, _)"
    if name in taken:
        return f"policy name '{name}' is taken by {taken[name]}: rename it"
    cls.describe()  # raises on a broken parameter
    return None


def load(builtins: set[str]) -> tuple[dict[str, tuple[type, str]], list[PluginProblem]]:
    """Every plugin policy, name -> (class, where it came from), and the problems met."""
    taken = {n: "a built-in policy" for n in builtins}
    found: dict[str, tuple[type, str]] = {}
    problems: list[PluginProblem] = []
    for where, loader in _sources():
        path = Path(where) if not where.startswith("entry point") else None
        try:
            if isinstance(loader, Exception):
                raise loader
            classes = loader()
            if not classes:
                raise LookupError("defines no policy (a Selector or Storage subclass with a name)")
            for cls in classes:
                why = _refusal(cls, taken)
                if why:
                    problems.append(PluginProblem(where, why))
                    continue
                found[cls.name] = (cls, where)
                taken[cls.name] = f"plugin {where}"
        except Exception as exc:  # a broken plugin: reported, the rest keeps working
            problems.append(PluginProblem(where, _one_line(exc, path)))
    return found, problems
