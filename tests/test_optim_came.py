"""CAME and CAME8bit: the update rule against the paper's equations, 8-bit storage, resume, bad input."""

from __future__ import annotations

import io
import math

import pytest
import torch

from sanatool.optim import CAME, CAME8bit, blockwise
from sanatool.optim.blockwise import BLOCK_SIZE, dequantize, quantize
from sanatool.optim.came8bit import Blockwise8bitMoments
from sanatool.optim.update import Workspace


def reference_step(w: torch.Tensor, g: torch.Tensor, st: dict, lr: float, wd: float = 0.0) -> None:
    """One CAME step written from the paper (Luo et al. 2023, Algorithm 1), decoupled weight decay,
    float64. ≥ 2-D parameters are the matrix [shape[0], rest]; 1-D ones keep a full second moment."""
    b1, b2, b3, e1, e2, d = 0.9, 0.999, 0.9999, 1e-30, 1e-16, 1.0
    G = g.double().reshape(w.shape[0], -1) if w.dim() >= 2 else g.double()
    if not st:
        st["m"] = torch.zeros_like(G)
        if G.dim() == 2:
            for key, n in (("r", G.shape[0]), ("c", G.shape[1]), ("R", G.shape[0]), ("C", G.shape[1])):
                st[key] = torch.zeros(n, dtype=torch.float64)
        else:
            st["v"] = torch.zeros_like(G)
    if G.dim() == 2:
        st["r"] = b2 * st["r"] + (1 - b2) * (G**2 + e1).mean(dim=1)
        st["c"] = b2 * st["c"] + (1 - b2) * (G**2 + e1).mean(dim=0)
        V = torch.outer(st["r"], st["c"]) / st["r"].mean()
    else:
        st["v"] = b2 * st["v"] + (1 - b2) * (G**2 + e1)
        V = st["v"]
    U = G / V.sqrt()
    U = U / max(1.0, (U.pow(2).mean().sqrt() / d).item())
    st["m"] = b1 * st["m"] + (1 - b1) * U
    if G.dim() == 2:
        res = (U - st["m"]) ** 2 + e2
        st["R"] = b3 * st["R"] + (1 - b3) * res.mean(dim=1)
        st["C"] = b3 * st["C"] + (1 - b3) * res.mean(dim=0)
        S = torch.outer(st["R"], st["C"]) / st["R"].mean()
        update = st["m"] / S.sqrt()
    else:
        update = st["m"]
    w -= lr * wd * w
    w -= lr * update.reshape(w.shape)


