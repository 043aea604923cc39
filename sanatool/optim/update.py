"""The CAME update on stacks of same-shape parameters, in chunks of rows, with reusable scratch.

Shapes: a factored stack is ``[B, rows, cols]`` (B same-shape parameters viewed as matrices), an
unfactored one ``[B, n]``. Several small parameters are updated as one stack (one set of kernels
for all of them); a large one (B = 1) is walked in chunks of rows, so the fp32 temporaries of a
step are bounded by the chunk size, and the first moment passes through a :class:`MomentStore`
that may keep it in 8 bits. The B members' state tensors of one key are rows of one ``[B, ...]``
tensor (:func:`stacked`), updated in place.

The factored update needs three statistics of the whole tensor (the second-moment factors, the
RMS of the update, the instability factors of the *new* moment) before it can apply anything, so
it takes four passes over the chunks: the new moment's difference from the update is computed in
pass 3 for its statistics only and again, identically, in pass 4, where the new moment is applied in
fp32 and then stored (except for the last chunk, whose new moment pass 3 makes and pass 4 takes
first: all of a stack or of a tensor in one chunk). The unfactored update takes two passes. A store
may use the moment it is handed as scratch (8-bit quantization does), so nothing reads it after.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

_F32 = torch.float32


@dataclass(frozen=True)
class Hyper:
    """One param group's hyperparameters, unpacked."""

    lr: float
    beta1: float
    beta2: float
    beta3: float
    eps1: float
    eps2: float
    clip: float
    weight_decay: float

    @classmethod
    def of(cls, group: dict[str, Any]) -> Hyper:
        """The hyperparameters of a (validated) param group."""
        b1, b2, b3 = group["betas"]
        e1, e2 = group["eps"]
        return cls(group["lr"], b1, b2, b3, e1, e2, group["clip_threshold"], group["weight_decay"])


