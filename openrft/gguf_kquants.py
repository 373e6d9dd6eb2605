"""GGUF k-quants written by openrft: Q4_K, Q5_K and Q6_K quantizers, and the per-tensor type
rules of the `--quant` mixtures (q4_k_m, q5_k_m, ...).

gguf 0.19's Python package can read (dequantize) the k-quants but not write them, so the
quantizers here produce the byte layout its `dequantize_blocks` reads (gguf/quants.py,
GGML_QUANT_SIZES): super-blocks of QK_K = 256 values,

- Q4_K (144 bytes): fp16 d, fp16 dmin, 12 bytes of eight 6-bit scales and eight 6-bit mins,
  128 bytes of 4-bit values; sub-block j (32 values) is d*sc[j]*q - dmin*m[j], q in 0..15.
- Q5_K (176 bytes): as Q4_K plus 32 bytes holding each value's fifth bit (q in 0..31).
- Q6_K (210 bytes): 128 bytes of low 4 bits, 64 bytes of high 2 bits, sixteen int8 scales,
  fp16 d; sub-block j (16 values) is d*sc[j]*(q - 32), q in 0..63.

Scales are fitted, not just max-abs: per sub-block a grid of candidate scales is tried, each
followed by a least-squares refit of scale (and offset) to the values it rounds to; the one
with the smallest squared error wins. The sub-block scales/offsets are then quantized against
the super-block's fp16 d/dmin, and the values re-rounded against the scales actually stored.
"""

from __future__ import annotations

import gguf
import numpy as np

QT = gguf.GGMLQuantizationType
QK_K = 256
K_TYPES = (QT.Q4_K, QT.Q5_K, QT.Q6_K)
CHUNK_BLOCKS = 4096  # super-blocks per vectorised step (~1M values): bounds the memory


def quantize(array: np.ndarray, qtype: QT, search: bool = True) -> np.ndarray:
    """`array` (rows of whole blocks) as `qtype`'s bytes: ours for K_TYPES, else gguf's.
    `search=False` uses plain min/max (max-abs) scales, for comparison."""
    if qtype not in K_TYPES:
        return gguf.quants.quantize(array, qtype)
    array = np.asarray(array, dtype=np.float32)
    if array.shape[-1] % QK_K:
        raise ValueError(f"{qtype.name}: rows of {array.shape[-1]} are not whole {QK_K}-blocks")
    if not np.isfinite(array).all():
        raise ValueError(f"{qtype.name}: the tensor holds NaN or inf")
    type_size = gguf.GGML_QUANT_SIZES[qtype][1]
    blocks = array.reshape(-1, QK_K)
    out = np.empty((blocks.shape[0], type_size), dtype=np.uint8)
    fit = _q6_k if qtype == QT.Q6_K else _q45_k
    for start in range(0, blocks.shape[0], CHUNK_BLOCKS):
        chunk = blocks[start : start + CHUNK_BLOCKS]
        out[start : start + CHUNK_BLOCKS] = fit(chunk, qtype, search)
    return out.reshape(*array.shape[:-1], array.shape[-1] // QK_K * type_size)


def _fp16(values: np.ndarray) -> np.ndarray:
    """Round to fp16 (saturating at its largest finite value) and back to float32."""
    return np.clip(values, -65504.0, 65504.0).astype(np.float16).astype(np.float32)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape, np.float32),
                     where=den != 0)  # fmt: skip


# --- Q4_K / Q5_K: x ~ s*q - m per 32-value sub-block, q in 0..L, s >= 0, m >= 0 ------------

# Candidate scales, as multiples of (max - min) / L: the plain min/max fit is 1.0; smaller ones
# clip the extremes to round the bulk of the values more finely.
ASYM_GRID = np.linspace(0.70, 1.05, 15, dtype=np.float32)


