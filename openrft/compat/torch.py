"""torch's private CPU matmul operators, for the packed-weight fast path (openrft.fast.
packed_weights) and the LM head's bf16-tile matmul (openrft.fast.lm_head):
- MKL's packed float32 GEMM (`torch.ops.mkl._mkl_reorder_linear_weight`, `_mkl_linear`);
- oneDNN's packed bf16 weights and fused "post-ops" (`torch.ops.mkldnn._reorder_linear_weight`,
  `_linear_pointwise`, `_is_mkldnn_bf16_supported`);
- `torch.backends.mkldnn.matmul.fp32_precision`, set for one call at a time.
These are what torch's own Inductor CPU backend emits; they have no public Python API.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from openrft.compat import version_problem

WRITTEN_FOR = ("2.13.0",)
PROBLEM = version_problem("torch", WRITTEN_FOR)  # None: the operators below are as expected


def mkl_packing_available() -> bool:
    """MKL's packed float32 GEMM exists in this build (x86 builds of torch)."""
    return (
        PROBLEM is None
        and torch.backends.mkl.is_available()
        and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")
    )


def onednn_bf16_available() -> bool:
    """oneDNN's packed bf16 weights exist and the CPU has bf16 instructions (AVX-512 BF16 or
    AMX): elsewhere oneDNN emulates bf16 and the packed form is slower than a plain matmul."""
    return (
        PROBLEM is None
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def mkl_pack(weight_O_I: torch.Tensor, rows: int) -> torch.Tensor:
    """MKL's packed form of a float32 (out, in) weight, for inputs of exactly `rows` rows."""
    return torch.ops.mkl._mkl_reorder_linear_weight(weight_O_I, rows)


def mkl_linear(
    x: torch.Tensor, packed: torch.Tensor, weight_O_I: torch.Tensor | None, rows: int
) -> torch.Tensor:
    """x @ weight.T through an MKL-packed weight (x must have `rows` rows)."""
    return torch.ops.mkl._mkl_linear(x, packed, weight_O_I, None, rows)


def onednn_pack(weight_O_I: torch.Tensor, rows: int) -> torch.Tensor:
    """oneDNN's packed (pre-blocked) form of a bf16 (out, in) weight; serves any row count."""
    return torch.ops.mkldnn._reorder_linear_weight(weight_O_I.contiguous(), rows)


def onednn_linear(x: torch.Tensor, packed: torch.Tensor, activation: str = "none") -> torch.Tensor:
    """activation(x @ W) through a oneDNN-packed weight; `activation` is "none" or one of
    oneDNN's unary post-ops ("swish" is silu)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, activation, [], "")


def onednn_linear_binary(
    x: torch.Tensor, other: torch.Tensor, packed: torch.Tensor, operation: str
) -> torch.Tensor:
    """(x @ W) `operation` other ("add" or "mul"), applied while the output is in registers."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, other, packed, None, operation)


@contextlib.contextmanager
def float32_matmul_on_bf16_tiles() -> Iterator[None]:
    """Let oneDNN run float32 matmuls on bf16 tiles while inside (restored after)."""
    previous = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = previous
