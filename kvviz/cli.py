"""Command line: ``python -m kvviz <command>``; the commands live in ``kvviz/commands/``.

Errors (unknown policy or parameter, bad budget, empty or too long prompt, a model that does
not load) end with a one-line message on stderr and exit status 2, never a traceback.

``--policy-file PATH`` (repeatable, before or after the command) loads a policy of your own for any
command; a plugin that does not load is a one-line warning on stderr, and the command runs on.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import kvviz
from kvviz.commands import COMMANDS


def command_modules() -> dict:
    return {name: importlib.import_module(f"kvviz.commands.{name}") for name in COMMANDS}


POLICY_FILE_HELP = "a .py file defining a cache policy of your own (see docs/policy_template.py); repeatable"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kvviz", description="Explore the KV cache of a real language model.")
    p.add_argument("--version", action="version", version=f"kvviz {kvviz.__version__}")
    p.add_argument("--policy-file", action="append", default=[], metavar="PATH", help=POLICY_FILE_HELP)
    sub = p.add_subparsers(dest="command", required=True)
    for name, module in command_modules().items():
        passes_through = getattr(module, "PASSES_THROUGH", False)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP, add_help=not passes_through)
        if passes_through:
            continue  # every argument after its name is for another program
        cmd.add_argument("--policy-file", action="append", dest="command_policy_file", default=argparse.SUPPRESS,
                         metavar="PATH", help=POLICY_FILE_HELP)
        module.configure(cmd)
    return p


def _plugin_warnings() -> None:
    """One line per policy plugin that did not load, when this command looked at the policies."""
    policies = sys.modules.get("kvviz.policies")
    if policies is not None and policies.discovered():  # calc never discovers them (no torch)
        for problem in policies.plugin_problems():
            print(f"warning: {problem}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    passes_through = getattr(command_modules()[args.command], "PASSES_THROUGH", False)
    if passes_through:
        args.passed_through = rest  # in the order given: argparse leaves what it does not know alone
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    files = args.policy_file + getattr(args, "command_policy_file", [])
    if files and not passes_through:  # such a command hands them on itself (app: KVVIZ_POLICY_PATH)
        from kvviz import policies

        for path in files:
            policies.add_policy_file(path)
    try:
        status = command_modules()[args.command].main(args)
        _plugin_warnings()
        return status
    except (ValueError, OSError) as e:  # PolicyError and PromptError are ValueErrors
        _plugin_warnings()
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
