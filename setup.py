"""Ships the Streamlit app inside the package. Everything else about the build is in pyproject.toml.

The app's files stay where Streamlit and the README expect them in a checkout (``app.py``,
``pages/``, ``.streamlit/config.toml`` at the root; ``make run`` serves them from there). A built
wheel carries a copy of them as ``kvviz/_app/``, laid out the same way, so that ``kvviz app`` of an
installed kvviz serves them, theme included (Streamlit reads ``.streamlit/config.toml`` beside the
main script). ``kvviz.ui.navigation.ROOT`` and ``kvviz.commands.app`` look there first.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
APP_FILES = ["app.py", ".streamlit/config.toml", *sorted(p.relative_to(HERE).as_posix() for p in (HERE / "pages").glob("*.py"))]


class BuildPyWithApp(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install serves the checkout's own files
        for name in APP_FILES:
            target = Path(self.build_lib, "kvviz", "_app", name)
            self.mkpath(str(target.parent))
            self.copy_file(str(HERE / name), str(target))


setup(cmdclass={"build_py": BuildPyWithApp})
