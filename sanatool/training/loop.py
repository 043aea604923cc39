"""The flow-matching training step (SANA's objective) and the state that makes it resumable.

Rectified flow: ``x_t = (1 − σ)·x0 + σ·ε`` and the transformer predicts ``ε − x0`` (the
``flow_prediction`` the Flow-DPM-Solver samples with). ``u`` is drawn with diffusers'
``compute_density_for_timestep_sampling`` (logit-normal by default), shifted by the scheduler's
flow shift ``σ = s·u / (1 + (s − 1)·u)``, and the model sees ``t = σ·1000`` exactly as at
sampling time; the per-sample loss weight is diffusers' ``compute_loss_weighting_for_sd3``.
Captions are swapped for the empty caption's embedding with probability ``caption_dropout`` so
the model learns the unconditional branch of classifier-free guidance.

Every random number (data order, noise, ``u``, dropout) comes from one CPU ``torch.Generator``
that every rank advances identically; each rank takes its slice of the global batch. So a run on
N processes computes the same gradients as one process on the same global batch, the device does
not change the draws, and saving the generator state is enough to resume bit for bit.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from sanatool.arch import resolve_precision
from sanatool.distributed import DistContext
from sanatool.training.options import TrainOptions


@dataclass
class StepResult:
    """One optimizer step: the global-batch loss, gradient norm and learning rate."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    #: The loss's parts when it has several (distillation: ``flow_loss``, ``distill_loss``), global-batch means.
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


class DataStream:
    """Item indices in epochs: a fresh permutation from the shared generator whenever one runs out."""

    def __init__(self, count: int, generator: Any) -> None:
        import torch

        self.count = count
        self.generator = generator
        self.perm = torch.randperm(count, generator=generator)
        self.pos = 0

    def take(self, n: int) -> list[int]:
        """The next ``n`` indices (crossing epoch boundaries as needed)."""
        import torch

        out: list[int] = []
        while len(out) < n:
            if self.pos >= self.count:
                self.perm = torch.randperm(self.count, generator=self.generator)
                self.pos = 0
            chunk = self.perm[self.pos : self.pos + n - len(out)]
            out.extend(int(i) for i in chunk)
            self.pos += len(chunk)
        return out


class BucketBatches:
    """Global batches drawn from one aspect-ratio bucket each, as SANA's ``AspectRatioBatchSampler`` draws
    them: items arrive in the :class:`DataStream`'s epoch order and wait in their bucket until it holds a
    batch. Every rank draws the same batches; the waiting items are part of the resumable state."""

    def __init__(self, stream: DataStream, starts: list[int]) -> None:
        self.stream = stream
        self.starts = starts  # each bucket's first cache item; buckets are contiguous ranges
        self.waiting: list[list[int]] = [[] for _ in starts]

    def take(self, n: int) -> tuple[int, list[int]]:
        """The next full batch of ``n`` indices and the bucket it comes from."""
        while True:
            index = self.stream.take(1)[0]
            bucket = bisect.bisect_right(self.starts, index) - 1
            self.waiting[bucket].append(index)
            if len(self.waiting[bucket]) == n:
                batch, self.waiting[bucket] = self.waiting[bucket], []
                return bucket, batch


