"""Long work shows progress also when stderr is a log file: a plain line at a steady interval."""

import logging

from tunelab.progress import progress_bar


def test_progress_is_logged_with_counts_and_eta_when_stderr_is_not_a_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="tunelab"), progress_bar(log_every=0) as progress:
        assert not progress.console.is_terminal  # pytest captures stderr, as a pipe to a log would
        task = progress.add_task("generating (tuned)", total=4)
        for _ in range(4):
            progress.advance(task)
    lines = [r.getMessage() for r in caplog.records if r.name == "tunelab.progress"]
    assert lines[0].startswith("generating (tuned): 1/4 (25%)") and "ETA" in lines[1]
    assert lines[-1].startswith("generating (tuned): 4/4 (100%)") and "ETA" not in lines[-1]


def test_progress_lines_are_spaced_by_the_interval(caplog):
    with caplog.at_level(logging.INFO, logger="tunelab"), progress_bar(log_every=3600) as progress:
        task = progress.add_task("scoring", total=100)
        for _ in range(99):
            progress.advance(task)
    assert not [r for r in caplog.records if r.name == "tunelab.progress"]  # an hour has not passed


def test_a_bar_started_inside_another_is_a_row_of_the_one_live_display():
    with progress_bar() as outer:
        outer.add_task("search", total=2)
        with progress_bar() as inner:
            task = inner.add_task("generating (validation)", total=3)
            inner.advance(task, 3)
            assert [t.description for t in outer.tasks] == ["search", "generating (validation)"]
        assert [t.description for t in outer.tasks] == ["search"]
    with progress_bar() as alone:  # nothing runs any more: a display of its own
        assert alone is not outer and not alone.tasks


def test_a_short_row_inside_another_display_logs_no_end_line(caplog):
    with caplog.at_level(logging.INFO, logger="tunelab"), progress_bar(log_every=3600) as outer:
        task = outer.add_task("search", total=1)
        with progress_bar() as inner:
            row = inner.add_task("answer loss", total=2)
            inner.advance(row, 2)
        outer.advance(task)
    lines = [r.getMessage() for r in caplog.records if r.name == "tunelab.progress"]
    assert lines == ["search: 1/1 (100%), 0 s elapsed"]
