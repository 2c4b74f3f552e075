# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Layers as `forward → (out, cache)` / `backward(dout, cache)`, and the gradient check
#
# *Paper:* every convolution of Mask R-CNN (He et al., ICCV 2017, §3 and Fig. 4) — the ResNet backbone, FPN, the
# RPN head, the mask head's four 3×3 convs — is one operation, and the mask head's 2×2 "deconv" is its adjoint.
# · *Docs:* [conventions](../docs/conventions.md), [convolution](../docs/layers/convolution.md),
# [transposed convolution](../docs/layers/transposed_convolution.md),
# [gradient checking](../docs/gradient_checking.md)
# · *Code:* [`tinymask/layers/conv.py`](../tinymask/layers/conv.py),
# [`tinymask/layers/im2col.py`](../tinymask/layers/im2col.py),
# [`tinymask/layers/conv_transpose.py`](../tinymask/layers/conv_transpose.py),
# [`tinymask/gradcheck.py`](../tinymask/gradcheck.py)
# · *Tests:* `tests/test_layers.py`, `tests/test_gradcheck.py`
#
# What you will see:
#
# 1. a 4×4 convolution you can do in your head, and the **im2col** matrix that turns it into one matrix product;
# 2. the loop-by-loop reference convolution and the fast im2col one agreeing, and how much faster the second is;
# 3. the **transposed convolution** as the adjoint of the convolution: $\langle \mathrm{conv}(x), y\rangle =
#    \langle x, \mathrm{conv}^\top(y)\rangle$, with the same weight array;
# 4. a **gradient check** run live, and two deliberately broken backward passes being caught;
# 5. every layer and loss of the library passing the same check.

# %%
import os
SMOKE = os.environ.get("TINYMASK_SMOKE") == "1"  # CI sets TINYMASK_SMOKE=1: smaller sizes, fewer iterations

import numpy as np
import matplotlib.pyplot as plt

np.set_printoptions(precision=4, suppress=True, linewidth=120)

import time
from tinymask.layers.conv import conv2d_backward, conv2d_backward_naive, conv2d_forward, conv2d_forward_naive
from tinymask.layers.conv_transpose import conv_transpose2d_forward
from tinymask.layers.activations import relu_backward, relu_forward, sigmoid_backward, sigmoid_forward
from tinymask.layers.im2col import im2col
from tinymask.gradcheck import check_layer, rel_error
from tinymask.visualize import show_numbers

rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. A convolution you can check by hand
#
# A convolution (strictly, a cross-correlation, as in every deep-learning library) of an input $x$ with a
# filter $w$ of size $k_H\times k_W$ is
#
# $$\mathrm{out}[y, x] = b + \sum_i \sum_j w[i, j]\; x[y + i,\, x + j].$$
#
# Take the 4×4 input whose pixel $(y, x)$ holds $4y + x$ (so `np.arange(16)`) and the 2×2 filter
# $\begin{pmatrix}1 & 2\\ 3 & 4\end{pmatrix}$. Writing $v = x[y, x]$, the window holds $v, v+1, v+4, v+5$,
# so $\mathrm{out}[y, x] = v + 2(v+1) + 3(v+4) + 4(v+5) = 10v + 34$: the output is `10 * x[:3, :3] + 34`.
# Arrays are NCHW, weights `(C_out, C_in, kH, kW)` ([conventions](../docs/conventions.md)).

# %%
x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)  # (N, C, H, W): pixel (y, x) holds 4y + x
w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])  # (C_out, C_in, kH, kW) = (1, 1, 2, 2)
out, cache = conv2d_forward(x, w)  # (1, 1, 3, 3), no bias, stride 1, no padding
print(out[0, 0])
print("10·x + 34:\n", 10 * x[0, 0, :3, :3] + 34)

# %% [markdown]
# **im2col** copies every window under the filter into one column of a matrix. Column $y\cdot W_o + x$ holds
# the window of output pixel $(y, x)$, read row by row; row $c\cdot k_H k_W + i\cdot k_W + j$ holds the
# pixel at kernel offset $(i, j)$ of channel $c$. Column 0 must be the top-left window `[0, 1, 4, 5]`, column 4
# the centre one `[5, 6, 9, 10]`. The convolution is then one matrix product, filters as rows times windows as
# columns — which BLAS runs at close to the machine's peak. (`conv2d_forward` pads first; here there is no
# padding.)

