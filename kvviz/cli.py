"""Command line: ``python -m kvviz <command>``; the commands live in ``kvviz/commands/``.

Errors (unknown policy or parameter, bad budget, empty or too long prompt, a model that does
not load) end with a one-line message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kvviz.commands import COMMANDS


def command_modules() -> dict:
    return {name: importlib.import_module(f"kvviz.commands.{name}") for name in COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kvviz", description="Explore the KV cache of a real language model.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, module in command_modules().items():
        module.configure(sub.add_parser(name, help=module.HELP, description=module.HELP))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return command_modules()[args.command].main(args)
    except (ValueError, OSError) as e:  # PolicyError and PromptError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # torch.OutOfMemoryError is one; anything else is a bug: let it show
        if type(e).__name__ != "OutOfMemoryError":
            raise
        from kvviz.model.loading import out_of_memory_message

        print(f"error: {out_of_memory_message(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        # a model that does not load; kvviz.model.loading (torch) is only imported by commands that load one
        models = sys.modules.get("kvviz.model.loading")
        if models is None or not isinstance(e, models.ModelLoadError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
