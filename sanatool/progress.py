"""The progress protocol: the library reports progress through a callback, never by printing."""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(task, done, total)``: ``task`` names the stage ("grow", "sample", ...), ``done`` counts
#: finished units, ``total`` is the number of units or ``None`` when unknown. Optional keyword
#: ``info`` (a short string such as "loss 0.231") may be passed; callbacks must accept it.
ProgressFn = Callable[..., None]


def no_progress(task: str, done: int, total: int | None = None, **info: object) -> None:
    """A progress callback that ignores everything (the library default)."""


class PeriodicLines:
    """A progress callback for logs and pipes: one plain line per stage at least every ``interval``
    seconds, and when the stage ends, with done/total, rate and ETA.

    ``write`` receives each line (the CLI passes its stderr console); ``clock`` is injectable so
    that tests need not wait. A stage's first report starts its clock and prints nothing, so a
    stage that ends within ``interval`` prints only its last line.
    """

    def __init__(
        self,
        write: Callable[[str], None],
        interval: float = 10.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self._write = write
        self._interval = interval
        self._clock = clock or time.monotonic
        self._started: dict[str, tuple[float, int]] = {}
        self._last_line: dict[str, float] = {}
        self._finished: dict[str, int] = {}
        self._seen: dict[str, tuple[int, int | None]] = {}

    def __call__(self, task: str, done: int, total: int | None = None, **info: object) -> None:
        now = self._clock()
        last = self._seen.get(task)
        self._seen[task] = (done, total)
        if last is None or done < last[0] or total != last[1]:
            # A stage seen for the first time (or run again: a second sampling) starts its clock here.
            self._started[task] = (now, done)
            self._last_line[task] = now
            self._finished.pop(task, None)
        finished = total is not None and done >= total
        if finished:
            if self._finished.get(task) == done:
                return
            self._finished[task] = done
        elif now - self._last_line[task] < self._interval:
            return
        self._last_line[task] = now
        self._write(self.line(task, done, total, now, info))

    def line(self, task: str, done: int, total: int | None, now: float, info: dict[str, object]) -> str:
        """One line: ``sample: 40/180 (22%), 3.1/s, 0:13 elapsed, eta 0:45 loss=0.21``."""
        start, first = self._started[task]
        elapsed = now - start
        rate = (done - first) / elapsed if elapsed > 0 else 0.0
        parts = [f"{task}: {done}/{total}" if total is not None else f"{task}: {done}"]
        if total:
            parts[0] += f" ({100 * done / total:.0f}%)"
        if rate > 0:
            parts.append(_rate_text(rate))
        parts.append(f"{_clock_text(elapsed)} elapsed")
        if total is not None and done < total and rate > 0:
            parts.append(f"eta {_clock_text((total - done) / rate)}")
        extra = " ".join(f"{key}={value}" for key, value in info.items())
        return ", ".join(parts) + (f" {extra}" if extra else "")


def _rate_text(rate: float) -> str:
    """``2.5`` → ``2.5/s``; ``0.25`` → ``4 s each``; ``1.2e8`` (bytes) → ``120M/s``."""
    if rate < 1:
        return f"{1 / rate:.3g} s each"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rate >= scale:
            return f"{rate / scale:.3g}{suffix}/s"
    return f"{rate:.3g}/s"


def _clock_text(seconds: float) -> str:
    """``75`` → ``1:15``; ``3725`` → ``1:02:05``."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
