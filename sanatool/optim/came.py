"""CAME: Confidence-guided Adaptive Memory Efficient optimization (Luo et al., ACL 2023).

The update rule of the reference ``came-pytorch`` package, for a parameter ``W`` with gradient ``G``:

* second moment ``V ≈ r cᵀ / mean(r)`` with ``r``, ``c`` running (β₂) means over the columns and
  rows of ``G² + ε₁``; ``U = G / √V``, then ``U /= max(1, RMS(U) / d)`` (update clipping);
* first moment ``m = β₁ m + (1 − β₁) U``;
* instability ``(U − m)² + ε₂``, factored the same way (β₃) into ``S ≈ R Cᵀ / mean(R)``;
* ``W -= lr · wd · W`` (decoupled weight decay), then ``W -= lr · m / √S``.

Parameters with two or more dims are factored as the matrix ``[shape[0], numel / shape[0]]``: a
conv weight ``[out, in, kh, kw]`` keeps ``out + in·kh·kw`` statistics (the reference factors the
last two dims, which for SANA's 1×1 and depthwise 3×3 convs costs more than the weight). 1-D (and
0-D) parameters keep a full second moment and skip the confidence term, as in the reference.

All state is fp32, whatever the parameter dtype. Small parameters of one shape are updated as one
stack; large ones in chunks of rows (:mod:`sanatool.optim.update`). The state tensors of a stack's
parameters are views of one tensor per state key, so a step reads and writes them with one kernel
for all (after ``load_state_dict`` or any change to a stack's members, the first step re-links them:
values are kept bit for bit).
:class:`~sanatool.optim.came8bit.CAME8bit` is the same optimizer with an 8-bit first moment.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from typing import Any

import torch

from sanatool.optim.blockwise import BLOCK_SIZE
from sanatool.optim.layout import StateLayout, factored_dims, state_layout
from sanatool.optim.update import (
    Fp32Moments,
    Hyper,
    MomentStore,
    Params,
    Workspace,
    factored_update,
    gather,
    scalar,
    stacked,
    unfactored_update,
)

#: Default values per chunk: bounds one step's fp32 scratch (a few times this) and is large enough
#: that per-kernel overhead stays small.
DEFAULT_CHUNK_SIZE = 1 << 20

# Parameters up to this many values are stacked with others of their shape: per-kernel overhead
# dominates small tensors. A stack holds at most 1.5 × chunk_size values.
_STACK_MAX_NUMEL = 1 << 17


def base_defaults(
    lr: Any, betas: Any, eps: Any, clip_threshold: Any, weight_decay: Any, chunk_size: Any
) -> dict[str, Any]:
    """CAME's param-group defaults (tuples for betas and eps, so that groups compare equal)."""
    return {
        "lr": lr,
        "betas": tuple(betas) if isinstance(betas, (tuple, list)) else betas,
        "eps": tuple(eps) if isinstance(eps, (tuple, list)) else eps,
        "clip_threshold": clip_threshold,
        "weight_decay": weight_decay,
        "chunk_size": chunk_size,
    }


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_hyperparameters(group: dict[str, Any], owner: str) -> None:
    """Raise ValueError naming the bad value if a CAME param group's hyperparameters are invalid."""
    lr = group.get("lr")
    if not _is_real(lr) or lr <= 0:
        raise ValueError(f"{owner}: lr must be a finite number > 0, got {lr!r}")
    betas = group.get("betas")
    if not isinstance(betas, (tuple, list)) or len(betas) != 3:
        raise ValueError(f"{owner}: betas must be three numbers (β₁, β₂, β₃), got {betas!r}")
    for i, b in enumerate(betas):
        if not _is_real(b) or not 0.0 <= b < 1.0:
            raise ValueError(f"{owner}: betas[{i}] must be in [0, 1), got {b!r}")
    eps = group.get("eps")
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(f"{owner}: eps must be two numbers (ε₁, ε₂), got {eps!r}")
    for i, e in enumerate(eps):
        if not _is_real(e) or e <= 0:
            raise ValueError(f"{owner}: eps[{i}] must be a finite number > 0, got {e!r}")
    clip = group.get("clip_threshold")
    if not _is_real(clip) or clip <= 0:
        raise ValueError(f"{owner}: clip_threshold must be a finite number > 0, got {clip!r}")
    wd = group.get("weight_decay")
    if not _is_real(wd) or wd < 0:
        raise ValueError(f"{owner}: weight_decay must be a finite number >= 0, got {wd!r}")
    chunk = group.get("chunk_size")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < BLOCK_SIZE:
        raise ValueError(f"{owner}: chunk_size must be an integer >= {BLOCK_SIZE}, got {chunk!r}")