# %%
cols = im2col(x, kernel=(2, 2), stride=(1, 1), dilation=(1, 1))  # (N, C·kH·kW, Ho·Wo) = (1, 4, 9)
print("cols =\n", cols[0])
w_rows = w.reshape(1, -1)  # (C_out, C·kH·kW) = (1, 4): the filter as a row
product = (w_rows @ cols[0]).reshape(3, 3)  # (C_out, Ho·Wo) -> (3, 3)
print("W @ cols =\n", product, "\nsame as conv2d_forward:", np.array_equal(product, out[0, 0]))

fig, axes = plt.subplots(1, 4, figsize=(13, 3), gridspec_kw={"width_ratios": [4, 1, 9, 3]})
show_numbers(axes[0], x[0, 0], "input x (4×4)")
show_numbers(axes[1], w_rows.T, "w as a\ncolumn", cmap="Oranges")
show_numbers(axes[2], cols[0], "cols = im2col(x): one window per column (4×9)")
show_numbers(axes[3], out[0, 0], "out = W @ cols (3×3)", cmap="Greens")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The reference loops and the fast version agree
#
# Every layer with a fast implementation keeps a slow one that is the definition written as loops
# (`conv2d_forward_naive` / `conv2d_backward_naive`), and the two must agree on forward *and* backward for
# every stride, padding and dilation. The backward of the im2col version is two matrix products:
# $dW = \sum_n d\mathrm{out}_n\, \mathrm{cols}_n^\top$ and $d\mathrm{cols} = W^\top d\mathrm{out}$,
# which col2im adds back onto the input windows (derivation in [convolution](../docs/layers/convolution.md)).

# %%
x = rng.standard_normal((2, 3, 9, 8))  # (N, C, H, W)
w = rng.standard_normal((4, 3, 3, 3))  # (C_out, C_in, kH, kW)
b = rng.standard_normal(4)
print(f"{'stride':>8} {'padding':>8} {'dilation':>8} {'out shape':>14} {'forward':>9} {'dx':>9} {'dw':>9} {'db':>9}")
for stride, padding, dilation in [(1, 0, 1), (2, 1, 1), (1, 2, 2), ((2, 1), (1, 0), 1)]:
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    out_fast, c_fast = conv2d_forward(x, w, b, **kw)
    out_naive, c_naive = conv2d_forward_naive(x, w, b, **kw)
    dout = rng.standard_normal(out_fast.shape)
    g_fast, g_naive = conv2d_backward(dout, c_fast), conv2d_backward_naive(dout, c_naive)
    errors = [rel_error(out_fast, out_naive)] + [rel_error(a, b_) for a, b_ in zip(g_fast, g_naive)]
    print(f"{str(stride):>8} {str(padding):>8} {str(dilation):>8} {str(out_fast.shape):>14} "
          + " ".join(f"{e:9.1e}" for e in errors))

# %% [markdown]
# Both compute the same numbers (relative errors at the level of float64 rounding, about $10^{-16}$). The
# difference is speed: the loops run $N \cdot C_\text{out} \cdot H_o W_o$ Python iterations, the fast version
# one matrix product per image.

# %%
shape, filters = ((1, 4, 16, 16), 8) if SMOKE else ((2, 16, 32, 32), 32)
x = rng.standard_normal(shape).astype(np.float32)
w = rng.standard_normal((filters, shape[1], 3, 3)).astype(np.float32)
for name, f in (("naive loops", conv2d_forward_naive), ("im2col + matmul", conv2d_forward)):
    tic = time.perf_counter()
    out, _ = f(x, w, None, padding=1)
    print(f"{name:>16}: {time.perf_counter() - tic:8.4f} s for x {shape} * w {w.shape} -> {out.shape}")


# %% [markdown]
# ## 3. The transposed convolution is the adjoint of the convolution
#
# A convolution is linear in its input: flatten $x$ and the output, and $\mathrm{out} = A x$ for a large,
# sparse matrix $A$ with one row per output pixel. Column $k$ of $A$ is the output for the unit input $e_k$, so
# we can build $A$ for the 4×4 example by pushing the 16 unit images through `conv2d_forward`.
#
# The **transposed convolution** computes $A^\top y$ — with *the same weight array*. Its layout
# `(C_in, C_out, kH, kW)` is PyTorch's `ConvTranspose2d` layout, and a conv weight `(C_out, C_in, kH, kW)` read
# in that layout maps the conv's $C_\text{out}$ channels back to its $C_\text{in}$: the adjoint. Building the
# matrix of `conv_transpose2d_forward` from the 9 unit 3×3 images must therefore give $A^\top$.

