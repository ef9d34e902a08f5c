"""The ``recsys ope-check`` subcommand, driven through its own argparse registration."""

from __future__ import annotations

import argparse

from simulators.ope_check import register


def test_ope_check_prints_tables_and_saves_a_plot(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="recsys")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "ope-check",
            "--rounds", "5000",
            "--repetitions", "2",
            "--bootstrap", "50",
            "--output-dir", str(tmp_path),
            "--shared-data", str(tmp_path / "absent"),
        ]
    )  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "coverage" in out and "epsilon_greedy_0.1" in out
    assert "OBD check skipped" in out
    plot = tmp_path / "ope_check.png"
    assert plot.stat().st_size > 10_000
    assert (tmp_path / "ope_check_simulator.csv").is_file()
