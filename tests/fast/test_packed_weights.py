"""Packed-weight projections: the plain matmul's results, with and without fused post-ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from openrft.fast.packed_weights import Projection, can_pack


def _projection(dtype: torch.dtype, pack: bool) -> Projection:
    torch.manual_seed(0)
    projection = Projection((torch.randn(48, 80) * 0.1).to(dtype))  # (in, out)
    if pack:
        if not can_pack(dtype):
            pytest.skip(f"no packed {dtype} format here (MKL, or oneDNN with bf16 instructions)")
        projection.pack(rows=6)
    return projection


@pytest.mark.parametrize(
    ("dtype", "pack", "tolerance"),
    [
        (torch.float32, False, 1e-6),
        (torch.float32, True, 1e-5),  # MKL: no post-ops, the eager fallback after the matmul
        (torch.bfloat16, False, 0.0),
        (torch.bfloat16, True, 0.05),  # oneDNN: fused, rounded once instead of twice
    ],
)
def test_fused_post_ops_compute_the_plain_expressions(dtype, pack, tolerance):
    projection = _projection(dtype, pack)
    for rows in (6, 5):  # the packed row count and another
        x = torch.randn(rows, 1, 48).to(dtype)
        other = torch.randn(rows, 1, 80).to(dtype)
        product = (x.float() @ projection.weight_t.float()).to(dtype)
        expected = {
            "plain": product,
            "plus": other + product,
            "silu": F.silu(product),
            "times": product * other,
        }
        got = {
            "plain": projection(x),
            "plus": projection.plus(x, other),
            "silu": projection.silu(x),
            "times": projection.times(x, other),
        }
        for name, value in got.items():
            assert value.dtype == dtype and value.shape == (rows, 1, 80), name
            torch.testing.assert_close(
                value.float(), expected[name].float(), atol=tolerance, rtol=tolerance
            )


def test_only_a_packed_bfloat16_projection_fuses():
    x32, x16 = torch.randn(2, 48), torch.randn(2, 48).bfloat16()
    assert not _projection(torch.bfloat16, pack=False).fuses(x16)
    assert not _projection(torch.float32, pack=False).fuses(x32)
    packed = _projection(torch.bfloat16, pack=True)
    assert packed.fuses(x16)
