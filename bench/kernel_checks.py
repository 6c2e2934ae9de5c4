"""GPU correctness checks of dseval.kernels at DeepSeek-V3 sizes, against float64 references.

    python bench/kernel_checks.py [--out results/bench/kernel_checks.json]

The CPU tests run the kernels under the Triton interpreter at small sizes; this runs the
compiled kernels at the real ones (odd M, partial N blocks, long contexts), where precision,
tile edges and 32-bit offsets can go wrong in ways the interpreter does not show. Each check
is a relative Frobenius error under a tolerance; the exit status is 1 if any check fails.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from common import (cudnn_prefill_attention, CHECKS, HID, KVLORA, LINEARS, ROOT, ROPE, K, check, failed_checks, json_writer, moe_fp8_weights,
                    prefill_attention_inputs, print_summary, rand_fp8, rand_linear, rand_scales, rel, require_gpu,
                    routed_tokens)


def check_quant_and_codes() -> None:
    """1x128 activation quantization bit for bit, and every e4m3 code through the skinny GEMM."""
    x = torch.randn(4099, HID, device="cuda", dtype=torch.bfloat16) * 3
    q, s = K.per_token_group_quant_fp8(x, column_major_scales=True, pad_rows_to=4)
    qr, sr = K.per_token_group_quant_fp8_torch(x)
    mism = (q[:4099].view(torch.uint8) != qr.view(torch.uint8)).float().mean().item()
    check("quant codes mismatch fraction (M=4099,K=7168)", mism, 1e-6)
    check("quant scales", rel(s[:4099], sr), 1e-6)
    # the skinny GEMM's bit-level e4m3 -> bf16 conversion: identity rows of x read back every
    # code of the weight (NaN codes replaced by 0: 0 x NaN would poison every sum)
    codes = torch.arange(256, dtype=torch.uint8, device="cuda")
    codes[codes & 0x7F == 0x7F] = 0
    w = codes.view(torch.float8_e4m3fn).repeat(64, 1)  # [64, 256]: every row holds all codes
    eye = torch.eye(256, device="cuda", dtype=torch.bfloat16)
    got = torch.cat([K.fp8_gemm_w8a16_skinny(eye[j:j + 64], w, torch.ones(1, 2, device="cuda")) for j in range(0, 256, 64)])
    exact = (got.float() == codes.view(torch.float8_e4m3fn).float()[:, None]).all(dim=1)
    check("skinny GEMM reads every e4m3 code exactly (mismatched fraction)", 1.0 - exact.float().mean().item(), 1e-9)


def check_linears() -> None:
    """Every fp8_linear backend at every W3 linear shape, odd M included."""
    for name, (n, k) in LINEARS.items():
        w, ws = rand_linear(n, k)
        wd = K.dequant_block_fp8_weight(w, ws).double()
        for m in (1, 5, 64, 130, 4093):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.double() @ wd.t()
            backends = ["auto", "skinny", "w8a8"]
            if K.scaled_mm_is_safe(m, n, k):
                backends.append("scaled_mm")
            if m in (5, 64):
                y = K.fp8_gemm_w8a16_skinny(x, w, ws, K.SkinnyConfig(swap_ab=False, split_k=3))
                check(f"skinny swap_ab=False split=3 {name} M={m}", rel(y, ref), 8e-3)
            for be in backends:
                if be == "skinny" and m > 130:
                    continue
                y = K.fp8_linear(x, w, ws, backend=be)
                tol = 8e-3 if be == "skinny" else 4e-2  # w8a8 paths quantize activations
                check(f"fp8_linear[{be}] {name} M={m} N={n} K={k}", rel(y, ref), tol)


def probe_scaled_mm_traps() -> None:
    """Record (not assert) what raw cuBLAS gives where ``scaled_mm_is_safe`` keeps it off:
    K/128 = 5 and a partial scale block (N = 576), so a library update that fixes them shows."""
    for label, n, k, m in (("raw _scaled_mm K=640 (guarded trap)", 256, 640, 128),
                           ("raw _scaled_mm N=576 (guarded)", 576, HID, 256)):
        try:
            w, ws = rand_fp8(n, k), rand_scales(math.ceil(n / 128), k // 128)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            qx, sx = K.per_token_group_quant_fp8(x, column_major_scales=True)
            y = torch._scaled_mm(qx, w.t(), scale_a=sx, scale_b=ws.t(), out_dtype=torch.bfloat16)
            ref = x.double() @ K.dequant_block_fp8_weight(w, ws).double().t()
            CHECKS.append({"check": label, "rel_err": rel(y, ref), "info": True})
            print("INFO", label, "rel_err", rel(y, ref))
        except Exception as e:  # noqa: BLE001
            CHECKS.append({"check": label, "error": repr(e)[:200], "info": True})


def check_moe() -> None:
    """Fused MoE at real sizes (E=256, H=7168, I=2048, k=8), fp8 fused/unfused and bf16."""
    w13, s13, w2, s2 = moe_fp8_weights(s2_gain=10.0)
    for t in (1, 7, 300):
        x, ids, wts = routed_tokens(t)
        ref = K.fused_moe_torch(x, w13, s13, w2, s2, ids, wts)
        check(f"fused_moe fp8 T={t}", rel(K.fused_moe(x, w13, s13, w2, s2, ids, wts), ref), 6e-2)
        for ucfg in (K.MoeConfig(64, 128, 128, 4, 4, unfused_gate_up=True),
                     K.MoeConfig(128, 128, 128, 8, 3, unfused_gate_up=True)):
            out = K.fused_moe(x, w13, s13, w2, s2, ids, wts, ucfg)
            check(f"fused_moe fp8 unfused bm={ucfg.block_m} T={t}", rel(out, ref), 6e-2)
        w13b = K.dequant_block_fp8_weight(w13[:16], s13[:16]).bfloat16().contiguous()
        w2b = K.dequant_block_fp8_weight(w2[:16], s2[:16]).bfloat16().contiguous()
        ids16 = ids % 16
        outb = K.fused_moe(x, w13b, None, w2b, None, ids16, wts)
        refb = K.fused_moe_torch(x, w13b, None, w2b, None, ids16, wts)
        check(f"fused_moe bf16 (E=16) T={t}", rel(outb, refb), 1e-2)


def check_mla_decode() -> None:
    """Paged MLA decode at real dims with varied lengths (empty, one token, 70K) and configs."""
    for b, h, lens, bs in ((2, 128, [1000, 33000], 64), (3, 16, [1, 4097, 70000], 64), (2, 16, [129, 0], 16)):
        maxb = max(math.ceil(n / bs) for n in lens) + 1
        nb = b * maxb + 8
        cache = torch.randn(nb, bs, KVLORA + ROPE, device="cuda", dtype=torch.bfloat16)
        bt = torch.randperm(nb, device="cuda")[: b * maxb].view(b, maxb)
        cl = torch.tensor(lens, device="cuda", dtype=torch.int32)
        qn = torch.randn(b, h, KVLORA, device="cuda", dtype=torch.bfloat16)
        qp = torch.randn(b, h, ROPE, device="cuda", dtype=torch.bfloat16)
        ref = K.mla_decode_torch(qn.double(), qp.double(), cache.double(), bt, cl, 0.1)
        for cfg in (None, K.MlaDecodeConfig(block_h=16, block_n=64, transposed=True, num_stages=3),
                    K.MlaDecodeConfig(block_h=64 if h > 16 else 16, block_n=32, num_warps=8, page_aligned=False)):
            out = K.mla_decode(qn, qp, cache, bt, cl, 0.1, config=cfg)
            check(f"mla_decode B={b} H={h} lens={lens} bs={bs} cfg={cfg}", rel(out, ref), 1e-2)


def check_norm() -> None:
    x = torch.randn(333, HID, device="cuda", dtype=torch.bfloat16)
    r = torch.randn(333, HID, device="cuda", dtype=torch.bfloat16)
    wn = torch.rand(HID, device="cuda", dtype=torch.bfloat16)
    y, hh = K.rms_norm(x, wn, 1e-6, residual=r)
    yr, hr = K.rms_norm_torch(x.double(), wn.double(), 1e-6, residual=r.double())
    check("rms_norm fused residual (y)", rel(y, yr), 8e-3)
    check("rms_norm fused residual (h)", rel(hh, hr), 8e-3)


def check_prefill_attention() -> None:
    """FP8 and cuDNN prefill attention against float64, and FP8 against cuDNN past 2^31 element
    offsets (the transposed values are head x 128 x S: beyond 128K rows at 128 heads)."""
    from dseval.kernels import mla_prefill as mp
    from dseval.kernels.mla_prefill_fp8 import mla_prefill_attention_fp8

    g = torch.Generator(device="cuda").manual_seed(0)
    small = prefill_attention_inputs(g, 512, 2048)
    exact = mp.mla_prefill_attention_torch(*(x.double() for x in small), 0.1)
    check("prefill attention fp8 vs float64 (t=512 S=2048)", rel(mla_prefill_attention_fp8(*small, 0.1), exact), 8e-2)
    cudnn = cudnn_prefill_attention()
    check("prefill attention cudnn vs float64 (t=512 S=2048)", rel(mp.mla_prefill_attention(*small, 0.1, cudnn), exact),
          1e-2)
    far = prefill_attention_inputs(g, 512, 139264)
    check("prefill attention fp8 vs cudnn past 2^31 offsets (t=512 S=139264)",
          rel(mla_prefill_attention_fp8(*far, 0.1), mp.mla_prefill_attention(*far, 0.1, cudnn)), 8e-2)


GROUPS = (check_quant_and_codes, check_linears, probe_scaled_mm_traps, check_moe, check_mla_decode, check_norm,
          check_prefill_attention)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "kernel_checks.json")
    args = ap.parse_args()
    require_gpu("bench/kernel_checks.py")
    save = json_writer(args.out)
    torch.manual_seed(0)
    for group in GROUPS:
        try:
            group()
        except Exception as e:  # noqa: BLE001 - a crashed group is a failed check; the others still run
            import traceback

            traceback.print_exc()
            CHECKS.append({"check": f"{group.__name__} crashed", "error": repr(e)[:500], "ok": False})
        save()
    print_summary(args.out)
    return 1 if failed_checks() else 0


if __name__ == "__main__":
    raise SystemExit(main())
