"""Weights kept in a CPU library's packed (pre-blocked) layout, for the compact decoder's
matrix multiplies: MKL's packed GEMM for float32, oneDNN's packed weights for bfloat16, with
oneDNN's fused elementwise "post-ops" (the operators are torch internals, reached through
openrft.compat.torch). Each falls back to its plain twin, `x @ W`, where no packed form
exists (another CPU, a GPU, another torch, or an MKL form packed for another row count);
tests/fast/test_packed_weights.py checks both give the same products."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from openrft.compat import torch as torch_internals


class Projection:
    """`x @ weight_t`, with the weight also kept in a packed (pre-blocked) form when asked:
    - float32: MKL's packed GEMM, for one row count: ~25% faster than the plain matmul at 64
      rows (bench/generate.py), and a decode batch has one row count most of the time;
    - bfloat16: oneDNN's packed weight (AMX or AVX-512 BF16 tiles), for any row count: 30%
      faster than the plain matmul at 33-64 rows with the weights out of cache, as in a
      decode step, because oneDNN otherwise reorders the weight on every call."""

    def __init__(self, weight_t: torch.Tensor | None):
        self.weight_t = weight_t  # None: the packed form is the only copy (bf16, oneDNN)
        self.packed: torch.Tensor | None = None
        self.packed_rows = 0  # MKL: the row count the packed form serves

    def pack(self, rows: int, weight_O_I: torch.Tensor | None = None) -> None:
        """Pack `weight_t`, or `weight_O_I` where the caller holds the same values already
        laid out (out, in): packing from the transposed buffer copies it once more."""
        if weight_O_I is None:
            if self.weight_t is None:
                raise ValueError("a projection without a plain weight packs only a given one")
            weight_O_I = self.weight_t.T
        self.packed = pack_weight(weight_O_I, rows)
        self.packed_rows = rows

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight_O_I = None if self.weight_t is None else self.weight_t.T
        result = packed_matmul(x, self.packed, weight_O_I, self.packed_rows)
        return x @ self.weight_t if result is None else result

    # oneDNN applies an elementwise op to a packed bf16 matmul's output while it is still in
    # registers ("post-ops"): one pass instead of two or three over a (rows, out) tensor.
    def fuses(self, x: torch.Tensor) -> bool:
        return self.packed is not None and x.dtype == torch.bfloat16

    def plus(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + x @ W."""
        if self.fuses(x):
            return torch_internals.onednn_linear_binary(x, residual, self.packed, "add")
        return residual + self(x)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        """silu(x @ W) (oneDNN calls silu "swish")."""
        if self.fuses(x):
            return torch_internals.onednn_linear(x, self.packed, "swish")
        return F.silu(self(x))

    def times(self, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """(x @ W) * factor."""
        if self.fuses(x):
            return torch_internals.onednn_linear_binary(x, factor, self.packed, "mul")
        return self(x) * factor


def can_pack(dtype: torch.dtype) -> bool:
    """A packed weight format exists: MKL's for float32, oneDNN's for bfloat16 on CPUs with
    bf16 instructions (AVX-512 BF16 or AMX), in x86 builds of the torch it was written for."""
    if dtype == torch.float32:
        return torch_internals.mkl_packing_available()
    if dtype == torch.bfloat16:
        return torch_internals.onednn_bf16_available()
    return False


def pack_weight(weight_O_I: torch.Tensor, rows: int) -> torch.Tensor:
    """The packed form of an (out, in) weight for `rows`-row inputs (see can_pack)."""
    if weight_O_I.dtype == torch.float32:
        return torch_internals.mkl_pack(weight_O_I, rows)
    return torch_internals.onednn_pack(weight_O_I, rows)


def packed_matmul(
    x: torch.Tensor, packed: torch.Tensor | None, weight_O_I: torch.Tensor | None, rows: int
) -> torch.Tensor | None:
    """x @ weight.T through the packed form, or None where it does not serve (no packed form,
    or an MKL form packed for another row count). `weight_O_I` is needed by MKL's (float32)
    form only; a bf16 oneDNN form serves any row count without it."""
    if packed is None:
        return None
    if x.dtype == torch.bfloat16:
        return torch_internals.onednn_linear(x, packed)
    if x.numel() == rows * x.shape[-1]:
        return torch_internals.mkl_linear(x, packed, weight_O_I, rows)
    return None
