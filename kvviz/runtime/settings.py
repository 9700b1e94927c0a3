"""What the operator of a shared server lets visitors do in the browser, from environment
variables (read on every use, so a test or a restart with new values takes effect at once):

======================== =========================================================== ==========
variable                 what it says                                                default
======================== =========================================================== ==========
KVVIZ_ALLOWED_MODELS     models visitors may pick besides the default (the embedded  (none)
                         SmolLM2, or ``KVVIZ_MODEL``): Hugging Face ids or paths,
                         separated by commas; ``*`` allows any Hugging Face id
KVVIZ_ALLOW_LOCAL_PATHS  1: a visitor may name any directory or .gguf file on the     0
                         server's disk (paths listed above are allowed anyway)
KVVIZ_MAX_PROMPT_TOKENS  tokens of a prompt a page runs                              8192
KVVIZ_MAX_NEW_TOKENS     tokens generated, or forced, per run                        256
KVVIZ_MAX_SWEEP_RUNS     runs in one sweep of the Tradeoffs page                     64
KVVIZ_MAX_UPLOAD_MB      size of an uploaded run bundle or trace (at most 50)        50
KVVIZ_MAX_CONCURRENT_RUNS runs at once; the others wait in a first-in-first-out queue 1
KVVIZ_MAX_QUEUED_RUNS    runs that may wait; beyond that a run is refused            64
KVVIZ_ABANDON_AFTER_S    seconds after a tab closes that its run leaves the queue    20
======================== =========================================================== ==========

The CLI is the operator's own and does not read them. A value that is not a number (or out of
its range) is a ``SettingsError`` naming the variable, which the pages show.

The same settings may live in a config file, section ``[kvviz]``, each named without its
``KVVIZ_`` prefix in lower case (``max_new_tokens = 128``, ``allowed_models = ["org/name"]``):
the file ``$KVVIZ_CONFIG``, else ``.streamlit/kvviz.toml`` in the directory the server starts in.
A variable that is set overrides the file. A bad value in the file (or a file that is not TOML)
does not stop the server: that setting keeps its default, and the pages say why
(``OperatorSettings.notes``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from kvviz.model.loading import ModelLoadError, default_model_spec, display_name, embedded_gguf_path, looks_like_path

CONFIG_FILE = Path(".streamlit") / "kvviz.toml"  # relative to the directory the server starts in
VARIABLES = (
    "KVVIZ_ALLOWED_MODELS", "KVVIZ_ALLOW_LOCAL_PATHS", "KVVIZ_MAX_PROMPT_TOKENS", "KVVIZ_MAX_NEW_TOKENS",
    "KVVIZ_MAX_SWEEP_RUNS", "KVVIZ_MAX_UPLOAD_MB", "KVVIZ_MAX_CONCURRENT_RUNS", "KVVIZ_MAX_QUEUED_RUNS",
    "KVVIZ_ABANDON_AFTER_S",
)
UPLOAD_MB_CEILING = 50  # the run bundle reader's own limit (and .streamlit/config.toml maxUploadSize)


class SettingsError(ValueError):
    """An operator setting that cannot be used; the message names the variable."""


class ModelNotAllowed(ValueError):
    """A visitor asked for a model the operator does not offer; the message names the setting."""


@dataclass(frozen=True)
class Limits:
    """The sizes a visitor's run may have (``kvviz.runtime.inputs.check_run`` applies them)."""

    max_prompt_tokens: int = 8192
    max_new_tokens: int = 256
    max_sweep_runs: int = 64
    max_upload_mb: int = UPLOAD_MB_CEILING

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb << 20


@dataclass(frozen=True)
class OperatorSettings:
    allowed_models: tuple[str, ...] = ()
    allow_local_paths: bool = False
    limits: Limits = Limits()
    max_concurrent_runs: int = 1
    max_queued_runs: int = 64
    abandon_after_s: float = 20.0
    notes: tuple[str, ...] = ()  # what was wrong in the config file (its defaults kept), for the pages to show

    # ------------------------------------------------------------------ models

    def check_model(self, spec: str) -> None:
        """Raise ModelNotAllowed unless a visitor may load ``spec``: the default model, the
        embedded one, one the operator listed, any hub id under ``*``, any path when local paths
        are allowed."""
        spec = (spec or "").strip()
        if not spec or _same_model(spec, default_model_spec()) or _is_embedded(spec):
            return
        if any(_same_model(spec, allowed) for allowed in self.allowed_models):
            return
        offered = self.offered()
        if looks_like_path(spec):
            if self.allow_local_paths:
                return
            raise ModelNotAllowed(
                "This server does not open files or folders named in the browser (KVVIZ_ALLOW_LOCAL_PATHS is off). "
                f"Models on offer: {offered}."
            )
        if "*" in self.allowed_models:
            return
        raise ModelNotAllowed(f"{spec} is not among the models this server offers (KVVIZ_ALLOWED_MODELS): {offered}.")

    def offered(self) -> str:
        """The models a visitor may pick, as a person reads them (files by their names only)."""
        names = [display_name(default_model_spec())]
        names += [display_name(m) for m in self.allowed_models if m != "*" and display_name(m) not in names]
        if "*" in self.allowed_models:
            names.append("any Hugging Face model id")
        return ", ".join(names)


