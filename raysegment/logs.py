"""Quiet console, full log file: what a command prints, and where everything else goes.

By default the console shows our own lines only (stage headers, ONE progress bar per long stage, results,
our warnings and errors). Ray's internal chatter is kept off the console: worker log lines forwarded to
the driver (`log_to_driver`), Ray Data's execution banners and progress blocks, Ray's own log records
below ERROR (e.g. "no available CPUs" notices that do not mean a hang), warnings raised inside Ray
(RayDeprecationWarning), and the C++ core's log lines that the driver writes to stderr (core_worker.cc).
`-v/--verbose` lets all of it through again. Whatever is printed, plus
every Python log record at INFO and above (Ray's included), also goes to a log file; the command names
its run/output folder with `set_destination`, and the last line printed says where the log is.

    logs.configure(verbose)        # CLI, before Ray starts (cli.run_command)
    logs.quiet_ray()               # right after ray.init (cluster.plan.connect)
    logs.set_destination(uri)      # once the run/output folder is known
    logs.finish()                  # CLI, at the end: copy the log there, print "full log: ..."

Library use without the CLI (tests, notebooks) is unchanged: nothing here runs unless called.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
import warnings

LOG_NAME = "raysegment.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Ray's Python loggers that print to the console; with verbose off their console handlers show ERROR only.
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air", "ray.util")

_state: dict = {"active": False, "verbose": True}


_log_lock = threading.Lock()  # whole lines into the log file, from the main thread and the stderr pump


def _log_write(log_file, text: str) -> None:
    with _log_lock:
        try:
            log_file.write(text)
        except ValueError:  # the log is closed: the command has ended
            pass


class _LockedLog:
    """The log file as a stream for logging.StreamHandler (each record is one whole write)."""

    def __init__(self, log_file) -> None:
        self._log = log_file

    def write(self, text: str) -> None:
        _log_write(self._log, text)

    def flush(self) -> None:
        pass


class _Tee:
    """A text stream that writes to the console stream and, line by line, to the log file."""

    def __init__(self, stream, log_file) -> None:
        self._stream, self._log, self._partial = stream, log_file, ""

    def write(self, text: str) -> int:
        self._partial += text
        if "\n" in self._partial:
            complete, _, self._partial = self._partial.rpartition("\n")
            _log_write(self._log, complete + "\n")
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def close_log(self) -> None:
        if self._partial:
            _log_write(self._log, self._partial + "\n")
            self._partial = ""

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ...
        return getattr(self._stream, name)


def verbose() -> bool:
    """Should Ray's own output reach the console? True unless the CLI asked for quiet."""
    return _state["verbose"]


def ray_logging_level() -> int:
    """The level for ray.init(logging_level=...): Ray's own notices at start-up only with --verbose."""
    return logging.WARNING if _state["verbose"] else logging.ERROR


def console():
    """The real console stream (stdout) for progress bars: they must not go to the log file."""
    return _state["stdout"] if _state["active"] else sys.stdout


def log_line(text: str) -> None:
    """A line for the log file only (e.g. the plain form of a progress bar drawn on a terminal)."""
    if _state["active"]:
        _log_write(_state["file"], text + "\n")


def configure(verbose: bool = False) -> None:
    """Start a command: tee stdout/stderr into a temporary log file, quiet Ray unless `verbose`.

    Environment settings go in before Ray starts, so a local Ray and its workers inherit them.
    """
    if _state["active"]:
        finish()
    fd, path = tempfile.mkstemp(prefix="raysegment-", suffix=".log")
    log_file = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")
    handler = logging.StreamHandler(_LockedLog(log_file))  # the tee's file object: one offset, whole lines
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.INFO)
    _state.update(active=True, verbose=verbose, path=path, file=log_file, handler=handler, destination=None,
                  stdout=sys.stdout, stderr=sys.stderr, warnings_filters=list(warnings.filters))
    sys.stdout = _Tee(sys.stdout, log_file)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        _state["root_level"] = root.level
        root.setLevel(logging.INFO)
    # Our own warnings still reach the console (a handler on root would otherwise disable Python's
    # last-resort printing of them).
    ours = logging.StreamHandler(sys.stderr)
    ours.setLevel(logging.WARNING)
    ours.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.getLogger("raysegment").addHandler(ours)
    _state["ours"] = ours
    if not verbose:
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")  # Ray Data's own bars and log blocks
        _ignore_ray_warnings()
        _state["fd_filter"] = _FdFilter(2, log_file)  # stderr, ours included, reaches the log through it
    else:
        sys.stderr = _Tee(sys.stderr, log_file)