def _grads(shape: tuple[int, ...], steps: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # Rows and columns of different scales, as real layer gradients have.
    scale = torch.rand(shape[0], generator=gen).add(0.1).reshape(-1, *([1] * (len(shape) - 1)))
    return [torch.randn(shape, generator=gen) * scale * (1 + t % 3) for t in range(steps)]


@pytest.mark.parametrize(
    "shape",
    [(48, 80), (333,), (24, 16, 1, 1), (40, 1, 3, 3)],
    ids=["linear", "1d", "conv1x1", "depthwise3x3"],
)
def test_came_matches_paper_equations_step_for_step(shape):
    """Same parameters as the reference at every step, with weight decay, update clipping (early
    steps), gradient clipping and an lr scheduler."""
    torch.manual_seed(0)
    w0 = torch.randn(shape)
    p = torch.nn.Parameter(w0.clone())
    opt = CAME([p], lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    ref, st = w0.double(), {}
    for t, g in enumerate(_grads(shape, 25)):
        p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_([p], max_norm=5.0)
        reference_step(ref, p.grad.clone(), st, lr=1e-2 / (1 + t), wd=0.1)
        opt.step()
        sched.step()
        assert torch.allclose(p.double(), ref, rtol=1e-5, atol=1e-5), f"step {t}"
    assert (p.detach() - w0).abs().max() > 0.01  # it really moved


@pytest.mark.parametrize("cls", [CAME, CAME8bit])
def test_ragged_1d_stack_matches_paper_equations_step_for_step(cls):
    """Small 1-D params of several lengths share one ragged stack, each with its own second moment
    and update clipping: each follows the reference, as alone."""
    torch.manual_seed(0)
    shapes = [(333,), (100,), (7,), (100,), (48, 80)]
    w0 = [torch.randn(s) for s in shapes]
    ps = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = cls(ps, lr=1e-2, weight_decay=0.1)
    refs, sts = [w.double() for w in w0], [{} for _ in shapes]
    grads = [_grads(s, 12, seed=i) for i, s in enumerate(shapes)]
    for t in range(12):
        for p, ref, st, g in zip(ps, refs, sts, grads, strict=True):
            p.grad = g[t].clone()
            reference_step(ref, p.grad.clone(), st, lr=1e-2, wd=0.1)
        opt.step()
        for p, ref in zip(ps, refs, strict=True):
            assert torch.allclose(p.double(), ref, rtol=1e-5, atol=1e-5), (t, tuple(p.shape))
    # The path under test was taken: the four 1-D params are one stack.
    assert sorted(len(bucket) for bucket in opt._plans[0][1]) == [1, 4]


def test_conv_is_factored_as_out_by_in_kh_kw():
    p = torch.nn.Parameter(torch.randn(64, 1, 3, 3))
    opt = CAME([p], lr=1e-3)
    p.grad = torch.randn_like(p)
    opt.step()
    state = opt.state[p]
    assert state["exp_avg_sq_row"].shape == (64,) and state["exp_avg_sq_col"].shape == (9,)
    assert state["exp_avg_res_row"].shape == (64,) and state["exp_avg_res_col"].shape == (9,)


def test_stacked_and_chunked_updates_match_one_by_one():
    """Small same-shape params are updated as a stack, small 1-D ones of any length as one ragged
    stack and large ones in chunks: same result as one by one."""
    torch.manual_seed(1)
    shapes = [(32, 48)] * 3 + [(100,)] * 4 + [(37,), (250,)] + [(16, 8, 1, 1)] * 2 + [(700, 40)]
    w0 = [torch.randn(s) for s in shapes]
    together = [torch.nn.Parameter(w.clone()) for w in w0]
    alone = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = CAME(together, lr=1e-2, weight_decay=0.05, chunk_size=4096)  # the (700, 40) one: 7 chunks
    opts = [CAME([p], lr=1e-2, weight_decay=0.05, chunk_size=1 << 20) for p in alone]
    for t in range(10):
        for a, b in zip(together, alone, strict=True):
            a.grad = torch.randn(a.shape) * (1 + t % 2)
            b.grad = a.grad.clone()
        opt.step()
        for o in opts:
            o.step()
    for a, b in zip(together, alone, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("cls", [CAME, CAME8bit])
def test_reused_bucket_plan_follows_what_changes_between_steps(cls):
    """A step reuses the previous step's split into stacks only while nothing it depends on changed:
    params without a gradient this step, a gradient that is not contiguous, a param whose data was
    replaced by another shape. Each step equals that of an optimizer that splits anew every step."""
    torch.manual_seed(11)
    shapes = [(64, 64)] * 3 + [(64,)] * 3 + [(48, 32)] * 2 + [(48,)]
    w0 = [torch.randn(s) * 0.1 for s in shapes]
    cached = [torch.nn.Parameter(w.clone()) for w in w0]
    fresh = [torch.nn.Parameter(w.clone()) for w in w0]
    opt_cached, opt_fresh = cls(cached, lr=1e-2, weight_decay=0.1), cls(fresh, lr=1e-2, weight_decay=0.1)
    for t in range(8):
        if t == 5:  # another shape: the param's stack, state and plan all change
            for ps, opt in ((cached, opt_cached), (fresh, opt_fresh)):
                ps[6].data = torch.ones(40, 32)
                opt.state.pop(ps[6])
        for i, (a, b) in enumerate(zip(cached, fresh, strict=True)):
            if t in (1, 2) and i in (0, 3):
                a.grad = b.grad = None
            elif t == 3 and i == 4:  # a strided gradient: that param is updated alone this step
                # Both optimizers get a strided view: clone() of a view is contiguous, and a contiguous
                # gradient would take the stacked path, which rounds differently (by an ulp).
                base = torch.randn(a.shape[0], 2)
                a.grad, b.grad = base[:, 0], base.clone()[:, 0]
            else:
                a.grad = torch.randn(a.shape)
                b.grad = a.grad.clone()
        opt_cached.step()
        opt_fresh.__dict__.pop("_plans", None)
        opt_fresh.step()
        for a, b in zip(cached, fresh, strict=True):
            assert torch.equal(a, b), f"step {t}"


def test_channels_last_and_bf16_parameters():
    torch.manual_seed(2)
    w0 = torch.randn(16, 8, 3, 3)
    plain = torch.nn.Parameter(w0.clone())
    chl = torch.nn.Parameter(w0.clone().to(memory_format=torch.channels_last))
    half = torch.nn.Parameter(w0.clone().bfloat16())
    opts = [CAME([plain], lr=1e-2), CAME([chl], lr=1e-2), CAME8bit([half], lr=1e-2, min_8bit_size=256)]
    for _ in range(5):
        g = torch.randn_like(w0)
        plain.grad, chl.grad, half.grad = (
            g.clone(),
            g.clone().to(memory_format=torch.channels_last),
            g.bfloat16(),
        )
        for o in opts:
            o.step()
    assert torch.allclose(plain, chl, atol=1e-6)
    assert chl.is_contiguous(memory_format=torch.channels_last)
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), plain, atol=0.05)
    assert all(v.dtype in (torch.float32, torch.uint8) for v in opts[2].state[half].values())


def test_came8bit_small_tensors_are_exactly_came_and_large_ones_are_8bit():
    torch.manual_seed(3)
    # 4032, 100 and 300 values stay fp32. Both optimizers update the small 1-D ones as a ragged
    # stack (CAME with the 5000 too), whose per-param sums do not depend on the other members.
    shapes = [(64, 63), (100,), (300,), (128, 256), (5000,)]
    w0 = [torch.randn(s) for s in shapes]
    p32 = [torch.nn.Parameter(w.clone()) for w in w0]
    p8 = [torch.nn.Parameter(w.clone()) for w in w0]
    o32, o8 = CAME(p32, lr=1e-2, weight_decay=0.1), CAME8bit(p8, lr=1e-2, weight_decay=0.1)
    for _ in range(30):
        for a, b in zip(p32, p8, strict=True):
            a.grad = torch.randn(a.shape)
            b.grad = a.grad.clone()
        o32.step()
        o8.step()
    assert all(torch.equal(p32[i], p8[i]) for i in (0, 1, 2))
    for i in (3, 4):
        state = o8.state[p8[i]]
        assert state["exp_avg"].dtype == torch.uint8
        assert state["exp_avg_absmax"].shape == (math.ceil(p8[i].numel() / BLOCK_SIZE),)
        moved = (p32[i] - w0[i]).norm()
        assert (p8[i] - p32[i]).norm() / moved < 0.05  # 8-bit noise, not a different rule


def test_chunked_8bit_store_equals_whole_tensor_quantization():
    torch.manual_seed(4)
    rows, cols = 40, 200  # 200 values a row: chunks must hold multiples of 32 rows to fill blocks
    values = torch.randn(rows * cols) * torch.logspace(-4, 0, rows * cols)
    state = {"exp_avg": torch.zeros(rows, cols, dtype=torch.uint8), "exp_avg_absmax": torch.zeros(32)}
    store = Blockwise8bitMoments()
    for r0 in range(0, rows, 32):
        r1 = min(r0 + 32, rows)
        chunk = values[r0 * cols : r1 * cols].clone().view(1, -1)  # a store may compute in it
        store.store([state], r0 * cols, r1 * cols, chunk, Workspace())
    codes, absmax = quantize(values)
    assert torch.equal(state["exp_avg"].view(-1), codes) and torch.equal(state["exp_avg_absmax"], absmax)
    back = store.load([state], 0, rows * cols, Workspace()).view(-1)
    assert torch.equal(back, dequantize(codes, absmax))
    # The dynamic map's coarsest step (near ±absmax) is 0.9/64: errors stay within half of it.
    padded = torch.nn.functional.pad((back - values).abs(), (0, absmax.numel() * BLOCK_SIZE - values.numel()))
    assert (padded.view(-1, BLOCK_SIZE).amax(dim=1) <= 0.0071 * absmax).all()


def _bnb_quantize(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import bitsandbytes.functional as bnbf

    code = bnbf.create_dynamic_map(signed=True)
    codes, state = bnbf.quantize_blockwise(values.reshape(-1), code=code, blocksize=BLOCK_SIZE)
    return codes, state.absmax


def _assert_same_as_bnb(values: torch.Tensor) -> None:
    codes, absmax = quantize(values)
    ref_codes, ref_absmax = _bnb_quantize(values)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(absmax.view(torch.int32), ref_absmax.view(torch.int32))  # ±0 and NaN as bits


def _led_by_one(values: torch.Tensor) -> torch.Tensor:
    """Blocks of 255 values each led by 1.0: absmax 1, so the values are quantized as they are."""
    per = BLOCK_SIZE - 1
    padded = torch.nn.functional.pad(values, (0, -values.numel() % per))
    return torch.cat([torch.ones(padded.numel() // per, 1), padded.view(-1, per)], dim=1).view(-1)


def test_cpu_quantizer_is_bit_identical_to_bitsandbytes():
    """The torch CPU path (not bitsandbytes' slow CPU kernel) writes bitsandbytes' codes and absmax."""
    assert blockwise.cpu_quantizer() is not None  # the fast path is in use with this bitsandbytes
    probes = blockwise.quantizer_probes()  # bin edges, codes, code midpoints (ties), NaN, ±inf, ...
    _assert_same_as_bnb(_led_by_one(probes[0]))
    for values in probes:
        _assert_same_as_bnb(values)
    # A strided sample of all fp32 values in [-1, 1] (every 2^31 of them was checked once, offline).
    bits = torch.arange(0, 0x3F800001, 4099, dtype=torch.int32)
    sample = bits.view(torch.float32)
    _assert_same_as_bnb(_led_by_one(torch.cat([sample, -sample])))
    torch.manual_seed(11)
    generator = torch.Generator().manual_seed(11)
    heavy = torch.distributions.StudentT(1.5).sample((40 * BLOCK_SIZE + 13,)) * 1e-4
    outliers = torch.randn(64, BLOCK_SIZE, generator=generator) * 1e-3
    outliers[torch.rand(outliers.shape, generator=generator) < 0.01] *= 1e3
    ties = torch.randn(32, 1, generator=generator).abs() * (blockwise.dynamic_code(torch.device("cpu")) / 2)
    for values in (heavy, outliers, ties, torch.randn(1000, generator=generator) * 1e-8):
        _assert_same_as_bnb(values)


def test_cpu_dequantizer_writes_what_bitsandbytes_returns():
    """bitsandbytes' CPU kernel called straight into a given tensor: its op's values bit for bit, for
    stacked rows with a partial last block and absmax zero, ±inf, NaN and subnormal."""
    import bitsandbytes.functional as bnbf

    assert blockwise.cpu_dequantizer() is not None  # the fast path is in use with this bitsandbytes
    generator = torch.Generator().manual_seed(12)
    codes = torch.randint(0, 256, (3, 2 * BLOCK_SIZE + 50), dtype=torch.uint8, generator=generator)
    absmax = torch.rand(3, 3, generator=generator) * 1e-2
    absmax[0] = torch.tensor([0.0, float("inf"), float("nan")])
    absmax[1, 0] = 1e-41
    out = torch.full(codes.shape, 7.0)
    assert blockwise.dequantize_rows(codes, absmax, out) is out
    code = blockwise.dynamic_code(torch.device("cpu"))
    for c, a, o in zip(codes, absmax, out, strict=True):
        ref = bnbf.dequantize_blockwise(c, absmax=a, code=code, blocksize=BLOCK_SIZE)
        assert torch.equal(o.view(torch.int32), ref.view(torch.int32))


def test_came8bit_state_is_the_same_with_bitsandbytes_quantizer(monkeypatch):
    """End to end: CAME8bit steps with the CPU fast paths and with bitsandbytes' own quantizer and
    dequantizer agree bit for bit (stacked tensors, chunked tensors, a partial last block)."""
    shapes = [(64, 64), (64, 64), (300, 70), (5000,)]

    def run() -> tuple[list[torch.Tensor], list[dict]]:
        torch.manual_seed(9)
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        opt = CAME8bit(params, lr=1e-2, weight_decay=0.1, chunk_size=8192)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape) * torch.logspace(-4, 0, p.numel()).view(p.shape)
            opt.step()
        return [p.detach().clone() for p in params], [opt.state[p] for p in params]

    fast_params, fast_state = run()
    monkeypatch.setattr(blockwise, "cpu_quantizer", lambda: None)
    monkeypatch.setattr(blockwise, "cpu_dequantizer", lambda: None)
    bnb_params, bnb_state = run()
    for a, b in zip(fast_params, bnb_params, strict=True):
        assert torch.equal(a, b)
    for sa, sb in zip(fast_state, bnb_state, strict=True):
        assert sa["exp_avg"].dtype == torch.uint8
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_chunked_8bit_update_matches_one_chunk():
    """700 × 40 in chunks of 4096 values (rows aligned to blocks) or in one: the same 8-bit state."""
    torch.manual_seed(7)
    w0 = torch.randn(700, 40)
    chunked, whole = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    o_chunked, o_whole = CAME8bit([chunked], lr=1e-2, chunk_size=4096), CAME8bit([whole], lr=1e-2)
    for _ in range(5):
        chunked.grad = torch.randn(700, 40)
        whole.grad = chunked.grad.clone()
        o_chunked.step()
        o_whole.step()
    assert torch.equal(o_chunked.state[chunked]["exp_avg"], o_whole.state[whole]["exp_avg"])
    assert torch.allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def _run(model_params, opt, grads):
    for g in grads:
        for p, gp in zip(model_params, g, strict=True):
            p.grad = gp.clone().to(p.dtype)
        opt.step()


def _saved_and_resumed(run, opt, grads, make_opt):
    """Run 3 steps, save params and optimizer state, run the rest of ``grads``; return fresh params
    loaded from the save and ``make_opt(params)`` with the saved state loaded (not yet run)."""
    _run(run, opt, grads[:3])
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach().clone() for p in run]}, buf)
    _run(run, opt, grads[3:])
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = [torch.nn.Parameter(w) for w in saved["params"]]
    opt2 = make_opt(resumed)
    opt2.load_state_dict(saved["opt"])
    return resumed, opt2


@pytest.mark.parametrize("cls", [CAME, CAME8bit])
def test_state_dict_round_trip_resumes_bit_for_bit(cls):
    torch.manual_seed(5)
    shapes = [(64, 96), (96,), (32, 16, 1, 1), (5000,)]
    w0 = [torch.randn(s) for s in shapes] + [torch.randn(70, 70).bfloat16()]
    grads = [[torch.randn(w.shape) for w in w0] for _ in range(6)]

    run = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = cls([{"params": run[:3]}, {"params": run[3:], "lr": 3e-3}], lr=1e-2, weight_decay=0.01)
    resumed, opt2 = _saved_and_resumed(
        run, opt, grads, lambda ps: cls([{"params": ps[:3]}, {"params": ps[3:], "lr": 1.0}], lr=1.0)
    )
    assert opt2.param_groups[1]["lr"] == 3e-3 and opt2.param_groups[0]["weight_decay"] == 0.01
    assert opt2.state[resumed[4]]["exp_avg_sq_row"].dtype == torch.float32  # not cast to bf16
    _run(resumed, opt2, grads[3:])
    for a, b in zip(run, resumed, strict=True):
        assert torch.equal(a, b)


# Stacks: 8-bit tensors whose size is no multiple of the block size (each row quantized on its own,
# the last block partial), large fp32 ones (updated in place per parameter), small 1-D ones of
# several lengths (one ragged stack) and a bf16 stack (updated through a copy).
_STACKED_SHAPES = [(40, 1, 3, 3)] * 3 + [(64, 64)] * 2 + [(128,)] * 3 + [(40,), (200,)] + [(24, 16)] * 2


def _stacked_params(seed: int) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s)) for s in _STACKED_SHAPES]
    return params[:-2] + [torch.nn.Parameter(p.detach().bfloat16()) for p in params[-2:]]


