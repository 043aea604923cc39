"""Progress without a terminal: a line per stage at least every interval, with done/total, rate and ETA."""

from __future__ import annotations

from sanatool.progress import PeriodicLines


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_interval_and_at_the_end():
    clock, lines = FakeClock(), []
    report = PeriodicLines(lines.append, interval=10.0, clock=clock)
    report("sample", 0, 100)
    for done in range(1, 101):
        clock.now += 0.5  # 2 images a second: 50 s in all
        report("sample", done, 100)
    # One line after each 10 s (at 20, 40, 60, 80 images) and one when the stage ends.
    assert len(lines) == 5
    assert lines[0] == "sample: 20/100 (20%), 2/s, 0:10 elapsed, eta 0:40"
    assert lines[-1] == "sample: 100/100 (100%), 2/s, 0:50 elapsed"
    report("sample", 100, 100)  # a repeated final report prints nothing
    assert len(lines) == 5


def test_slow_units_info_stages_and_unknown_totals():
    clock, lines = FakeClock(), []
    report = PeriodicLines(lines.append, interval=10.0, clock=clock)
    report("train", 0, 10)
    clock.now += 30
    report("train", 1, 10, loss="0.231")
    report("cache", 0, None)
    clock.now += 12
    report("cache", 7, None)
    assert lines == [
        "train: 1/10 (10%), 30 s each, 0:30 elapsed, eta 4:30 loss=0.231",
        "cache: 7, 1.71 s each, 0:12 elapsed",
    ]
    # A stage run again (a second sampling) starts its own clock.
    report("train", 0, 2)
    clock.now += 1
    report("train", 2, 2)
    assert lines[-1] == "train: 2/2 (100%), 2/s, 0:01 elapsed"


def test_byte_counts_get_a_readable_rate():
    clock, lines = FakeClock(), []
    report = PeriodicLines(lines.append, interval=10.0, clock=clock)
    report("write", 0, 3_000_000_000)
    clock.now += 12
    report("write", 1_500_000_000, 3_000_000_000)
    assert lines == ["write: 1500000000/3000000000 (50%), 125M/s, 0:12 elapsed, eta 0:12"]


def test_quick_stages_print_only_their_last_line():
    clock, lines = FakeClock(), []
    report = PeriodicLines(lines.append, interval=10.0, clock=clock)
    for done in range(0, 5):
        clock.now += 1
        report("write", done, 4)
    assert lines == ["write: 4/4 (100%), 1/s, 0:04 elapsed"]
