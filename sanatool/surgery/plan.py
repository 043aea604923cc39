"""A surgery plan (which source block goes where, what is new) and its streaming execution.

``grow`` and ``prune`` both build a :class:`SurgeryPlan`: the output config and the ordered tensor
entries, where kept tensors are :class:`~sanatool.io.safetensors.FileSlice` copies and new tensors
are generated lazily. A plan can be described (``--dry-run``) without writing anything, or run:
the transformer is written with ``copy_file_range`` into an atomic output, the other pipeline
components are hard-linked, and provenance is appended. The model is never loaded.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanatool.errors import InputError
from sanatool.formatting import format_block_list, human_bytes
from sanatool.io.modeldir import (
    ModelDir,
    carry_components,
    fingerprint_of,
    open_transformer_dir,
    write_transformer_dir,
)
from sanatool.io.outputs import atomic_output_dir, check_output_path, link_or_copy
from sanatool.io.provenance import write_provenance
from sanatool.io.safetensors import DEFAULT_MAX_SHARD_SIZE, FileSlice, TensorEntry, parse_size, plan_shards
from sanatool.progress import ProgressFn, no_progress
from sanatool.surgery.controlnet import write_plain_model_index
from sanatool.surgery.convert_keys import SIDE_FILE as ORIGINAL_EXTRAS_FILE


@dataclass(frozen=True)
class BlockOrigin:
    """Where output block ``index`` comes from: a source block (``source``) or nothing (new).

    ``how`` is ``copy`` (byte for byte), ``identity-copy`` (a copy with zeroed output projections
    and gates) or ``new`` (identity-init).
    """

    index: int
    source: int | None
    how: str


_HOW_TEXT = {
    "copy": "copied",
    "identity-copy": "copied, output projections and gates zeroed (identity at init)",
    "new": "new, identity at init (zero output projections, norms one, small random weights)",
}


@dataclass
class SurgeryPlan:
    """Everything a surgery will write, known before a byte is written."""

    command: str
    model: ModelDir
    out: Path
    config: dict[str, Any]
    blocks: list[BlockOrigin]
    entries: list[TensorEntry]
    args: dict[str, Any]
    summary: str
    notes: list[str] = field(default_factory=list)
    #: Pipeline components left out of the output (``controlnet`` with ``--drop-controlnet``).
    drop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # What was read and left out belongs in the output's provenance.
        if self.model.variant:
            self.args["variant"] = self.model.variant
        if self.drop:
            self.args["dropped_components"] = list(self.drop)

    @property
    def bytes_copied(self) -> int:
        return sum(e.nbytes for e in self.entries if isinstance(e.source, FileSlice))

    @property
    def bytes_generated(self) -> int:
        return sum(e.nbytes for e in self.entries if not isinstance(e.source, FileSlice))

    @property
    def bytes_total(self) -> int:
        return self.bytes_copied + self.bytes_generated

    def fingerprint(self) -> str:
        """The output's fingerprint (what ``info`` will show and importance files are keyed by)."""
        return fingerprint_of(self.config, self.entries)

    def block_runs(self) -> list[tuple[list[BlockOrigin], str]]:
        """Output blocks grouped into runs that advance together (e.g. ``20-23 ← 0-3``)."""
        runs: list[list[BlockOrigin]] = []
        for origin in self.blocks:
            if runs:
                last = runs[-1][-1]
                same_how = last.how == origin.how
                if same_how and origin.source is None and last.source is None:
                    runs[-1].append(origin)
                    continue
                if same_how and last.source is not None and origin.source == last.source + 1:
                    runs[-1].append(origin)
                    continue
            runs.append([origin])
        return [(run, run[0].how) for run in runs]

    def describe(self) -> list[str]:
        """The plan as lines of text: which source block goes where, what is new, bytes to write."""
        source = self.model.transformer
        lines = [
            f"{self.command}: {self.model.path} ({source.num_layers} blocks) → {self.out} "
            f"({self.config['num_layers']} blocks), {self.summary}"
        ]
        for run, how in self.block_runs():
            targets = format_block_list([o.index for o in run])
            if run[0].source is None:
                lines.append(f"  blocks {targets}: {_HOW_TEXT[how]}")
            else:
                sources = format_block_list([o.source for o in run if o.source is not None])
                lines.append(f"  blocks {targets} ← source blocks {sources}: {_HOW_TEXT[how]}")
        dropped = sorted(set(range(source.num_layers)) - {o.source for o in self.blocks})
        if dropped:
            lines.append(f"  dropped source blocks: {format_block_list(dropped)}")
        lines.append(f"  non-block tensors: {len(source.non_block_tensors())} copied unchanged")
        carried = [c for c in self.model.components if c != "transformer" and c not in self.drop]
        if carried:
            lines.append(f"  components hard-linked: {', '.join(carried)}")
        lines.append(
            f"  bytes to write: {human_bytes(self.bytes_copied)} copied + "
            f"{human_bytes(self.bytes_generated)} generated = {human_bytes(self.bytes_total)}"
        )
        if self.drop:
            lines.append(f"  components dropped: {', '.join(self.drop)}")
        variant = self.model.transformer.variant
        if variant:
            lines.append(
                f"  weights: the {variant} variant, written as diffusion_pytorch_model.{variant}*.safetensors"
            )
        lines += [f"  note: {note}" for note in self.notes]
        return lines

    def to_json(self, max_shard_size: int | None = None) -> dict[str, Any]:
        """The plan as a JSON-ready dict (``--dry-run --json``)."""
        result: dict[str, Any] = {
            "command": self.command,
            "source": str(self.model.path),
            "out": str(self.out),
            "summary": self.summary,
            "source_depth": self.model.transformer.num_layers,
            "depth": self.config["num_layers"],
            "qk_norm": self.config.get("qk_norm"),
            "blocks": [{"index": o.index, "source": o.source, "how": o.how} for o in self.blocks],
            "bytes_copied": self.bytes_copied,
            "bytes_generated": self.bytes_generated,
            "bytes_total": self.bytes_total,
            "fingerprint": self.fingerprint(),
            "notes": list(self.notes),
            "variant": self.model.transformer.variant,
            "dropped_components": list(self.drop),
        }
        if max_shard_size is not None:
            result["shards"] = len(plan_shards(self.entries, max_shard_size))
        return result


