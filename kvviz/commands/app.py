"""``kvviz app [STREAMLIT OPTIONS]``: serve the app, as ``streamlit run app.py`` does from a checkout.

Every option after ``app`` goes to ``streamlit run`` untouched (``kvviz app --server.port 8600
--server.address 0.0.0.0``; ``kvviz app --help`` lists them). The app's files are found in the
installed package (``kvviz/_app/``, copied there when the wheel is built: see ``setup.py``) or,
in a checkout or an editable install, at the repository's root. Streamlit reads the theme from
the ``.streamlit/config.toml`` beside that ``app.py``, wherever the command is started.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HELP = "serve the app in the browser (streamlit run); options after `app` go to Streamlit, e.g. --server.port 8600"
PASSES_THROUGH = True  # kvviz.cli hands every argument after `app` (--help included) to streamlit run

_KVVIZ = Path(__file__).resolve().parents[1]


def app_root() -> Path:
    """The folder holding ``app.py``, ``pages/`` and ``.streamlit/``: the installed copy first,
    then a checkout's root. ``kvviz.ui.navigation.ROOT`` follows the same rule."""
    for root in (_KVVIZ / "_app", _KVVIZ.parent):
        if (root / "app.py").is_file():
            return root
    raise OSError(f"the app's files are missing: no app.py in {_KVVIZ / '_app'} or {_KVVIZ.parent}; reinstall kvviz")


def configure(p) -> None:
    pass  # no options of its own: kvviz.cli puts every argument after `app` in args.passed_through


def main(args) -> int:
    command = [sys.executable, "-m", "streamlit", "run", str(app_root() / "app.py"), *args.passed_through]
    env = dict(os.environ)
    if args.policy_file:  # `kvviz --policy-file my.py app`: the app loads them from kvviz.policies.plugins.ENV
        env["KVVIZ_POLICY_PATH"] = os.pathsep.join([*args.policy_file, *filter(None, [env.get("KVVIZ_POLICY_PATH")])])
    if any(a in ("-h", "--help") for a in args.passed_through):
        print("kvviz app [STREAMLIT OPTIONS]: serves kvviz with `streamlit run`; its options follow.\n", flush=True)
    if os.name == "nt":  # no exec on Windows: wait for Streamlit instead
        return subprocess.call(command, env=env)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)  # Streamlit takes over the process: Ctrl-C, signals and exit status are its own
    return 0  # not reached
