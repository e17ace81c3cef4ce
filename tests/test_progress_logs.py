"""Console output: ONE progress display per stage (tqdm on a terminal, few plain lines otherwise) and the
full log file named on the last line."""

from __future__ import annotations

import io
import logging

from raysegment import logs
from raysegment.progress import Progress, poll


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    with Progress(100, "infer", "images", every_s=3600, stream=stream) as bar:
        for _ in range(100):
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("infer: 100/100 images, ") and "images/s" in lines[0]

    stream = io.StringIO()
    with Progress(3, "train", "epochs", every_s=0, stream=stream) as bar:  # one line per step
        for epoch in (1, 2, 3):
            bar.set(epoch, f"loss 0.{epoch}  val dice 0.9{epoch}")
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"train: {e}/3 epochs" for e in (1, 2, 3)]
    assert "ETA" in lines[0] and lines[-1].endswith("loss 0.3  val dice 0.93")


def test_tqdm_bar_on_a_terminal():
    stream = FakeTerminal()
    with Progress(10, "evaluate", "images", stream=stream) as bar:
        bar.update(4)
        bar.update(6)
    text = stream.getvalue()
    assert "evaluate" in text and "10/10" in text and "\r" in text  # redrawn in place, not new lines


def test_poll_reports_the_final_count():
    counts = iter([(1, ""), (2, ""), (5, "done")])
    stream = io.StringIO()
    with Progress(5, "infer", stream=stream) as bar, poll(lambda: next(counts), bar, interval_s=3600):
        pass
    assert stream.getvalue().splitlines()[-1].startswith("infer: 1/5 images")  # the read at exit
    bar = Progress(5, "x", stream=io.StringIO())
    with poll(lambda: 1 / 0, bar, interval_s=3600):  # a failing read is skipped
        pass
    assert bar.done == 0


def test_log_file_gets_everything_and_the_last_line_says_where(tmp_path, capsys):
    logs.configure(verbose=False)
    print("our line")
    logging.getLogger("raysegment.test").info("an info record")  # not on the console, in the file
    logging.getLogger("raysegment.test").warning("our warning")  # on the console too
    logs.set_destination(str(tmp_path / "run"))
    logs.set_destination(str(tmp_path / "other"))  # the first destination wins
    where = logs.finish()
    out, err = capsys.readouterr()
    assert where == str(tmp_path / "run" / "raysegment.log")
    assert out.splitlines()[-1] == f"full log: {where}" and "our line" in out and "an info record" not in out
    assert "our warning" in err
    text = (tmp_path / "run" / "raysegment.log").read_text()
    assert "our line" in text and "an info record" in text and "our warning" in text
    assert logs.finish() is None  # idempotent


def test_quiet_ray_keeps_rays_console_handlers_to_errors():
    import ray.data  # noqa: F401 - configures Ray Data's loggers

    logs.configure(verbose=False)
    try:
        logs.quiet_ray()
        from ray.data import DataContext

        assert DataContext.get_current().enable_progress_bars is False
        # Console handlers only: Ray Data also attaches file handlers (a baseFilename; /dev/null in tests).
        consoles = [h for name in logs.RAY_LOGGERS for h in logging.getLogger(name).handlers
                    if isinstance(h, logging.StreamHandler) and not hasattr(h, "baseFilename")
                    and h is not logs._state["handler"]]
        assert consoles and all(h.level >= logging.ERROR for h in consoles)
    finally:
        logs.finish()
        DataContext.get_current().enable_progress_bars = True


def test_verbose_leaves_ray_alone():
    import warnings

    before = list(warnings.filters)
    logs.configure(verbose=True)
    try:
        assert logs.verbose() and logs.ray_logging_level() == logging.WARNING
        assert "fd_filter" not in logs._state  # stderr untouched
        assert warnings.filters == before  # Ray's warnings not silenced
    finally:
        logs.finish()
    logs.configure(verbose=False)
    try:
        assert not logs.verbose() and logs.ray_logging_level() == logging.ERROR
    finally:
        logs.finish()
    assert logs.verbose()  # library use without the CLI: Ray as usual
