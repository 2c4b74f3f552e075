"""CUDA matrix products (the GEMM of the convolutions): first the simple kernel, then the tuned one.

`matmul(a, b)` is `np.matmul` for the shapes the convolutions use: (M, K) or (Z, M, K) times (K, N) or (Z, K, N), a
2-D operand shared by every batch entry.

**The simple kernel** (`matmul_simple`): one thread per output element, `C[z, i, j] = Σ_k A[z, i, k] B[z, k, j]`,
every operand read straight from global memory. Correct and easy to check; slow, because each element of A is read
N times and each element of B M times from the slowest memory on the card.

**The tuned kernel** (`matmul`, what the backend runs): the classic shared-memory tiled GEMM. A 16×16 block of
threads computes a 16×16 tile of C; it walks along K in steps of 16, each step loading one tile of A and one of B
into shared memory (one element per thread), waiting at `syncthreads`, and accumulating 16 products per thread from
the fast shared copies: each global element is read once per tile instead of once per product.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from tinymask.ops.cuda.device import TPB, grid, kernel_for, to_device

TILE = 16  # GEMM tile: 16×16 threads per block, two 16×16 shared-memory tiles


@cuda.jit(cache=True)
def _gemm_simple_kernel(A, B, Cout):
    """The simple kernel: Cout[z] (M, N) = A[z or 0] (M, K) @ B[z or 0] (K, N), one thread per output element."""
    Z, M, N = Cout.shape
    K = A.shape[2]
    for idx in range(cuda.grid(1), Z * M * N, cuda.gridsize(1)):
        z, i, j = idx // (M * N), (idx // N) % M, idx % N
        za = z if A.shape[0] > 1 else 0  # a 2-D operand is shared by every batch entry
        zb = z if B.shape[0] > 1 else 0
        acc = Cout[z, i, j]  # a zero of Cout's dtype: the sum runs in that dtype
        for k in range(K):
            acc += A[za, i, k] * B[zb, k, j]
        Cout[z, i, j] = acc


def _make_tiled_gemm(dtype):
    """The tuned kernel, for one float type (shared arrays need their dtype at compile time)."""

    @cuda.jit
    def gemm(A, B, Cout):
        # Cout[z] (M, N) = A[z or 0] (M, K) @ B[z or 0] (K, N); this block: the TILE×TILE tile at (row, col)
        sA = cuda.shared.array((TILE, TILE), dtype)
        sB = cuda.shared.array((TILE, TILE), dtype)
        tx, ty, z = cuda.threadIdx.x, cuda.threadIdx.y, cuda.blockIdx.z
        row, col = cuda.blockIdx.y * TILE + ty, cuda.blockIdx.x * TILE + tx
        za = z if A.shape[0] > 1 else 0  # a 2-D operand is shared by every batch entry
        zb = z if B.shape[0] > 1 else 0
        M, K, N = A.shape[1], A.shape[2], B.shape[2]
        acc = dtype(0)
        for k0 in range(0, K, TILE):  # walk along K one tile at a time
            sA[ty, tx] = A[za, row, k0 + tx] if row < M and k0 + tx < K else 0  # each thread loads one element
            sB[ty, tx] = B[zb, k0 + ty, col] if k0 + ty < K and col < N else 0
            cuda.syncthreads()  # the tiles are complete
            for kk in range(TILE):
                acc += sA[ty, kk] * sB[kk, tx]
            cuda.syncthreads()  # everyone is done reading before the next tiles overwrite them
        if row < M and col < N:
            Cout[z, row, col] = acc

    return gemm


_TILED = {}  # dtype -> the tuned kernel for it


def _batched(a, b):
    """Both operands as (Z, M, K) and (Z or 1, K, N), and the output's (Z, M, N) zeros; whether to squeeze it."""
    dtype = np.result_type(a, b)
    a3, b3 = (a[None] if a.ndim == 2 else a), (b[None] if b.ndim == 2 else b)
    if a3.shape[0] != b3.shape[0] and 1 not in (a3.shape[0], b3.shape[0]):
        raise ValueError(f"matmul: batch sizes {a3.shape[0]} and {b3.shape[0]} do not broadcast")
    Z, M, N = max(a3.shape[0], b3.shape[0]), a3.shape[1], b3.shape[2]
    return a3, b3, np.zeros((Z, M, N), dtype=dtype), a.ndim == 2 and b.ndim == 2


def matmul_simple(a, b):
    """np.matmul by the simple kernel, one thread per output element; the same shapes as matmul."""
    a3, b3, out, squeeze = _batched(a, b)
    if out.size and a3.shape[2]:
        d_out = cuda.to_device(out)
        _gemm_simple_kernel[grid(out.size), TPB](to_device(a3, out.dtype), to_device(b3, out.dtype), d_out)
        out = d_out.copy_to_host()
    return out[0] if squeeze else out


def matmul(a, b):
    """np.matmul for the shapes the convolutions use: (M, K) or (Z, M, K) times (K, N) or (Z, K, N); tiled."""
    a3, b3, out, squeeze = _batched(a, b)
    if out.size and a3.shape[2]:
        Z, M, N = out.shape
        d_out = cuda.to_device(out)
        blocks = ((N + TILE - 1) // TILE, (M + TILE - 1) // TILE, Z)
        kernel_for(_TILED, _make_tiled_gemm, out.dtype)[blocks, (TILE, TILE)](
            to_device(a3, out.dtype), to_device(b3, out.dtype), d_out)
        out = d_out.copy_to_host()
    return out[0] if squeeze else out