class Workspace:
    """Scratch tensors reused by every chunk and every step.

    On CPU a fresh multi-megabyte tensor costs page faults on first touch, which made out-of-place
    ops several times slower than in-place ones; reusing buffers removes that. The buffers grow
    to the largest chunk seen and are not part of the optimizer state.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}
        # The views handed out, by buffer and shape: making a view costs about as much as a small
        # kernel, and a step asks for the same few shapes every time.
        self._views: dict[tuple[tuple[str, torch.dtype, torch.device], tuple[int, ...]], torch.Tensor] = {}

    def take(
        self, name: str, shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype = _F32
    ) -> torch.Tensor:
        """A contiguous ``shape`` tensor of ``dtype`` on ``like``'s device; its content is garbage."""
        key = (name, dtype, like.device)
        view = self._views.get((key, shape))
        if view is not None:
            return view
        numel = math.prod(shape)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[key] = torch.empty(numel, dtype=dtype, device=like.device)
            self._views = {k: v for k, v in self._views.items() if k[0] != key}
        view = self._views[(key, shape)] = buf[:numel].view(shape)
        return view

    def as_f32(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """``t`` itself when fp32, else an fp32 copy in scratch."""
        return t if t.dtype == _F32 else self.take(name, tuple(t.shape), t).copy_(t)


@functools.lru_cache(maxsize=1024)
def scalar(value: float) -> torch.Tensor:
    """``value`` as a 0-d fp32 CPU tensor (shared: never write to it). An op with a Python float
    converts it to a tensor at every call, which costs more than a small kernel does; a 0-d CPU
    tensor acts as the same fp32 scalar, on any device."""
    return torch.tensor(value, dtype=_F32)


def span(t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``t[:, lo:hi]``, or ``t`` itself when that is all of dim 1: a view fewer, and on small stacks
    the ops, not the values, are what a step costs."""
    return t if lo == 0 and hi == t.shape[1] else t[:, lo:hi]


def stacked(states: list[dict[str, Any]], key: str) -> torch.Tensor:
    """The members' ``key`` state as one ``[B, ...]`` tensor that updates them in place: a lone
    member's viewed as [1, ...], the tensor whose rows several members' are views of, or, for the
    1-D states of a ragged stack (members of several lengths), the flat tensor whose consecutive
    segments they are, viewed as [1, total] (as :class:`~sanatool.optim.came.CAME` links a stack's
    state before each step)."""
    first = states[0][key]
    if len(states) == 1:
        return first.unsqueeze(0)
    base = first._base
    if base is not None and base.storage_offset() == first.storage_offset():
        if base.dim() == 1 and first.dim() == 1:
            return base.view(1, -1)
        if base.shape[0] == len(states):
            return base
    raise ValueError(f"the {key!r} states of a stack are not rows or segments of one tensor")


def gather(
    tensors: list[torch.Tensor],
    dims: tuple[int, ...],
    ws: Workspace | None = None,
    name: str = "",
    lengths: list[int] | None = None,
) -> torch.Tensor:
    """``[B, *dims]`` of same-shape tensors: a view of a lone one (a copy if not contiguous), or a
    stack of several (in scratch ``name`` when ``ws`` is given). With ``lengths`` (a ragged stack of
    1-D tensors), ``[1, sum(lengths)]``: the tensors end to end."""
    first = tensors[0]
    if lengths is not None:
        out = ws.take(name, (sum(lengths),), first, first.dtype) if ws is not None else None
        return torch.cat(tensors, out=out).view(1, -1)
    if len(tensors) == 1:
        return first.reshape(1, *dims)
    out = ws.take(name, (len(tensors), *first.shape), first, first.dtype) if ws is not None else None
    return torch.stack(tensors, out=out).view(len(tensors), *dims)


def scatter(tensors: list[torch.Tensor], stacked: torch.Tensor, lengths: list[int] | None = None) -> None:
    """Copy a stack made by :func:`gather` back into its tensors (nothing to do for a view)."""
    if lengths is not None:
        torch._foreach_copy_(tensors, list(stacked.view(-1).split(lengths)))
    elif len(tensors) > 1:
        torch._foreach_copy_(tensors, list(stacked.view(len(tensors), *tensors[0].shape).unbind(0)))


class MomentStore(Protocol):
    """Where the first moment lives: ``load`` gives fp32 values ``[lo, hi)`` (flat, row-major) of
    each state as ``[B, hi - lo]``; ``store`` writes back what ``load`` returned, after an update
    has been applied, and may use ``values`` as scratch (the update is done with them; ``ws`` lends
    more). Several states are those of a linked stack (see :func:`stacked`)."""

    def load(self, states: list[dict[str, Any]], lo: int, hi: int, ws: Workspace) -> torch.Tensor: ...

    def store(
        self, states: list[dict[str, Any]], lo: int, hi: int, values: torch.Tensor, ws: Workspace
    ) -> None: ...


class Fp32Moments:
    """The first moment as fp32 ``exp_avg``, updated in place through a view."""

    def load(self, states: list[dict[str, Any]], lo: int, hi: int, ws: Workspace) -> torch.Tensor:
        """Values ``[lo, hi)`` of each state's ``exp_avg``, as a [B, hi - lo] view."""
        return span(stacked(states, "exp_avg").flatten(1), lo, hi)

    def store(
        self, states: list[dict[str, Any]], lo: int, hi: int, values: torch.Tensor, ws: Workspace
    ) -> None:
        """Nothing to do: ``values`` is the state itself."""


# A stack of fp32 parameters of at least this many values each is updated in place, one kernel per
# parameter (foreach); smaller ones through a copy stacked in scratch, whose copy in and out costs
# less than per-parameter kernels do.
_IN_PLACE_MIN_NUMEL = 2048


class Params:
    """The B parameters a step updates, seen as ``[B, *dims]`` (``[1, total]`` for a ragged stack of
    1-D parameters of ``lengths``).

    A lone parameter is updated through a view (of a contiguous copy when it is not contiguous), a
    stack of large fp32 ones in place with foreach ops, any other stack through an fp32 copy in
    scratch. :meth:`finish` writes back what did not change in place.
    """

    def __init__(
        self,
        params: list[torch.Tensor],
        dims: tuple[int, ...],
        ws: Workspace,
        lengths: list[int] | None = None,
    ) -> None:
        self._params = params
        self._lengths = lengths
        self._stacked: torch.Tensor | None = None
        first = params[0]
        if len(params) == 1:
            self._work = first if first.is_contiguous() else first.contiguous()
            self._stacked = self._work.view(1, *dims)
        elif lengths is not None or first.dtype != _F32 or first.numel() < _IN_PLACE_MIN_NUMEL:
            self._stacked = gather(params, dims, ws, "params", lengths)

    def apply(
        self,
        lo: int,
        hi: int,
        update: torch.Tensor,
        col_scale: torch.Tensor | None,
        hp: Hyper,
        ws: Workspace,
    ) -> None:
        """``p -= lr·wd·p; p -= lr·update·col_scale`` for rows ``lo:hi`` of dim 1 (None = 1).

        ``update`` is [B, hi - lo, ...]; a stack always spans whole parameters."""
        if self._stacked is not None:
            _apply(span(self._stacked, lo, hi), update, col_scale, hp, ws)
            return
        # Per parameter, the same ops as _apply on an fp32 stack, so the same bits.
        params, batch, shape = self._params, len(self._params), self._params[0].shape
        if hp.weight_decay != 0:
            torch._foreach_add_(params, params, alpha=-hp.weight_decay * hp.lr)
        updates = update.view(batch, *shape).unbind(0)
        if col_scale is None:
            torch._foreach_add_(params, updates, alpha=-hp.lr)
        else:
            scales = col_scale.view(batch, 1, *shape[1:]).unbind(0)
            torch._foreach_addcmul_(params, updates, scales, value=-hp.lr)

    def finish(self) -> None:
        """Write back a copy: a lone non-contiguous parameter, or a stack in scratch."""
        if len(self._params) == 1:
            if self._work is not self._params[0]:
                self._params[0].copy_(self._work)
        elif self._stacked is not None:
            scatter(self._params, self._stacked, self._lengths)


def _apply(
    p: torch.Tensor, update: torch.Tensor, col_scale: torch.Tensor | None, hp: Hyper, ws: Workspace
) -> None:
    """``p -= lr·wd·p; p -= lr·update·col_scale`` in fp32 (None = 1), written back to a bf16/fp16 p."""
    p32 = ws.as_f32("param", p)
    if hp.weight_decay != 0:
        # p + (−lr·wd)·p, not p·(1 − lr·wd): 1 − lr·wd rounded to fp32 would bias every step.
        p32.add_(p32, alpha=-hp.weight_decay * hp.lr)
    if col_scale is None:
        p32.add_(update, alpha=-hp.lr)
    else:
        p32.addcmul_(update, col_scale, value=-hp.lr)
    if p32 is not p:
        p.copy_(p32)


def factored_update(
    params: Params,
    grad: torch.Tensor,
    states: list[dict[str, Any]],
    hp: Hyper,
    chunk_rows: int,
    moments: MomentStore,
    ws: Workspace,
) -> None:
    """One CAME step for a stack of parameters and their ``grad`` [B, rows, cols] (chunked when B = 1)."""
    batch, rows, cols = grad.shape
    step_rows = chunk_rows if batch == 1 else rows
    spans = [(r0, min(r0 + step_rows, rows)) for r0 in range(0, rows, step_rows)]
    single = len(spans) == 1
    f32 = {"dtype": _F32, "device": grad.device}

    def grad_sq(r0: int, r1: int) -> torch.Tensor:
        g = ws.as_f32("grad", span(grad, r0, r1))
        return torch.mul(g, g, out=ws.take("tmp", tuple(g.shape), g))

    # Pass 1: row and column means of G² (ε₁ added to the means: mean(G² + ε₁) = mean(G²) + ε₁).
    if single:
        sq = grad_sq(0, rows)
        row_mean, col_sum = sq.mean(dim=2), sq.sum(dim=1)
    else:
        row_mean, col_sum = torch.empty(batch, rows, **f32), torch.zeros(batch, cols, **f32)
        for r0, r1 in spans:
            sq = grad_sq(r0, r1)
            torch.mean(sq, dim=2, out=row_mean[:, r0:r1])
            col_sum.add_(sq.sum(dim=1))
    # Running means as lerp (x + (1−β)(new − x) = βx + (1−β)new): one kernel each, and on small
    # stacks the kernels, not the values, are what a step costs.
    sq_row, sq_col = stacked(states, "exp_avg_sq_row"), stacked(states, "exp_avg_sq_col")
    sq_row.lerp_(row_mean.add_(scalar(hp.eps1)), 1.0 - hp.beta2)
    sq_col.lerp_(col_sum.div_(scalar(rows)).add_(scalar(hp.eps1)), 1.0 - hp.beta2)
    r_factor = torch.div(sq_row, sq_row.mean(dim=1, keepdim=True)).rsqrt_()
    c_factor = sq_col.rsqrt()

    # Pass 2: RMS(U), U = G·r·cᵀ, for update clipping without materializing U:
    # ΣU² = Σⱼ cⱼ² Σᵢ rᵢ² G²ᵢⱼ, a (batched) vector-matrix product. One chunk: G² is still in scratch.
    r_sq, c_sq = (r_factor * r_factor).unsqueeze(1), c_factor * c_factor
    if single:
        u_sq_sum = torch.linalg.vecdot(torch.bmm(r_sq, sq).squeeze(1), c_sq)
    else:
        u_sq_sum = torch.zeros(batch, **f32)
        for r0, r1 in spans:
            u_sq_sum += torch.linalg.vecdot(torch.bmm(r_sq[:, :, r0:r1], grad_sq(r0, r1)).squeeze(1), c_sq)
    denom = u_sq_sum.div_(scalar(rows * cols * hp.clip * hp.clip)).sqrt_().clamp_min_(scalar(1.0))
    r_scaled = r_factor.div_(denom.unsqueeze(1)).unsqueeze(2)
    c_factor = c_factor.unsqueeze(1)

    # Pass 3: the instability of the new moment, (U − m_new)² = β₁²(U − m_old)² (m_new = β₁m + (1−β₁)U),
    # from e = m_old − U, squared in place. The last chunk's new moment is made here too and kept
    # for pass 4, which takes that chunk first and so neither loads (dequantizes) its moment again
    # nor recomputes its e: all of a stack or of a tensor in one chunk.
    def diff_of(m_old: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """e = m_old − U for rows r0:r1, in scratch."""
        g = ws.as_f32("grad", span(grad, r0, r1))
        e = torch.mul(g, span(r_scaled, r0, r1), out=ws.take("tmp", tuple(g.shape), g))
        return torch.addcmul(m_old, e, c_factor, value=-1.0, out=e)

    if not single:
        res_row_sum, res_col_sum = torch.empty(batch, rows, **f32), torch.zeros(batch, cols, **f32)
    for r0, r1 in spans:
        m_old = moments.load(states, r0 * cols, r1 * cols, ws).view(batch, r1 - r0, cols)
        res = diff_of(m_old, r0, r1)
        if r1 == rows:  # m_new = m_old − (1−β₁)(m_old − U), in place: kept for pass 4
            m_last = m_old.add_(res, alpha=hp.beta1 - 1.0)
        res.mul_(res)
        if single:
            res_row_sum, res_col_sum = res.sum(dim=2), res.sum(dim=1)
        else:
            torch.sum(res, dim=2, out=res_row_sum[:, r0:r1])
            res_col_sum.add_(res.sum(dim=1))
    res_row, res_col = stacked(states, "exp_avg_res_row"), stacked(states, "exp_avg_res_col")
    b1_sq = hp.beta1 * hp.beta1
    # Means as sums times β₁² / n: a sum costs half a mean's kernels, and the multiply is there anyway.
    res_row.lerp_(res_row_sum.mul_(scalar(b1_sq / cols)).add_(scalar(hp.eps2)), 1.0 - hp.beta3)
    res_col.lerp_(res_col_sum.mul_(scalar(b1_sq / rows)).add_(scalar(hp.eps2)), 1.0 - hp.beta3)
    rr_factor = torch.div(res_row, res_row.mean(dim=1, keepdim=True)).rsqrt_().unsqueeze(2)
    rc_factor = res_col.rsqrt().unsqueeze(1)

    # Pass 4: W -= lr·wd·W; W -= lr · m_new / √S with the fp32 m_new, then m_new is stored (an 8-bit
    # store only ever affects later steps, as in the reference rule). The chunks' updates are
    # independent: last chunk first (its m_new made in pass 3), then the others in order.
    for r0, r1 in spans[-1:] + spans[:-1]:
        if r1 == rows:
            m = m_last
        else:
            m_old = moments.load(states, r0 * cols, r1 * cols, ws).view(batch, r1 - r0, cols)
            m = m_old.add_(diff_of(m_old, r0, r1), alpha=hp.beta1 - 1.0)
        update = torch.mul(m, span(rr_factor, r0, r1), out=ws.take("tmp", tuple(m.shape), m))
        params.apply(r0, r1, update, rc_factor, hp, ws)
        moments.store(states, r0 * cols, r1 * cols, m, ws)


def unfactored_update(
    params: Params,
    grad: torch.Tensor,
    states: list[dict[str, Any]],
    hp: Hyper,
    chunk_numel: int,
    moments: MomentStore,
    ws: Workspace,
    lengths: list[int] | None = None,
) -> None:
    """One CAME step for a stack of 1-D parameters and their ``grad`` [B, n] (chunked when B = 1),
    or for a ragged stack: parameters of ``lengths`` end to end in ``grad`` [1, sum(lengths)], in one
    chunk, with update clipping per parameter."""
    batch, numel = grad.shape
    step = chunk_numel if batch == 1 and lengths is None else numel
    spans = [(lo, min(lo + step, numel)) for lo in range(0, numel, step)]
    single = len(spans) == 1
    exp_avg_sq = stacked(states, "exp_avg_sq").view(batch, numel)

    def update_of(lo: int, hi: int) -> torch.Tensor:
        g = ws.as_f32("grad", span(grad, lo, hi))
        return torch.rsqrt(span(exp_avg_sq, lo, hi), out=ws.take("tmp", tuple(g.shape), g)).mul_(g)

    # Pass 1: second moment v ← β₂v + (1−β₂)(G² + ε₁), and ΣU² with U = G / √v.
    u_sq_sum = torch.zeros(batch, dtype=_F32, device=grad.device)
    for lo, hi in spans:
        g = ws.as_f32("grad", span(grad, lo, hi))
        sq = torch.mul(g, g, out=ws.take("tmp", tuple(g.shape), g)).add_(scalar(hp.eps1))
        span(exp_avg_sq, lo, hi).lerp_(sq, 1.0 - hp.beta2)
        u = update_of(lo, hi)
        if lengths is None:
            u_sq_sum += torch.linalg.vecdot(u, u)
    if lengths is None:
        denom = u_sq_sum.div_(scalar(numel * hp.clip * hp.clip)).sqrt_().clamp_min_(scalar(1.0)).unsqueeze(1)
    else:
        segments = torch.tensor(lengths, device=grad.device)
        u_sq = torch.mul(u, u, out=ws.take("tmp2", tuple(u.shape), u)).view(-1)
        u_sq_sum = torch.segment_reduce(u_sq, "sum", lengths=segments)
        denom = u_sq_sum.div_(segments.mul(hp.clip * hp.clip)).sqrt_().clamp_min_(scalar(1.0))
        denom = torch.repeat_interleave(denom, segments, output_size=numel).view(1, numel)

    # Pass 2: m ← β₁m + (1−β₁)U/denom, then W -= lr·wd·W; W -= lr·m (no confidence term for 1-D).
    for lo, hi in spans:
        u = (u if single else update_of(lo, hi)).div_(denom)
        m = moments.load(states, lo, hi, ws)
        m.lerp_(u, 1.0 - hp.beta1)
        params.apply(lo, hi, m, None, hp, ws)
        moments.store(states, lo, hi, m, ws)
