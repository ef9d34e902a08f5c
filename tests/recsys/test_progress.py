"""The progress rule: a bar on a terminal, plain lines elsewhere (no carriage returns in logs)."""

from __future__ import annotations

import io

from tqdm import tqdm

from recsys.progress import PlainProgress, StatusLine, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar() -> None:
    out = Terminal()
    bar = progress_bar(total=10, desc="work", unit="s", file=out, mininterval=0)
    bar.update(5)
    bar.close()
    assert isinstance(bar, tqdm)
    assert "\r" in out.getvalue() and "5/10" in out.getvalue()


def test_a_log_file_gets_plain_lines_at_the_interval_and_at_the_end() -> None:
    out = io.StringIO()
    bar = progress_bar(total=60, desc="traffic", unit="s", file=out, interval_s=3600)
    assert isinstance(bar, PlainProgress)
    for second in range(1, 61):
        bar.n = second
        bar.set_postfix_str(f"ctr {second / 100:.2f}")
    assert out.getvalue() == ""  # nothing before the interval has passed
    bar.close()
    bar.close()
    assert out.getvalue() == "traffic: 60/60 s (100%), ctr 0.60\n"


def test_plain_lines_follow_every_update_once_the_interval_has_passed() -> None:
    out = io.StringIO()
    with progress_bar(total=None, unit="epoch", file=out, interval_s=0) as bar:
        bar.update(2)
        bar.update(3)
    lines = out.getvalue().splitlines()
    assert lines == ["2 epoch", "5 epoch", "5 epoch"] and "\r" not in out.getvalue()


def test_a_disabled_bar_writes_nothing_anywhere() -> None:
    for out in (io.StringIO(), Terminal()):
        bar = progress_bar(total=3, file=out, disable=True, interval_s=0)
        bar.update(3)
        bar.close()
        assert out.getvalue() == ""


def test_a_status_line_is_redrawn_on_a_terminal_and_printed_as_lines_elsewhere() -> None:
    terminal, log = Terminal(), io.StringIO()
    on_terminal, in_log = StatusLine(terminal), StatusLine(log, interval_s=0)
    for i in range(3):
        on_terminal.show(f"records {i}")
        in_log.show(f"records {i}")
    on_terminal.close()
    in_log.close()
    assert terminal.getvalue().count("\r") == 3 and terminal.getvalue().endswith("\n")
    assert log.getvalue() == "records 0\nrecords 1\nrecords 2\n"
    rare_log = io.StringIO()
    rare = StatusLine(rare_log, interval_s=3600)
    rare.show("records 8")
    rare.show("records 9")
    assert rare_log.getvalue() == "records 8\n"  # the first at once, then one per interval