def _ignore_ray_warnings() -> None:
    # Warnings raised inside Ray (RayDeprecationWarning for ExecutionOptions.exclude_resources that Ray Train
    # sets itself, actor-pool sizing notes) concern Ray's authors, not the user of this command. Ray adds
    # its own filters when imported, so this runs again after ray.init (quiet_ray) to stay in front.
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


class _FdFilter:
    """Route file descriptor `fd` (stderr) through a pipe: every line goes to the log file; lines in the
    format of Ray's C++ logging (e.g. `[2026-01-01 12:00:00,000 E 123 123] core_worker.cc:2465: ...`,
    written by the driver's core worker straight to fd 2) stay off the console. Everything else passes."""

    RAY_CPP_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] \S+\.(cc|h):\d+:")

    def __init__(self, fd: int, log_file) -> None:
        sys.stderr.flush()
        self.fd, self.log_file = fd, log_file
        self.saved = os.dup(fd)
        read, write = os.pipe()
        os.dup2(write, fd)
        os.close(write)
        self.read = read
        self.thread = threading.Thread(target=self._pump, daemon=True, name="raysegment-stderr")
        self.thread.start()

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self.read, 65536)
            except OSError:
                return
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._line(line + b"\n")
        if pending:
            self._line(pending)

    def _line(self, line: bytes) -> None:
        _log_write(self.log_file, line.decode("utf-8", "replace"))
        if not self.RAY_CPP_LINE.match(line):
            try:
                os.write(self.saved, line)
            except OSError:  # the console went away
                pass

    def close(self) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, self.fd)  # our copy of the pipe's write end is gone: EOF once children let go
        self.thread.join(timeout=1.0)
        if not self.thread.is_alive():  # else a child started meanwhile still writes: keep forwarding it
            os.close(self.saved)
            os.close(self.read)


def quiet_ray() -> None:
    """After ray.init: Ray Data without progress bars or execution banners, Ray's console handlers at
    ERROR, and Ray's Python log records into the log file. Does nothing with --verbose or without the CLI."""
    if not _state["active"] or _state["verbose"]:
        return
    _ignore_ray_warnings()
    try:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        ctx.print_on_execution_start = False
    except ImportError:  # Ray Data not installed: nothing to quiet
        pass
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for h in logger.handlers:
            console_handler = isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            if console_handler and h is not _state["handler"]:
                h.setLevel(logging.ERROR)
        if not logger.propagate and _state["handler"] not in logger.handlers:
            logger.addHandler(_state["handler"])


def set_destination(folder_uri: str) -> None:
    """Where the log goes at the end (a run or output folder, local or s3://): FOLDER/raysegment.log.

    The first call wins: the demo names its output folder before training and inference name theirs."""
    if _state["active"] and not _state.get("destination"):
        from raysegment.io import storage

        _state["destination"] = storage.join(folder_uri, LOG_NAME)


def finish() -> str | None:
    """End the command: restore the streams, copy the log to its destination, print where it is."""
    if not _state["active"]:
        return None
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, _Tee):
            stream.close_log()
    sys.stdout, sys.stderr = _state["stdout"], _state["stderr"]
    _state["active"] = False
    if _state.get("fd_filter"):
        _state.pop("fd_filter").close()
    root = logging.getLogger()
    root.removeHandler(_state["handler"])
    for name in RAY_LOGGERS:
        logging.getLogger(name).removeHandler(_state["handler"])
    logging.getLogger("raysegment").removeHandler(_state["ours"])
    if "root_level" in _state:
        root.setLevel(_state.pop("root_level"))
    warnings.filters[:] = _state["warnings_filters"]
    _state["file"].close()
    _state["verbose"] = True
    where, destination = _state["path"], _state.get("destination")
    if destination:
        try:
            from raysegment.io import storage

            with open(where, "rb") as f:
                storage.write_bytes(destination, f.read())
            os.unlink(where)
            where = destination
        except Exception as e:  # noqa: BLE001 - the log is a convenience: keep the temporary copy instead
            print(f"(could not copy the log to {destination}: {type(e).__name__})", flush=True)
        print(f"full log: {where}", flush=True)
    else:
        os.unlink(where)  # nothing ran far enough to have a run folder: nothing worth keeping
        where = None
    return where
