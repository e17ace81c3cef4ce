"""ONE progress display per long stage: a tqdm bar on a terminal, periodic plain lines otherwise.

    with Progress(total=len(pairs), desc="evaluate", unit="images") as bar:
        for ...: bar.update(1)

On a terminal: done/total, rate, ETA, and any `postfix` (loss, val dice) on one redrawn line. When stdout
is not a terminal (CI, `| tee`, a Ray job's log), the same facts as a plain line at most every `every_s`
seconds, and always at the end, so logs stay short. Stages that run on Ray report from elsewhere:
`remote_counter` (infer: postprocess tasks add the rows they finish) and `poll` (a background thread that
asks a callable for the current count, e.g. epochs in metrics.csv for training).
"""

from __future__ import annotations

import os
import threading
import time

from raysegment import logs


def _size(stream) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return 0, 0
    return size.columns, size.lines


def _eta(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """done/total of one stage. Thread-safe `update` / `set`; `close` prints the final state once."""

    def __init__(self, total: int, desc: str, unit: str = "images", every_s: float = 30.0,
                 stream=None) -> None:
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.stream = stream or logs.console()
        self.done, self.postfix = 0, ""
        self._t0 = self._last_line = time.perf_counter()
        self._lock = threading.Lock()
        self._closed = False
        self._bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            cols, rows = _size(self.stream)  # 0 x 0 on a terminal that reports no size: tqdm draws nothing
            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=self.stream, ncols=cols or 100,
                             nrows=rows or 24, dynamic_ncols=bool(cols), leave=True, smoothing=0.1)

    def line(self) -> str:
        """The plain-text state: `desc: 40/100 images, 3.2 images/s, ETA 19s  postfix`."""
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rate = self.done / elapsed
        text = f"{self.desc}: {self.done}/{self.total} {self.unit}"
        if self.done:
            text += f", {rate:.2f} {self.unit}/s"
            if self.done < self.total:
                text += f", ETA {_eta((self.total - self.done) / rate)}"
            else:
                text += f", {_eta(elapsed)}"
        return text + (f"  {self.postfix}" if self.postfix else "")

    def set(self, done: int, postfix: str = "") -> None:
        """Jump to `done` (absolute) with an optional postfix (e.g. "loss 0.21  val dice 0.93")."""
        with self._lock:
            if self._closed or (done == self.done and postfix == self.postfix):
                return
            step, self.done, self.postfix = done - self.done, done, postfix or self.postfix
            if self._bar is not None:
                if self.postfix:
                    self._bar.set_postfix_str(self.postfix, refresh=False)
                self._bar.update(step)
                return
            now = time.perf_counter()
            if self.every_s <= 0 or now - self._last_line >= self.every_s:
                self._last_line = now
                self._print(self.line())

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.set(self.done + n, postfix)

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
        if self.stream is logs.console():
            logs.log_line(text)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._bar.close()
                logs.log_line(self.line())
            elif self.every_s > 0 or self.done == 0:  # every_s <= 0 printed each step already
                self._print(self.line())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class poll:  # a context manager used like a function: `with poll(fn, bar):`
    """While the block runs, a daemon thread calls `read()` every `interval_s` seconds and passes its
    (done, postfix) to `bar.set`. A failing read is skipped (the next one may work)."""

    def __init__(self, read, bar: Progress, interval_s: float = 1.0) -> None:
        self.read, self.bar, self.interval_s = read, bar, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="raysegment-progress")

    def _tick(self) -> None:
        try:
            done, postfix = self.read()
        except Exception:  # noqa: BLE001 - progress is best effort: a missing file now is fine later
            return
        self.bar.set(done, postfix)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._tick()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._tick()  # the final count


class Counter:
    """A count shared by Ray tasks (as a zero-CPU actor: `remote_counter()`)."""

    def __init__(self) -> None:
        self.value = 0

    def add(self, n: int) -> None:
        self.value += n

    def get(self) -> int:
        return self.value


def remote_counter():
    """A Counter actor handle (num_cpus=0: it never competes with the stage tasks for CPUs)."""
    import ray

    return ray.remote(num_cpus=0)(Counter).remote()