def shard_size(max_shard_size: str | int) -> int:
    """Parse ``--max-shard-size``, turning a bad value into an input error."""
    try:
        return parse_size(max_shard_size)
    except ValueError as err:
        raise InputError(f"--max-shard-size: {err}") from err


def check_plan_output(model: ModelDir, out: Path, force: bool) -> Path:
    """Refuse an output that exists (without ``force``) or overlaps the input, before any work."""
    return check_output_path(out, force, [model.path])


def non_block_entries(model: ModelDir) -> list[TensorEntry]:
    """The tensors outside ``transformer_blocks``, copied unchanged in source file order."""
    infos = sorted(model.transformer.non_block_tensors(), key=lambda i: (str(i.file), i.start))
    return [TensorEntry.copy_of(info) for info in infos]


#: Bytes of generated tensors that may be made ahead of the writer, per worker thread.
PREFETCH_BYTES_PER_WORKER = 64 * 1024 * 1024


def prefetch_workers() -> int:
    """Threads that generate new tensors: numpy releases the GIL, so they use the spare cores."""
    return max(1, min(4, os.cpu_count() or 1))


class Prefetcher:
    """Runs tensor producers on worker threads, ahead of the writer, within a memory budget.

    The writer spends most of its time in ``copy_file_range`` and ``write`` (which release the
    GIL), so new tensors are generated on the other cores meanwhile instead of in between. At most
    ``budget`` bytes of results (or one result, whatever its size) wait for the writer, which
    takes them in order with :meth:`take`, as ``write_sharded`` does.
    """

    def __init__(
        self, producers: Sequence[Callable[[], Any]], sizes: Sequence[int], budget: int, workers: int
    ) -> None:
        self._producers = list(producers)
        self._sizes = list(sizes)
        self._budget = budget
        self._workers = workers
        self._futures: dict[int, Future[Any]] = {}
        self._next = 0
        self._held = 0
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> Prefetcher:
        if self._producers:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="sanatool-generate")
            self._submit()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self) -> None:
        assert self._pool is not None
        while self._next < len(self._producers) and (
            not self._futures or self._held + self._sizes[self._next] <= self._budget
        ):
            self._futures[self._next] = self._pool.submit(self._producers[self._next])
            self._held += self._sizes[self._next]
            self._next += 1

    def take(self, index: int) -> Any:
        """The result of producer ``index`` (waiting for it, re-raising its error)."""
        future = self._futures.pop(index)
        self._held -= self._sizes[index]
        self._submit()
        return future.result()


def _prefetched(entries: Sequence[TensorEntry]) -> tuple[list[TensorEntry], Prefetcher]:
    """Entries whose generated sources come from a :class:`Prefetcher` (file slices and zeros unchanged)."""
    generated = [k for k, entry in enumerate(entries) if callable(entry.source)]
    workers = prefetch_workers()
    prefetcher = Prefetcher(
        [entries[k].source for k in generated],
        [entries[k].nbytes for k in generated],
        PREFETCH_BYTES_PER_WORKER * workers,
        workers,
    )
    wrapped = list(entries)
    for position, k in enumerate(generated):
        entry = entries[k]
        wrapped[k] = TensorEntry(
            entry.name, entry.dtype, entry.shape, functools.partial(prefetcher.take, position)
        )
    return wrapped, prefetcher


def run_plan(
    plan: SurgeryPlan,
    force: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    progress: ProgressFn = no_progress,
) -> Path:
    """Write a plan's output atomically: transformer streamed, components hard-linked, provenance added.

    Returns the output path.
    """
    shard_bytes = shard_size(max_shard_size)
    model = plan.model

    def report(task: str, done: int, total: int | None = None, **info: object) -> None:
        progress(plan.command, done, total, **info)

    entries, prefetcher = _prefetched(plan.entries)
    with atomic_output_dir(plan.out, force, inputs=[model.path], size=plan.bytes_total) as tmp:
        carry_components(model, tmp, plan.drop)
        if plan.drop:
            write_plain_model_index(model, tmp)
        transformer_out = model.transformer_out(tmp)
        with prefetcher:
            write_transformer_dir(
                transformer_out, plan.config, entries, shard_bytes, report, model.transformer.variant
            )
        # What an original checkpoint held beyond diffusers' tensors (convert) outlives the surgery:
        # the null caption and positional table do not depend on the depth.
        extras = model.transformer.path / ORIGINAL_EXTRAS_FILE
        if extras.is_file():
            link_or_copy(extras, transformer_out / ORIGINAL_EXTRAS_FILE)
        # Re-open what was written: validates it end to end from the headers, and fingerprints it.
        fingerprint = open_transformer_dir(transformer_out, model.transformer.variant).fingerprint()
        write_provenance(tmp, model, plan.command, plan.args, plan.summary, fingerprint)
    return plan.out
