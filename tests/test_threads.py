"""The CPU thread count commands give torch (distributed.choose_cpu_threads)."""

from __future__ import annotations

import io

import pytest

from sanatool import distributed


@pytest.fixture
def two_cpus(monkeypatch):
    for name in distributed.THREAD_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: {0, 1})


def _loadavg(monkeypatch, *runnable: int) -> None:
    """``/proc/loadavg`` as read in turn: a high 1-minute average, then ``runnable`` tasks now."""
    readings = iter(runnable)
    monkeypatch.setattr(
        distributed,
        "open",
        lambda *a, **k: io.StringIO(f"1.90 1.20 0.80 {next(readings)}/300 4242\n"),
        raising=False,
    )


def test_an_explicit_omp_num_threads_is_obeyed(monkeypatch, two_cpus):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert distributed.choose_cpu_threads() == 3


def test_idle_now_means_every_cpu_whatever_the_last_minute_was(monkeypatch, two_cpus):
    # The command before this one in a shell chain kept both CPUs busy (load average 1.9) and has
    # ended: only this process is runnable, so both CPUs are this command's.
    _loadavg(monkeypatch, 1, 1)
    assert distributed.choose_cpu_threads() == 2


def test_a_busy_process_takes_its_cpu_and_one_thread_is_left_at_least(monkeypatch, two_cpus):
    _loadavg(monkeypatch, 2, 2)
    assert distributed.choose_cpu_threads() == 1
    _loadavg(monkeypatch, 9, 9)
    assert distributed.choose_cpu_threads() == 1


def test_a_passing_blip_does_not_count(monkeypatch, two_cpus):
    _loadavg(monkeypatch, 3, 1)
    assert distributed.choose_cpu_threads() == 2