def _fit_asym(x: np.ndarray, levels: int, search: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `x` (sub-blocks), the scale s >= 0 and offset m >= 0 with the smallest
    squared error of s*q - m, q = clip(round((x + m) / s), 0, levels)."""
    lo = np.minimum(x.min(axis=-1), 0.0)
    hi = np.maximum(x.max(axis=-1), 0.0)
    base = (hi - lo) / levels
    if not search:
        return base, -lo
    scale = base[None, :, None] * ASYM_GRID[:, None, None]  # (candidates, rows, 1)
    q = np.clip(np.rint(_safe_div(x[None] - lo[None, :, None], scale)), 0, levels)
    s, b = _least_squares(x[None], q)
    # One more round: re-round against the refitted scale and offset, refit again.
    q = np.clip(np.rint(_safe_div(x[None] - b[..., None], s[..., None])), 0, levels)
    s, b = _least_squares(x[None], q)
    err = ((s[..., None] * q + b[..., None] - x[None]) ** 2).sum(-1)
    best = err.argmin(axis=0)
    rows = np.arange(x.shape[0])
    return s[best, rows], -b[best, rows]


def _least_squares(x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, s >= 0 and b <= 0 minimising |s*q + b - x|^2 (b = 0 where the free fit
    wants b > 0: the offsets are stored as non-negative mins)."""
    n = x.shape[-1]
    sq, sx = q.sum(-1), x.sum(-1)
    sqq, sqx = (q * q).sum(-1), (q * x).sum(-1)
    det = n * sqq - sq * sq
    s = _safe_div(n * sqx - sq * sx, det)
    b = _safe_div(sx * sqq - sq * sqx, det)
    clamp = (b > 0) | (s <= 0) | (det == 0)
    s = np.maximum(np.where(clamp, _safe_div(sqx, sqq), s), 0.0)  # offset 0: <x,q>/<q,q>
    return s, np.where(clamp, 0.0, b)


def _q45_k(blocks: np.ndarray, qtype: QT, search: bool) -> np.ndarray:
    nb = blocks.shape[0]
    levels = 15 if qtype == QT.Q4_K else 31
    x = blocks.reshape(nb, 8, 32)
    scale, offset = _fit_asym(x.reshape(nb * 8, 32), levels, search)
    scale, offset = scale.reshape(nb, 8), offset.reshape(nb, 8)
    # 6-bit sub-block scales against fp16 d; then the offsets refitted to the stored scales.
    d = _fp16(scale.max(-1) / 63)
    sc = np.clip(np.rint(_safe_div(scale, d[:, None])), 0, 63)
    step = (d[:, None] * sc)[..., None]
    q = np.clip(np.rint(_safe_div(x + offset[..., None], step)), 0, levels)
    if search:
        offset = np.maximum((step * q - x).mean(-1), 0.0)
    dmin = _fp16(offset.max(-1) / 63)
    mn = np.clip(np.rint(_safe_div(offset, dmin[:, None])), 0, 63)
    m = (dmin[:, None] * mn)[..., None]
    q = np.clip(np.rint(_safe_div(x + m, step)), 0, levels).astype(np.uint8)
    parts = [
        _f16_bytes(d),
        _f16_bytes(dmin),
        _pack_scales(sc.astype(np.uint8), mn.astype(np.uint8)),
    ]
    # Value i of sub-blocks 2c and 2c+1 share byte 32c+i: low and high nibble.
    low = (q & 0x0F).reshape(nb, 4, 2, 32)
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(nb, 128)
    if qtype == QT.Q5_K:  # bit j of byte i: the fifth bit of value i of sub-block j
        high = (q >> 4).transpose(0, 2, 1)  # (nb, 32 values, 8 sub-blocks)
        parts.append((high << np.arange(8, dtype=np.uint8)).sum(-1, dtype=np.uint8))
    parts.append(qs)
    return np.concatenate(parts, axis=-1)


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _pack_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins in 12 bytes: bytes 0-3 scales 0-3 (+ the top 2 bits of
    scales 4-7), bytes 4-7 mins 0-3 (+ top bits of mins 4-7), bytes 8-11 low 4 bits of
    scales 4-7 (low nibble) and mins 4-7 (high nibble)."""
    first = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    second = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    third = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return np.concatenate([first, second, third], axis=-1).astype(np.uint8)


# --- Q6_K: x ~ s*q per 16-value sub-block, q in -32..31 ------------------------------------

SYM_GRID = np.linspace(28.0, 36.0, 17, dtype=np.float32)  # divisors of the signed max


def _fit_sym(x: np.ndarray, search: bool) -> np.ndarray:
    """Per row of `x`, the (signed) scale s of the smallest squared error of s*q,
    q = clip(round(x / s), -32, 31). A negative s puts the largest |x| at q = -32."""
    peak = np.take_along_axis(x, np.abs(x).argmax(-1)[:, None], -1)[:, 0]
    if not search:
        return np.abs(peak) / 31.5
    candidates = np.concatenate([-peak[None] / SYM_GRID[:, None], peak[None] / SYM_GRID[:, None]])
    q = np.clip(np.rint(_safe_div(x[None], candidates[..., None])), -32, 31)
    s = _safe_div((q * x[None]).sum(-1), (q * q).sum(-1))  # least-squares refit
    q = np.clip(np.rint(_safe_div(x[None], s[..., None])), -32, 31)
    s = _safe_div((q * x[None]).sum(-1), (q * q).sum(-1))
    err = ((s[..., None] * q - x[None]) ** 2).sum(-1)
    return s[err.argmin(axis=0), np.arange(x.shape[0])]


def _q6_k(blocks: np.ndarray, qtype: QT, search: bool) -> np.ndarray:
    nb = blocks.shape[0]
    x = blocks.reshape(nb, 16, 16)
    scale = _fit_sym(x.reshape(nb * 16, 16), search).reshape(nb, 16)
    d = _fp16(np.abs(scale).max(-1) / 127)
    sc = np.clip(np.rint(_safe_div(scale, d[:, None])), -128, 127)
    step = (d[:, None] * sc)[..., None]
    q = (np.clip(np.rint(_safe_div(x, step)), -32, 31) + 32).astype(np.uint8).reshape(nb, 2, 128)
    # Value p = 128h + 64s + i: low 4 bits in byte 64h + i (nibble s); p = 128h + 32s + i:
    # high 2 bits in byte 32h + i (bits 2s, 2s+1).
    low = (q & 0x0F).reshape(nb, 2, 2, 64)
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(nb, 128)
    high = (q >> 4).reshape(nb, 2, 4, 32)
    qh = (high << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]).sum(2, dtype=np.uint8)
    return np.concatenate(
        [ql, qh.reshape(nb, 64), sc.astype(np.int8).view(np.uint8), _f16_bytes(d)], axis=-1
    )


# --- mixtures: which type each tensor gets ---------------------------------------------------


# name -> (main type, type of the "more bits" tensors or None, general.file_type)
MIXTURES = {
    "q4_k_m": (QT.Q4_K, QT.Q6_K, gguf.LlamaFileType.MOSTLY_Q4_K_M),
    "q5_k_m": (QT.Q5_K, QT.Q6_K, gguf.LlamaFileType.MOSTLY_Q5_K_M),
    "q4_k": (QT.Q4_K, None, gguf.LlamaFileType.MOSTLY_Q4_K_S),
    "q5_k": (QT.Q5_K, None, gguf.LlamaFileType.MOSTLY_Q5_K_S),
    "q6_k": (QT.Q6_K, None, gguf.LlamaFileType.MOSTLY_Q6_K),
}
# A matrix whose rows are not whole 256-value super-blocks gets this 32-block type instead
# (one step more bits than the k-quant had); rows not whole 32-blocks stay F16.
FALLBACK = {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q8_0, QT.Q6_K: QT.Q8_0}


def more_bits(gguf_name: str, n_layers: int, tied_output: bool) -> bool:
    """The tensors an _M mixture keeps at its higher type: the output matrix (token_embd when
    the output is tied to it), and attn_v / ffn_down in the first and last quarter of the
    layers (half of them)."""
    if gguf_name == "output.weight" or (tied_output and gguf_name == "token_embd.weight"):
        return True
    parts = gguf_name.split(".")
    if parts[0] != "blk" or parts[2] not in ("attn_v", "ffn_down") or parts[3] != "weight":
        return False
    layer = int(parts[1])
    return layer < n_layers / 4 or layer >= n_layers - n_layers / 4


def tensor_type(
    mixture: str, gguf_name: str, shape: tuple[int, ...], n_layers: int, tied_output: bool
) -> QT:
    """The GGML type of one matrix (ndim 2) under `mixture`, its fallback applied."""
    main, higher, _ = MIXTURES[mixture]
    qtype = higher if higher is not None and more_bits(gguf_name, n_layers, tied_output) else main
    row = shape[-1]
    if row % QK_K:
        qtype = FALLBACK.get(qtype, qtype)
    if row % gguf.GGML_QUANT_SIZES[qtype][0]:
        qtype = QT.F16
    return qtype