def _stacked_grads(params: list[torch.nn.Parameter], steps: int, seed: int) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=gen) * (1 + t % 3) for p in params] for t in range(steps)]


def test_stacked_8bit_rows_with_partial_blocks(monkeypatch):
    """Stacked tensors are linked into one tensor per state key and updated together: the same
    parameters as one optimizer per tensor, and the same state bit for bit with either quantizer."""

    def run(one_by_one: bool) -> tuple[list[torch.Tensor], list[dict]]:
        params = _stacked_params(12)
        opts = [CAME8bit([p], lr=1e-2, weight_decay=0.1, min_8bit_size=300) for p in params]
        if not one_by_one:
            opts = [CAME8bit(params, lr=1e-2, weight_decay=0.1, min_8bit_size=300)]
        for grads in _stacked_grads(params, 4, seed=13):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.to(p.dtype)
            for opt in opts:
                opt.step()
        states = [o.state[p] for p in params for o in opts if p in o.state]
        return [p.detach().float() for p in params], states

    fast_params, fast_state = run(one_by_one=False)
    assert fast_state[0]["exp_avg"].dtype == torch.uint8 and fast_state[0]["exp_avg"]._base is not None
    alone_params, _ = run(one_by_one=True)
    for a, b in zip(fast_params, alone_params, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=2e-6)
    monkeypatch.setattr(blockwise, "cpu_quantizer", lambda: None)
    monkeypatch.setattr(blockwise, "cpu_dequantizer", lambda: None)
    bnb_params, bnb_state = run(one_by_one=False)
    for a, b in zip(fast_params, bnb_params, strict=True):
        assert torch.equal(a, b)
    for sa, sb in zip(fast_state, bnb_state, strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("cls", [CAME, CAME8bit])
def test_stacked_state_dict_round_trip_resumes_bit_for_bit(cls):
    """A loaded state holds its own tensors; the next step links them into stacks again, values kept."""
    run = _stacked_params(14)
    grads = _stacked_grads(run, 6, seed=15)
    opt = cls(run, lr=1e-2, weight_decay=0.01)
    resumed, opt2 = _saved_and_resumed(run, opt, grads, lambda ps: cls(ps, lr=1.0))
    _run(resumed, opt2, grads[3:])
    for a, b in zip(run, resumed, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(run, resumed, strict=True):
        assert all(torch.equal(opt.state[a][k], opt2.state[b][k]) for k in opt.state[a])


def test_bad_hyperparameters_are_refused():
    p = [torch.nn.Parameter(torch.randn(4, 4))]
    bad = [
        {"lr": 0.0},
        {"lr": -1e-3},
        {"lr": float("nan")},
        {"betas": (0.9, 1.0, 0.9999)},
        {"betas": (-0.1, 0.999, 0.9999)},
        {"betas": (0.9, 0.999)},
        {"eps": (0.0, 1e-16)},
        {"eps": (1e-30, -1e-16)},
        {"clip_threshold": 0.0},
        {"weight_decay": -0.1},
        {"chunk_size": 10},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            CAME(p, **{"lr": 1e-3, **kwargs})
    with pytest.raises(ValueError, match="min_8bit_size"):
        CAME8bit(p, lr=1e-3, min_8bit_size=0)
    opt = CAME(p, lr=1e-3)
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(3))], "lr": -1.0})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match="complex"):
        CAME([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))], lr=1e-3)


