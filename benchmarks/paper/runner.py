"""Tasks, their cost model, and a scheduler that runs them on worker processes with a result cache.

A *task* is one unit of work with a name (``train:grow-partial+300``), the names of the tasks it
needs, and plain-JSON arguments. Its result (plain JSON, with the CPU seconds it took) is written to
``WORK/results/NAME.json`` when it finishes, so an interrupted run resumes where it stopped and a
finished part costs nothing to re-report. Parts describe their tasks as a function of the results
so far; the scheduler asks again after every finished task, so a part may add tasks that depend on
earlier outcomes (the regime search picks its second stage from its first).

Workers are separate processes with one torch thread each: on the tiny model two single-threaded
processes do about twice the work of one two-threaded process.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

#: Work per CPU-second on one thread of the 2-core machine, used to plan before anything is measured
#: (measured rates of finished tasks in --work replace them): training 0.58 CPU-s per step at batch 32
#: on 8 blocks (the previous paper_table run), sampling 4.8 images per CPU-s at 20 steps on 8 blocks
#: (README, `sample`), a forward without gradient about a third of a training step.
DEFAULT_RATES = {
    "train": 440.0,  # block-samples per CPU-second (forward + backward + optimizer step)
    "forward": 1300.0,  # block-samples per CPU-second, no gradient (held-out loss, teacher)
    "sample": 770.0,  # block-image-steps per CPU-second, both guidance branches
}
FIXED_SECONDS = 3.0  # a task's start: imports, loading a model


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Task:
    """One unit of work. ``work`` is its size per rate kind (e.g. ``{"train": block-samples}``)."""

    name: str
    kind: str
    args: dict[str, Any]
    part: str
    deps: tuple[str, ...] = ()
    work: dict[str, float] = field(default_factory=dict)

    def seconds(self, rates: dict[str, float]) -> float:
        """Estimated CPU seconds at ``rates``."""
        return FIXED_SECONDS + sum(amount / rates[kind] for kind, amount in self.work.items())


PartTasks = Callable[[dict[str, dict[str, Any]]], list[Task]]


class Results(dict[str, dict[str, Any]]):
    """Finished tasks' results by name, mirrored in ``WORK/results/*.json``."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.glob("*.json")):
            data = json.loads(path.read_text())
            self[data["name"]] = data

    def record(self, name: str, result: dict[str, Any]) -> None:
        self[name] = result
        path = self.folder / f"{_file_name(name)}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, path)

    def measured_rates(self) -> dict[str, float]:
        """Rates measured on finished tasks (median per kind), else the defaults.

        A task's CPU time is charged to the kind of work that dominates its estimate (≥ 80%), after
        taking off the estimate of the rest.
        """
        samples: dict[str, list[float]] = {}
        for result in self.values():
            work, cpu = result.get("work", {}), result.get("cpu_s", 0.0)
            if not work or cpu < 10:
                continue
            estimates = {kind: amount / DEFAULT_RATES[kind] for kind, amount in work.items()}
            kind = max(estimates, key=estimates.__getitem__)
            rest = sum(estimates.values()) - estimates[kind]
            if estimates[kind] >= 0.8 * sum(estimates.values()) and cpu - FIXED_SECONDS - rest > 0:
                samples.setdefault(kind, []).append(work[kind] / (cpu - FIXED_SECONDS - rest))
        rates = dict(DEFAULT_RATES)
        for kind, values in samples.items():
            rates[kind] = sorted(values)[len(values) // 2]
        return rates


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-+._" else "_" for c in name)


def all_tasks(parts: Iterable[PartTasks], results: dict[str, dict[str, Any]]) -> dict[str, Task]:
    """Every task the parts ask for given ``results`` (a task named twice is the same task)."""
    out: dict[str, Task] = {}
    for part in parts:
        for task in part(results):
            out.setdefault(task.name, task)
    return out


def priorities(tasks: dict[str, Task], rates: dict[str, float]) -> dict[str, float]:
    """Each task's seconds plus its longest chain of dependants: start the longest chains first."""
    children: dict[str, list[str]] = {}
    for task in tasks.values():
        for dep in task.deps:
            children.setdefault(dep, []).append(task.name)
    rank: dict[str, float] = {}

    def chain(name: str) -> float:
        if name not in rank:
            rank[name] = tasks[name].seconds(rates) + max(
                (chain(c) for c in children.get(name, [])), default=0.0
            )
        return rank[name]

    return {name: chain(name) for name in tasks}


def plan(tasks: dict[str, Task], results: Results, jobs: int) -> tuple[dict[str, float], float, float]:
    """(CPU seconds per part still to run, total, wall seconds on ``jobs`` workers by list scheduling)."""
    rates = results.measured_rates()
    todo = {name: task for name, task in tasks.items() if name not in results}
    per_part: dict[str, float] = {}
    for task in todo.values():
        per_part[task.part] = per_part.get(task.part, 0.0) + task.seconds(rates)
    # Simulate the scheduler: the ready task with the longest chain first, on the worker free first.
    rank = priorities(tasks, rates)
    finish: dict[str, float] = {name: 0.0 for name in results}
    free = [0.0] * jobs
    pending = dict(todo)
    while pending:
        ready = [t for t in pending.values() if all(d in finish for d in t.deps)]
        if not ready:
            break  # needs a task no part lists yet (a later stage): counted by its part when known
        task = max(ready, key=lambda t: rank[t.name])
        worker = min(range(jobs), key=free.__getitem__)
        start = max([free[worker], *(finish[d] for d in task.deps)])
        free[worker] = finish[task.name] = start + task.seconds(rates)
        del pending[task.name]
    return per_part, sum(per_part.values()), max(free)


def run(
    parts: list[PartTasks],
    results: Results,
    jobs: int,
    execute: Callable[[Task], dict[str, Any]],
    initializer: Callable[..., None],
    initargs: tuple[Any, ...],
) -> list[str]:
    """Run every task the parts ask for, ``jobs`` at a time; return the names of the tasks that failed.

    A failed task is logged and left out (its dependants are skipped); it is retried by the next run.
    """
    failed: dict[str, str] = {}
    running: dict[Future[dict[str, Any]], Task] = {}
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=initializer,
                             initargs=initargs) as pool:  # fmt: skip
        while True:
            tasks = all_tasks(parts, results)
            busy = {task.name for task in running.values()}
            ready = [
                t for t in tasks.values()
                if t.name not in results and t.name not in busy and t.name not in failed
                and all(d in results for d in t.deps)
            ]  # fmt: skip
            rates = results.measured_rates()
            rank = priorities(tasks, rates)
            ready.sort(key=lambda t: -rank[t.name])  # the longest chain first: it bounds the wall time
            for task in ready[: jobs - len(running)]:
                log(f"start {task.name} (~{task.seconds(rates):.0f} CPU s)")
                running[pool.submit(execute, task)] = task
            if not running:
                blocked = [n for n, t in tasks.items() if n not in results and n not in failed]
                if blocked:
                    log(f"skipped (a task they need failed): {', '.join(sorted(blocked))}")
                return sorted(failed)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                task = running.pop(future)
                try:
                    result = future.result()
                except Exception as err:  # a worker's failure is one task's, not the run's
                    failed[task.name] = f"{type(err).__name__}: {err}"
                    log(f"FAILED {task.name}: {failed[task.name]}")
                    continue
                results.record(task.name, {"name": task.name, "kind": task.kind, "part": task.part,
                                           "work": task.work, **result})  # fmt: skip
                log(f"done  {task.name}: {result['cpu_s']:.0f} CPU s")


def timed(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``'s result with the wall and CPU seconds it took."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return {**result, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def ceil_div(a: float, b: float) -> int:
    return int(math.ceil(a / b))
