"""The home page is drawn before torch is imported (issue 21, starting fast): what app.py and
pages/0_Home.py import before the model is there pulls in neither torch, transformers nor pandas."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_what_home_imports_first_leaves_torch_out():
    code = (
        "import sys, streamlit, kvviz.ui.navigation, kvviz.ui.model_resource\n"
        "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'kvviz.model.loading') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    home = (REPO / "pages" / "0_Home.py").read_text()
    first = home[: home.index("wait_for_warm_start(")]  # the page's code before it waits for the model
    assert "import torch" not in first and "kvviz.ui.sidebar" not in first and "import pandas" not in first
