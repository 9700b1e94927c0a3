"""Policies of your own: the template (docs/policy_template.py) loads from a temporary folder through
KVVIZ_POLICY_PATH, ``--policy-file`` and an entry point, keeps the largest value norms of the real
cache, and appears in the CLI and the Live page; broken plugins are one line naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from kvviz import cli, policies
from kvviz.runtime import engine

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "docs" / "policy_template.py"
PROMPT = [(5 * i + 2) % 120 + 1 for i in range(24)]
BUDGET = 10


class Tok:
    eos_token_id = None

    def decode(self, ids):
        return " ".join(map(str, ids))


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """No registry state (plugins, problems, added files) leaks into or out of a test."""
    monkeypatch.delenv("KVVIZ_POLICY_PATH", raising=False)
    policies.reset_registry()
    yield
    policies.reset_registry()


@pytest.fixture()
def plugin_dir(tmp_path):
    shutil.copy(TEMPLATE, tmp_path / "my_policy.py")
    return tmp_path


def test_template_loads_through_the_env_variable(plugin_dir, monkeypatch):
    assert "valuenorm" not in policies.registry()
    monkeypatch.setenv("KVVIZ_POLICY_PATH", str(plugin_dir))  # a folder of .py files
    policies.reset_registry()
    assert policies.get("valuenorm").params()["n_sink"].default == 0
    assert policies.plugin_source("valuenorm") == str(plugin_dir / "my_policy.py")
    assert policies.plugin_source("h2o") is None and policies.plugin_problems() == []
    assert "valuenorm" in policies.companions("quant")  # composes like a built-in selector


def test_template_loads_through_policy_file_and_is_listed(plugin_dir, capsys):
    assert cli.main(["--policy-file", str(plugin_dir / "my_policy.py"), "policies"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("full  [baseline]") and "valuenorm  [eviction]" in out
    assert f"    plugin: {plugin_dir / 'my_policy.py'}" in out
    assert "--param n_sink=<int>  default 0" in out


def test_template_keeps_the_largest_value_norms(tiny_llama, plugin_dir, monkeypatch):
    monkeypatch.setenv("KVVIZ_POLICY_PATH", str(plugin_dir / "my_policy.py"))
    policies.reset_registry()
    trace = engine.run(tiny_llama, Tok(), PROMPT, "valuenorm", params={"n_sink": 2}, budget=BUDGET,
                       max_new_tokens=1, stop_at_eos=False)
    with torch.no_grad():  # the values from transformers' own cache, not kvviz's
        cache = tiny_llama(torch.tensor([PROMPT]), use_cache=True).past_key_values
    for layer in range(2):
        norms = cache.layers[layer].values[0].float().norm(dim=-1)  # (kv_heads, n)
        for head in range(2):
            rest = norms[head].clone()
            rest[:2] = float("inf")  # n_sink=2: the first two are kept whatever their norm
            expected = sorted(rest.topk(BUDGET).indices.tolist())
            assert trace.kept_positions(0, layer, head).tolist() == expected
            assert expected != list(range(BUDGET))  # not a window by accident


def test_broken_plugins_are_one_line_naming_the_file(plugin_dir, monkeypatch, capsys):
    (plugin_dir / "syntax.py").write_text("x = (\n")
    (plugin_dir / "clash.py").write_text(TEMPLATE.read_text().replace('name = "valuenorm"', 'name = "knorm"'))
    (plugin_dir / "boom.py").write_text("\n\nraise RuntimeError('no GPU here')\n")
    monkeypatch.setenv("KVVIZ_POLICY_PATH", str(plugin_dir))
    policies.reset_registry()
    problems = {Path(p.where).name: str(p) for p in policies.plugin_problems()}
    assert problems == {
        "syntax.py": f"policy plugin {plugin_dir / 'syntax.py'}: SyntaxError: '(' was never closed (line 1)",
        "clash.py": f"policy plugin {plugin_dir / 'clash.py'}: policy name 'knorm' is taken by a built-in policy: rename it",
        "boom.py": f"policy plugin {plugin_dir / 'boom.py'}: RuntimeError: no GPU here (line 3)",
    }
    assert policies.get("knorm").__module__ == "kvviz.policies.knorm"  # the built-in stays
    assert "valuenorm" in policies.registry() and "h2o" in policies.registry()
    assert policies.build("knorm", budget=4).selector.name == "knorm"
    assert cli.main(["policies", "--json"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert sorted(err) == sorted(f"warning: {p}" for p in problems.values())
    with pytest.raises(policies.PolicyError, match="Not loaded: policy plugin syntax.py: SyntaxError"):
        policies.get("nope")


def test_missing_file_and_plugin_collisions(plugin_dir, capsys):
    shutil.copy(TEMPLATE, plugin_dir / "again.py")  # the same name twice: the second is refused
    for path in ("my_policy.py", "again.py", "absent.py"):
        policies.add_policy_file(plugin_dir / path)
    assert [str(p) for p in policies.plugin_problems()] == [
        f"policy plugin {plugin_dir / 'again.py'}: policy name 'valuenorm' is taken by plugin {plugin_dir / 'my_policy.py'}: rename it",
        f"policy plugin {plugin_dir / 'absent.py'}: FileNotFoundError: no such file or folder",
    ]
    assert policies.plugin_source("valuenorm") == str(plugin_dir / "my_policy.py")


def test_entry_point(plugin_dir, monkeypatch):
    dist = plugin_dir / "my_policy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-policy\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[kvviz.policies]\nvaluenorm = my_policy\n")
    monkeypatch.syspath_prepend(str(plugin_dir))
    try:
        assert policies.plugin_source("valuenorm") == "entry point 'valuenorm' (my_policy)"
        assert policies.build("valuenorm", {"n_sink": 3}, budget=8).selector.n_sink == 3
    finally:
        import sys

        sys.modules.pop("my_policy", None)


def test_live_page_offers_the_plugin(plugin_dir, monkeypatch, smollm):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("KVVIZ_POLICY_PATH", str(plugin_dir))
    (plugin_dir / "syntax.py").write_text("x = (\n")
    policies.reset_registry()
    at = AppTest.from_file(str(REPO / "pages" / "2_Live_Policy.py"), default_timeout=600).run()
    assert not at.exception, at.exception
    picker = at.selectbox(key="live.name")
    assert "valuenorm · eviction · plugin" in picker.options and "h2o · eviction" in picker.options
    shown = [w.value.replace("\\", "") for w in at.warning]  # markdown escapes removed: what a reader sees
    assert [w for w in shown if "syntax" in w] == ["policy plugin syntax.py: SyntaxError: '(' was never closed (line 1)"]
    picker.set_value("valuenorm").run()
    assert not at.exception
    assert at.number_input(key="live.valuenorm.n_sink").value == 0
    assert str(plugin_dir) not in "".join(m.value for m in at.markdown)  # no server paths on the page
