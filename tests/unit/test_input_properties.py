"""Property tests (hypothesis) for the readers of outside input not covered elsewhere (issue 24):
URL parameters, policy specs with their parameters, and the arguments of the commands that load a
model (run, sweep, paged). Any value either works or gets the reader's own clean error, never
another exception, within a second; what is read back equals what was written."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvviz import cli, policies
from kvviz.policies import PolicyError
from kvviz.policies.spec import PolicySpec
from kvviz.ui import state

FAST = settings(max_examples=40, deadline=1000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
NUMBERS = st.one_of(st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["", "-", "1e400", "0x10", "½", "nan", "inf", "1,2", " 3 "]))


@FAST
@given(text=st.one_of(st.text(max_size=60), NUMBERS, st.just(state.PACKED).map(lambda p: p + "eJzLSM3JyQcABiwCFQ")),
       default=st.sampled_from([0, 1.0, True, "", (0, 0), [1, 2, 3], ("a",)]),
       options=st.sampled_from([None, ["a", "b"], [2, 3, 4]]))
def test_a_url_value_decodes_to_the_defaults_type_or_value_error(text, default, options):
    t0 = time.perf_counter()
    try:
        value = state.decode(text, default, options)
    except ValueError:
        return
    finally:
        assert time.perf_counter() - t0 < 1
    if options is not None:
        assert value in options
    elif isinstance(default, bool):
        assert isinstance(value, bool)
    elif isinstance(default, float):
        assert isinstance(value, float) and value == value and abs(value) != float("inf")
    else:
        assert isinstance(value, type(default))


@FAST
@given(value=st.text(max_size=2000))
def test_a_text_value_round_trips_through_the_url(value):
    assert state.decode(state.encode(value), "") == value


@FAST
@given(body=st.binary(max_size=300).map(lambda b: __import__("base64").urlsafe_b64encode(b).decode()) | st.text(max_size=80))
def test_a_packed_value_unpacks_within_its_bound_or_is_refused(body):
    try:
        out = state.unpack(state.PACKED + body)
    except ValueError:
        return
    assert len(out) <= state.UNPACKED_MAX


NAMES = st.sampled_from(sorted(policies.registry()) + ["nosuch", "", "H2O", "h2o+kivi"])
KEYS = st.sampled_from(["budget", "ratio", "recent", "window", "n_sink", "bits", "group", "kernel", "rank", "seed", "nosuch", ""])


@FAST
@given(name=NAMES, items=st.lists(st.tuples(KEYS, NUMBERS), max_size=4), budget=st.none() | st.integers(-5, 10**6),
       ratio=st.none() | st.floats(-1, 2) | st.just(float("nan")))
def test_a_policy_spec_parses_or_says_why(name, items, budget, ratio):
    text = name + (":" + ",".join(f"{k}={v}" for k, v in items) if items else "")
    t0 = time.perf_counter()
    try:
        spec = PolicySpec.parse(text, budget=budget, ratio=ratio)
    except PolicyError as exc:
        assert str(exc).strip() and "Traceback" not in str(exc)
        return
    finally:
        assert time.perf_counter() - t0 < 1
    again = PolicySpec.parse(spec.to_text())  # what a link or bundle carries reads back the same
    assert again.to_text() == spec.to_text() and again.budget == spec.budget
    assert (again.ratio is None) == (spec.ratio is None) and (spec.ratio is None or abs(again.ratio - spec.ratio) <= 1e-11 * spec.ratio)


class Loaded(Exception):
    """The command got past every check it makes before loading a model."""


OPTIONS = {
    "run": ["--policy", "--param", "--budget", "--ratio", "--max-new-tokens", "--device", "--dtype", "--seed", "--save-trace"],
    "sweep": ["--policy", "--task", "--ratios", "--budgets", "--context", "--continuation", "--lengths", "--depths",
              "--new-tokens", "--seed", "--device", "--dtype"],
    "paged": ["--block-size", "--num-blocks", "--n", "--seed", "--max-new-tokens", "--policy", "--param", "--budget",
              "--ratio", "--eviction", "--memory-mib", "--device", "--dtype"],
}
VALUES = st.one_of(NUMBERS, st.sampled_from(["h2o", "h2o:ratio=5", "nosuch", "ppl", "passkey", "0.1,0.5", "0,1", "auto",
                                             "cpu", "cuda:9", "float16", "token", "/no/such/dir/t.json", "recent=4", "=",
                                             "--json", "-1"]))


@settings(max_examples=30, deadline=2000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(sorted(OPTIONS)), data=st.data())
def test_commands_refuse_in_one_line_or_reach_the_model(command, data, monkeypatch, capsys):
    from kvviz.model import loading

    def no_model(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(loading, "load_model", no_model)
    pairs = data.draw(st.lists(st.tuples(st.sampled_from(OPTIONS[command]), VALUES), max_size=4))
    argv = [command, "--prompt", "hi"] + [part for pair in pairs for part in pair]
    t0 = time.perf_counter()
    try:
        status = cli.main(argv)
    except Loaded:
        return
    except SystemExit as exit_:
        status = exit_.code
    assert time.perf_counter() - t0 < 2
    err = capsys.readouterr().err
    assert status == 2, (argv, status, err)
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert "Traceback" not in err and lines and "error: " in lines[-1], (argv, err)
    if not (lines[-1].startswith("python -m kvviz") and ": error: " in lines[-1]):  # argparse's own: usage, then the error
        assert len(lines) == 1, (argv, err)  # kvviz's checks: one line
