"""Arguments that cannot work are refused before the model loads (or torch is imported): a
--save-trace into a missing folder, passkey fillers of 0 tokens, depths outside [0, 1]."""

from __future__ import annotations

import time

import pytest

from kvviz import cli
from kvviz.commands import run as run_command
from kvviz.commands import sweep as sweep_command


@pytest.fixture
def call(monkeypatch, capsys):
    def no_load(args):
        raise AssertionError("the model must not load for these arguments")

    cli.command_modules()  # imported before the patch: a command that imports `load` by name would keep no_load
    monkeypatch.setattr(run_command, "load", no_load)
    monkeypatch.setattr(sweep_command, "load", no_load)

    def run(*argv):
        try:
            status = cli.main([str(a) for a in argv])
        except SystemExit as stop:
            status = stop.code
        out = capsys.readouterr()
        return status, out.out, out.err

    return run


def one_line(err: str, message: str) -> bool:
    return err.startswith("error: ") and message in err and err.count("\n") == 1


def test_save_trace_into_a_missing_folder_is_refused_at_once(call, tmp_path):
    start = time.perf_counter()
    status, out, err = call("run", "--prompt", "Hello", "--save-trace", tmp_path / "no" / "such" / "t.json")
    assert status == 2 and out == "" and one_line(err, f"the folder {tmp_path / 'no' / 'such'} does not exist")
    assert time.perf_counter() - start < 5
    status, _, err = call("run", "--prompt", "Hello", "--save-trace", tmp_path)
    assert status == 2 and one_line(err, "is a folder")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lengths", "0"], "filler lengths are from 1 to 40,000 tokens, not 0"),
        (["--lengths", "500,-3"], "not -3"),
        (["--lengths", "100000"], "not 100000"),
        (["--depths", "0.5,1.5"], "depths are from 0 (start of the filler) to 1 (its end), not 1.5"),
        (["--new-tokens", "0"], "--new-tokens must be at least 1"),
    ],
)
def test_passkey_grids_that_cannot_run_are_refused_before_the_model_loads(call, args, message):
    status, out, err = call("sweep", "--task", "passkey", "--policy", "full", *args)
    assert status == 2 and out == "" and one_line(err, message)