# %%
def matrix_of(f, in_shape):
    """The matrix of a linear map f on arrays of in_shape: column k is f(e_k), flattened."""
    n = int(np.prod(in_shape))
    columns = []
    for k in range(n):
        e = np.zeros(n)
        e[k] = 1.0
        columns.append(f(e.reshape(in_shape)).ravel())
    return np.stack(columns, axis=1)


w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])  # the 2×2 filter of section 1
A = matrix_of(lambda v: conv2d_forward(v, w)[0], (1, 1, 4, 4))  # (9, 16): out = A x
A_T = matrix_of(lambda v: conv_transpose2d_forward(v, w)[0], (1, 1, 3, 3))  # (16, 9)
print("A is", A.shape, "; the transposed convolution's matrix is A.T:", np.array_equal(A_T, A.T))

fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [16, 9]})
show_numbers(axes[0], A, "A: row = output pixel, column = input pixel")
show_numbers(axes[1], A_T, "matrix of conv_transpose2d: A.T", cmap="Purples")
plt.tight_layout()
plt.show()

# %% [markdown]
# Row 0 of $A$ is the top-left window: the filter's 1, 2 at input pixels 0, 1 and 3, 4 at pixels 4, 5.
#
# At realistic sizes we cannot print $A$, but the defining property of the adjoint still checks in one line:
# $\langle Ax, y\rangle = \langle x, A^\top y\rangle$ for every $x$ and $y$. A strided convolution maps several
# input sizes to the same output size (here 9 and 10 rows both give 5 with stride 2), so the transposed
# convolution needs `output_padding` to pick the one we came from: a 9×8 input with stride 2, padding 1 gives
# 5×4, and $(5-1)\cdot 2 - 2 + 3 = 9$ rows but $(4-1)\cdot 2 - 2 + 3 = 7$ columns, so `output_padding=(0, 1)`.

# %%
x = rng.standard_normal((2, 3, 9, 8))  # (N, C_in, H, W)
w = rng.standard_normal((4, 3, 3, 3))  # conv: (C_out, C_in, kH, kW); read by convT as (C_in', C_out', kH, kW)
Ax, conv_cache = conv2d_forward(x, w, stride=2, padding=1)  # (2, 4, 5, 4)
y = rng.standard_normal(Ax.shape)
ATy, _ = conv_transpose2d_forward(y, w, stride=2, padding=1, output_padding=(0, 1))  # (2, 3, 9, 8)
print("<A x, y>   =", np.sum(Ax * y))
print("<x, A^T y> =", np.sum(x * ATy))

# And the backward of a convolution *is* a transposed convolution of dout:
dx, _, _ = conv2d_backward(y, conv_cache)
print("conv2d_backward's dx vs conv_transpose2d_forward(dout):", rel_error(dx, ATy))

# %% [markdown]
# The mask head (Mask R-CNN Fig. 4) upsamples its 14×14 RoI features to 28×28 with a 2×2, stride-2 transposed
# convolution. There the windows do not overlap: every input pixel paints its own 2×2 block, a copy of the
# kernel scaled by the pixel's value. With input $\begin{pmatrix}1&2\\3&4\end{pmatrix}$ and kernel
# $\begin{pmatrix}1&2\\3&4\end{pmatrix}$, the top-left block is $1\cdot w$, the top-right $2\cdot w$, and so on.

# %%
x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])  # (C_in, C_out, 2, 2)
up, _ = conv_transpose2d_forward(x, w, stride=2)  # (1, 1, 4, 4)
print(up[0, 0])

# %% [markdown]
# ## 4. The gradient check, live
#
# A backward pass is right when it agrees with the slope that the forward pass itself shows. For a layer
# $\mathrm{out} = f(x)$ and a random upstream gradient $d\mathrm{out}$, the scalar "fake loss"
# $L = \sum f(x) \odot d\mathrm{out}$ has $\partial L/\partial x$ equal to exactly what
# `backward(dout, cache)` must return, and we estimate it element by element with central differences,
#
# $$\frac{\partial L}{\partial x_i} \approx \frac{L(x + h e_i) - L(x - h e_i)}{2h}, \qquad h = 10^{-6},$$
#
# comparing the two with the relative error $\lVert a - b\rVert / (\lVert a\rVert + \lVert b\rVert)$. Why
# float64 and why this $h$: [gradient checking](../docs/gradient_checking.md). First one element by hand:

