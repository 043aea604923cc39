"""Distillation on the states the sampler visits (``distill.py``'s ``trajN``, ``daggerNrK`` and ``mixP`` runs).

``finetune --teacher`` distils on data + noise at sampled timesteps; the student is then judged on
its own guided 20-step trajectories. These runs move the distillation onto sampler states:

- ``trajN``: the teacher samples N training captions (the training set's own, never the evaluation
  suite's) with the evaluation's sampler, steps and guidance; every transformer call is recorded
  (both caption branches: the state, timestep, caption embedding and the teacher's velocity), and the
  student is trained to match those velocities. The teacher costs N × steps × 2 forwards, once.
- ``daggerNrK``: the student samples N fresh training captions every K optimizer steps (from step
  0), and the teacher labels the recorded states (DAgger): N × steps × 2 student forwards without
  gradients and as many teacher forwards per refresh.
- ``mixP``: a fraction P of every batch keeps ``finetune``'s data + noise states (the same draws as
  plain distillation), the rest comes from the state bank.

Each optimizer step sees ``--batch-size`` states, drawn uniformly (with replacement) from the bank by a
generator of its own, so data + noise draws are those of plain distillation. Benchmark code only:
``finetune`` has no such option; this swaps the trainer's class while ``run_training`` runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_captions(data: Path) -> list[str]:
    """The training set's captions, in order (``metadata.jsonl``'s ``text``)."""
    import json

    lines = (data / "metadata.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


def record_states(
    pipe: Any, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch_size: int = 64
) -> dict[str, Any]:
    """Sample ``prompts`` with ``pipe`` (its transformer as is) and return every transformer call's rows.

    ``x`` (N, C, h, w), ``t`` (N,) the timestep the transformer saw, ``embeds`` (N, L, D) and ``mask``
    (N, L) padded to the longest call, ``v`` (N, C, h, w) the transformer's own output.
    """
    import torch

    from sanatool.inference.sampler import generate

    rows: dict[str, list[Any]] = {"x": [], "t": [], "embeds": [], "mask": [], "v": []}

    def hook(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        rows["x"].append(args[0].detach().float().cpu())
        rows["t"].append(kwargs["timestep"].detach().float().cpu())
        rows["embeds"].append(kwargs["encoder_hidden_states"].detach().float().cpu())
        rows["mask"].append(kwargs["encoder_attention_mask"].detach().cpu())
        rows["v"].append(output[0].detach().float().cpu())

    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        generate(
            pipe, prompts, seeds, steps=steps, guidance=guidance, batch_size=batch_size, decode_images=False
        )
    finally:
        handle.remove()
    length = max(e.shape[1] for e in rows["embeds"])
    pad = torch.nn.functional.pad
    rows["embeds"] = [pad(e, (0, 0, 0, length - e.shape[1])) for e in rows["embeds"]]
    rows["mask"] = [pad(m, (0, length - m.shape[1])) for m in rows["mask"]]
    return {key: torch.cat(values) for key, values in rows.items()}


def label(teacher: Any, bank: dict[str, Any], batch_size: int = 256) -> None:
    """Replace ``bank['v']`` with the teacher's velocities at the bank's states."""
    import torch

    out = []
    with torch.no_grad():
        for lo in range(0, len(bank["x"]), batch_size):
            hi = lo + batch_size
            out.append(
                teacher(
                    bank["x"][lo:hi].to(teacher.dtype),
                    encoder_hidden_states=bank["embeds"][lo:hi].to(teacher.dtype),
                    encoder_attention_mask=bank["mask"][lo:hi],
                    timestep=bank["t"][lo:hi],
                    return_dict=False,
                )[0].float()
            )
    bank["v"] = torch.cat(out)


def states_trainer(
    states: dict[str, Any], teacher_dir: Path, data: Path, steps: int, guidance: float, report: dict[str, Any]
) -> type:
    """A ``Trainer`` subclass whose distillation states come from sampler trajectories, as ``states`` says.

    ``report`` gets ``teacher_forwards`` (teacher transformer rows: the bank's, sampling included, and
    the data + noise states') and ``student_sampling_forwards`` (the student's rows run without
    gradients to sample, DAgger).
    """
    import torch

    from sanatool.inference.pipeline import load_pipeline
    from sanatool.training.loop import Trainer

    captions = read_captions(data)
    teacher_captions = int(states.get("teacher_captions") or 0)
    student_captions = int(states.get("student_captions") or 0)
    refresh = int(states.get("refresh") or 0)
    data_fraction = float(states.get("data_fraction") or 0.0)

    class StatesTrainer(Trainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.pipe = load_pipeline(teacher_dir)
            self.picker = torch.Generator().manual_seed(self.opts.seed + 1)
            self.next_caption = 0
            self.teacher_bank: dict[str, Any] | None = None
            self.student_bank: dict[str, Any] | None = None
            self.refreshed_at = -1
            report.update(teacher_forwards=0, student_sampling_forwards=0)
            if teacher_captions:
                self.teacher_bank = record_states(
                    self.pipe, *self._captions(teacher_captions), steps, guidance
                )
                report["teacher_forwards"] += len(self.teacher_bank["x"])

        def _captions(self, n: int) -> tuple[list[str], list[int]]:
            """The next ``n`` training captions (wrapping round), with seeds no evaluation image uses."""
            start = self.next_caption
            self.next_caption += n
            picked = [captions[(start + i) % len(captions)] for i in range(n)]
            return picked, [1_000_000 + start + i for i in range(n)]

        def _refresh(self) -> None:
            """DAgger: the student samples fresh captions; the teacher labels the states it visited."""
            teacher = self.pipe.transformer
            self.model.eval()
            self.pipe.transformer = self.model
            try:
                bank = record_states(self.pipe, *self._captions(student_captions), steps, guidance)
            finally:
                self.pipe.transformer = teacher
                self.model.train()
            label(self.teacher, bank)
            report["teacher_forwards"] += len(bank["x"])
            report["student_sampling_forwards"] += len(bank["x"])
            self.student_bank = bank
            self.refreshed_at = self.step_count

        def _bank(self) -> dict[str, Any]:
            if student_captions and self.step_count % refresh == 0 and self.refreshed_at != self.step_count:
                self._refresh()
            banks = [b for b in (self.teacher_bank, self.student_bank) if b is not None]
            if len(banks) == 1:
                return banks[0]
            return {key: torch.cat([b[key] for b in banks]) for key in banks[0]}

        def _micro_loss(self, draw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            total = self.opts.batch_size
            n_data = round(data_fraction * total)
            bank = self._bank()
            pick = torch.randint(len(bank["x"]), (total - n_data,), generator=self.picker)
            pred = self.wrapped(
                bank["x"][pick],
                encoder_hidden_states=bank["embeds"][pick],
                timestep=bank["t"][pick],
                encoder_attention_mask=bank["mask"][pick],
                return_dict=False,
            )[0]
            states_loss = ((pred.float() - bank["v"][pick]) ** 2).mean()
            parts = {"states_loss": states_loss.detach()}
            if not n_data:
                return states_loss, parts
            report["teacher_forwards"] += n_data  # the data + noise states' teacher call
            data_draw = {key: value[:n_data] for key, value in draw.items()}
            data_loss, data_parts = super()._micro_loss(data_draw)
            parts.update(data_parts)
            return (n_data * data_loss + (total - n_data) * states_loss) / total, parts

    return StatesTrainer


@contextlib.contextmanager
def trainer_class(cls: type) -> Iterator[None]:
    """Make ``run_training`` build ``cls`` instead of ``Trainer`` for the duration."""
    import sanatool.training.loop as loop

    original = loop.Trainer
    loop.Trainer = cls
    try:
        yield
    finally:
        loop.Trainer = original