class CAME(torch.optim.Optimizer):
    """CAME with 32-bit state (the reference update rule; see the module docstring).

    Args:
        params: parameters or param-group dicts.
        lr: learning rate (> 0).
        betas: (β₁, β₂, β₃) for the first moment, the second moment and the instability, in [0, 1).
        eps: (ε₁, ε₂) added to the squared gradient and to the instability, > 0.
        clip_threshold: update-clipping threshold ``d`` on RMS(U), > 0.
        weight_decay: decoupled weight decay (multiplied by lr), >= 0.
        chunk_size: about how many values one chunk of the update holds (whole rows); bounds the
            step's fp32 scratch to a few times this. Changes only the rounding, not the rule.

    Example::

        opt = CAME(model.parameters(), lr=1e-4, weight_decay=0.01)
    """

    _required_group_keys: tuple[str, ...] = (
        "lr",
        "betas",
        "eps",
        "clip_threshold",
        "weight_decay",
        "chunk_size",
    )

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        eps: tuple[float, float] = (1e-30, 1e-16),
        clip_threshold: float = 1.0,
        weight_decay: float = 0.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self._init(params, base_defaults(lr, betas, eps, clip_threshold, weight_decay, chunk_size))

    def _init(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self._validate_group(defaults)
        super().__init__(params, defaults)

    # Hooks CAME8bit overrides: the state layout, where the first moment lives, chunk alignment.

    def _validate_group(self, group: dict[str, Any]) -> None:
        validate_hyperparameters(group, type(self).__name__)

    def _layout(self, p: torch.Tensor, group: dict[str, Any]) -> StateLayout:
        return state_layout(tuple(p.shape))

    def _moments(self) -> MomentStore:
        return Fp32Moments()

    def _row_alignment(self, cols: int) -> int:
        """Chunks hold a multiple of this many rows."""
        return 1

    def _stackable(self, p: torch.Tensor, grad: torch.Tensor) -> bool:
        return p.numel() <= _STACK_MAX_NUMEL and p.is_contiguous() and grad.is_contiguous()

    # ----------------------------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, refusing invalid hyperparameters and complex parameters."""
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._validate_group(merged)
        super().add_param_group(param_group)
        if any(p.is_complex() for p in self.param_groups[-1]["params"]):
            self.param_groups.pop()
            raise ValueError(f"{type(self).__name__}: complex parameters are not supported")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        name = type(self).__name__
        ws = self.__dict__.setdefault("_workspace", Workspace())  # not state: not saved nor pickled
        moments = self._moments()
        linked = self.__dict__.get("_linked", {})
        # Not state either: the views each stack's members held after this step's link (see _link);
        # only this step's stacks, so that the tensors of stacks gone are freed.
        self._linked: dict[tuple[int, ...], list[list[torch.Tensor]]] = {}
        plans = self.__dict__.setdefault("_plans", {})  # not state either
        for gi, group in enumerate(self.param_groups):
            live, kinds = [], []
            for p in group["params"]:
                grad = p.grad
                if grad is None or p.numel() == 0:
                    continue
                if grad.is_sparse:
                    raise ValueError(
                        f"{name} does not support sparse gradients (parameter of shape {tuple(p.shape)}); "
                        "use a dense layer, e.g. nn.Embedding(..., sparse=False)"
                    )
                state = self.state[p]
                if not state:
                    for key, (shape, dtype) in self._layout(p, group).items():
                        state[key] = torch.zeros(
                            shape, dtype=dtype, device="cpu" if key == "step" else p.device
                        )
                live.append(p)
                kinds.append(self._kind(p, grad, state["exp_avg"].dtype))
            hp = Hyper.of(group)
            for bucket in self._planned_buckets(plans, gi, live, kinds, group["chunk_size"]):
                states = self._link(bucket, linked)
                stacked(states, "step").add_(scalar(1.0))
                self._update_bucket(bucket, states, hp, group["chunk_size"], moments, ws)
        return loss

    def _kind(self, p: torch.Tensor, grad: torch.Tensor, moment_dtype: torch.dtype) -> tuple[Any, ...] | None:
        """What decides a param's stack: its shape, dtypes and device, or None for one updated alone.
        Small 1-D params with an fp32 moment go in one ragged stack whatever their lengths (shape
        None): biases and norms come in many lengths, and each stack costs a few dozen kernels."""
        if not self._stackable(p, grad):
            return None
        shape = None if p.dim() == 1 and moment_dtype == torch.float32 else p.shape
        return (shape, p.dtype, grad.dtype, p.device, moment_dtype)

    def _planned_buckets(
        self,
        plans: dict[int, Any],
        group_index: int,
        live: list[torch.Tensor],
        kinds: list[tuple[Any, ...] | None],
        chunk_size: int,
    ) -> list[list[torch.Tensor]]:
        """:meth:`_buckets` of a group's live params, reused while nothing it depends on changed
        (which params, their ``kinds``, the chunk size).

        Splitting anew at every step cost about a tenth of a small model's step. The cached
        buckets hold the params, so no id in the signature can be reused by another object.
        """
        signature = (tuple(map(id, live)), kinds, chunk_size)
        plan = plans.get(group_index)
        if plan is None or plan[0] != signature:
            plan = plans[group_index] = (signature, self._buckets(live, kinds, chunk_size))
        return plan[1]

    def _buckets(
        self, params: list[torch.Tensor], kinds: list[tuple[Any, ...] | None], chunk_size: int
    ) -> list[list[torch.Tensor]]:
        """Split params into batches updated together: small contiguous ones of one shape, dtype and
        state kind (one ``kinds`` entry) are stacked, about ``chunk_size`` values a stack and stacks
        of one shape about equal; those of kind None go alone."""
        out: list[list[torch.Tensor]] = []
        stacks: dict[tuple[Any, ...], list[torch.Tensor]] = {}
        for p, key in zip(params, kinds, strict=True):
            if key is None:
                out.append([p])
            else:
                stacks.setdefault(key, []).append(p)
        for members in stacks.values():
            # Stacks of about chunk_size values (at most 1.5 times): one kernel set fewer where a
            # shape's params hold a little more than a chunk.
            total = sum(p.numel() for p in members)
            parts = min(len(members), max(1, round(total / chunk_size)))
            bounds = [len(members) * i // parts for i in range(parts + 1)]
            out.extend(members[a:b] for a, b in zip(bounds, bounds[1:], strict=False))
        return out

    def _link(
        self, params: list[torch.Tensor], linked: dict[tuple[int, ...], list[list[torch.Tensor]]]
    ) -> list[dict[str, Any]]:
        """The state dicts of ``params``, ready for :func:`~sanatool.optim.update.stacked`.

        A lone parameter's state tensors are made contiguous. A stack's are made views of one
        tensor per key (the rows, in order; for keys whose shape differs between the members of a
        ragged stack, consecutive segments of one flat tensor) at its first step, and stay so while
        every member still holds those views (``linked`` has the previous step's views); otherwise
        they are copied into new tensors, which keeps every value.
        """
        states = [self.state[p] for p in params]
        if len(params) == 1:
            state = states[0]
            for key, value in state.items():
                if not value.is_contiguous():
                    state[key] = value.contiguous()
            return states
        ids = tuple(map(id, params))
        views = linked.get(ids)
        keys = list(states[0])
        if (
            views is None
            or len(views) != len(keys)
            or not all(
                all(map(operator.is_, map(operator.itemgetter(key), states), rows))
                for key, rows in zip(keys, views, strict=True)
            )
        ):
            views = []
            for key in keys:
                values = [s[key] for s in states]
                if all(v.shape == values[0].shape for v in values):
                    rows = list(torch.stack(values).unbind(0))
                else:
                    rows = list(torch.cat(values).split([v.numel() for v in values]))
                for s, row in zip(states, rows, strict=True):
                    s[key] = row
                views.append(rows)
        self._linked[ids] = views
        return states

    def _update_bucket(
        self,
        params: list[torch.Tensor],
        states: list[dict[str, Any]],
        hp: Hyper,
        chunk_size: int,
        moments: MomentStore,
        ws: Workspace,
    ) -> None:
        shape = tuple(params[0].shape)
        dims = factored_dims(shape)
        if dims is None:
            # A ragged stack (1-D params of several lengths, see _kind) goes end to end.
            lengths = [p.numel() for p in params] if any(p.shape != shape for p in params) else None
            numel = sum(lengths) if lengths is not None else math.prod(shape)
            target = Params(params, (numel,), ws, lengths)
            g_all = gather([p.grad for p in params], (numel,), ws, "grads", lengths)
            chunk = max(BLOCK_SIZE, chunk_size // BLOCK_SIZE * BLOCK_SIZE)
            unfactored_update(target, g_all, states, hp, chunk, moments, ws, lengths)
        else:
            rows, cols = dims
            target = Params(params, dims, ws)
            g_all = gather([p.grad for p in params], dims, ws, "grads")
            align = self._row_alignment(cols)
            chunk_rows = max(align, chunk_size // max(cols, 1) // align * align)
            factored_update(target, g_all, states, hp, chunk_rows, moments, ws)
        target.finish()

    # ----------------------------------------------------------------------------------------------

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by this optimizer class for parameters of the same shapes.

        Refuses (ValueError) a state dict of another optimizer, of other shapes or dtypes, or with
        invalid hyperparameters, before touching the current state. The fp32 (and uint8) state is
        restored exactly, also for bf16/fp16 parameters (torch would cast it to the param dtype).
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(
                f"{name}: not an optimizer state dict (expected keys 'state' and 'param_groups')"
            )
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{name}: the state dict has {len(saved_groups)} param groups, this optimizer "
                f"{len(self.param_groups)}; load it into an optimizer built the same way"
            )
        pairs: list[tuple[Any, torch.Tensor]] = []
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            missing = [k for k in self._required_group_keys if k not in saved]
            if missing:
                raise ValueError(
                    f"{name}: param group {gi} of the state dict lacks {', '.join(missing)}: it was saved "
                    f"by another optimizer, not {name}"
                )
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"{name}: param group {gi} of the state dict has {len(saved['params'])} parameters, "
                    f"this optimizer {len(group['params'])}"
                )
            try:
                self._validate_group(saved)
            except ValueError as err:
                raise ValueError(f"{name}: param group {gi} of the state dict: {err}") from err
            for pid, p in zip(saved["params"], group["params"], strict=True):
                if pid in saved_state:
                    self._check_saved_state(saved_state[pid], p, saved, gi)
                    pairs.append((pid, p))
        super().load_state_dict(state_dict)
        # Own copies, in the saved dtypes: torch casts floating state to the param dtype and
        # aliases the caller's tensors, so a later step would change the dict that was loaded.
        for pid, p in pairs:
            self.state[p] = {
                key: value.to(device="cpu" if key == "step" else p.device, copy=True)
                for key, value in saved_state[pid].items()
            }

    def _check_saved_state(self, saved: Any, p: torch.Tensor, group: dict[str, Any], gi: int) -> None:
        name = type(self).__name__
        where = f"the state of a parameter of shape {tuple(p.shape)} in group {gi}"
        expected = self._layout(p, group)
        if not isinstance(saved, dict) or set(saved) != set(expected):
            keys = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
            raise ValueError(
                f"{name}: {where} has keys {keys}, expected {sorted(expected)}: the state dict was saved "
                f"by another optimizer or for other parameters"
            )
        for key, (shape, dtype) in expected.items():
            value = saved[key]
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or value.dtype != dtype:
                got = (
                    f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else repr(value)
                )
                raise ValueError(
                    f"{name}: {where}: {key!r} is {got}, expected {shape} {dtype}: the state dict "
                    "was saved for other parameters or by another optimizer"
                )
