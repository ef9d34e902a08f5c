"""The first minutes with the ``recsys`` command line: typos answered with the closest names, the
command's own usage, and failures the user can fix as one line with exit status 2."""

from __future__ import annotations

import argparse

import pytest

from recsys.checkpoint import CheckpointError
from recsys.cli import main, parse_args
from recsys.commands import CommandError, add_command, run_command
from recsys.config import ConfigError


def test_a_misspelt_flag_shows_the_commands_usage_and_the_closest_flag(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["checkpoints", "list", "--uir", "somewhere"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: recsys checkpoints ")
    assert err.rstrip().endswith("recsys checkpoints: error: unrecognized arguments: --uir "
                                 "somewhere; did you mean --uri?")


def test_a_misspelt_global_flag_is_found_after_the_command_too(capsys) -> None:
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["info", "--kafka-bootsrap=h:9092"])
    assert "did you mean --kafka-bootstrap?" in capsys.readouterr().err


def test_a_misspelt_command_or_choice_names_the_closest(capsys) -> None:
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["trian"])
    err = capsys.readouterr().err.rstrip()
    assert "invalid choice: 'trian'" in err and err.endswith("; did you mean train?")
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["checkpoints", "shwo"])
    err = capsys.readouterr().err.rstrip()
    assert err.startswith("usage: recsys checkpoints ") and err.endswith("did you mean show?")
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["zzzzzz"])
    assert "did you mean" not in capsys.readouterr().err


def test_a_nested_command_reports_a_misspelt_flag_with_its_own_usage(capsys) -> None:
    parser = argparse.ArgumentParser(prog="recsys")
    commands = parser.add_subparsers(dest="command", required=True)
    topics = commands.add_parser("topics").add_subparsers(dest="action", required=True)
    add_command(topics, "tail", lambda args: 0, help="print records").add_argument(
        "--from-beginning", action="store_true")
    assert parse_args(parser, ["topics", "tail", "--from-beginning"]).from_beginning
    with pytest.raises(SystemExit, match=r"^2$"):
        parse_args(parser, ["topics", "tail", "--form-beginning"])
    err = capsys.readouterr().err
    assert err.startswith("usage: recsys topics tail ")
    assert err.rstrip().endswith("did you mean --from-beginning?")


def test_an_unknown_set_key_names_the_nearest_keys(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["info", "--set", "stream.windw_ms=5"])
    err = capsys.readouterr().err.strip()
    assert err == ("recsys: configuration error: --set: expected a known setting, got "
                   "'stream.windw_ms'; did you mean stream.window_ms? (`recsys info` lists every "
                   "setting)")


def test_an_unknown_recsys_variable_is_one_warning_line(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECSYS_STREM_LAYOUT", "graph")
    assert main(["info"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "recsys: warning: environment: expected RECSYS_<SECTION>_<KEY> of a known setting, got "
        "RECSYS_STREM_LAYOUT (ignored); did you mean RECSYS_STREAM_LAYOUT?"]
    assert "stream.layout" in captured.out and "dense" in captured.out


def _parsed(run, expected=()) -> argparse.Namespace:
    return argparse.Namespace(command="demo", func=run, expected_errors=expected)


def _raise(error: Exception):
    def run(args: argparse.Namespace) -> int:
        raise error

    return run


@pytest.mark.parametrize(
    ("error", "expected", "code"),
    [
        (CommandError("no checkpoint 'x'; run `recsys checkpoints list`"), (), 2),
        (CommandError("nothing to show", exit_code=1), (), 1),
        (ConfigError("stream.dim: expected an integer >= 1, got 0"), (), 2),
        (CheckpointError("written for another cluster"), (CheckpointError,), 2),
    ],
)
def test_failures_the_user_can_fix_are_one_line_and_an_exit_status(
    error, expected, code, capsys
) -> None:
    assert run_command(_parsed(_raise(error), expected)) == code
    captured = capsys.readouterr()
    assert captured.err == f"recsys demo: {error}\n" and captured.out == ""


def test_other_errors_keep_their_traceback() -> None:
    with pytest.raises(KeyError):
        run_command(_parsed(_raise(KeyError("bug"))))
    with pytest.raises(CheckpointError):  # expected only where the command says so
        run_command(_parsed(_raise(CheckpointError("x"))))
    assert run_command(_parsed(lambda args: None)) == 0
