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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from kvviz.model.loading import ModelLoadError, default_model_spec, display_name, embedded_gguf_path, looks_like_path

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
    """The operator's settings from ``env`` (the process's environment when None)."""
    env = os.environ if env is None else env
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