# %%
x = rng.standard_normal((2, 3, 7, 6))
w = rng.standard_normal((4, 3, 3, 3))
b = rng.standard_normal(4)
out, cache = conv2d_forward(x, w, b, stride=2, padding=1)
dout = rng.standard_normal(out.shape)  # plays the role of dL/dout
_, dw, _ = conv2d_backward(dout, cache)

h, i = 1e-6, (1, 2, 0, 1)  # nudge one weight
w[i] += h
L_plus = np.sum(conv2d_forward(x, w, b, stride=2, padding=1)[0] * dout)
w[i] -= 2 * h
L_minus = np.sum(conv2d_forward(x, w, b, stride=2, padding=1)[0] * dout)
w[i] += h
print(f"numerical dL/dw{list(i)} = {(L_plus - L_minus) / (2 * h):.10f}")
print(f"backward's  dL/dw{list(i)} = {dw[i]:.10f}")

# %% [markdown]
# `check_layer` does this for every element of every input and returns one relative error per input. A
# correct backward scores about $10^{-9}$ or better; the tests require less than $10^{-7}$.

# %%
errors = check_layer(conv2d_forward, conv2d_backward, [x, w, b], kwargs=dict(stride=2, padding=1),
                     names=["x", "w", "b"])
print({k: f"{v:.1e}" for k, v in errors.items()})


# %% [markdown]
# Now two bugs of the kind that still train, slowly and badly. The first forgets that the bias is shared by
# every image of the batch and sums `dout` over the first image only; the check names the culprit, `b`,
# while `x` and `w` still pass. The second is a sigmoid backward that forgets the factor $1 - \sigma(x)$
# of $\sigma'(x) = \sigma(x)(1 - \sigma(x))$.

# %%
def conv2d_backward_forgot_the_batch(dout, cache):
    """Deliberately wrong: the bias gradient sums over the first image only."""
    dx, dw, db = conv2d_backward(dout, cache)
    return dx, dw, dout[0].sum(axis=(1, 2))


def sigmoid_backward_forgot_a_factor(dout, cache):
    """Deliberately wrong: dx = dout · σ(x), missing (1 − σ(x)). sigmoid_forward's cache is σ(x)."""
    return dout * cache


errors = check_layer(conv2d_forward, conv2d_backward_forgot_the_batch, [x, w, b],
                     kwargs=dict(stride=2, padding=1), names=["x", "w", "b"])
print("conv, bias summed over one image:", {k: f"{v:.1e}" for k, v in errors.items()})
z = rng.standard_normal((3, 5))
print("sigmoid, correct:              ", f"{check_layer(sigmoid_forward, sigmoid_backward, [z])['input0']:.1e}")
print("sigmoid, missing (1 - σ):      ",
      f"{check_layer(sigmoid_forward, sigmoid_backward_forgot_a_factor, [z])['input0']:.1e}")

# %% [markdown]
# A failed check is not always a bug. Where the function has no derivative — ReLU at 0, a tie in a max, a
# bilinear sample exactly on a pixel — the central difference straddles two slopes. Put one input of a ReLU
# within $h$ of zero and the *correct* backward "fails"; this is why the tests draw their inputs away from
# such kinks.

# %%
z = rng.standard_normal((3, 4))
print("ReLU, inputs away from 0:", f"{check_layer(relu_forward, relu_backward, [z])['input0']:.1e}")
z[0, 0] = 3e-7  # closer to the kink than the step h = 1e-6
print("ReLU, one input at 3e-7: ", f"{check_layer(relu_forward, relu_backward, [z])['input0']:.1e}")

# %% [markdown]
# ## 5. Every layer and loss, one table
#
# The same check on every differentiable operation of the library, at tiny float64 sizes (each element costs
# two forward passes). Layers return `(out, cache)`; losses return `(loss, dlogits)` and are checked with
# `check_loss`. Frozen batch norm has no trainable inputs but $x$, so we wrap it to take $x$ alone. The pages
# that derive each backward: [norms](../docs/layers/norms.md),
# [pooling and upsampling](../docs/layers/pooling_and_upsampling.md),
# [linear, ReLU, sigmoid](../docs/layers/linear_relu_sigmoid.md), [losses](../docs/layers/losses.md); the
# RoI layers are the subject of notebook 06.

