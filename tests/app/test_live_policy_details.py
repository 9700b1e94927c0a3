"""AppTest: the Live page's run details name duo_attention's streaming and retrieval heads, the
same the run classified (one flag per KV head of each layer)."""

from __future__ import annotations

from tests.app.test_live_policy_page import page, run_policy  # noqa: F401  (the page fixture)


def test_run_details_show_which_heads_stream(page):  # noqa: F811
    at = run_policy(page, "duo_attention", compare=False)
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    trace = at.session_state["live.result"].trace
    rows = dict(zip(*[list(col) for col in at.table[0].value.to_dict("list").values()]))
    shown = rows["Streaming heads"]
    assert shown == trace.extra["policy_details"]["Streaming heads"]
    flags = [part.split(": ")[1] for part in shown.split(" · ")[1].split(", ")]
    assert len(flags) == trace.n_layers and all(len(f) == 3 and set(f) <= {"S", "R"} for f in flags)
    assert shown.startswith(f"{''.join(flags).count('S')} of {3 * trace.n_layers} KV heads")
