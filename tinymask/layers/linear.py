"""Fully connected layer, forward and backward.

Paper: the FPN box head of Mask R-CNN is two fully connected layers of 1024 units (FPN paper §4.2, "2-fc MLP head")
followed by the class-score and box-regression layers (Fast R-CNN §2); the MLP mask head of Table 2(e) is built from
them too.

    out = x @ wᵀ + b        x: (N, D_in), w: (D_out, D_in) (PyTorch's layout), b: (D_out,)

Backward: dx = dout @ w, dw = doutᵀ @ x, db = Σ_n dout. The cache keeps `x` (needed for dw) and `w` (needed for dx).
"""
from __future__ import annotations

from tinymask._validate import check_dout, check_float_array, check_same_dtype, finite_checked


@finite_checked("out", "cache")
def linear_forward(x, w, b=None):
    """x: (N, D_in), w: (D_out, D_in), b: (D_out,) or None -> out (N, D_out), cache."""
    check_float_array(x, "x", 2, "(N, D_in)")
    check_float_array(w, "w", 2, "(D_out, D_in)")
    if b is not None:
        check_float_array(b, "b", 1, "(D_out,)")
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"b has {b.shape[0]} entries but w has {w.shape[0]} outputs")
    check_same_dtype(x=x, w=w, b=b)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"feature mismatch: x has {x.shape[1]} features but w expects {w.shape[1]} (w shape {w.shape})")
    out = x @ w.T  # (N, D_out)
    if b is not None:
        out += b
    return out, (x, w, b is not None)


@finite_checked("dx", "dw", "db")
def linear_backward(dout, cache):
    """dout: (N, D_out) -> (dx (N, D_in), dw (D_out, D_in), db (D_out,) or None)."""
    x, w, has_bias = cache
    check_dout(dout, (x.shape[0], w.shape[0]), "linear_backward")
    dx = dout @ w  # (N, D_in)
    dw = dout.T @ x  # (D_out, D_in)
    db = dout.sum(axis=0) if has_bias else None  # (D_out,)
    return dx, dw, db