def test_sparse_gradient_is_refused():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(ValueError, match="sparse"):
        CAME8bit(emb.parameters(), lr=1e-3).step()
    assert torch.equal(emb.weight, before)


def test_foreign_or_mismatched_state_dicts_are_refused():
    torch.manual_seed(6)
    params = [torch.nn.Parameter(torch.randn(64, 80)), torch.nn.Parameter(torch.randn(80))]
    for p in params:
        p.grad = torch.randn_like(p)
    adamw = torch.optim.AdamW(params, lr=1e-3)
    came, came8 = CAME(params, lr=1e-3), CAME8bit(params, lr=1e-3)
    for o in (adamw, came, came8):
        o.step()
    other = [torch.nn.Parameter(torch.randn(64, 81)), torch.nn.Parameter(torch.randn(80))]
    other_opt = CAME(other, lr=1e-3)
    for p in other:
        p.grad = torch.randn_like(p)
    other_opt.step()
    fresh = CAME8bit(params, lr=1e-3)
    with pytest.raises(ValueError, match="another optimizer"):
        CAME(params, lr=1e-3).load_state_dict(adamw.state_dict())
    with pytest.raises(ValueError, match="min_8bit_size"):
        fresh.load_state_dict(came.state_dict())
    with pytest.raises(ValueError, match=r"\(64, 81\)"):
        CAME(params, lr=1e-3).load_state_dict(other_opt.state_dict())
    tampered = came8.state_dict()
    tampered["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        fresh.load_state_dict(tampered)
    assert not fresh.state and fresh.param_groups[0]["lr"] == 1e-3  # nothing loaded