# %%
from tinymask import layers as L
from tinymask.gradcheck import check_loss
from tinymask.layers.losses import binary_cross_entropy_with_logits, smooth_l1, softmax_cross_entropy


def r(*shape):
    return rng.standard_normal(shape)


bn = [r(3), r(3), r(3), np.abs(r(3)) + 0.5]  # weight, bias, running mean, running var
rois = np.array([[0, 0.6, 1.1, 4.3, 3.7], [0, 2.2, 0.4, 5.1, 5.6]])  # (K, 5) [batch, x0, y0, x1, y1]
cases = [  # (operation, forward, backward, inputs, their names, settings)
    ("conv2d", L.conv2d_forward, L.conv2d_backward, [r(2, 3, 6, 5), r(4, 3, 3, 3), r(4)], "x w b",
     dict(stride=2, padding=1)),
    ("conv_transpose2d", L.conv_transpose2d_forward, L.conv_transpose2d_backward,
     [r(2, 3, 4, 4), r(3, 2, 2, 2), r(2)], "x w b", dict(stride=2)),
    ("linear", L.linear_forward, L.linear_backward, [r(4, 5), r(3, 5), r(3)], "x w b", {}),
    ("relu", L.relu_forward, L.relu_backward, [r(3, 7)], "x", {}),
    ("sigmoid", L.sigmoid_forward, L.sigmoid_backward, [r(3, 7)], "x", {}),
    ("max_pool2d", L.max_pool2d_forward, L.max_pool2d_backward, [r(1, 2, 5, 5)], "x",
     dict(kernel_size=3, stride=2, padding=1)),
    ("global_avg_pool", L.global_avg_pool_forward, L.global_avg_pool_backward, [r(2, 3, 4, 4)], "x", {}),
    ("upsample_nearest", L.upsample_nearest_forward, L.upsample_nearest_backward, [r(1, 2, 3, 3)], "x",
     dict(scale_factor=2)),
    ("group_norm", L.group_norm_forward, L.group_norm_backward, [r(2, 4, 3, 3), r(4), r(4)], "x γ β",
     dict(num_groups=2)),
    ("frozen_batch_norm", lambda x: L.frozen_batch_norm_forward(x, *bn), L.frozen_batch_norm_backward,
     [r(2, 3, 4, 4)], "x", {}),
    ("roi_align", L.roi_align_forward, L.roi_align_backward, [r(1, 2, 6, 6), rois], "features rois",
     dict(output_size=3, spatial_scale=1.0, sampling_ratio=2, aligned=True)),
    ("roi_pool", L.roi_pool_forward, L.roi_pool_backward, [r(1, 2, 6, 6), rois], "features rois",
     dict(output_size=2, spatial_scale=1.0)),
    ("roi_warp", L.roi_warp_forward, L.roi_warp_backward, [r(1, 2, 6, 6), rois], "features rois",
     dict(output_size=3, spatial_scale=1.0)),
]
print(f"{'operation':<22} {'worst relative error':>21}  gradients checked")
for name, forward, backward, inputs, names, kwargs in cases:
    errors = check_layer(forward, backward, inputs, kwargs=kwargs, names=names.split())
    print(f"{name:<22} {max(errors.values()):21.1e}  {', '.join(errors)}"
          + ("  (the boxes are constants: no gradient)" if "rois" in names else ""))
labels = rng.integers(0, 4, 5)
for name, loss, inputs in [
    ("softmax_cross_entropy", softmax_cross_entropy, [r(5, 4), labels]),
    ("smooth_l1 (β = 1/9)", lambda p, t: smooth_l1(p, t, beta=1 / 9), [r(6, 4), r(6, 4)]),
    ("binary_cross_entropy", binary_cross_entropy_with_logits, [r(3, 5), rng.uniform(0, 1, (3, 5))]),
]:
    print(f"{name:<22} {check_loss(loss, inputs):21.1e}  logits")

# %% [markdown]
# Everything sits at $10^{-9}$ or below: the backward passes the model is built from are the derivatives of
# their forward passes. `tests/test_layers.py` and `tests/test_losses.py` run these checks (and more shapes and
# settings) on every commit.
#
# **Next:** notebook 03 stacks these layers into the ResNet-FPN backbone.
