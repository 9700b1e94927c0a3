"""The subcommands of ``python -m kvviz``: one module each, listed in ``COMMANDS``.

A command module defines ``HELP`` (one line), ``configure(parser)`` (its arguments) and
``main(args) -> int`` (exit status). It raises ``PolicyError``, ``PromptError``, ``ValueError``
or ``OSError`` for bad input: ``kvviz.cli`` turns those into one line on stderr and exit status 2.
Heavy imports (torch, transformers) go inside ``main`` so ``--help`` stays fast. A module with
``PASSES_THROUGH = True`` (``app``) takes no options of its own: every argument after its name,
``--help`` included, arrives untouched in ``args.passed_through``.
"""

COMMANDS = ["app", "policies", "run", "sweep", "calc", "paged", "dedup", "bench"]  # module names in this package, in the order --help lists them