def _is_embedded(spec: str) -> bool:
    try:
        return _same_model(spec, str(embedded_gguf_path()))
    except ModelLoadError:
        return False


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    if looks_like_path(a) and looks_like_path(b):
        try:
            return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
        except (OSError, RuntimeError):
            return False
    return False


# ------------------------------------------------------------------ reading the environment


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number.") from None
    if value < low or (high is not None and value > high):
        raise SettingsError(f"{name}={value} must be {f'between {low} and {high}' if high is not None else f'at least {low}'}.")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name}={raw!r}: use 1 or 0.")


def from_env(env: Mapping[str, str] | None = None) -> OperatorSettings:
    """The operator's settings from ``env`` (the process's environment when None) over those of
    the config file (``$KVVIZ_CONFIG`` or ``.streamlit/kvviz.toml``). A bad variable raises
    SettingsError; a bad value in the file is left out, with a note."""
    env = os.environ if env is None else env
    from_file, notes = config_file_values(Path(env.get("KVVIZ_CONFIG", "").strip() or CONFIG_FILE))
    merged = {**from_file, **{name: value for name, value in env.items() if value.strip()}}
    settings = _parse(merged)
    return OperatorSettings(**{**settings.__dict__, "notes": tuple(notes)})


def config_file_values(path: Path) -> tuple[dict[str, str], list[str]]:
    """({variable: value as text} of the ``[kvviz]`` section of ``path``, notes on what was left
    out; they name the file, not its folder: visitors read them). A missing file is no settings
    and no note (unless KVVIZ_CONFIG named it); each value is checked on its own."""
    if not path.is_file():
        return {}, [f"The config file {path.name} (KVVIZ_CONFIG) does not exist; its settings are not applied."] if path != CONFIG_FILE else []
    try:
        section = _read_toml(path).get("kvviz", {})
        if not isinstance(section, dict):
            raise ValueError("[kvviz] is not a section")
    except (OSError, ValueError) as exc:
        return {}, [f"The config file {path.name} cannot be read ({' '.join(str(exc).split())[:200]}); this server uses its defaults."]
    values, notes = {}, []
    for key, raw in section.items():
        name = f"KVVIZ_{str(key).upper()}"
        if name not in VARIABLES:
            notes.append(f"{path.name}: [kvviz] {key} is not a kvviz setting (ignored). Settings: {', '.join(v[6:].lower() for v in VARIABLES)}.")
            continue
        text = _as_text(raw)
        try:
            _parse({name: text})
        except SettingsError as exc:
            notes.append(f"{path.name}: [kvviz] {str(exc).replace(name, key)} The default is used.")
            continue
        values[name] = text
    return values, notes


def _as_text(value: Any) -> str:
    """A TOML value as the variable would say it (lists joined by commas, booleans as 1/0)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def _read_toml(path: Path) -> dict:
    try:
        import tomllib  # Python 3.11+
    except ImportError:  # Python 3.10: the toml package streamlit depends on
        import toml

        return toml.loads(path.read_text())
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def _parse(env: Mapping[str, str]) -> OperatorSettings:
    allowed = tuple(m.strip() for m in env.get("KVVIZ_ALLOWED_MODELS", "").split(",") if m.strip())
    limits = Limits(
        max_prompt_tokens=_int(env, "KVVIZ_MAX_PROMPT_TOKENS", Limits.max_prompt_tokens, 1),
        max_new_tokens=_int(env, "KVVIZ_MAX_NEW_TOKENS", Limits.max_new_tokens, 1),
        max_sweep_runs=_int(env, "KVVIZ_MAX_SWEEP_RUNS", Limits.max_sweep_runs, 1),
        max_upload_mb=_int(env, "KVVIZ_MAX_UPLOAD_MB", Limits.max_upload_mb, 1, UPLOAD_MB_CEILING),
    )
    raw_abandon = env.get("KVVIZ_ABANDON_AFTER_S", "").strip()
    try:
        abandon = float(raw_abandon) if raw_abandon else OperatorSettings.abandon_after_s
    except ValueError:
        raise SettingsError(f"KVVIZ_ABANDON_AFTER_S={raw_abandon!r} is not a number of seconds.") from None
    if not abandon >= 0:
        raise SettingsError(f"KVVIZ_ABANDON_AFTER_S={raw_abandon} must be at least 0.")
    return OperatorSettings(
        allowed_models=allowed,
        allow_local_paths=_bool(env, "KVVIZ_ALLOW_LOCAL_PATHS"),
        limits=limits,
        max_concurrent_runs=_int(env, "KVVIZ_MAX_CONCURRENT_RUNS", OperatorSettings.max_concurrent_runs, 1),
        max_queued_runs=_int(env, "KVVIZ_MAX_QUEUED_RUNS", OperatorSettings.max_queued_runs, 0),
        abandon_after_s=abandon,
    )