class Trainer:
    """Owns the model, optimizer, EMA and random state of a run; :meth:`step` does one optimizer step."""

    def __init__(
        self,
        opts: TrainOptions,
        ctx: DistContext,
        model: Any,
        wrapped: Any,
        optimizer: Any,
        reader: Any,
        null_embedding: tuple[Any, Any, Any],
        flow_shift: float,
        num_train_timesteps: int,
        timestep_scale: float,
        teacher: Any = None,
    ) -> None:
        """``teacher``: a frozen transformer to distil from (``--teacher``), weighted by ``opts.distill_weight``."""
        import torch

        self.opts = opts
        self.ctx = ctx
        self.model = model
        self.wrapped = wrapped
        self.optimizer = optimizer
        self.teacher = teacher
        self.reader = reader
        self.null_embeds, self.null_mask, self.null_ids = null_embedding
        # With --train-text-encoder the model is a TextConditionedTransformer fed token ids.
        self.text_keys = ("ids", "mask") if opts.train_text_encoder else ("embeds", "mask")
        self.flow_shift = flow_shift
        self.time_scale = num_train_timesteps * timestep_scale
        self.generator = torch.Generator().manual_seed(opts.seed)
        if opts.lora_dropout:  # LoRA dropout draws from torch's global generator: make it --seed's too
            torch.manual_seed(opts.seed)
        self.stream = DataStream(reader.count, self.generator)
        # Aspect-ratio buckets: a batch never mixes latent sizes. One bucket draws exactly as before.
        self.latent_shapes = [bucket.latent_shape for bucket in reader.buckets]
        self.batches = (
            BucketBatches(self.stream, [bucket.start for bucket in reader.buckets])
            if len(reader.buckets) > 1
            else None
        )
        self.step_count = 0
        self.ema = None
        if opts.ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(model.parameters(), decay=opts.ema_decay)
        # A LoRA run's base in --base-precision is not fp32: it computes in bf16 whatever --precision says.
        lowered_base = opts.lora_rank is not None and opts.base_precision is not None
        self.autocast = lowered_base or resolve_precision(opts.precision, ctx.device.type) == "bf16"

    # -- the step -------------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then constant or a cosine decay to 10% at the last step."""
        opts = self.opts
        if opts.warmup_steps and step < opts.warmup_steps:
            return opts.lr * (step + 1) / opts.warmup_steps
        if opts.lr_schedule == "cosine":
            span = max(1, opts.steps - opts.warmup_steps)
            progress = min(1.0, (step - opts.warmup_steps) / span)
            return opts.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        return opts.lr

    def _draw(self, global_batch: int) -> dict[str, Any]:
        """Indices, noise, u and dropout mask for the whole global micro-batch (every rank draws all)."""
        import torch
        from diffusers.training_utils import compute_density_for_timestep_sampling

        opts = self.opts
        if self.batches is None:
            indices, bucket = self.stream.take(global_batch), 0
        else:
            bucket, indices = self.batches.take(global_batch)
        shape = (global_batch, *self.latent_shapes[bucket])
        noise = torch.randn(shape, generator=self.generator)
        scheme = opts.weighting_scheme if opts.weighting_scheme in ("logit_normal", "mode") else "uniform"
        u = compute_density_for_timestep_sampling(
            scheme,
            global_batch,
            logit_mean=opts.logit_mean,
            logit_std=opts.logit_std,
            mode_scale=opts.mode_scale,
            generator=self.generator,
        )
        drop = torch.rand(global_batch, generator=self.generator) < opts.caption_dropout
        return {"indices": indices, "noise": noise, "u": u, "drop": drop}

    def _micro_loss(self, draw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """This rank's share of one micro-batch: forward pass and the weighted loss, with its parts if several.

        With a teacher the loss is ``(1 − w)·flow-matching + w·‖v_student − v_teacher‖²`` (same timestep
        weighting for both terms).
        """
        import torch
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        per_rank = self.opts.batch_size
        lo, hi = self.ctx.rank * per_rank, (self.ctx.rank + 1) * per_rank
        device = self.ctx.device
        batch = self.reader.gather(draw["indices"][lo:hi], ("latents", *self.text_keys))
        x0 = batch["latents"].to(device, torch.float32)
        mask = batch["mask"]
        drop = draw["drop"][lo:hi]
        if drop.any():
            mask = torch.where(drop[:, None], self.null_mask.to(mask.dtype), mask)
            if self.opts.train_text_encoder:
                batch["ids"] = torch.where(drop[:, None], self.null_ids.to(batch["ids"].dtype), batch["ids"])
            else:
                batch["embeds"] = torch.where(
                    drop[:, None, None], self.null_embeds.to(batch["embeds"].dtype), batch["embeds"]
                )
        noise = draw["noise"][lo:hi].to(device)
        u = draw["u"][lo:hi].to(device)
        shift = self.flow_shift
        sigmas = shift * u / (1 + (shift - 1) * u)
        sig = sigmas.view(-1, 1, 1, 1)
        noisy = (1.0 - sig) * x0 + sig * noise
        target = noise - x0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
            if self.opts.train_text_encoder:
                pred = self.wrapped(
                    noisy, batch["ids"].to(device, torch.long), mask.to(device), sigmas * self.time_scale
                )
            else:
                pred = self.wrapped(
                    noisy,
                    # autocast casts down as needed
                    encoder_hidden_states=batch["embeds"].to(device, torch.float32),
                    timestep=sigmas * self.time_scale,
                    encoder_attention_mask=mask.to(device),
                    return_dict=False,
                )[0]
            if self.teacher is not None:
                with torch.no_grad():
                    # The same inputs as the student's; its depth may differ, never its width.
                    teacher_pred = self.teacher(
                        noisy.to(self.teacher.dtype),
                        encoder_hidden_states=batch["embeds"].to(device, self.teacher.dtype),
                        timestep=sigmas * self.time_scale,
                        encoder_attention_mask=mask.to(device),
                        return_dict=False,
                    )[0]
        weighting = compute_loss_weighting_for_sd3(self.opts.weighting_scheme, sigmas=sigmas)
        per_sample = ((pred.float() - target) ** 2).mean(dim=(1, 2, 3))
        flow = (weighting * per_sample).mean()
        if self.teacher is None:
            return flow, {}
        w = float(self.opts.distill_weight or 1.0)
        distill = (weighting * ((pred.float() - teacher_pred.float()) ** 2).mean(dim=(1, 2, 3))).mean()
        parts = {"flow_loss": flow.detach(), "distill_loss": distill.detach()}
        return (1.0 - w) * flow + w * distill, parts

    def step(self) -> StepResult:
        """One optimizer step over the global batch (micro-batches × ranks); does not step on NaN."""
        import contextlib

        import torch

        opts = self.opts
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        parts: dict[str, float] = {}
        global_batch = opts.batch_size * self.ctx.world_size
        for micro in range(opts.grad_accum):
            draw = self._draw(global_batch)
            last = micro == opts.grad_accum - 1
            # DDP: synchronise gradients only on the last micro-step of the accumulation.
            sync = (
                contextlib.nullcontext()
                if last or not hasattr(self.wrapped, "no_sync")
                else self.wrapped.no_sync()
            )
            with sync:
                loss, micro_parts = self._micro_loss(draw)
                loss = loss / opts.grad_accum
                loss.backward()
            total += float(loss.detach())
            for name, value in micro_parts.items():
                parts[name] = parts.get(name, 0.0) + float(value) / opts.grad_accum
        limit = opts.max_grad_norm if opts.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), limit))
        parts = {name: self.ctx.mean(value) for name, value in parts.items()}
        result = StepResult(self.step_count + 1, self.ctx.mean(total), grad_norm, lr, parts)
        if not result.finite:
            self.optimizer.zero_grad(set_to_none=True)
            return result
        self.optimizer.step()
        if self.ema is not None:
            self.ema.step(self.model.parameters())
        self.step_count += 1
        return result

    # -- state ------------------------------------------------------------------------------------

    def random_state(self) -> dict[str, Any]:
        """The data-order and random-number state (identical on every rank)."""
        import torch

        # torch's own generator draws what the model itself draws (LoRA dropout).
        state = {
            "generator": self.generator.get_state(),
            "perm": self.stream.perm.clone(),
            "pos": self.stream.pos,
            "torch": torch.get_rng_state(),
        }
        if self.batches is not None:
            state["waiting"] = [list(items) for items in self.batches.waiting]
        return state

    def load_random_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`random_state` saved."""
        import torch

        self.generator.set_state(state["generator"])
        if "torch" in state:  # checkpoints of earlier versions lack it
            torch.set_rng_state(state["torch"])
        self.stream.perm = state["perm"]
        self.stream.pos = int(state["pos"])
        if self.batches is not None:
            self.batches.waiting = [[int(i) for i in items] for items in state["waiting"]]

    def final_weights(self) -> dict[str, Any] | None:
        """The EMA weights as a state dict (None without EMA)."""
        if self.ema is None:
            return None
        names = [name for name, _ in self.model.named_parameters()]
        state = {name: tensor.detach().cpu() for name, tensor in self.model.state_dict().items()}
        for name, shadow in zip(names, self.ema.shadow_params, strict=True):
            state[name] = shadow.detach().cpu()
        return state
