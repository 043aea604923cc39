"""The CAME update on stacks of same-shape parameters, in chunks of rows, with reusable scratch.

Shapes: a factored stack is ``[B, rows, cols]`` (B same-shape parameters viewed as matrices), an
unfactored one ``[B, n]``. Several small parameters are updated as one stack (one set of kernels
for all of them); a large one (B = 1) is walked in chunks of rows, so the fp32 temporaries of a
step are bounded by the chunk size, and the first moment passes through a :class:`MomentStore`
that may keep it in 8 bits.

The factored update needs three statistics of the whole tensor (the second-moment factors, the
RMS of the update, the instability factors of the *new* moment) before it can apply anything, so
it takes four passes over the chunks: the new moment is computed in pass 3 for its statistics only
and again, identically, in pass 4, where it is stored and applied in fp32 (a stack or a tensor in one
chunk keeps pass 3's moment and difference instead). The unfactored update takes two passes.
"""

from __future__ import annotations

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

    def take(
        self, name: str, shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype = _F32
    ) -> torch.Tensor:
        """A contiguous ``shape`` tensor of ``dtype`` on ``like``'s device; its content is garbage."""
        numel = 1
        for d in shape:
            numel *= d
        key = (name, dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[key] = torch.empty(numel, dtype=dtype, device=like.device)
        return buf[:numel].view(shape)

    def as_f32(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """``t`` itself when fp32, else an fp32 copy in scratch."""
        return t if t.dtype == _F32 else self.take(name, tuple(t.shape), t).copy_(t)


def gather(
    tensors: list[torch.Tensor], dims: tuple[int, ...], ws: Workspace | None = None, name: str = ""
) -> torch.Tensor:
    """``[B, *dims]`` of same-shape tensors: a view of a lone one (a copy if not contiguous), or a
    stack of several (in scratch ``name`` when ``ws`` is given)."""
    if len(tensors) == 1:
        return tensors[0].reshape(1, *dims)
    first = tensors[0]
    out = ws.take(name, (len(tensors), *first.shape), first, first.dtype) if ws is not None else None
    return torch.stack(tensors, out=out).view(len(tensors), *dims)


def scatter(tensors: list[torch.Tensor], stacked: torch.Tensor) -> None:
    """Copy a stack made by :func:`gather` back into its tensors (nothing to do for a view)."""
    if len(tensors) > 1:
        torch._foreach_copy_(tensors, list(stacked.view(len(tensors), *tensors[0].shape).unbind(0)))


class MomentStore(Protocol):
    """Where the first moment lives: ``load`` gives fp32 values ``[lo, hi)`` (flat, row-major) of
    each state as ``[B, hi - lo]``; ``store`` writes back what ``load`` returned, after an update
    (``values`` must stay intact: the update applies it after the store; ``ws`` lends scratch)."""

    def load(self, states: list[dict[str, Any]], lo: int, hi: int, ws: Workspace) -> torch.Tensor: ...

    def store(
        self, states: list[dict[str, Any]], lo: int, hi: int, values: torch.Tensor, ws: Workspace
    ) -> None: ...


class Fp32Moments:
    """The first moment as fp32 ``exp_avg``: a lone state is updated in place through a view."""

    def load(self, states: list[dict[str, Any]], lo: int, hi: int, ws: Workspace) -> torch.Tensor:
        """Values ``[lo, hi)`` of each state's ``exp_avg``, as [B, hi - lo]."""
        return gather([s["exp_avg"] for s in states], (-1,), ws, "moment")[:, lo:hi]

    def store(
        self, states: list[dict[str, Any]], lo: int, hi: int, values: torch.Tensor, ws: Workspace
    ) -> None:
        """Copy a stack back (a stack always spans whole tensors); nothing to do for a view."""
        scatter([s["exp_avg"] for s in states], values)


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
    p: torch.Tensor,
    grad: torch.Tensor,
    states: list[dict[str, Any]],
    hp: Hyper,
    chunk_rows: int,
    moments: MomentStore,
    ws: Workspace,
) -> None:
    """One CAME step for a stack ``p``, ``grad`` of shape [B, rows, cols] (chunked when B = 1)."""
    batch, rows, cols = p.shape
    step_rows = chunk_rows if batch == 1 else rows
    spans = [(r0, min(r0 + step_rows, rows)) for r0 in range(0, rows, step_rows)]
    single = len(spans) == 1
    f32 = {"dtype": _F32, "device": p.device}

    def grad_sq(r0: int, r1: int) -> torch.Tensor:
        g = ws.as_f32("grad", grad[:, r0:r1])
        return torch.mul(g, g, out=ws.take("tmp", tuple(g.shape), g))

    # Pass 1: row and column means of G² (ε₁ added to the means: mean(G² + ε₁) = mean(G²) + ε₁).
    row_mean = torch.empty(batch, rows, **f32)
    col_sum = torch.zeros(batch, cols, **f32)
    for r0, r1 in spans:
        sq = grad_sq(r0, r1)
        torch.mean(sq, dim=2, out=row_mean[:, r0:r1])
        col_sum.add_(sq.sum(dim=1))
    sq_row = gather([s["exp_avg_sq_row"] for s in states], (rows,))
    sq_col = gather([s["exp_avg_sq_col"] for s in states], (cols,))
    sq_row.mul_(hp.beta2).add_(row_mean.add_(hp.eps1), alpha=1.0 - hp.beta2)
    sq_col.mul_(hp.beta2).add_(col_sum.div_(rows).add_(hp.eps1), alpha=1.0 - hp.beta2)
    r_factor = (sq_row / sq_row.mean(dim=1, keepdim=True)).rsqrt_()
    c_factor = sq_col.rsqrt()

    # Pass 2: RMS(U), U = G·r·cᵀ, for update clipping without materializing U:
    # ΣU² = Σⱼ cⱼ² Σᵢ rᵢ² G²ᵢⱼ, a (batched) vector-matrix product. One chunk: G² is still in scratch.
    r_sq, c_sq = (r_factor * r_factor).unsqueeze(1), c_factor * c_factor
    u_sq_sum = torch.zeros(batch, **f32)
    for r0, r1 in spans:
        sq = sq if single else grad_sq(r0, r1)
        u_sq_sum += torch.linalg.vecdot(torch.bmm(r_sq[:, :, r0:r1], sq).squeeze(1), c_sq)
    denom = ((u_sq_sum / (rows * cols)).sqrt_() / hp.clip).clamp_(min=1.0)
    r_scaled = r_factor.div_(denom.unsqueeze(1)).unsqueeze(2)
    c_factor = c_factor.unsqueeze(1)

    def diff_of(m_old: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """e = m_old − U for rows r0:r1, in scratch."""
        g = ws.as_f32("grad", grad[:, r0:r1])
        e = torch.mul(g, r_scaled[:, r0:r1], out=ws.take("tmp", tuple(g.shape), g))
        return torch.addcmul(m_old, e, c_factor, value=-1.0, out=e)

    # Pass 3: the instability of the new moment, (U − m_new)² = β₁²(U − m_old)² (m_new = β₁m + (1−β₁)U).
    res_row_mean = torch.empty(batch, rows, **f32)
    res_col_sum = torch.zeros(batch, cols, **f32)
    # One chunk: m_old and e are kept for pass 4 (e squared into other scratch), which then neither
    # loads (dequantizes, gathers) the moment again nor recomputes e.
    for r0, r1 in spans:
        m_old = moments.load(states, r0 * cols, r1 * cols, ws).view(batch, r1 - r0, cols)
        diff = diff_of(m_old, r0, r1)
        res = (
            torch.mul(diff, diff, out=ws.take("tmp2", tuple(diff.shape), diff)) if single else diff.square_()
        )
        torch.mean(res, dim=2, out=res_row_mean[:, r0:r1])
        res_col_sum.add_(res.sum(dim=1))
    res_row = gather([s["exp_avg_res_row"] for s in states], (rows,))
    res_col = gather([s["exp_avg_res_col"] for s in states], (cols,))
    b1_sq = hp.beta1 * hp.beta1
    res_row.mul_(hp.beta3).add_(res_row_mean.mul_(b1_sq).add_(hp.eps2), alpha=1.0 - hp.beta3)
    res_col.mul_(hp.beta3).add_(res_col_sum.mul_(b1_sq / rows).add_(hp.eps2), alpha=1.0 - hp.beta3)
    rr_factor = (res_row / res_row.mean(dim=1, keepdim=True)).rsqrt_().unsqueeze(2)
    rc_factor = res_col.rsqrt().unsqueeze(1)
    for key, stacked in (
        ("exp_avg_sq_row", sq_row),
        ("exp_avg_sq_col", sq_col),
        ("exp_avg_res_row", res_row),
        ("exp_avg_res_col", res_col),
    ):
        scatter([s[key] for s in states], stacked)

    # Pass 4: m_new = m_old − (1−β₁)(m_old − U), stored; W -= lr·wd·W; W -= lr · m_new / √S with
    # the fp32 m_new (an 8-bit store only ever affects later steps, as in the reference rule).
    for r0, r1 in spans:
        if not single:
            m_old = moments.load(states, r0 * cols, r1 * cols, ws).view(batch, r1 - r0, cols)
            diff = diff_of(m_old, r0, r1)
        m = m_old.add_(diff, alpha=hp.beta1 - 1.0)
        moments.store(states, r0 * cols, r1 * cols, m, ws)
        update = torch.mul(m, rr_factor[:, r0:r1], out=ws.take("tmp", tuple(m.shape), m))
        _apply(p[:, r0:r1], update, rc_factor, hp, ws)


def unfactored_update(
    p: torch.Tensor,
    grad: torch.Tensor,
    states: list[dict[str, Any]],
    hp: Hyper,
    chunk_numel: int,
    moments: MomentStore,
    ws: Workspace,
) -> None:
    """One CAME step for a stack ``p``, ``grad`` of shape [B, n] of 1-D parameters (chunked when B = 1)."""
    batch, numel = p.shape
    step = chunk_numel if batch == 1 else numel
    spans = [(lo, min(lo + step, numel)) for lo in range(0, numel, step)]
    single = len(spans) == 1
    exp_avg_sq = gather([s["exp_avg_sq"] for s in states], (numel,))

    def update_of(lo: int, hi: int) -> torch.Tensor:
        g = ws.as_f32("grad", grad[:, lo:hi])
        return torch.rsqrt(exp_avg_sq[:, lo:hi], out=ws.take("tmp", tuple(g.shape), g)).mul_(g)

    # Pass 1: second moment v ← β₂v + (1−β₂)(G² + ε₁), and ΣU² with U = G / √v.
    u_sq_sum = torch.zeros(batch, dtype=_F32, device=p.device)
    for lo, hi in spans:
        g = ws.as_f32("grad", grad[:, lo:hi])
        sq = torch.mul(g, g, out=ws.take("tmp", tuple(g.shape), g)).add_(hp.eps1)
        exp_avg_sq[:, lo:hi].mul_(hp.beta2).add_(sq, alpha=1.0 - hp.beta2)
        u = update_of(lo, hi)
        u_sq_sum += torch.linalg.vecdot(u, u)
    scatter([s["exp_avg_sq"] for s in states], exp_avg_sq)
    denom = ((u_sq_sum / numel).sqrt_() / hp.clip).clamp_(min=1.0).unsqueeze(1)

    # Pass 2: m ← β₁m + (1−β₁)U/denom, then W -= lr·wd·W; W -= lr·m (no confidence term for 1-D).
    for lo, hi in spans:
        u = (u if single else update_of(lo, hi)).div_(denom)
        m = moments.load(states, lo, hi, ws)
        m.mul_(hp.beta1).add_(u, alpha=1.0 - hp.beta1)
        moments.store(states, lo, hi, m, ws)
        _apply(p[:, lo:hi], m, None, hp, ws)
