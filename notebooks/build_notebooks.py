"""Write the step-through notebooks from the cells below, which are plain Python strings.

The notebooks are generated rather than edited in Jupyter so that a change to a notebook is a readable diff of this
file, and so that no output, execution count or random cell id ever reaches git. Each notebook is one function
returning its cells; `md(...)` is a Markdown cell and `code(...)` a code cell.

    python notebooks/build_notebooks.py            # (re)write every notebook next to this file
    python notebooks/build_notebooks.py 06 09      # only the notebooks whose names start with these prefixes
    python notebooks/build_notebooks.py --check    # exit 1 if a committed .ipynb differs from what this writes

Rules every notebook follows (tests/test_notebooks.py checks the mechanical ones):

- the first code cell sets `SMOKE = os.environ.get("TINYMASK_SMOKE") == "1"`; CI runs every notebook with
  TINYMASK_SMOKE=1 and the cells shrink their sizes and iterations when it is set;
- they import tinymask and never redefine its functions (small plotting helpers are fine);
- each opens with an example small enough to check by hand, then runs the real sizes;
- Markdown cells cite the paper's section or equation and link the doc page and the module;
- images are drawn with `extent=(0, W, H, 0)`, so that pixel (i, j) covers [j, j+1) x [i, i+1) and a box
  (x0, y0, x1, y1) is drawn at exactly its coordinates (docs/conventions.md).
"""
from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import nbformat

HERE = Path(__file__).resolve().parent

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
LANGUAGE_INFO = {"name": "python"}


def md(text: str):
    return nbformat.v4.new_markdown_cell(dedent(text).strip("\n"))


def code(text: str):
    return nbformat.v4.new_code_cell(dedent(text).strip("\n"))


def setup(imports: str):
    """The first code cell of every notebook: the smoke switch, NumPy and matplotlib, then the notebook's imports."""
    return code(dedent('''
        import os
        SMOKE = os.environ.get("TINYMASK_SMOKE") == "1"  # CI sets TINYMASK_SMOKE=1: smaller sizes, fewer iterations

        import numpy as np
        import matplotlib.pyplot as plt

        np.set_printoptions(precision=4, suppress=True, linewidth=120)
        ''') + dedent(imports))


def setup_one_blas_thread(imports: str):
    """`setup`, for the notebooks that train (01, 08): NumPy's BLAS is limited to one thread before NumPy loads."""
    return code(dedent('''
        import os
        SMOKE = os.environ.get("TINYMASK_SMOKE") == "1"  # CI sets TINYMASK_SMOKE=1: smaller sizes, fewer iterations

        from tinymask.cli import limit_threads

        # One BLAS thread: on a 2-core laptop that also runs a browser, a multi-threaded BLAS is often several times
        # slower (its threads wait for each other). The setting is read when NumPy loads, so it comes before
        # `import numpy`; it prints False if NumPy was loaded already (re-running this cell), and changes nothing then.
        print("BLAS limited to one thread:", limit_threads(1))

        import numpy as np
        import matplotlib.pyplot as plt

        np.set_printoptions(precision=4, suppress=True, linewidth=120)
        ''') + dedent(imports))


# A short training run, shared by the notebooks that need a model that has learned something (05, 09, 10).
# tinymask.train writes a run folder (log, checkpoints); we train into a temporary folder and read the last
# checkpoint back. Set TINYMASK_CHECKPOINT to a checkpoint folder of `tinymask train` (a run's last/ or best/) to
# use a longer-trained model instead.
TRAIN_ITERATIONS, TRAIN_MINUTES = 150, "3 minutes"
TRAIN_BRIEFLY = '''
    import tempfile
    from tinymask.config import MaskRCNNConfig
    from tinymask.data import ShapesDataset
    from tinymask.train import Recipe, load_checkpoint, train

    CHECKPOINT = os.environ.get("TINYMASK_CHECKPOINT")  # a checkpoint of `tinymask train` (a run's last/ or best/)
    if CHECKPOINT:
        trained, cfg, meta, _ = load_checkpoint(CHECKPOINT)
        print(f"loaded {CHECKPOINT}: {meta['iteration']} iterations")
    else:
        cfg = MaskRCNNConfig.preset("small")
        recipe = Recipe(iterations=2 if SMOKE else TRAIN_ITERATIONS, batch_size=1 if SMOKE else 4, lr=0.02,
                        warmup_iters=50, eval_every=0, seed=0)
        run_dir = tempfile.mkdtemp(prefix="tinymask-notebook-")
        summary = train(cfg, recipe, ShapesDataset("train", num_images=1000, seed=0), None, run_dir, progress=False,
                        print_fn=lambda *a: None)
        trained, cfg, meta, _ = load_checkpoint(os.path.join(run_dir, "last"))
        print(f"trained {meta['iteration']} iterations of batch {recipe.batch_size} in {summary['seconds']:.0f} s "
              f"(run folder {run_dir})")
'''


def train_briefly():
    """The training cell of notebooks 05, 09 and 10 (TRAIN_ITERATIONS: the full-mode length)."""
    return code(f"TRAIN_ITERATIONS = {TRAIN_ITERATIONS}  # of 4 images, about {TRAIN_MINUTES} on a laptop CPU; SMOKE: 2 of 1\n"
                + dedent(TRAIN_BRIEFLY).strip("\n"))


# =================================================================================================================
# 02 · layers and gradient checking
# =================================================================================================================

def nb02():
    return [
        md('''
        # 02 · Layers as `forward → (out, cache)` / `backward(dout, cache)`, and the gradient check

        *Paper:* every convolution of Mask R-CNN (He et al., ICCV 2017, §3 and Fig. 4) — the ResNet backbone, FPN, the
        RPN head, the mask head's four 3×3 convs — is one operation, and the mask head's 2×2 "deconv" is its adjoint.
        · *Docs:* [conventions](../docs/conventions.md), [convolution](../docs/layers/convolution.md),
        [transposed convolution](../docs/layers/transposed_convolution.md),
        [gradient checking](../docs/gradient_checking.md)
        · *Code:* [`tinymask/layers/conv.py`](../tinymask/layers/conv.py),
        [`tinymask/layers/im2col.py`](../tinymask/layers/im2col.py),
        [`tinymask/layers/conv_transpose.py`](../tinymask/layers/conv_transpose.py),
        [`tinymask/gradcheck.py`](../tinymask/gradcheck.py)
        · *Tests:* `tests/test_layers.py`, `tests/test_gradcheck.py`

        What you will see:

        1. a 4×4 convolution you can do in your head, and the **im2col** matrix that turns it into one matrix product;
        2. the loop-by-loop reference convolution and the fast im2col one agreeing, and how much faster the second is;
        3. the **transposed convolution** as the adjoint of the convolution: $\\langle \\mathrm{conv}(x), y\\rangle =
           \\langle x, \\mathrm{conv}^\\top(y)\\rangle$, with the same weight array;
        4. a **gradient check** run live, and two deliberately broken backward passes being caught;
        5. every layer and loss of the library passing the same check.
        '''),
        setup('''
        import time
        from tinymask.layers import (conv2d_forward, conv2d_backward, conv2d_forward_naive, conv2d_backward_naive,
                                     conv_transpose2d_forward, relu_forward, relu_backward,
                                     sigmoid_forward, sigmoid_backward)
        from tinymask.layers.im2col import im2col, conv_output_size
        from tinymask.gradcheck import check_layer, rel_error
        from tinymask.visualize import show_numbers  # a small matrix drawn with its values in the cells

        rng = np.random.default_rng(0)
        '''),
        md('''
        ## 1. A convolution you can check by hand

        A convolution (strictly, a cross-correlation, as in every deep-learning library) of an input $x$ with a
        filter $w$ of size $k_H\\times k_W$ is

        $$\\mathrm{out}[y, x] = b + \\sum_i \\sum_j w[i, j]\\; x[y + i,\\, x + j].$$

        Take the 4×4 input whose pixel $(y, x)$ holds $4y + x$ (so `np.arange(16)`) and the 2×2 filter
        $\\begin{pmatrix}1 & 2\\\\ 3 & 4\\end{pmatrix}$. Writing $v = x[y, x]$, the window holds $v, v+1, v+4, v+5$,
        so $\\mathrm{out}[y, x] = v + 2(v+1) + 3(v+4) + 4(v+5) = 10v + 34$: the output is `10 * x[:3, :3] + 34`.
        Arrays are NCHW, weights `(C_out, C_in, kH, kW)` ([conventions](../docs/conventions.md)).
        '''),
        code('''
        x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)  # (N, C, H, W): pixel (y, x) holds 4y + x
        w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])  # (C_out, C_in, kH, kW) = (1, 1, 2, 2)
        out, cache = conv2d_forward(x, w)  # (1, 1, 3, 3), no bias, stride 1, no padding
        print(out[0, 0])
        print("10·x + 34:\\n", 10 * x[0, 0, :3, :3] + 34)
        '''),
        md('''
        **im2col** copies every window under the filter into one column of a matrix. Column $y\\cdot W_o + x$ holds
        the window of output pixel $(y, x)$, read row by row; row $c\\cdot k_H k_W + i\\cdot k_W + j$ holds the
        pixel at kernel offset $(i, j)$ of channel $c$. Column 0 must be the top-left window `[0, 1, 4, 5]`, column 4
        the centre one `[5, 6, 9, 10]`. The convolution is then one matrix product, filters as rows times windows as
        columns — which BLAS runs at close to the machine's peak. (`conv2d_forward` pads first; here there is no
        padding.)
        '''),
        code('''
        cols = im2col(x, kernel=(2, 2), stride=(1, 1), dilation=(1, 1))  # (N, C·kH·kW, Ho·Wo) = (1, 4, 9)
        print("cols =\\n", cols[0])
        w_rows = w.reshape(1, -1)  # (C_out, C·kH·kW) = (1, 4): the filter as a row
        product = (w_rows @ cols[0]).reshape(3, 3)  # (C_out, Ho·Wo) -> (3, 3)
        print("W @ cols =\\n", product, "\\nsame as conv2d_forward:", np.array_equal(product, out[0, 0]))

        fig, axes = plt.subplots(1, 4, figsize=(13, 3), gridspec_kw={"width_ratios": [4, 1, 9, 3]})
        show_numbers(axes[0], x[0, 0], "input x (4×4)")
        show_numbers(axes[1], w_rows.T, "w as a\\ncolumn", cmap="Oranges")
        show_numbers(axes[2], cols[0], "cols = im2col(x): one window per column (4×9)")
        show_numbers(axes[3], out[0, 0], "out = W @ cols (3×3)", cmap="Greens")
        plt.tight_layout()
        plt.show()
        '''),
        md('''
        ## 2. The reference loops and the fast version agree

        Every layer with a fast implementation keeps a slow one that is the definition written as loops
        (`conv2d_forward_naive` / `conv2d_backward_naive`), and the two must agree on forward *and* backward for
        every stride, padding and dilation. The backward of the im2col version is two matrix products:
        $dW = \\sum_n d\\mathrm{out}_n\\, \\mathrm{cols}_n^\\top$ and $d\\mathrm{cols} = W^\\top d\\mathrm{out}$,
        which col2im adds back onto the input windows (derivation in [convolution](../docs/layers/convolution.md)).
        '''),
        code('''
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
        '''),
        md('''
        Both compute the same numbers (relative errors at the level of float64 rounding, about $10^{-16}$). The
        difference is speed: the loops run $N \\cdot C_\\text{out} \\cdot H_o W_o$ Python iterations, the fast version
        one matrix product per image.
        '''),
        code('''
        shape, filters = ((1, 4, 16, 16), 8) if SMOKE else ((2, 16, 32, 32), 32)
        x = rng.standard_normal(shape).astype(np.float32)
        w = rng.standard_normal((filters, shape[1], 3, 3)).astype(np.float32)
        for name, f in (("naive loops", conv2d_forward_naive), ("im2col + matmul", conv2d_forward)):
            tic = time.perf_counter()
            out, _ = f(x, w, None, padding=1)
            print(f"{name:>16}: {time.perf_counter() - tic:8.4f} s for x {shape} * w {w.shape} -> {out.shape}")
        '''),
        md('''
        ## 3. The transposed convolution is the adjoint of the convolution

        A convolution is linear in its input: flatten $x$ and the output, and $\\mathrm{out} = A x$ for a large,
        sparse matrix $A$ with one row per output pixel. Column $k$ of $A$ is the output for the unit input $e_k$, so
        we can build $A$ for the 4×4 example by pushing the 16 unit images through `conv2d_forward`.

        The **transposed convolution** computes $A^\\top y$ — with *the same weight array*. Its layout
        `(C_in, C_out, kH, kW)` is PyTorch's `ConvTranspose2d` layout, and a conv weight `(C_out, C_in, kH, kW)` read
        in that layout maps the conv's $C_\\text{out}$ channels back to its $C_\\text{in}$: the adjoint. Building the
        matrix of `conv_transpose2d_forward` from the 9 unit 3×3 images must therefore give $A^\\top$.
        '''),
        code('''
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
        '''),
        md('''
        Row 0 of $A$ is the top-left window: the filter's 1, 2 at input pixels 0, 1 and 3, 4 at pixels 4, 5.

        At realistic sizes we cannot print $A$, but the defining property of the adjoint still checks in one line:
        $\\langle Ax, y\\rangle = \\langle x, A^\\top y\\rangle$ for every $x$ and $y$. A strided convolution maps several
        input sizes to the same output size (here 9 and 10 rows both give 5 with stride 2), so the transposed
        convolution needs `output_padding` to pick the one we came from: a 9×8 input with stride 2, padding 1 gives
        5×4, and $(5-1)\\cdot 2 - 2 + 3 = 9$ rows but $(4-1)\\cdot 2 - 2 + 3 = 7$ columns, so `output_padding=(0, 1)`.
        '''),
        code('''
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
        '''),
        md('''
        The mask head (Mask R-CNN Fig. 4) upsamples its 14×14 RoI features to 28×28 with a 2×2, stride-2 transposed
        convolution. There the windows do not overlap: every input pixel paints its own 2×2 block, a copy of the
        kernel scaled by the pixel's value. With input $\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}$ and kernel
        $\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}$, the top-left block is $1\\cdot w$, the top-right $2\\cdot w$, and so on.
        '''),
        code('''
        x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
        w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])  # (C_in, C_out, 2, 2)
        up, _ = conv_transpose2d_forward(x, w, stride=2)  # (1, 1, 4, 4)
        print(up[0, 0])
        '''),
        md('''
        ## 4. The gradient check, live

        A backward pass is right when it agrees with the slope that the forward pass itself shows. For a layer
        $\\mathrm{out} = f(x)$ and a random upstream gradient $d\\mathrm{out}$, the scalar "fake loss"
        $L = \\sum f(x) \\odot d\\mathrm{out}$ has $\\partial L/\\partial x$ equal to exactly what
        `backward(dout, cache)` must return, and we estimate it element by element with central differences,

        $$\\frac{\\partial L}{\\partial x_i} \\approx \\frac{L(x + h e_i) - L(x - h e_i)}{2h}, \\qquad h = 10^{-6},$$

        comparing the two with the relative error $\\lVert a - b\\rVert / (\\lVert a\\rVert + \\lVert b\\rVert)$. Why
        float64 and why this $h$: [gradient checking](../docs/gradient_checking.md). First one element by hand:
        '''),
        code('''
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
        '''),
        md('''
        `check_layer` does this for every element of every input and returns one relative error per input. A
        correct backward scores about $10^{-9}$ or better; the tests require less than $10^{-7}$.
        '''),
        code('''
        errors = check_layer(conv2d_forward, conv2d_backward, [x, w, b], kwargs=dict(stride=2, padding=1),
                             names=["x", "w", "b"])
        print({k: f"{v:.1e}" for k, v in errors.items()})
        '''),
        md('''
        Now two bugs of the kind that still train, slowly and badly. The first forgets that the bias is shared by
        every image of the batch and sums `dout` over the first image only; the check names the culprit, `b`,
        while `x` and `w` still pass. The second is a sigmoid backward that forgets the factor $1 - \\sigma(x)$
        of $\\sigma'(x) = \\sigma(x)(1 - \\sigma(x))$.
        '''),
        code('''
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
        '''),
        md('''
        A failed check is not always a bug. Where the function has no derivative — ReLU at 0, a tie in a max, a
        bilinear sample exactly on a pixel — the central difference straddles two slopes. Put one input of a ReLU
        within $h$ of zero and the *correct* backward "fails"; this is why the tests draw their inputs away from
        such kinks.
        '''),
        code('''
        z = rng.standard_normal((3, 4))
        print("ReLU, inputs away from 0:", f"{check_layer(relu_forward, relu_backward, [z])['input0']:.1e}")
        z[0, 0] = 3e-7  # closer to the kink than the step h = 1e-6
        print("ReLU, one input at 3e-7: ", f"{check_layer(relu_forward, relu_backward, [z])['input0']:.1e}")
        '''),
        md('''
        ## 5. Every layer and loss, one table

        The same check on every differentiable operation of the library, at tiny float64 sizes (each element costs
        two forward passes). Layers return `(out, cache)`; losses return `(loss, dlogits)` and are checked with
        `check_loss`. Frozen batch norm has no trainable inputs but $x$, so we wrap it to take $x$ alone. The pages
        that derive each backward: [norms](../docs/layers/norms.md),
        [pooling and upsampling](../docs/layers/pooling_and_upsampling.md),
        [linear, ReLU, sigmoid](../docs/layers/linear_relu_sigmoid.md), [losses](../docs/layers/losses.md); the
        RoI layers are the subject of notebook 06.
        '''),
        code('''
        from tinymask import layers as L
        from tinymask.gradcheck import check_loss
        from tinymask.losses import binary_cross_entropy_with_logits, smooth_l1, softmax_cross_entropy


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
        '''),
        md('''
        Everything sits at $10^{-9}$ or below: the backward passes the model is built from are the derivatives of
        their forward passes. `tests/test_layers.py` and `tests/test_losses.py` run these checks (and more shapes and
        settings) on every commit.

        **Next:** notebook 03 stacks these layers into the ResNet-FPN backbone.
        '''),
    ]


# =================================================================================================================
# 03 · the backbone: ResNet and FPN
# =================================================================================================================

def nb03():
    return [
        md("""
        # 03 · The backbone: ResNet bottleneck blocks and the Feature Pyramid Network

        *Papers:* He et al., *Deep Residual Learning*, CVPR 2016 — Table 1 (the stages), §4.1 and Fig. 5 (the
        bottleneck block), Eqs. 1–2 (identity and projection shortcuts); Lin et al., *Feature Pyramid Networks*,
        CVPR 2017 — §3 and Fig. 3 (lateral connections and the top-down pathway), §4.1 (P6); Mask R-CNN §3 "Network
        Architecture" and Fig. 4 (ResNet-FPN). · *Docs:* [the backbone](../docs/backbone.md),
        [convolution](../docs/layers/convolution.md),
        [norms](../docs/layers/norms.md), [pooling and upsampling](../docs/layers/pooling_and_upsampling.md)
        · *Code:* [`tinymask/backbone/resnet.py`](../tinymask/backbone/resnet.py),
        [`tinymask/backbone/fpn.py`](../tinymask/backbone/fpn.py) · *Tests:* `tests/test_resnet.py`,
        `tests/test_fpn.py`

        What you will see:

        1. the shapes of ResNet-50's stages C2–C5 worked out by hand, and its 23.5 M parameters counted;
        2. a bottleneck block that is exactly the identity (the residual branch initialised to zero);
        3. the `small` preset's backbone on a shapes image: C2–C5 and P2–P6, level by level;
        4. what the **top-down pathway** adds to P2, and — with the hand-written backward — how far into the image
           a P2 pixel can see compared with a C2 pixel.
        """),
        setup("""
        from tinymask.backbone import (ResNetConfig, bottleneck_forward, fpn_forward, init_resnet_params,
                                       resnet_backward, resnet_forward, resnet_fpn_backward, resnet_fpn_forward,
                                       resnet_param_shapes)
        from tinymask.config import MaskRCNNConfig
        from tinymask.data import ShapesDataset
        from tinymask.model import init_params, resnet_config
        from tinymask.transform import preprocess

        rng = np.random.default_rng(0)
        """),
        md("""
        ## 1. The stages by hand

        ResNet (Table 1) is a stem — a 7×7 convolution with stride 2 and a 3×3 max pool with stride 2 — followed by
        four stages of bottleneck blocks. Stage $k$ ($k = 2..5$) works at stride $2^k$: the stem brings the image to
        stride 4, and the first block of stages 3, 4, 5 halves the map again (every stride-2 layer rounds up, so
        "$H/4$" means $\\lceil H/4\\rceil$). Stage $k$'s blocks have `planes` $= 64\\cdot 2^{k-2}$ and output
        $4\\cdot$`planes` channels: 256, 512, 1024, 2048. For an 800×1216 image (the paper's shorter side of 800),
        C5 is therefore $\\lceil 800/32\\rceil \\times \\lceil 1216/32\\rceil = 25\\times 38$ with 2048 channels.
        """),
        code("""
        r50 = ResNetConfig(depth=50)
        H, W = 800, 1216
        print(f"{'stage':>6} {'blocks':>6} {'planes':>6} {'inner width':>11} {'out channels':>12} {'stride':>6} "
              f"{'map for 800x1216':>17}")
        for k in (2, 3, 4, 5):
            s = 2 ** k
            print(f"{'C%d' % k:>6} {r50.stage_blocks[k - 2]:>6} {r50.planes(k):>6} {r50.width(k):>11} "
                  f"{r50.out_channels(k):>12} {s:>6} {f'{-(-H // s)} x {-(-W // s)}':>17}")

        learned = {n: s for n, s in resnet_param_shapes(r50).items() if not n.endswith(("running_mean", "running_var"))}
        print(f"\\nResNet-50 without its classifier: {sum(int(np.prod(s)) for s in learned.values()):,} parameters "
              "(torchvision's resnet50 has 25,557,032, of which the 1000-way fc layer is 2,049,000)")
        """),
        md("""
        ## 2. A bottleneck block that is the identity

        A bottleneck block (Fig. 5, right) computes $y = \\mathrm{relu}(F(x) + x)$, where the residual branch $F$
        squeezes to a narrow width with a 1×1 convolution, does the spatial work with a 3×3 at that width and expands
        back with another 1×1, each followed by a norm. So if $F(x) = 0$, then $y = \\mathrm{relu}(x)$, and for a
        non-negative $x$ — the output of the previous block's ReLU always is — $y = x$ exactly.

        Setting the scale $\\gamma$ of each block's last norm to zero makes $F = 0$ at initialisation ("zero-init
        residual", Goyal et al. 2017, §5.1; it needs group norm, since a frozen BN's $\\gamma$ could never move). We
        check it on a block of stage 2 whose input already has $4\\cdot$`planes` channels, so its shortcut is the
        identity (Eq. 1) rather than a projection (Eq. 2).
        """),
        code("""
        cfg_id = ResNetConfig(blocks=(1, 1, 1, 1), stem_channels=64, base_channels=16, norm="group_norm", num_groups=8)
        x = np.abs(rng.standard_normal((1, 64, 8, 8)))  # (N, 4·planes, H, W), non-negative like a ReLU's output

        params_zero = init_resnet_params(cfg_id, rng, np.float64, zero_init_residual=True)
        y, _ = bottleneck_forward(params_zero, "backbone.body.layer1.0.", x, cfg_id, planes=16, stride=1)
        print("zero-init residual: max |y - x| =", np.abs(y - x).max())

        params_he = init_resnet_params(cfg_id, rng, np.float64)  # γ = 1 everywhere: F(x) is not zero
        y, _ = bottleneck_forward(params_he, "backbone.body.layer1.0.", x, cfg_id, planes=16, stride=1)
        print("γ = 1:              ||y - x|| / ||x|| =", np.linalg.norm(y - x) / np.linalg.norm(x))
        """),
        md("""
        ## 3. The `small` preset on a shapes image

        tinymask's `small` preset is ResNet-FPN at CPU size: one bottleneck per stage, 32 stem channels, planes
        16, 32, 64, 128 (outputs 64 to 512 channels), group norm, and an FPN of width $d = 64$ instead of 256.
        `preprocess` normalises the image with the ImageNet mean and standard deviation, resizes it (a 128×128
        shapes image stays 128×128) and pads it to a multiple of 32. The weights are freshly initialised
        (`init_params`), so the maps below are responses to random filters; notebook 10 looks at trained ones.
        """),
        code("""
        cfg = MaskRCNNConfig.preset("small")
        params = init_params(cfg, seed=0)
        sample = ShapesDataset("val", num_images=4, seed=0)[0]
        batch, image_sizes, _ = preprocess([sample["image"]], cfg)  # (1, 3, 128, 128)

        features, body_cache = resnet_forward(params, batch, resnet_config(cfg))  # {"C2": ..., "C5": ...}
        pyramid, fpn_cache = fpn_forward(params, features)  # {"P2": ..., "P6": ...}
        print(f"{'map':>4} {'shape':>20} {'stride':>7} {'mean':>8} {'std':>8}")
        for name, f in list(features.items()) + list(pyramid.items()):
            print(f"{name:>4} {str(f.shape):>20} {batch.shape[-1] // f.shape[-1]:>7} {f.mean():8.3f} {f.std():8.3f}")
        """),
        md("""
        Each map drawn over the image's extent, so that a cell sits above the pixels it summarises (a C5 cell covers
        32×32 pixels). Four channels per level; the colour scale is per map.
        """),
        code("""
        def show_levels(maps, names, channels=(0, 1, 2, 3)):
            fig, axes = plt.subplots(len(names), len(channels) + 1, figsize=(2.2 * (len(channels) + 1), 2.2 * len(names)))
            H, W = batch.shape[2:]
            for row, name in enumerate(names):
                axes[row, 0].imshow(sample["image"].transpose(1, 2, 0), extent=(0, W, H, 0))
                axes[row, 0].set_ylabel(f"{name} {maps[name].shape[2]}×{maps[name].shape[3]}")
                for col, c in enumerate(channels, start=1):
                    axes[row, col].imshow(maps[name][0, c], extent=(0, W, H, 0), cmap="viridis")
                    axes[row, col].set_title(f"{name}, channel {c}", fontsize=9)
            for ax in axes.ravel():
                ax.set_xticks([])
                ax.set_yticks([])
            plt.tight_layout()
            plt.show()


        show_levels(features, ["C2", "C3", "C4", "C5"])
        show_levels(pyramid, ["P2", "P3", "P4", "P5", "P6"])
        """),
        md("""
        ## 4. The top-down pathway

        FPN (§3, Fig. 3) gives every level the channels $d$ and mixes in the levels above:

        $$\\mathrm{inner}_5 = \\mathrm{lateral}(C_5), \\qquad
          \\mathrm{inner}_k = \\mathrm{lateral}(C_k) + \\mathrm{upsample}_{2\\times}(\\mathrm{inner}_{k+1}), \\qquad
          P_k = \\mathrm{conv}_{3\\times 3}(\\mathrm{inner}_k),$$

        and P6 is P5 subsampled with stride 2 (§4.1). Running `fpn_forward` on C2 alone gives the P2 FPN would
        make without anything from above (the parameter names of level 2 are the same). The 3×3 convolution is
        linear, so the difference of the two is exactly the output conv applied to the upsampled
        $\\mathrm{inner}_3$: the top-down contribution. It is blocky — nearest-neighbour upsampling copies each
        coarse cell into a 2×2, 4×4, 8×8 block — and the 3×3 conv smooths the block edges ("to reduce the aliasing
        effect of upsampling", §3).
        """),
        code("""
        alone, _ = fpn_forward(params, {"C2": features["C2"]})  # only the lateral of C2, then the 3×3 conv
        top_down = pyramid["P2"] - alone["P2"]  # (1, d, 32, 32): what the levels above added
        print(f"share of P2 coming from above: ||top-down|| / ||P2|| = "
              f"{np.linalg.norm(top_down) / np.linalg.norm(pyramid['P2']):.2f}")

        c = 0
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
        for ax, m, title in zip(axes, [alone["P2"], top_down, pyramid["P2"]],
                                ["P2 from C2 alone", "+ top-down (from C3, C4, C5)", "= P2"]):
            im = ax.imshow(m[0, c], extent=(0, 128, 128, 0), cmap="viridis")
            ax.set_title(f"{title}, channel {c}", fontsize=10)
            plt.colorbar(im, ax=ax, fraction=0.046)
        plt.tight_layout()
        plt.show()
        """),
        md("""
        **How far does a pixel see?** The backward pass answers it directly: the gradient of one output pixel with
        respect to the input image is non-zero exactly on the pixels that influence it (its receptive field; how
        strongly, is the *effective* receptive field of Luo et al., NeurIPS 2016). We send a gradient of 1 into
        the centre pixel of a level (all channels) and run the hand-written backward of the ResNet alone
        (`resnet_backward`) or of ResNet + FPN (`resnet_fpn_backward`) down to the image.

        Through the top-down pathway, a P2 pixel sees as far as a C5 pixel does, while keeping stride 4: the
        point of FPN — fine resolution *and* the context of the deep levels, at every level.
        """),
        code("""
        pyramid, backbone_cache = resnet_fpn_forward(params, batch, resnet_config(cfg))


        def centre_impulse(shape):
            d = np.zeros(shape, dtype=np.float32)
            d[0, :, shape[2] // 2, shape[3] // 2] = 1.0  # every channel of the centre pixel
            return d


        fig, axes = plt.subplots(2, 4, figsize=(11, 5.6))
        print(f"{'level':>6} {'pixels with |grad| > 1% of max':>32}")
        for col, k in enumerate((2, 3, 4, 5)):
            for row, (name, shape) in enumerate(((f"C{k}", features[f"C{k}"].shape), (f"P{k}", pyramid[f"P{k}"].shape))):
                if name.startswith("C"):
                    dimage, _ = resnet_backward({name: centre_impulse(shape)}, body_cache)
                else:
                    dimage, _ = resnet_fpn_backward({name: centre_impulse(shape)}, backbone_cache)
                g = np.abs(dimage[0]).sum(axis=0)  # (H, W) how much each image pixel moves the centre pixel
                reach = (g > 0.01 * g.max()).mean()
                print(f"{name:>6} {reach:31.0%}")
                axes[row, col].imshow(np.log10(g + 1e-12 * g.max()), extent=(0, 128, 128, 0), cmap="magma",
                                      vmin=np.log10(g.max()) - 4)
                axes[row, col].set_title(f"{name}: log |d pixel / d image|", fontsize=9)
                axes[row, col].set_xticks([])
                axes[row, col].set_yticks([])
        plt.tight_layout()
        plt.show()
        """),
        md("""
        The top row grows with depth, as the ResNet stacks 3×3 convolutions and stride-2 layers. The bottom row does
        not shrink with resolution: P2 already reaches about as far as P5, because P5's pixels were copied into P2 by
        the top-down pathway. (The faint glow over the whole image, about $10^{-3}$ of the peak, is group norm: its
        mean and variance are taken over the whole map, so every pixel moves every output a little. With the
        paper's frozen batch norm, a constant affine map, the gradient outside the receptive field is exactly 0.)

        **Next:** notebook 04 puts reference boxes — anchors — on every level of this pyramid.
        """),
    ]


# =================================================================================================================
# 04 · anchors, matching and box coding
# =================================================================================================================

def nb04():
    return [
        md("""
        # 04 · Anchors, positive and negative anchors, and box coding

        *Papers:* Ren et al., *Faster R-CNN*, NeurIPS 2015 — §3.1.1 (anchors), §3.1.2 (anchor labels: positive at
        IoU ≥ 0.7 or best for a ground-truth box, negative below 0.3) and Eq. 2 (box coding); Lin et al., *FPN*,
        CVPR 2017, §4.1 (one anchor size per pyramid level, three aspect ratios). Mask R-CNN uses this RPN unchanged
        (§3.1). · *Docs:* [box logic](../docs/box_logic.md), [conventions](../docs/conventions.md) (box coordinates,
        aspect ratio = height / width)
        · *Code:* [`tinymask/anchors.py`](../tinymask/anchors.py), [`tinymask/boxes.py`](../tinymask/boxes.py),
        [`tinymask/matcher.py`](../tinymask/matcher.py), [`tinymask/sampler.py`](../tinymask/sampler.py)
        · *Tests:* `tests/test_anchors.py`, `tests/test_boxes.py`, `tests/test_matcher.py`, `tests/test_sampler.py`

        What you will see:

        1. one level's anchors worked out by hand, and their order;
        2. the 4092 anchors of the `small` preset on a 128×128 image, drawn level by level;
        3. which anchors are positive, negative or ignored for a set of ground-truth boxes — first five anchors by
           hand, then a real image — and why the "low-quality" matches are needed;
        4. Faster R-CNN's box coding (Eq. 2) by hand, and the round trip encode → decode.

        Boxes are `(x0, y0, x1, y1)` in continuous pixel coordinates: pixel $(i, j)$ covers
        $[j, j+1)\\times[i, i+1)$. Images are drawn with `extent=(0, W, H, 0)`, so a box is drawn at exactly its
        coordinates.
        """),
        setup("""
        from matplotlib.patches import Rectangle

        from tinymask.anchors import anchors_for_image, base_anchors, grid_anchors
        from tinymask.boxes import DEFAULT_CLAMP, box_iou, decode_boxes, encode_boxes
        from tinymask.config import MaskRCNNConfig
        from tinymask.data import ShapesDataset
        from tinymask.matcher import RPN_MATCHER, Matcher
        from tinymask.rpn import rpn_targets
        from tinymask.sampler import sample_balanced

        rng = np.random.default_rng(0)


        def draw_box(ax, box, color, lw=1.0, ls="-", alpha=1.0):
            x0, y0, x1, y1 = box
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, lw=lw, ls=ls, alpha=alpha))
        """),
        md("""
        ## 1. One level's anchors, by hand

        An anchor of size $s$ and aspect ratio $r$ = height / width has area $s^2$: height $h = s\\sqrt r$, width
        $w = s/\\sqrt r$. Centred on $(0, 0)$ it is $[-w/2, -h/2, w/2, h/2]$, rounded to integers (torchvision's
        `AnchorGenerator`). For $s = 32$: ratio 0.5 gives $w = 45.25$, $h = 22.63$, rounded
        $[-23, -11, 23, 11]$; ratio 1 gives $[-16, -16, 16, 16]$; ratio 2 gives $[-11, -23, 11, 23]$.
        """),
        code("""
        base = base_anchors((32,), (0.5, 1.0, 2.0))  # (A, 4) = (3, 4), centred on (0, 0)
        print(base)
        w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
        print("h / w =", h / w, " area =", w * h, "(32² = 1024 before rounding)")
        """),
        md("""
        On a feature map of stride 16 the anchors of cell $(y, x)$ are the base anchors shifted by
        $(16x, 16y)$ — to the cell's top-left corner, without a half-cell offset (torchvision's choice). They are
        ordered cell by cell, row by row, then the $A$ anchors of the cell: anchor $(y\\cdot W + x)\\cdot A + a$.
        On a 2×2 map, anchors 3–5 belong to cell $(0, 1)$, shifted by 16 in $x$:
        """),
        code("""
        cells = grid_anchors(base, grid_hw=(2, 2), stride_hw=(16, 16))  # (H·W·A, 4) = (12, 4)
        for i, box in enumerate(cells):
            cell, a = divmod(i, 3)
            print(f"anchor {i:2d}: cell (y, x) = {divmod(cell, 2)}, ratio {(0.5, 1.0, 2.0)[a]}: {box}")
        """),
        md("""
        ## 2. All anchors of the `small` preset

        FPN puts one size on each level — the paper uses $32^2$ on P2 up to $512^2$ on P6; tinymask's `small`
        preset halves them (16 … 256) because its shapes are 8 to 64 pixels in a 128-pixel image — and three
        ratios everywhere. The stride of a level is image size // map size.
        """),
        code("""
        cfg = MaskRCNNConfig.preset("small")
        image_hw = (128, 128)
        map_hws = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]  # P2..P6 of a 128×128 image
        anchors, counts = anchors_for_image(image_hw, map_hws, [[s] for s in cfg.anchor_sizes], cfg.aspect_ratios)
        level_of = np.repeat(np.arange(len(counts)), counts)  # (T,) pyramid level index of every anchor
        print(f"{'level':>5} {'map':>7} {'stride':>6} {'size':>5} {'anchors':>8}")
        for l, ((fh, fw), n) in enumerate(zip(map_hws, counts)):
            print(f"{'P%d' % (l + 2):>5} {f'{fh}x{fw}':>7} {image_hw[0] // fh:>6} {cfg.anchor_sizes[l]:>5} {n:>8}")
        print(f"{'':>5} {'':>7} {'':>6} {'total':>5} {len(anchors):>8}")
        """),
        code("""
        sample = ShapesDataset("val", num_images=1, seed=0)[0]
        image = sample["image"].transpose(1, 2, 0)  # (H, W, 3) for imshow
        fig, axes = plt.subplots(1, 5, figsize=(17, 3.8))
        for l, ax in enumerate(axes):
            level = anchors[level_of == l]  # (H_l·W_l·3, 4)
            ax.imshow(image, extent=(0, 128, 128, 0))
            centres = (level[::3, :2] + level[::3, 2:]) / 2  # one centre per cell
            ax.plot(centres[:, 0], centres[:, 1], ".", color="white", ms=2 if l == 0 else 4)
            fh, fw = map_hws[l]
            middle = ((fh // 2) * fw + fw // 2) * 3  # the three anchors of the cell nearest the image centre
            for a, color in zip(range(3), ("tab:red", "yellow", "tab:cyan")):
                draw_box(ax, level[middle + a], color, lw=1.5)
            lim = max(160, cfg.anchor_sizes[l])
            ax.set_xlim(-lim / 2 + 64 - 20, lim / 2 + 64 + 20)
            ax.set_ylim(lim / 2 + 64 + 20, -lim / 2 + 64 - 20)
            ax.set_title(f"P{l + 2}: stride {128 // fw}, size {cfg.anchor_sizes[l]}", fontsize=10)
        plt.tight_layout()
        plt.show()
        """),
        md("""
        Dots are the anchor centres of every cell (at the cells' top-left corners); the three boxes are the anchors of
        one cell, ratios 0.5 (red), 1 (yellow) and 2 (cyan). Large anchors reach past the image: they are not clipped,
        and their IoU with a box inside the image simply counts the part that overlaps it.

        ## 3. Positive, negative and ignored anchors

        Faster R-CNN §3.1.2 labels an anchor

        - **positive** if its IoU with some ground-truth box is at least 0.7, *or* if it is the anchor with the
          highest IoU for some ground-truth box (a "low-quality match": otherwise a box that no anchor overlaps by 0.7
          would get no positive anchor at all);
        - **negative** if its IoU with every ground-truth box is below 0.3;
        - **ignored** (between the thresholds) otherwise: it does not enter the loss.

        Five anchors and two ground-truth boxes you can check by hand. Anchor 1 is the gt box shifted by 8 of its 32
        pixels: the overlap is 24·32 = 768 of a union of 1280, IoU 0.6, ignored. Anchor 4 is the only one touching the
        small 10×10 box, with IoU $100 / 256 = 0.39$ — below 0.7, but the best that box has, so it becomes
        positive for box 1.
        """),
        code("""
        toy_anchors = np.array([[0, 0, 32, 32], [8, 0, 40, 32], [16, 0, 48, 32], [32, 0, 64, 32], [96, 96, 112, 112]],
                               dtype=np.float64)
        toy_gt = np.array([[0, 0, 32, 32], [100, 100, 110, 110]], dtype=np.float64)
        iou = box_iou(toy_gt, toy_anchors)  # (G, T): one row per ground-truth box
        print("IoU =\\n", iou)
        print("matches with low-quality matches:   ", RPN_MATCHER(iou),
              "  (gt index; -1 = negative, -2 = ignored)")
        print("matches without low-quality matches:", Matcher(0.7, 0.3, allow_low_quality_matches=False)(iou))
        """),
        md("""
        Now a shapes image and all 4092 anchors. `rpn_targets` does the matching for the RPN loss: label 1
        (positive), 0 (negative) or −1 (ignored) per anchor, and each positive's regression target.
        """),
        code("""
        gt = sample["boxes"].astype(np.float64)  # (G, 4)
        iou = box_iou(gt, anchors)  # (G, T)
        matches = RPN_MATCHER(iou)  # (T,) gt index, -1 negative, -2 ignored
        strict = Matcher(0.7, 0.3, allow_low_quality_matches=False)(iou)
        labels, reg_targets = rpn_targets(anchors, [gt], cfg)  # (1, T) in {1, 0, -1}, (1, T, 4)
        print(f"positive {np.sum(labels == 1)}, negative {np.sum(labels == 0)}, ignored {np.sum(labels == -1)} "
              f"of {labels.size} anchors")
        print(f"\\n{'gt':>3} {'class':>9} {'w x h':>9} {'best IoU':>9} {'level of best':>13} {'IoU >= 0.7':>10} "
              f"{'positives':>9}")
        for g, box in enumerate(gt):
            best = iou[g].argmax()
            print(f"{g:>3} {cfg.class_names[sample['labels'][g]]:>9} "
                  f"{f'{box[2] - box[0]:.0f}x{box[3] - box[1]:.0f}':>9} {iou[g, best]:9.2f} "
                  f"{'P%d' % (level_of[best] + 2):>13} {np.sum(strict == g):>10} {np.sum(matches == g):>9}")
        """),
        md("""
        A box whose best anchor overlaps it by less than 0.7 has no strict positive at all ("IoU ≥ 0.7" column 0),
        and only the low-quality rule gives it one — or several, since ties count: a square between anchor centres
        can have four equally good anchors. The level of the best anchor follows the box's size: FPN's
        one-size-per-level design hands small objects to the fine levels.
        """),
        code("""
        pos_mask, neg_mask = sample_balanced(labels[0], cfg.rpn_batch_size_per_image, cfg.rpn_positive_fraction, rng)
        print(f"sampled for the loss: {pos_mask.sum()} positives and {neg_mask.sum()} negatives "
              f"(batch {cfg.rpn_batch_size_per_image}, at most {cfg.rpn_positive_fraction:.0%} positive)")

        fig, axes = plt.subplots(1, 2, figsize=(11, 5.5))
        for ax in axes:
            ax.imshow(image, extent=(0, 128, 128, 0))
            for box in gt:
                draw_box(ax, box, "white", lw=2)
        ignored = anchors[labels[0] == -1]
        c = (ignored[:, :2] + ignored[:, 2:]) / 2
        axes[0].plot(c[:, 0], c[:, 1], "o", color="yellow", ms=2, alpha=0.6)
        for i in np.flatnonzero(labels[0] == 1):
            draw_box(axes[0], anchors[i], "lime" if strict[i] >= 0 else "tab:orange", lw=1)
        axes[0].set_title("positives (green: IoU ≥ 0.7, orange: low-quality)\\nyellow dots: centres of ignored anchors",
                          fontsize=10)
        for i in np.flatnonzero(neg_mask):
            draw_box(axes[1], anchors[i], "tab:red", lw=0.6, alpha=0.6)
        for i in np.flatnonzero(pos_mask):
            draw_box(axes[1], anchors[i], "lime", lw=1)
        axes[1].set_title("the sampled anchors: positives (green) and negatives (red)", fontsize=10)
        for ax in axes:
            ax.set_xlim(-40, 168)
            ax.set_ylim(168, -40)
        plt.tight_layout()
        plt.show()
        """),
        md("""
        ## 4. Box coding (Faster R-CNN Eq. 2)

        The RPN does not predict box corners. It predicts how to move and stretch an anchor
        $(x_a, y_a, w_a, h_a)$ (centre, size) onto the box $(x, y, w, h)$:

        $$t_x = \\frac{x - x_a}{w_a},\\quad t_y = \\frac{y - y_a}{h_a},\\quad t_w = \\log\\frac{w}{w_a},\\quad
          t_h = \\log\\frac{h}{h_a}.$$

        Offsets relative to the anchor's size make the targets scale-free, and the logarithm makes "twice as wide"
        and "half as wide" symmetric. By hand: the anchor $[0, 0, 32, 32]$ has centre $(16, 16)$ and size 32×32; the
        box $[8, 4, 56, 28]$ has centre $(32, 16)$ and size 48×24. So $t = (16/32,\\ 0/32,\\ \\log 1.5,\\ \\log 0.75)
        = (0.5,\\ 0,\\ 0.405,\\ -0.288)$. The box head multiplies the same four numbers by the weights
        $(10, 10, 5, 5)$, which brings the smaller offsets of proposals that already lie close to their boxes to about
        unit scale.
        """),
        code("""
        anchor = np.array([[0.0, 0.0, 32.0, 32.0]])
        box = np.array([[8.0, 4.0, 56.0, 28.0]])
        t = encode_boxes(box, anchor)  # (1, 4) (t_x, t_y, t_w, t_h)
        print("t              =", t[0], " by hand:", np.array([0.5, 0.0, np.log(1.5), np.log(0.75)]))
        print("decode(t)      =", decode_boxes(t, anchor)[0])
        print("t, head weights:", encode_boxes(box, anchor, weights=(10, 10, 5, 5))[0])
        huge = decode_boxes(np.array([[0.0, 0.0, 10.0, 0.0]]), anchor)[0]  # t_w = 10 would be e^10 = 22026 times wider
        print(f"t_w = 10 is clamped at log(1000/16) = {DEFAULT_CLAMP:.3f}: width {huge[2] - huge[0]:.1f} = 62.5 × 32")

        fig, ax = plt.subplots(figsize=(4.5, 3))
        draw_box(ax, anchor[0], "tab:blue", lw=2)
        draw_box(ax, box[0], "tab:green", lw=2)
        ax.annotate("", xy=(32, 16), xytext=(16, 16), arrowprops=dict(arrowstyle="->"))
        ax.text(17, 14, "t_x · w_a = 16", fontsize=9)
        ax.set_xlim(-4, 60)
        ax.set_ylim(36, -4)
        ax.set_aspect("equal")
        ax.set_title("anchor (blue) and box (green)", fontsize=10)
        plt.show()
        """),
        md("""
        Every positive anchor of the image encoded and decoded again lands on its ground-truth box, up to float
        rounding: decoding inverts encoding exactly (while no clamp is hit).
        """),
        code("""
        positive = np.flatnonzero(labels[0] == 1)
        decoded = decode_boxes(reg_targets[0, positive], anchors[positive])  # (P, 4)
        print("max |decode(encode(gt)) - gt| over", len(positive), "positives:",
              np.abs(decoded - gt[matches[positive]]).max())
        """),
        md("""
        What do the targets the RPN must learn look like over many images? The centre offsets stay within about
        ±0.35 (an anchor with IoU ≥ 0.7 cannot be far off), the log-size ratios are centred near 0, and the low-quality
        matches make the tails.
        """),
        code("""
        data = ShapesDataset("train", num_images=4 if SMOKE else 100, seed=0)
        all_t = []
        for i in range(len(data)):
            lab, tgt = rpn_targets(anchors, [data[i]["boxes"].astype(np.float64)], cfg)  # (1, T), (1, T, 4)
            all_t.append(tgt[0, lab[0] == 1])  # the positives' targets
        all_t = np.concatenate(all_t)  # (P, 4)
        fig, axes = plt.subplots(1, 4, figsize=(14, 2.6))
        for k, (ax, name) in enumerate(zip(axes, ("t_x", "t_y", "t_w", "t_h"))):
            ax.hist(all_t[:, k], bins=30, color="tab:blue")
            ax.set_title(f"{name}: std {all_t[:, k].std():.2f}", fontsize=10)
        plt.tight_layout()
        plt.show()
        """),
        md("""
        **Next:** notebook 05 trains the RPN's head to predict these labels and targets, and turns its predictions
        into proposals.
        """),
    ]


# =================================================================================================================
# 06 · RoIPool vs RoIAlign
# =================================================================================================================

def nb06():
    return [
        md("""
        # 06 · RoIPool vs RoIAlign

        *Papers:* Girshick, *Fast R-CNN*, ICCV 2015, §2.1 (RoI max pooling); He et al., *Mask R-CNN*, ICCV 2017, §3
        "RoIAlign", Fig. 3 and Table 2c/2d (RoIPool vs RoIWarp vs RoIAlign, max vs average, at stride 16 and 32);
        RoIWarp is from Dai et al.'s MNC, CVPR 2016. · *Docs:* [RoI feature extractors](../docs/layers/roi_extractors.md),
        [conventions](../docs/conventions.md) (continuous coordinates and the `aligned` flag) · *Code:* [`tinymask/layers/roi_pool.py`](../tinymask/layers/roi_pool.py),
        [`tinymask/layers/roi_warp.py`](../tinymask/layers/roi_warp.py),
        [`tinymask/layers/roi_align.py`](../tinymask/layers/roi_align.py)
        · *Tests:* `tests/test_roi_pool.py`, `tests/test_roi_warp.py`, `tests/test_roi_align.py` (the 5×5 example
        below is their golden case, after detectron2's)

        The RoI heads need a fixed-size feature grid (7×7 for the box head, 14×14 for the mask head) for every box,
        whatever its size and position. Fast R-CNN's **RoIPool** gets it by rounding twice; Mask R-CNN's
        **RoIAlign** does not round at all. The paper's words: RoIPool's quantizations "introduce misalignments
        between the RoI and the extracted features. While this may not impact classification, which is robust to
        small translations, it has a large negative effect on predicting pixel-accurate masks."

        What you will see:

        1. the roundings drawn on a feature-map grid: RoIPool's bins, RoIWarp's, and RoIAlign's sample points,
           with and without the half-pixel `aligned` shift;
        2. a 5×5 example whose outputs you can verify by hand, for all of them;
        3. where the gradients go: `roi_pool_backward` vs `roi_align_backward`, side by side;
        4. what the misalignment does to a mask: ground-truth masks pooled from a coarse map with each method and
           pasted back — a small, training-free version of Table 2c/2d.
        """),
        setup("""
        from matplotlib.patches import Rectangle

        from tinymask.data import ShapesDataset
        from tinymask.interpolate import bilinear_resize
        from tinymask.layers.roi_align import linear_interp_1d, roi_align_backward, roi_align_forward, roi_bins_1d, sample_coords
        from tinymask.layers.roi_pool import pool_bin_edges, roi_pool_backward, roi_pool_forward, round_half_away
        from tinymask.layers.roi_warp import quantize_rois, roi_warp_backward, roi_warp_forward
        from tinymask.mask_paste import binarize, paste_masks_in_image
        from tinymask.visualize import show_numbers  # a small matrix drawn with its values in the cells

        rng = np.random.default_rng(0)
        """),
        md("""
        ## 1. The roundings, drawn

        A 128×128 image at stride 16 gives an 8×8 feature map; cell $j$ covers image pixels $[16j, 16j + 16)$, so in
        feature-map units a box is simply divided by 16. Our box is $(22, 30, 91, 77)$ in image pixels, i.e.
        $(1.375, 1.875, 5.6875, 4.8125)$ in cells. We ask for 2×2 bins, as in the paper's Fig. 3.

        - **RoIPool** rounds the box to whole cells ($[x/16]$, half away from zero): $(1, 2, 6, 5)$, and counts
          cells inclusively (Fast R-CNN's "+1"), so it covers cells 1–6 across and 2–5 down — a region 6 cells wide
          where the box is 4.3. Then it splits that into 2×2 bins and rounds each bin *outwards* to whole cells
          (neighbouring bins may share a row), and takes the max over each bin's cells.
        - **RoIWarp** rounds the box the same way but then samples it bilinearly, like RoIAlign.
        - **RoIAlign** keeps the box as it is, splits it into exactly equal bins, and reads
          `sampling_ratio`² = 2×2 regularly spaced points per bin by bilinear interpolation from the four nearest
          cells, then averages them.

        Bilinear interpolation reads cell $j$ at coordinate $j$, but the cell's centre in continuous coordinates is
        $j + 0.5$. With `aligned=False` (the paper's original code, torchvision's default) the scaled box is used as is,
        so every sample lands half a cell right of and below where it should; `aligned=True` (detectron2) subtracts
        0.5 after scaling and the samples sit where the box says. All geometry below comes from the library's own
        helpers (`round_half_away`, `pool_bin_edges`, `roi_bins_1d`, `sample_coords`, `linear_interp_1d`).
        """),
        code("""
        stride, fmap = 16, 8  # an 8×8 map of a 128×128 image
        box = np.array([22.0, 30.0, 91.0, 77.0])  # (x0, y0, x1, y1) in image pixels
        scale, bins, ratio = 1 / stride, 2, 2  # spatial_scale, output 2×2, 2×2 samples per bin
        print("box in cells:", box * scale)
        q = round_half_away(box * scale).astype(int)  # RoIPool's rounded box, in cells
        print("RoIPool's rounded box:", q, "-> cells", q[0], "to", q[2], "across and", q[1], "to", q[3], "down")


        def draw_grid(ax, title):
            for j in range(fmap + 1):
                ax.axhline(j, color="0.8", lw=0.8)
                ax.axvline(j, color="0.8", lw=0.8)
            x0, y0, x1, y1 = box * scale
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="black", lw=2, ls="--"))
            ax.set_xlim(0, fmap)
            ax.set_ylim(fmap, 0)
            ax.set_aspect("equal")
            ax.set_xticks(range(fmap + 1))
            ax.set_yticks(range(fmap + 1))
            ax.tick_params(labelsize=7)
            ax.set_title(title, fontsize=10)


        colors = ["tab:red", "tab:blue", "tab:green", "tab:orange"]
        fig, axes = plt.subplots(1, 4, figsize=(17, 4.6))

        # RoIPool: rounded box, bins rounded outwards to whole cells
        draw_grid(axes[0], "RoIPool: max over whole cells")
        hs, he = pool_bin_edges(q[1], max(q[3] - q[1] + 1, 1), bins, fmap)  # (2,) first and one-past-last row
        ws, we = pool_bin_edges(q[0], max(q[2] - q[0] + 1, 1), bins, fmap)
        for p in range(bins):
            for r in range(bins):
                axes[0].add_patch(Rectangle((ws[r], hs[p]), we[r] - ws[r], he[p] - hs[p], color=colors[p * bins + r],
                                            alpha=0.25))
                axes[0].add_patch(Rectangle((ws[r], hs[p]), we[r] - ws[r], he[p] - hs[p], fill=False,
                                            ec=colors[p * bins + r], lw=1.5))


        def draw_bilinear(ax, lo_hi_x, lo_hi_y, scale_, aligned, title):
            \"\"\"Bins and sample points of RoIAlign on the box lo_hi (image units times scale_), in continuous cells.\"\"\"
            draw_grid(ax, title)
            sy, bh, gh = roi_bins_1d(*lo_hi_y, scale_, bins, ratio, aligned)
            sx, bw, gw = roi_bins_1d(*lo_hi_x, scale_, bins, ratio, aligned)
            for p in range(bins):
                for r in range(bins):
                    # interpolation coordinates put cell j at j; continuous coordinates put its centre at j + 0.5
                    ax.add_patch(Rectangle((sx + r * bw + 0.5, sy + p * bh + 0.5), bw, bh, fill=False,
                                           ec=colors[p * bins + r], lw=1.5))
                    ys = [sample_coords(sy, bh, gh, p, i) for i in range(gh)]
                    xs = [sample_coords(sx, bw, gw, r, i) for i in range(gw)]
                    for ty in ys:
                        for tx in xs:
                            ax.plot(tx + 0.5, ty + 0.5, "o", color=colors[p * bins + r], ms=5)
            return sx, bw, gw, sy, bh, gh


        qbox = quantize_rois(np.array([[0, *box]]), scale)[0, 1:]  # RoIWarp hands the rounded box to RoIAlign
        draw_bilinear(axes[1], (qbox[0], qbox[2]), (qbox[1], qbox[3]), 1.0, False, "RoIWarp: rounded box, bilinear")
        draw_bilinear(axes[2], (box[0], box[2]), (box[1], box[3]), scale, False, "RoIAlign, aligned=False")
        sx, bw, gw, sy, bh, gh = draw_bilinear(axes[3], (box[0], box[2]), (box[1], box[3]), scale, True,
                                               "RoIAlign, aligned=True")

        # one sample's bilinear interpolation: its four neighbouring cell centres and their weights
        ty, tx = sample_coords(sy, bh, gh, 1, 1), sample_coords(sx, bw, gw, 1, 1)
        y_lo, y_hi, wy_lo, wy_hi = linear_interp_1d(ty, fmap)
        x_lo, x_hi, wx_lo, wx_hi = linear_interp_1d(tx, fmap)
        for cy, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
            for cx, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
                axes[3].plot([tx + 0.5, cx + 0.5], [ty + 0.5, cy + 0.5], color="0.3", lw=0.8)
                axes[3].text(cx + 0.5, cy + 0.5, f"{wy * wx:.2f}", fontsize=7, ha="center", va="center",
                             bbox=dict(fc="white", ec="0.5", pad=1))
        plt.tight_layout()
        plt.show()
        """),
        md("""
        The dashed box is the RoI. RoIPool's bins (filled) cover whole cells of a box whose top-left corner moved by
        up to 0.4 cell and whose right and bottom edges moved by more than a cell, the inclusive "+1" included; for
        other sizes the bins come out unequal, and neighbouring bins share a row or column. RoIWarp samples evenly, but inside the rounded box. RoIAlign with `aligned=False`
        keeps the box's size but is shifted half a cell right and down. RoIAlign with `aligned=True` samples exactly
        inside the box; the boxed numbers are the bilinear weights of one sample's four neighbouring cells (they sum
        to 1). At stride 16, half a cell is 8 image pixels.

        ## 2. A 5×5 example to verify by hand

        Features `np.arange(25).reshape(5, 5)`: cell $(y, x)$ holds $5y + x$, a *linear* function, so bilinear
        interpolation reproduces it exactly — the value at any point $(y, x)$ is $5y + x$. The box is
        $(1, 1, 3, 3)$: in continuous coordinates it covers pixels 1 and 2 in each direction. Output 4×4,
        spatial scale 1, adaptive sampling (`sampling_ratio=0`: $\\lceil 2 / 4\\rceil = 1$ sample per bin).

        - **RoIAlign, `aligned=True`**: the box starts at $1 - 0.5 = 0.5$ in interpolation coordinates and is 2 long;
          bins of 0.5, one sample at each bin's centre: $0.75, 1.25, 1.75, 2.25$ on each axis. Top-left:
          $5\\cdot 0.75 + 0.75 = 4.5$; moving one bin right adds 0.5, one bin down adds 2.5.
        - **RoIAlign, `aligned=False`**: the samples sit at $1.25, 1.75, 2.25, 2.75$, half a pixel further on both
          axes, so every value is larger by $5\\cdot 0.5 + 0.5 = 3$: top-left $7.5$.
        - **RoIPool**: the box rounds to cells 1…3 *inclusive* (3 cells — one more than the box covers); 4 bins of
          $3/4$ cell, rounded outwards: rows $\\{1\\}, \\{1, 2\\}, \\{2, 3\\}, \\{3\\}$ and the same columns. The max of
          $5y + x$ over a bin is at its bottom-right cell: rows $1, 2, 3, 3$ → top-left $5 + 1 = 6$, bottom-right
          $5\\cdot 3 + 3 = 18$. It reads row 3, which the box does not cover at all.
        - **RoIWarp**: the box is already on whole pixels, so rounding changes nothing, and RoIWarp equals RoIAlign
          with `aligned=False`.
        """),
        code("""
        features = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)  # (N, C, H, W): value 5y + x
        rois = np.array([[0, 1.0, 1.0, 3.0, 3.0]])  # (K, 5) [batch index, x0, y0, x1, y1]
        kw = dict(output_size=4, spatial_scale=1.0)
        outputs = {
            "RoIAlign aligned=True": roi_align_forward(features, rois, **kw, sampling_ratio=0, aligned=True),
            "RoIAlign aligned=False": roi_align_forward(features, rois, **kw, sampling_ratio=0, aligned=False),
            "RoIPool": roi_pool_forward(features, rois, **kw),
            "RoIWarp": roi_warp_forward(features, rois, **kw, sampling_ratio=0),
        }
        fig, axes = plt.subplots(1, 5, figsize=(16, 3.4))
        show_numbers(axes[0], features[0, 0], "features: 5y + x")
        for ax, (name, (out, _)) in zip(axes[1:], outputs.items()):
            show_numbers(ax, out[0, 0], name, cmap="Greens")
            print(f"{name:>23}:", out[0, 0].tolist())
        plt.tight_layout()
        plt.show()
        """),
        md("""
        Move the box by a fraction of a pixel, to $(1.4, 1.4, 3.4, 3.4)$. RoIAlign follows it: every value grows by
        $6\\cdot 0.4 = 2.4$. RoIPool and RoIWarp round the box back to $(1, 1, 3, 3)$ and do not move at all — the
        quantization: any box within half a cell of another gives the same features.
        """),
        code("""
        moved = np.array([[0, 1.4, 1.4, 3.4, 3.4]])
        for name, f in [("RoIAlign aligned=True", lambda r: roi_align_forward(features, r, **kw, sampling_ratio=0, aligned=True)),
                        ("RoIPool", lambda r: roi_pool_forward(features, r, **kw)),
                        ("RoIWarp", lambda r: roi_warp_forward(features, r, **kw, sampling_ratio=0))]:
            print(f"{name:>22}: change of the output when the box moves by 0.4 px:",
                  np.unique(np.round(f(moved)[0] - f(rois)[0], 6)))
        """),
        md("""
        ## 3. Where the gradients go

        Backward, both layers send the upstream gradient back to the cells the forward read. RoIPool sends each
        output's gradient to the single cell that won its max; RoIAlign splits it among the four neighbours of each
        sample, with the bilinear weights, divided by the number of samples. With $d\\mathrm{out} = 1$ everywhere on
        the 5×5 example, both send a total of 16 (one per output), but differently:

        - **RoIAlign, `aligned=True`**: along one axis the samples $0.75, 1.25, 1.75, 2.25$ give cell 0 a weight
          $0.25$, cells 1 and 2 $0.75 + 0.75 + 0.25 = 1.75$ each, cell 3 $0.25$. The 2-D gradient is the outer
          product of $(0.25, 1.75, 1.75, 0.25, 0)$ with itself: $3.0625$ on cells $(1, 1) … (2, 2)$.
        - **RoIPool**: the winners are each bin's bottom-right cell, rows $1, 2, 3, 3$: cell 3 wins twice along each
          axis, so cell $(3, 3)$ collects $2\\cdot 2 = 4$ — all of it outside the box.
        """),
        code("""
        dout = np.ones((1, 1, 4, 4))
        _, c_align = roi_align_forward(features, rois, **kw, sampling_ratio=0, aligned=True)
        _, c_pool = roi_pool_forward(features, rois, **kw)
        d_align, _ = roi_align_backward(dout, c_align)  # (1, 1, 5, 5); the RoIs get no gradient (None)
        d_pool, _ = roi_pool_backward(dout, c_pool)
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
        show_numbers(axes[0], d_align[0, 0], f"roi_align_backward (sum {d_align.sum():g})", fmt="{:.4g}", cmap="Reds")
        show_numbers(axes[1], d_pool[0, 0], f"roi_pool_backward (sum {d_pool.sum():g})", cmap="Reds")
        for ax in axes:  # the box (1, 1, 3, 3) in imshow's pixel-centred axes
            ax.add_patch(Rectangle((0.5, 0.5), 2, 2, fill=False, ec="black", lw=2, ls="--"))
        plt.tight_layout()
        plt.show()
        """),
        md("""
        On a smooth random 16×16 feature map with two boxes and 7×7 outputs: RoIPool's gradient is a scatter of
        winning cells (it depends on the feature values, and moves when they change); RoIWarp's and RoIAlign's are
        smooth footprints that do not depend on the features at all (the average is linear in them) — RoIWarp's on the
        rounded box, RoIAlign's on the box itself.
        """),
        code("""
        smooth = bilinear_resize(rng.standard_normal((1, 1, 4, 4)), (16, 16))  # (1, 1, 16, 16) a smooth random map
        boxes = np.array([[0, 1.3, 2.6, 7.9, 9.2], [0, 8.6, 5.3, 14.4, 14.7]])  # in cells (spatial scale 1)
        dout = np.ones((2, 1, 7, 7))
        grads = {
            "RoIPool": roi_pool_backward(dout, roi_pool_forward(smooth, boxes, output_size=7, spatial_scale=1.0)[1])[0],
            "RoIWarp": roi_warp_backward(dout, roi_warp_forward(smooth, boxes, output_size=7, spatial_scale=1.0,
                                                                sampling_ratio=2)[1])[0],
            "RoIAlign aligned=True": roi_align_backward(dout, roi_align_forward(smooth, boxes, output_size=7,
                                                                               spatial_scale=1.0, sampling_ratio=2,
                                                                               aligned=True)[1])[0],
        }
        fig, axes = plt.subplots(1, 4, figsize=(16, 4))
        axes[0].imshow(smooth[0, 0], extent=(0, 16, 16, 0), cmap="viridis")
        axes[0].set_title("features", fontsize=10)
        for ax, (name, g) in zip(axes[1:], grads.items()):
            ax.imshow(g[0, 0], extent=(0, 16, 16, 0), cmap="Reds")
            ax.set_title(f"gradient of {name}", fontsize=10)
        for ax in axes:
            for _, x0, y0, x1, y1 in boxes:
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="black", lw=1.5, ls="--"))
        plt.tight_layout()
        plt.show()
        """),
        md("""
        ## 4. What misalignment does to a mask

        A training-free experiment in the spirit of Table 2c/2d. Take the ground-truth masks of shapes images and
        make a stride-$s$ "feature map" of each: the fraction of every $s\\times s$ cell that the mask covers (a map
        that is exactly aligned with the image, cell $j$ covering pixels $[sj, sj + s)$). Pool a 28×28 grid from it
        over the object's own box with each RoI method, paste the grid back into the image the way inference does
        (`paste_masks_in_image`, then threshold at 0.5), and compare with the mask we started from. A perfect pooler
        loses only what the coarse map lost; every misalignment shows as a lower IoU.
        """),
        code("""
        M = 28  # the mask head's resolution
        methods = {  # name -> f(features, rois, spatial_scale) -> (R, C, M, M)
            "RoIPool (max)": lambda F, r, sc: roi_pool_forward(F, r, output_size=M, spatial_scale=sc)[0],
            "RoIWarp (max)": lambda F, r, sc: roi_warp_forward(F, r, output_size=M, spatial_scale=sc, sampling_ratio=2,
                                                              mode="max")[0],
            "RoIWarp (avg)": lambda F, r, sc: roi_warp_forward(F, r, output_size=M, spatial_scale=sc, sampling_ratio=2)[0],
            "RoIAlign (max), aligned=False": lambda F, r, sc: roi_align_forward(F, r, output_size=M, spatial_scale=sc,
                                                                               sampling_ratio=2, mode="max")[0],
            "RoIAlign (avg), aligned=False": lambda F, r, sc: roi_align_forward(F, r, output_size=M, spatial_scale=sc,
                                                                               sampling_ratio=2)[0],
            "RoIAlign (avg), aligned=True": lambda F, r, sc: roi_align_forward(F, r, output_size=M, spatial_scale=sc,
                                                                              sampling_ratio=2, aligned=True)[0],
        }


        def coverage_map(masks, s):
            \"\"\"(G, H, W) binary masks -> (G, 1, H/s, W/s): the fraction of each s×s cell that each mask covers.\"\"\"
            G, H, W = masks.shape
            return masks.reshape(G, H // s, s, W // s, s).mean(axis=(2, 4))[:, None].astype(np.float64)


        def pooled_and_pasted(method, masks, boxes, s):
            \"\"\"Pool each mask's coverage map over its own box and paste the M×M grid back: (G, H, W) bool.\"\"\"
            rois = np.concatenate([np.arange(len(boxes))[:, None], boxes], axis=1)  # mask g is image g of the batch
            grid = methods[method](coverage_map(masks, s), rois, 1.0 / s)  # (G, 1, M, M)
            return binarize(paste_masks_in_image(grid[:, 0], boxes, masks.shape[1:]))


        def centroid(m):
            ys, xs = np.nonzero(m)
            return np.array([xs.mean() + 0.5, ys.mean() + 0.5]) if len(xs) else np.array([np.nan, np.nan])


        data = ShapesDataset("val", num_images=6 if SMOKE else 100, seed=0)
        strides = (4, 8, 16)
        ious = {(m, s): [] for m in methods for s in strides}
        shifts = {m: [] for m in methods}  # centroid of the pasted mask minus the true one, at stride 16
        for i in range(len(data)):
            sample = data[i]
            masks, boxes = sample["masks"].astype(bool), sample["boxes"].astype(np.float64)
            for s in strides:
                for m in methods:
                    pasted = pooled_and_pasted(m, masks, boxes, s)  # (G, H, W)
                    inter = (pasted & masks).sum(axis=(1, 2))
                    union = (pasted | masks).sum(axis=(1, 2))
                    ious[m, s] += list(inter / union)
                    if s == 16:
                        shifts[m] += [centroid(p) - centroid(g) for p, g in zip(pasted, masks)]

        n = len(ious[next(iter(ious))])
        print(f"{n} instances; mask IoU of the pasted mask with the true one (mean, and % of instances >= 0.75)\\n")
        print(f"{'method':<30}" + "".join(f"{f'stride {s}':>18}" for s in strides))
        for m in methods:
            print(f"{m:<30}" + "".join(f"{np.mean(ious[m, s]):10.3f} {np.mean(np.array(ious[m, s]) >= 0.75):6.0%} "
                                       for s in strides))
        """),
        md("""
        The coarser the map, the more the roundings cost, and at every stride the ranking is the paper's. Its
        Table 2c (ResNet-50-C4, stride 16) reads, in mask AP: RoIPool 26.9, RoIWarp 27.2 (max) and 27.1 (avg),
        RoIAlign 30.2 (max) and 30.3 (avg) — max or average hardly matters, alignment does; at stride 32 (Table 2d)
        RoIAlign gains 7.3 AP over RoIPool.

        `aligned=False` does much worse than `aligned=True` in this experiment, yet the paper's RoIAlign *was*
        `aligned=False`. The difference is in the kind of error. Here is where each method moves the mask's centre of
        mass, instance by instance, at stride 16:
        """),
        code("""
        show = ["RoIPool (max)", "RoIWarp (avg)", "RoIAlign (avg), aligned=False", "RoIAlign (avg), aligned=True"]
        fig, axes = plt.subplots(1, 4, figsize=(16, 4), sharex=True, sharey=True)
        for ax, m in zip(axes, show):
            d = np.array(shifts[m])
            ax.scatter(d[:, 0], d[:, 1], s=8, alpha=0.6)
            ax.axhline(0, color="0.7", lw=0.8)
            ax.axvline(0, color="0.7", lw=0.8)
            spread = np.sqrt(np.nanvar(d[:, 0]) + np.nanvar(d[:, 1]))  # scatter around the mean shift
            ax.set_title(f"{m}\\nmean shift ({np.nanmean(d[:, 0]):+.1f}, {np.nanmean(d[:, 1]):+.1f}) px, "
                         f"scatter {spread:.1f} px", fontsize=9)
            ax.set_xlabel("centroid shift x (px)")
        axes[0].set_ylabel("centroid shift y (px)")
        axes[0].set_xlim(-12, 12)
        axes[0].set_ylim(12, -12)
        plt.tight_layout()
        plt.show()
        """),
        md("""
        `aligned=False` moves every mask by about the same amount, several pixels up and to the left (its samples
        read half a cell — 8 pixels — further down and right, and that content is pasted where the box starts), and
        beyond that constant it scatters no more than `aligned=True`, whose scatter is what the coarse map itself
        loses. A network whose features and mask targets are computed the same way learns to absorb a constant
        offset, which is why the original RoIAlign worked. RoIPool and RoIWarp shift the masks on average too, but
        scatter much more around that mean: the rounding error depends on where each box falls between the cells,
        differently for every box, and nothing learned once can undo it. The `aligned=True` fix (detectron2) removes
        the constant offset as well, so nothing needs to be learned.

        One instance, at stride 16: the true mask's outline in white, each method's pasted mask filled.
        """),
        code("""
        sample = data[0]
        masks, boxes = sample["masks"].astype(bool), sample["boxes"].astype(np.float64)
        g = int(np.argmax(masks.sum(axis=(1, 2))))  # the largest instance
        fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
        for ax, m in zip(axes, show):
            pasted = pooled_and_pasted(m, masks, boxes, 16)[g]
            iou = (pasted & masks[g]).sum() / (pasted | masks[g]).sum()
            ax.imshow(sample["image"].transpose(1, 2, 0), extent=(0, 128, 128, 0))
            ax.imshow(np.ma.masked_where(~pasted, pasted), extent=(0, 128, 128, 0), cmap="autumn", alpha=0.55)
            ax.contour(np.arange(128) + 0.5, np.arange(128) + 0.5, masks[g], levels=[0.5], colors="white",
                       linewidths=1.5)
            x0, y0, x1, y1 = boxes[g]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="black", lw=1, ls="--"))
            pad = 10
            ax.set_xlim(x0 - pad, x1 + pad)
            ax.set_ylim(y1 + pad, y0 - pad)
            ax.set_title(f"{m}: IoU {iou:.2f}", fontsize=10)
        plt.tight_layout()
        plt.show()
        """),
        md("""
        **Take-aways.** RoIPool rounds the box and its bins to whole cells, so its features jump between boxes a
        fraction of a cell apart and its gradient lands on single winning cells; RoIWarp removes only the second
        rounding; RoIAlign removes both, with bilinear sampling and a gradient spread smoothly over the box. For
        classification the difference is small; for a 28×28 mask pasted back at stride 16 it is most of the
        boundary.

        **Next:** notebook 07 feeds these RoI features to the box and mask heads and their losses.
        """),
    ]


# =================================================================================================================
# 07 · heads and losses
# =================================================================================================================

def nb07():
    return [
        md("""
        # 07 · The box and mask heads, their targets and their losses

        *Papers:* He et al., *Mask R-CNN*, ICCV 2017 — §3 (the multi-task loss $L = L_{cls} + L_{box} + L_{mask}$;
        "the mask target is the intersection between an RoI and its associated ground-truth mask"; the per-pixel
        sigmoid and the average binary cross-entropy), Fig. 4 (the FPN heads), Table 2b (multinomial vs independent
        masks); Girshick, *Fast R-CNN*, ICCV 2015, §2.3 (Eq. 1: $L_{cls} = -\\log p_u$; Eqs. 2–3: smooth L1).
        · *Docs:* [the RoI heads](../docs/heads.md), [losses](../docs/layers/losses.md),
        [linear, ReLU, sigmoid](../docs/layers/linear_relu_sigmoid.md),
        [transposed convolution](../docs/layers/transposed_convolution.md) · *Code:*
        [`tinymask/mask_targets.py`](../tinymask/mask_targets.py), [`tinymask/roi_heads.py`](../tinymask/roi_heads.py),
        [`tinymask/mask_head.py`](../tinymask/mask_head.py), [`tinymask/losses.py`](../tinymask/losses.py)
        · *Tests:* `tests/test_mask_targets.py`, `tests/test_losses.py`, `tests/test_model.py`

        What you will see:

        1. a 4×4 mask target computed by hand, then RoI crops of a real image next to their 28×28 mask targets;
        2. the shapes through the box head and the mask head, and the losses an untrained model starts from;
        3. the per-class **sigmoid** mask loss vs the **multinomial softmax** loss on the same logits: the softmax
           couples the classes, the sigmoid does not (Table 2b);
        4. smooth L1 vs L1 for the box regression.
        """),
        setup("""
        import dataclasses
        from matplotlib.patches import Rectangle

        from tinymask.boxes import box_iou
        from tinymask.config import MaskRCNNConfig
        from tinymask.data import ShapesDataset, training_targets
        from tinymask.layers.roi_align import roi_align_forward
        from tinymask.losses import smooth_l1
        from tinymask.mask_head import init_mask_head_params, mask_head_forward, mask_loss
        from tinymask.mask_targets import project_masks_on_boxes
        from tinymask.model import init_params, train_forward
        from tinymask.roi_heads import box_head_forward, box_loss, init_box_head_params

        from tinymask.visualize import show_numbers  # a small matrix drawn with its values in the cells

        rng = np.random.default_rng(0)
        cfg = MaskRCNNConfig.preset("small")
        """),
        md("""
        ## 1. Mask targets

        A positive RoI's mask target is its ground-truth mask seen through the RoI, resampled to $M\\times M$
        (28×28 for the FPN head). torchvision — and tinymask, `project_masks_on_boxes` — computes it with RoIAlign
        itself, on the binary mask as a one-channel image, with the same `aligned=False` convention as the features
        (notebook 06): a target is then a *soft* mask, fractional near the object's edge.

        By hand: an 8×8 mask holding a square on pixels 2–5 (continuous $[2, 6)$), and the RoI
        $(2, 2, 6, 6)$ that fits it exactly, $M = 4$. Each bin is one pixel wide with one sample at its centre —
        in interpolation coordinates, where pixel $j$ sits at $j$: $2.5, 3.5, 4.5, 5.5$. The last one lies halfway
        between pixel 5 (inside, 1) and pixel 6 (outside, 0) and reads 0.5. So the target's last row and column
        are 0.5 and its corner 0.25: the `aligned=False` half-pixel shift, visible in the targets.
        """),
        code("""
        gt_mask = np.zeros((1, 8, 8))
        gt_mask[0, 2:6, 2:6] = 1  # (G, H, W): one square on pixels 2..5
        box = np.array([[2.0, 2.0, 6.0, 6.0]])  # (P, 4) the RoI
        target = project_masks_on_boxes(gt_mask, box, matched_idxs=np.array([0]), M=4)  # (P, M, M)
        fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
        show_numbers(axes[0], gt_mask[0], "gt mask (8×8), RoI dashed")
        axes[0].add_patch(Rectangle((1.5, 1.5), 4, 4, fill=False, ec="red", lw=2, ls="--"))  # imshow centres pixels
        show_numbers(axes[1], target[0], "target (4×4)", cmap="Greens")
        plt.tight_layout()
        plt.show()
        """),
        md("""
        On a real image. The RoIs are ground-truth boxes jittered at random and kept if their IoU with their box is
        at least 0.5 — positive RoIs in the sense of §3.1, the only ones that get a mask loss. The crop is the
        image resampled over the RoI with the same RoIAlign call; the target shows exactly what part of the object
        falls inside the RoI ("the intersection between an RoI and its associated ground-truth mask"), and
        nothing of the neighbours that also fall inside it.
        """),
        code("""
        data = ShapesDataset("val", num_images=20, seed=0)
        sample = next(data[i] for i in range(len(data)) if len(data[i]["labels"]) >= 3)
        gt_boxes = sample["boxes"].astype(np.float64)

        rois, matched = [], []
        while len(rois) < 6:  # jitter ground-truth boxes until we have six positives
            g = int(rng.integers(len(gt_boxes)))
            x0, y0, x1, y1 = gt_boxes[g]
            w, h = x1 - x0, y1 - y0
            dx, dy, sw, sh = rng.normal(0, 0.15, 4)
            box = np.array([x0 + dx * w, y0 + dy * h, x0 + dx * w + w * np.exp(sw), y0 + dy * h + h * np.exp(sh)])
            box = np.clip(box, 0, 128)
            if box_iou(box[None], gt_boxes[g][None])[0, 0] >= 0.5:
                rois.append(box)
                matched.append(g)
        rois, matched = np.array(rois), np.array(matched)

        targets = project_masks_on_boxes(sample["masks"], rois, matched, 28)  # (6, 28, 28) soft
        image_rois = np.concatenate([np.zeros((6, 1)), rois], axis=1)  # (6, 5) all from image 0
        crops, _ = roi_align_forward(sample["image"][None].astype(np.float64), image_rois, output_size=28,
                                     spatial_scale=1.0, sampling_ratio=2)  # (6, 3, 28, 28)

        fig = plt.figure(figsize=(15, 4.4))
        grid = fig.add_gridspec(2, 8)
        ax = fig.add_subplot(grid[:, :2])
        ax.imshow(sample["image"].transpose(1, 2, 0), extent=(0, 128, 128, 0))
        for k, (x0, y0, x1, y1) in enumerate(rois):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=f"C{k}", lw=1.5))
            ax.text(x0, y0, str(k), color=f"C{k}", fontsize=9, va="bottom")
        ax.set_title("positive RoIs (IoU ≥ 0.5 with their box)", fontsize=10)
        for k in range(6):
            a = fig.add_subplot(grid[0, 2 + k])
            a.imshow(np.clip(crops[k].transpose(1, 2, 0), 0, 1))
            a.set_title(f"RoI {k}: crop", fontsize=9, color=f"C{k}")
            b = fig.add_subplot(grid[1, 2 + k])
            b.imshow(targets[k], cmap="gray", vmin=0, vmax=1)
            b.set_title(f"RoI {k}: target", fontsize=9, color=f"C{k}")
            for c in (a, b):
                c.set_xticks([])
                c.set_yticks([])
        plt.tight_layout()
        plt.show()
        """),
        md("""
        ## 2. The heads

        The FPN box head (FPN §4.2; Mask R-CNN Fig. 4, right) flattens each 7×7 RoI feature, runs two fully
        connected layers with ReLU, and predicts $K$ class scores (background included) and $4K$ box deltas, one box
        per class. The mask head is a small FCN on 14×14 RoI features: four 3×3 convolutions with ReLU, a 2×2
        stride-2 transposed convolution to 28×28 (notebook 02), and a 1×1 convolution to $K$ masks — one per class,
        all predicted, only one trained per RoI. The `small` preset uses 64 channels and 256-wide fc layers where
        the paper uses 256 and 1024.
        """),
        code("""
        params = init_params(cfg, seed=0)
        R = 8
        box_feats = rng.standard_normal((R, cfg.fpn_channels, 7, 7)).astype(np.float32)  # (R, C, 7, 7)
        mask_feats = rng.standard_normal((R, cfg.fpn_channels, 14, 14)).astype(np.float32)  # (R, C, 14, 14)
        class_logits, box_regression, _ = box_head_forward(params, box_feats)
        mask_logits, _ = mask_head_forward(params, mask_feats, cfg)
        print(f"box head:  {box_feats.shape} -> class logits {class_logits.shape}, box deltas {box_regression.shape}")
        print(f"mask head: {mask_feats.shape} -> mask logits {mask_logits.shape}\\n")
        for name, p in params.items():
            if name.startswith("roi_heads.") and name.endswith("weight"):
                print(f"{name:<44} {str(p.shape):>20} {p.size:>10,}")

        paper = MaskRCNNConfig.preset("resnet50_fpn")  # the paper's sizes, for comparison: 256 channels, fc 1024
        n_box = sum(p.size for p in init_box_head_params(256 * 7 * 7, 1024, paper.num_classes, rng).values())
        n_mask = sum(p.size for p in init_mask_head_params(256, paper, rng).values())
        print(f"\\nat the paper's sizes (81 COCO classes in the paper, 91 ids in torchvision): box head {n_box:,}, "
              f"mask head {n_mask:,} parameters")
        """),
        md("""
        **The losses of an untrained model, predicted.** The class-score layer starts with weights of standard
        deviation 0.01, so every class logit is close to 0, the softmax is uniform, and
        $L_{cls} = -\\log(1/K) = \\log 4 = 1.386$ for the 4 classes of the shapes data. The RPN's objectness logits
        start near 0 as well, so its log loss is $\\log 2 = 0.693$.
        """),
        code("""
        s = training_targets(sample)
        losses, _ = train_forward(params, cfg, [s["image"]], [{k: s[k] for k in ("boxes", "labels", "masks")}],
                                  np.random.default_rng(0))
        for name, value in losses.items():
            print(f"{name:>18}: {float(value):.3f}")
        print(f"{'log 4, log 2':>18}: {np.log(4):.3f}, {np.log(2):.3f}")
        """),
        md("""
        ## 3. Per-class sigmoid vs multinomial softmax (Table 2b)

        The mask head predicts one $m\\times m$ mask per class. Mask R-CNN's loss applies a sigmoid to each pixel of
        **the ground-truth class's mask only** and averages the binary cross-entropy; the other classes' masks get no
        gradient. The alternative, an FCN-style per-pixel softmax over the classes (the "multinomial" row of Table
        2b), makes the classes compete at every pixel. The paper: "this decouples mask and class prediction" and the
        softmax loses 5.5 mask AP.

        One pixel by hand, three masks (background, square, circle) with logits $(0, 1, 2)$, the RoI's class square,
        the pixel inside the square:

        - **sigmoid**: $L = -\\log\\sigma(1) = 0.313$; gradient $\\sigma(1) - 1 = -0.269$ on the square's logit and 0
          on the others;
        - **softmax**: $p = \\mathrm{softmax}(0, 1, 2) = (0.090, 0.245, 0.665)$, $L = -\\log 0.245 = 1.408$;
          gradient $p - \\text{onehot} = (0.090, -0.755, 0.665)$ — every class's logit is pushed.
        """),
        code("""
        cfg_softmax = dataclasses.replace(cfg, mask_loss="softmax")  # Table 2(b), "multinomial"
        logits = np.array([0.0, 1.0, 2.0]).reshape(1, 3, 1, 1)  # (P, K, m, m): one RoI, three classes, one pixel
        labels, target = np.array([1]), np.ones((1, 1, 1))  # the RoI is a square; the pixel is inside it
        for name, c in (("sigmoid", cfg), ("softmax", cfg_softmax)):
            loss, dlogits = mask_loss(logits, labels, target, c)
            print(f"{name}: loss {float(loss):.4f}, dL/dlogits {dlogits.ravel()}")
        """),
        md("""
        Now raise the *circle's* logit at that pixel while the square's stays at 1. The sigmoid loss of a square RoI
        does not change — the circle's mask is none of its business — while the softmax loss grows: to be a good
        square mask, this pixel must also be a bad circle mask. That coupling is what Table 2b measures.
        """),
        code("""
        z = np.linspace(-4, 6, 101)
        curves = {name: [float(mask_loss(np.array([0.0, 1.0, zc]).reshape(1, 3, 1, 1), labels, target, c)[0])
                         for zc in z] for name, c in (("sigmoid (Mask R-CNN)", cfg), ("softmax (multinomial)", cfg_softmax))}
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for name, values in curves.items():
            ax.plot(z, values, label=name)
        ax.set_xlabel("circle logit at a pixel of a square RoI")
        ax.set_ylabel("mask loss at that pixel")
        ax.legend()
        plt.show()
        """),
        md("""
        The same on whole 28×28 masks: random logits for the six RoIs above, their targets, and the size of the
        gradient each class's mask receives. The sigmoid sends gradient into one mask per RoI — the RoI's class — the
        softmax into all of them.
        """),
        code("""
        roi_labels = sample["labels"][matched]  # (P,) the class of each RoI's box
        logits = rng.standard_normal((6, cfg.num_classes, 28, 28))  # (P, K, 28, 28)
        fig, axes = plt.subplots(2, cfg.num_classes, figsize=(11, 5.6))
        for row, (name, c) in enumerate((("sigmoid", cfg), ("softmax", cfg_softmax))):
            loss, dlogits = mask_loss(logits, roi_labels, targets, c)
            for k in range(cfg.num_classes):
                axes[row, k].imshow(np.abs(dlogits[0, k]), cmap="Reds", vmin=0, vmax=np.abs(dlogits).max())
                axes[row, k].set_title(f"{name}: |dL/d mask {cfg.class_names[k]}|", fontsize=9)
                axes[row, k].axis("off")
        plt.suptitle(f"RoI 0, a {cfg.class_names[roi_labels[0]]}", fontsize=11)
        plt.tight_layout()
        plt.show()
        """),
        md("""
        ## 4. Smooth L1 vs L1

        The box regression loss of Fast R-CNN (Eq. 3) is the smooth L1, with a threshold $\\beta$:

        $$\\mathrm{smooth}_{L_1}(x) = \\begin{cases} 0.5\\,x^2/\\beta & |x| < \\beta \\\\ |x| - 0.5\\,\\beta &
          \\text{otherwise}\\end{cases}$$

        Far from the target it is L1: a constant gradient of ±1, so a badly placed box (an outlier) cannot blow up the
        gradient as L2 would ("less sensitive to outliers", Fast R-CNN §2.3). Near the target it is quadratic: the
        gradient $x/\\beta$ fades to 0, where L1's would flip between −1 and +1. Fast R-CNN uses $\\beta = 1$,
        torchvision $\\beta = 1/9$ for the RPN and the box head; $\\beta = 0$ is plain L1. By hand, at $x = 0.05$ with
        $\\beta = 1/9$: $0.5\\cdot 0.05^2\\cdot 9 = 0.01125$ and gradient $0.45$; L1 gives $0.05$ and $1$.
        """),
        code("""
        x = np.linspace(-2, 2, 401)
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
        for beta, label in ((1.0, "β = 1 (Fast R-CNN)"), (1 / 9, "β = 1/9 (torchvision)"), (0.0, "β = 0: L1")):
            values = [float(smooth_l1(np.array([v]), np.zeros(1), beta=beta)[0]) for v in x]
            grads = [float(smooth_l1(np.array([v]), np.zeros(1), beta=beta)[1][0]) for v in x]
            axes[0].plot(x, values, label=label)
            axes[1].plot(x, grads, label=label)
        axes[0].plot(x, 0.5 * x ** 2, "k:", label="0.5 x² (L2)")
        axes[0].set_ylim(0, 2.2)
        axes[0].set_title("loss")
        axes[1].set_title("gradient")
        for ax in axes:
            ax.set_xlabel("prediction − target")
            ax.legend(fontsize=8)
        plt.tight_layout()
        plt.show()
        loss, grad = smooth_l1(np.array([0.05]), np.zeros(1), beta=1 / 9)
        print(f"x = 0.05, β = 1/9: loss {float(loss):.5f}, gradient {grad[0]:.2f}")
        """),
        md("""
        In the box head, the loss is taken on the deltas of **the RoI's ground-truth class only**, and on positive RoIs
        only (Fast R-CNN Eq. 1, the $[u \\ge 1]$ factor): of the $4K$ deltas the head predicts per RoI, four get a
        gradient, and a background RoI's get none. `box_loss` for three RoIs — classes 2, background and 3 — shows
        which of the $3\\times 16$ deltas are trained:
        """),
        code("""
        labels3 = np.array([2, 0, 3])
        logits3 = rng.standard_normal((3, cfg.num_classes))
        regression3 = rng.standard_normal((3, 4 * cfg.num_classes))
        reg_targets3 = rng.standard_normal((3, 4))
        loss_cls, loss_box, dlogits3, dregression3 = box_loss(logits3, regression3, labels3, reg_targets3, cfg)
        fig, ax = plt.subplots(figsize=(8, 2))
        ax.imshow(dregression3 != 0, cmap="Greens", aspect="auto")
        ax.set_yticks(range(3), [f"RoI {i}: class {l}" for i, l in enumerate(labels3)])
        ax.set_xticks(range(0, 16, 4), [f"class {k}: t_x..t_h" for k in range(4)])
        ax.set_title("which deltas get a gradient", fontsize=10)
        plt.show()
        print(f"loss_classifier {float(loss_cls):.3f} (every RoI), loss_box_reg {float(loss_box):.3f} (positives only)")
        """),
        md("""
        **Next:** notebook 09 runs the trained heads at inference time, and scores them with COCO AP.
        """),
    ]


# =================================================================================================================
# 05 · the region proposal network
# =================================================================================================================

def nb05():
    return [
        md("""
        # 05 · The Region Proposal Network

        *Papers:* Ren et al., *Faster R-CNN*, NeurIPS 2015 — §3.1 (the RPN head: a 3×3 conv, then sibling 1×1 convs
        for objectness and box deltas at every anchor), §3.1.2 (the loss, Eq. 1), §3.1.3 (256 sampled anchors per
        image, up to half positive), §3.3 (NMS at IoU 0.7 on the proposals); Lin et al., *FPN*, CVPR 2017, §4.1 (the
        same head, shared, on P2–P6); Mask R-CNN §3.1 (1000 proposals per image at test time for FPN).
        · *Docs:* [the RPN](../docs/rpn.md), [box logic](../docs/box_logic.md), [losses](../docs/layers/losses.md)
        · *Code:* [`tinymask/rpn.py`](../tinymask/rpn.py), [`tinymask/nms.py`](../tinymask/nms.py),
        [`tinymask/anchors.py`](../tinymask/anchors.py) · *Tests:* `tests/test_model.py`, `tests/test_nms.py`

        What you will see:

        1. the order in which the head's outputs line up with the anchors, on a 2×2 map you can read;
        2. an untrained RPN: its targets, its sampled anchors, its loss (predictable by hand) and its proposals;
        3. the proposal pipeline step by step — top-$k$ per level, decoding, clipping, NMS — before and after a short
           training;
        4. a recall table: the fraction of ground-truth boxes that the top-$N$ proposals cover.
        """),
        setup("""
        from matplotlib.patches import Rectangle

        from tinymask.boxes import box_iou, clip_boxes, decode_boxes, remove_small_boxes
        from tinymask.layers import sigmoid
        from tinymask.model import init_params, predict
        from tinymask.nms import batched_nms
        from tinymask.rpn import flatten_head_outputs, rpn_loss, rpn_targets
        from tinymask.sampler import sample_balanced

        rng = np.random.default_rng(0)


        def draw_boxes(ax, boxes, color, lw=1.0, alpha=1.0):
            for x0, y0, x1, y1 in boxes:
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, lw=lw, alpha=alpha))
        """),
        md("""
        ## 1. How the head's outputs line up with the anchors

        The head produces, per level, objectness maps `(N, A, H, W)` (one logit per anchor of each cell) and delta
        maps `(N, 4A, H, W)`. The anchors are ordered level by level, cell by cell (row-major), then the $A$ anchors
        of the cell (notebook 04): anchor $(y\\cdot W + x)\\cdot A + a$. `flatten_head_outputs` permutes the maps into
        that order. On a 2×2 map with $A = 3$ we write $100y + 10x + a$ into each logit, and the flattened row must
        read $0, 1, 2, 10, 11, 12, 100, \\ldots$; a delta's channel $4a + c$ holds coordinate $c$ of anchor $a$.
        """),
        code("""
        A, H, W = 3, 2, 2
        objectness = np.zeros((1, A, H, W))  # (N, A, H, W)
        deltas = np.zeros((1, 4 * A, H, W))  # (N, 4A, H, W)
        for a in range(A):
            for y in range(H):
                for x in range(W):
                    objectness[0, a, y, x] = 100 * y + 10 * x + a
                    for c in range(4):
                        deltas[0, 4 * a + c, y, x] = 1000 * c + 100 * y + 10 * x + a
        obj_flat, deltas_flat = flatten_head_outputs([objectness], [deltas])  # (N, T), (N, T, 4)
        print("objectness, flattened:", obj_flat[0])
        print("deltas of anchor 4 (cell (0, 1), a = 1):", deltas_flat[0, 4])
        """),
        md("""
        ## 2. An untrained RPN

        `predict(..., return_stages=True)` returns the model's intermediate results along with the detections: the
        RPN's per-level outputs, the anchors and the proposals. We use it for the inference side, and the RPN's own
        functions for the training side.

        **Its loss, by hand.** The objectness layer starts with weights of standard deviation 0.01 (torchvision's
        `RPNHead`), so every logit is close to 0 and every probability close to 0.5: the binary cross-entropy on the
        sampled anchors is $-\\log 0.5 = \\log 2 = 0.693$. The box deltas start near 0 too, so the regression loss is
        the smooth L1 of the targets themselves.
        """),
        code("""
        from tinymask.config import MaskRCNNConfig
        from tinymask.data import ShapesDataset

        cfg = MaskRCNNConfig.preset("small")
        untrained = init_params(cfg, seed=0)
        val = ShapesDataset("val", num_images=2 if SMOKE else 40, seed=0)
        sample = val[1]
        gt = sample["boxes"].astype(np.float32)

        _, stages = predict(untrained, cfg, [sample["image"]], return_stages=True)
        obj_flat, deltas_flat = flatten_head_outputs(stages["objectness"], stages["deltas"])  # (1, T), (1, T, 4)
        anchors = stages["anchors"]  # (T, 4)
        print(f"{anchors.shape[0]} anchors; objectness logits between {obj_flat.min():.3f} and {obj_flat.max():.3f}")

        labels, reg_targets = rpn_targets(anchors, [gt], cfg)  # (1, T) in {1, 0, -1}, (1, T, 4)
        loss_obj, loss_box, _, _ = rpn_loss(obj_flat, deltas_flat, labels, reg_targets, cfg, np.random.default_rng(0))
        print(f"objectness loss {float(loss_obj):.4f} (log 2 = {np.log(2):.4f}); box loss {float(loss_box):.4f}")
        """),
        md("""
        The loss sees only a sample of the anchors: up to `rpn_batch_size_per_image` (256 in the paper, 128 in the
        `small` preset), at most half of them positive, the rest negatives chosen at random. Most anchors are easy
        negatives (background), and without sampling they would swamp the loss.
        """),
        code("""
        pos, neg = sample_balanced(labels[0], cfg.rpn_batch_size_per_image, cfg.rpn_positive_fraction, rng)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.imshow(sample["image"].transpose(1, 2, 0), extent=(0, 128, 128, 0))
        draw_boxes(ax, anchors[neg], "tab:red", lw=0.5, alpha=0.5)
        draw_boxes(ax, anchors[pos], "lime", lw=1.2)
        draw_boxes(ax, gt, "white", lw=2)
        ax.set_xlim(-40, 168)
        ax.set_ylim(168, -40)
        ax.set_title(f"sampled: {pos.sum()} positive (green), {neg.sum()} negative (red)", fontsize=10)
        plt.show()
        """),
        md("""
        ## 3. From head outputs to proposals, step by step

        `rpn_proposals` turns the head's outputs into proposals (torchvision's `filter_proposals`):

        1. on each level, keep the `pre_nms_top_n` anchors with the highest objectness logits;
        2. **decode** their deltas into boxes (Faster R-CNN Eq. 2 inverted, notebook 04) and take the sigmoid of the
           logits;
        3. **clip** the boxes to the image and drop those with a side below $10^{-3}$ pixel;
        4. **NMS** at IoU 0.7 within each level, then keep the `post_nms_top_n` best of the image.

        Below, the same steps written out with the library's pieces, and checked against the proposals `predict`
        made. The untrained RPN's logits are tiny random numbers, so its "best" anchors are a random choice and its
        decoded boxes are the anchors themselves.
        """),
        code("""
        def proposal_steps(stages, cfg):
            \"\"\"The proposal pipeline of rpn_proposals, one step at a time, for the first image.

            Returns {step: (boxes, scores, levels, anchors)} after each step, best score first.\"\"\"
            obj, dlt = flatten_head_outputs(stages["objectness"], stages["deltas"])
            obj, dlt, anchors = obj[0], dlt[0], stages["anchors"]
            counts = [o.shape[1] * o.shape[2] * o.shape[3] for o in stages["objectness"]]  # anchors per level
            starts = np.cumsum([0] + counts)
            top = np.concatenate([starts[l] + np.argsort(-obj[starts[l]:starts[l + 1]], kind="stable")[:cfg.rpn_pre_nms_top_n_test]
                                  for l in range(len(counts))])  # step 1: per level, best logits first
            level = np.searchsorted(starts, top, side="right") - 1  # (K,) level index of each candidate
            boxes = decode_boxes(dlt[top], anchors[top])  # step 2: (K, 4)
            scores = sigmoid(obj[top])  # (K,)
            anchors = anchors[top]  # (K, 4) the anchor each box was decoded from
            steps = {"top-k per level": (boxes, scores, level, anchors)}
            boxes = clip_boxes(boxes, stages["image_sizes"][0])  # step 3
            keep = remove_small_boxes(boxes, 1e-3)
            boxes, scores, level, anchors = boxes[keep], scores[keep], level[keep], anchors[keep]
            steps["clipped"] = (boxes, scores, level, anchors)
            keep = batched_nms(boxes, scores, level, cfg.rpn_nms_thresh)  # step 4: NMS within each level
            steps["after NMS"] = (boxes[keep], scores[keep], level[keep], anchors[keep])
            keep = keep[:cfg.rpn_post_nms_top_n_test]
            steps["proposals"] = (boxes[keep], scores[keep], level[keep], anchors[keep])
            return {name: tuple(a[np.argsort(-sc, kind="stable")] for a in (b, sc, lv, an))
                    for name, (b, sc, lv, an) in steps.items()}


        steps = proposal_steps(stages, cfg)
        print(" -> ".join(f"{name}: {len(b)}" for name, (b, *_) in steps.items()))
        print("same as predict's proposals:", np.array_equal(steps["proposals"][0], stages["proposals"][0]))
        """),
        md("""
        Now a short training run, so that the RPN has something to say. `tinymask.train.train` runs the full
        Mask R-CNN training loop (notebook 08): all five losses, SGD with momentum, a linear warm-up. In smoke mode
        (CI) it runs 2 iterations of one image, and the "trained" model is no better than the untrained one.
        """),
        train_briefly(),
        code("""
        _, stages_trained = predict(trained, cfg, [sample["image"]], return_stages=True)
        models = {"untrained": (untrained, stages), "trained": (trained, stages_trained)}
        level_colors = ["orange", "yellow", "cyan", "lime", "magenta"]  # P2..P6
        fig, axes = plt.subplots(2, 3, figsize=(15, 10))
        for row, (name, (_, st)) in enumerate(models.items()):
            steps = proposal_steps(st, cfg)
            print(f"{name:>9}: " + " -> ".join(f"{step} {len(b)}" for step, (b, *_) in steps.items()))
            boxes, scores, levels, anchors_used = steps["proposals"]
            for col, ax in enumerate(axes[row]):
                ax.imshow(sample["image"].transpose(1, 2, 0), extent=(0, 128, 128, 0))
                draw_boxes(ax, gt, "white", lw=2)
                ax.set_xlim(-20, 148)
                ax.set_ylim(148, -20)
            for b, a in zip(boxes[:5], anchors_used[:5]):  # decoding: anchor -> box
                axes[row, 0].add_patch(Rectangle(a[:2], a[2] - a[0], a[3] - a[1], fill=False, ec="cyan", ls="--"))
                draw_boxes(axes[row, 0], [b], "yellow", lw=1.5)
                axes[row, 0].annotate("", xy=((b[0] + b[2]) / 2, (b[1] + b[3]) / 2),
                                      xytext=((a[0] + a[2]) / 2, (a[1] + a[3]) / 2),
                                      arrowprops=dict(arrowstyle="->", color="yellow"))
            axes[row, 0].set_title(f"{name}: the 5 best, anchors (cyan, dashed)\\ndecoded into boxes (yellow)",
                                   fontsize=10)
            for b, l in zip(boxes[:20], levels[:20]):
                draw_boxes(axes[row, 1], [b], level_colors[l], lw=1.2)
            axes[row, 1].set_title(f"{name}: the 20 best proposals, coloured by level\\n(scores {scores[19]:.3f} to "
                                   f"{scores[0]:.3f})", fontsize=10)
            cand_boxes, cand_scores, cand_levels, _ = steps["clipped"]  # every candidate that entered NMS
            same = cand_levels == levels[0]  # NMS compares boxes of one level only
            iou = box_iou(boxes[:1], cand_boxes[same])[0]
            victims = cand_boxes[same][(iou > cfg.rpn_nms_thresh) & (cand_scores[same] < scores[0])]
            draw_boxes(axes[row, 2], victims, "cyan", lw=0.8)
            draw_boxes(axes[row, 2], boxes[:1], "lime", lw=2.5)
            axes[row, 2].set_title(f"{name}: the best proposal (green, P{levels[0] + 2}) and the\\n{len(victims)} "
                                   f"candidate(s) it suppresses (cyan, IoU > {cfg.rpn_nms_thresh})", fontsize=10)
        plt.tight_layout()
        plt.show()
        """),
        md("""
        Untrained, the deltas are close to 0 and every box is its anchor; trained, the deltas move and stretch the
        anchors onto the objects (Eq. 2 inverted). A trained RPN's best proposals sit on the objects; each level
        proposes its own boxes (colours: P2 orange, P3
        yellow, P4 cyan, P5 green, P6 magenta), and NMS compares boxes within a level only. At IoU 0.7 NMS is
        lenient: it removes the near-duplicates of a better box — the neighbouring anchors that regressed onto the
        same object — and lets boxes that overlap less through; the `post_nms_top_n` cut and the second stage's own
        NMS (at 0.5, per class, notebook 09) do the rest. Untrained, the "best" boxes are anchors picked at random,
        and hardly any candidate overlaps one of them that much.

        ## 4. Recall of the proposals

        The second stage can only find an object if some proposal covers it. The standard measure is the **recall**
        of the top-$N$ proposals: the fraction of ground-truth boxes that at least one of them overlaps with IoU
        $\\ge$ 0.5 (or 0.7), over a set of images. For reference, anchors in random order — which is what an untrained
        RPN amounts to.
        """),
        code("""
        def recall(proposals, gt_boxes, n, threshold):
            \"\"\"Fraction of all gt boxes that one of the first n proposals of their image covers at IoU >= threshold.\"\"\"
            covered = total = 0
            for p, g in zip(proposals, gt_boxes):
                if len(g) and len(p[:n]):
                    covered += int(np.sum(box_iou(g, p[:n]).max(axis=1) >= threshold))
                total += len(g)
            return covered / max(total, 1)


        gt_boxes = [val[i]["boxes"].astype(np.float32) for i in range(len(val))]
        proposals = {name: [predict(p, cfg, [val[i]["image"]], return_stages=True)[1]["proposals"][0]
                            for i in range(len(val))] for name, (p, _) in models.items()}
        proposals["random anchors"] = [anchors[rng.permutation(len(anchors))] for _ in range(len(val))]

        Ns = [10, 50, 100, cfg.rpn_post_nms_top_n_test]
        print(f"{len(val)} images, {sum(map(len, gt_boxes))} ground-truth boxes\\n")
        print(f"{'':>16}" + "".join(f"{f'top {n}':>9}" for n in Ns) + "   (IoU 0.5 | IoU 0.7)")
        for name, props in proposals.items():
            print(f"{name:>16}" + "".join(f"{recall(props, gt_boxes, n, 0.5):9.2f}" for n in Ns) + "  |"
                  + "".join(f"{recall(props, gt_boxes, n, 0.7):6.2f}" for n in Ns))
        """),
        md("""
        A trained RPN covers most objects with its first few dozen proposals, where random anchors need far more; and
        at IoU 0.7 the regression matters, since an anchor rarely fits an object that well without being moved. (In
        smoke mode the "trained" model has had 2 iterations and these numbers mean nothing.)

        **Next:** notebook 06 shows how the RoI heads read features for each proposal: RoIPool vs RoIAlign.
        """),
    ]


# =================================================================================================================
# 09 · inference and evaluation
# =================================================================================================================

def nb09():
    return [
        md("""
        # 09 · Inference, step by step, and COCO evaluation

        *Papers:* He et al., *Mask R-CNN*, ICCV 2017 — §3.1 "Inference": the box branch runs on the proposals, NMS,
        then the mask branch on the top detections; "the $m\\times m$ floating-number mask output is then resized to
        the RoI size, and binarized at a threshold of 0.5"; §4 and Tables 1–3 (COCO AP); Lin et al., *Microsoft COCO*,
        ECCV 2014 (the metric). · *Docs:* [the whole model](../docs/model.md) (inference),
        [evaluation](../docs/evaluation.md), [box logic](../docs/box_logic.md) (NMS, mask pasting)
        · *Code:* [`tinymask/model.py`](../tinymask/model.py) (`predict`),
        [`tinymask/roi_heads.py`](../tinymask/roi_heads.py) (`postprocess_detections`),
        [`tinymask/mask_paste.py`](../tinymask/mask_paste.py), [`tinymask/coco_eval.py`](../tinymask/coco_eval.py),
        [`tinymask/evaluate.py`](../tinymask/evaluate.py) · *Tests:* `tests/test_model.py`,
        `tests/test_mask_paste.py`, `tests/test_coco_eval.py`

        What you will see:

        1. COCO's AP on three tiny cases you can compute by hand;
        2. a briefly trained model's inference on one image, one step at a time: class scores (softmax), per-class
           boxes, per-class NMS class by class, mask pasting, the final result;
        3. the COCO evaluation of the model on a validation set: the table and the precision-recall curves.

        The model is trained for a few minutes here, so its numbers are modest; in smoke mode (CI) it is trained for
        2 iterations and its detections are noise — the steps are the same. Set `TINYMASK_CHECKPOINT` to a
        checkpoint of `tinymask train` to look at a better model.
        """),
        setup("""
        from matplotlib.patches import Rectangle

        from tinymask.boxes import clip_boxes, decode_boxes, remove_small_boxes
        from tinymask.coco_eval import evaluate, format_table
        from tinymask.evaluate import coco_results, evaluate_model
        from tinymask.mask_head import mask_probabilities
        from tinymask.mask_paste import binarize, expand_boxes, paste_masks_in_image
        from tinymask.model import predict
        from tinymask.nms import nms
        from tinymask.roi_heads import softmax
        from tinymask.visualize import draw_detections, plot_loss_curves
        """),
        md("""
        ## 1. COCO AP by hand

        For one category, COCO sorts all detections by score, walks down the list and marks each a true positive if
        it matches a still-unmatched ground-truth object with IoU at least $t$, a false positive otherwise. Precision
        and recall after each detection trace a curve; AP is the mean of its (monotone envelope's) precision at the
        101 recall levels $0, 0.01, \\ldots, 1$. The headline "AP" averages this over $t = 0.50, 0.55, \\ldots, 0.95$
        ([`tinymask/coco_eval.py`](../tinymask/coco_eval.py) explains every rule).

        One object, box $(0, 0, 10, 10)$:

        - **a miss ranked first** (score 0.9, elsewhere), then a perfect hit (0.8): after the first detection
          precision 0, recall 0; after the second precision 1/2, recall 1. The envelope is 1/2 at every recall level:
          AP = 0.5 at every threshold;
        - **the same two, hit ranked first**: precision 1 at recall 1, AP = 1;
        - **one detection with IoU 0.6** (box $(0, 0, 10, 6)$: $60/100$): a hit at $t = 0.50, 0.55, 0.60$ and a miss at
          the seven higher thresholds, so AP@[.5:.95] $= 3/10$ while AP50 = 1.
        """),
        code("""
        gt = {"images": [{"id": 0, "height": 32, "width": 32}], "categories": [{"id": 1, "name": "thing"}],
              "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
                               "iscrowd": 0}]}


        def det(box_xywh, score):
            return {"image_id": 0, "category_id": 1, "bbox": box_xywh, "score": score}


        cases = {"miss first, then a hit": [det([20, 20, 10, 10], 0.9), det([0, 0, 10, 10], 0.8)],
                 "hit first, then a miss": [det([20, 20, 10, 10], 0.8), det([0, 0, 10, 10], 0.9)],
                 "one detection at IoU 0.6": [det([0, 0, 10, 6], 0.9)]}
        for name, dets in cases.items():
            summary = evaluate(gt, dets, iou_type="bbox").summary()
            print(f"{name:>26}: AP {summary['AP']:.3f}   AP50 {summary['AP50']:.3f}   AP75 {summary['AP75']:.3f}")
        """),
        md("""
        ## 2. A model, trained briefly
        """),
        train_briefly(),
        code("""
        from IPython.display import display

        if not CHECKPOINT:
            display(plot_loss_curves(os.path.join(run_dir, "log.jsonl")))  # the training log: each loss and the lr
        """),
        md("""
        ## 3. Inference on one image, step by step

        `predict(..., return_stages=True)` returns the detections *and* the intermediate results. We redo the
        second stage's steps from them with the library's pieces and check that we land on the same detections.
        """),
        code("""
        val = ShapesDataset("val", num_images=3 if SMOKE else 50, seed=0)
        sample = val[0]
        results, stages = predict(trained, cfg, [sample["image"]], return_stages=True)
        proposals = stages["proposals"][0]  # (P, 4) the RPN's proposals, best first
        class_logits, box_regression = stages["class_logits"], stages["box_regression"]  # (P, K), (P, 4K)
        print(f"{len(proposals)} proposals -> class logits {class_logits.shape}, box deltas {box_regression.shape}")
        """),
        md("""
        **Scores.** The box head's $K$ logits per proposal (background included) become probabilities with a softmax,
        $p_k = e^{z_k} / \\sum_j e^{z_j}$. Each proposal then stands for $K - 1$ candidate detections, one per object
        class, scored $p_k$. The first proposal's numbers by hand:
        """),
        code("""
        scores = softmax(class_logits)  # (P, K)
        z = class_logits[0]
        print("logits z       :", z)
        print("exp(z) / sum   :", np.exp(z - z.max()) / np.exp(z - z.max()).sum())
        print("softmax (lib)  :", scores[0])
        fig, ax = plt.subplots(figsize=(6, 2.8))
        for k in range(1, cfg.num_classes):
            ax.hist(scores[:, k], bins=40, range=(0, 1), histtype="step", label=cfg.class_names[k])
        ax.set_yscale("log")
        ax.set_xlabel("class probability")
        ax.set_ylabel("proposals")
        ax.legend(fontsize=8)
        plt.show()
        """),
        md("""
        **Per-class boxes and per-class NMS.** Every proposal has a box per class: its $4K$ deltas decoded with the
        box head's weights $(10, 10, 5, 5)$ (notebook 04), clipped to the image. Candidates scoring above
        `box_score_thresh` (0.05) enter NMS at IoU `box_nms_thresh` (0.5) — **separately for each class**, so a
        square never suppresses a circle. The best `box_detections_per_img` of all classes together are the
        detections. Class by class:
        """),
        code("""
        K = cfg.num_classes
        boxes_all = decode_boxes(box_regression, proposals, cfg.box_coder_weights)  # (P, 4K): a box per class
        boxes_all = clip_boxes(boxes_all.reshape(-1, 4), stages["image_sizes"][0]).reshape(-1, K, 4)  # (P, K, 4)

        kept_boxes, kept_scores, kept_labels = [], [], []
        fig, axes = plt.subplots(2, K - 1, figsize=(4.2 * (K - 1), 8.4))
        for k in range(1, K):
            candidates = np.flatnonzero(scores[:, k] > cfg.box_score_thresh)
            candidates = candidates[remove_small_boxes(boxes_all[candidates, k], 1e-2)]
            keep = candidates[nms(boxes_all[candidates, k], scores[candidates, k], cfg.box_nms_thresh)]
            kept_boxes.append(boxes_all[keep, k])
            kept_scores.append(scores[keep, k])
            kept_labels.append(np.full(len(keep), k))
            for row, (idx, title) in enumerate(((candidates, "before NMS"), (keep, "after NMS"))):
                ax = axes[row, k - 1]
                ax.imshow(sample["image"].transpose(1, 2, 0), extent=(0, 128, 128, 0))
                for i in idx:
                    x0, y0, x1, y1 = boxes_all[i, k]
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=plt.cm.autumn(1 - scores[i, k]),
                                           lw=0.5 + 2 * scores[i, k], alpha=0.3 + 0.7 * scores[i, k]))
                ax.set_title(f"{cfg.class_names[k]}: {len(idx)} {title}", fontsize=10)
                ax.set_xlim(0, 128)
                ax.set_ylim(128, 0)
        plt.tight_layout()
        plt.show()

        kept_boxes, kept_scores, kept_labels = map(np.concatenate, (kept_boxes, kept_scores, kept_labels))
        top = np.argsort(-kept_scores, kind="stable")[:cfg.box_detections_per_img]
        detections = stages["detections"][0]  # what predict's postprocess_detections made
        print(f"{len(top)} detections by hand, {len(detections['scores'])} from predict; same scores:",
              np.allclose(np.sort(kept_scores[top]), np.sort(detections["scores"])))
        """),
        md("""
        **Masks.** The mask branch runs on the detections' boxes only (§3.1: "the mask branch is then applied to the
        highest scoring 100 detection boxes"), predicts $K$ masks of 28×28 for each, and keeps the one of the
        detection's class, through a sigmoid. `paste_masks_in_image` puts it back into the image: the mask is padded
        by one pixel of zeros, the box enlarged by $30/28$ to match, the padded mask resized bilinearly onto the
        enlarged box, then thresholded at 0.5 (`binarize`). The padding lets the mask fade out smoothly at the box's
        border instead of being cut there.
        """),
        code("""
        if len(detections["scores"]):
            labels = detections["labels"]
            probs = mask_probabilities(stages["mask_logits"], labels, cfg)  # (D, 28, 28) the class's mask, sigmoid
            box = detections["boxes"][:1]  # (1, 4) the best detection
            soft = paste_masks_in_image(probs[:1], box, (128, 128))  # (1, 128, 128)
            hard = binarize(soft)  # (1, 128, 128) bool
            print("same as predict's mask:", np.array_equal(hard[0], results[0]["masks"][0].astype(bool)))

            fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
            axes[0].imshow(probs[0], cmap="viridis", vmin=0, vmax=1)
            axes[0].set_title(f"28×28 mask of class {cfg.class_names[labels[0]]}", fontsize=10)
            axes[1].imshow(sample["image"].transpose(1, 2, 0), extent=(0, 128, 128, 0))
            for b, style, label in ((box[0], "-", "box"), (expand_boxes(box, 30 / 28)[0], "--", "enlarged by 30/28")):
                axes[1].add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec="yellow", ls=style,
                                            lw=1.5, label=label))
            axes[1].legend(fontsize=8, loc="lower right")
            axes[1].set_title("the detection's box", fontsize=10)
            axes[2].imshow(soft[0], extent=(0, 128, 128, 0), cmap="viridis", vmin=0, vmax=1)
            axes[2].set_title("pasted (probabilities)", fontsize=10)
            axes[3].imshow(hard[0], extent=(0, 128, 128, 0), cmap="gray")
            axes[3].set_title("binarized at 0.5", fontsize=10)
            plt.tight_layout()
            plt.show()
        else:
            print("no detections above the score threshold: this model has not learned enough yet")
        """),
        md("""
        **The result**, next to the ground truth, on a few validation images (detections scoring at least 0.3; after
        a few minutes of training the boxes are found before the classes are sure):
        """),
        code("""
        fig, axes = plt.subplots(2, 3, figsize=(12, 8.4))
        for col in range(3):
            s = val[col % len(val)]
            pred = predict(trained, cfg, [s["image"]])[0]
            draw_detections(axes[0, col], s["image"], s["boxes"], s["labels"], masks=s["masks"],
                            class_names=cfg.class_names)
            draw_detections(axes[1, col], s["image"], pred["boxes"], pred["labels"], pred["scores"], pred["masks"],
                            class_names=cfg.class_names, score_threshold=0.3)
            axes[0, col].set_title("ground truth", fontsize=10)
            axes[1, col].set_title(f"prediction ({np.sum(pred['scores'] >= 0.3)} scoring 0.3 or more)", fontsize=10)
        plt.tight_layout()
        plt.show()
        """),
        md("""
        ## 4. COCO evaluation

        `evaluate_model` predicts every image of the validation set, writes each detection as a COCO result (box as
        `[x, y, width, height]`, mask as a compressed RLE; `coco_results`), and runs the evaluation twice: on boxes
        (`iou_type="bbox"`) and on masks (`"segm"`, IoU between masks). One detection as COCO sees it:
        """),
        code("""
        first = coco_results(results[0], image_id=0)[:1]
        print(first if first else "no detections")
        report = evaluate_model(trained, cfg, val)
        print(f"{report['num_images']} images, {len(report['results'])} detections, {report['seconds']:.0f} s\\n")
        print("segm (mask AP)")
        print(format_table(report["segm"]))
        """),
        md("""
        **Precision-recall curves.** `result.precision` has shape $(T, R, K, A, M)$: IoU threshold × 101 recall levels
        × category × area range (all, small, medium, large) × detections per image (1, 10, 100), already the
        monotone envelope; $-1$ marks a category without ground truth. AP is the mean of a curve, AP@[.5:.95] the mean
        over the ten thresholds. At IoU 0.5 a roughly placed box counts; at 0.75 it must be tight — the gap between
        the curves is localisation quality.
        """),
        code("""
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
        for ax, iou_type in zip(axes, ("bbox", "segm")):
            result = report[iou_type]
            for k, name in enumerate(result.category_names):
                for t, style in ((0, "-"), (5, "--")):  # IoU thresholds 0.50 and 0.75
                    p = result.precision[t, :, k, 0, -1]  # (R,) area "all", 100 detections
                    if np.all(p < 0):
                        continue  # no ground truth of this category
                    ax.plot(result.recall_thresholds, p, style, color=f"C{k}",
                            label=f"{name} @{result.iou_thresholds[t]:.2f}: AP {p.mean():.2f}")
            ax.set_xlabel("recall")
            ax.set_title(f"{iou_type}: AP {result.stats[0]:.3f}, AP50 {result.stats[1]:.3f}, AP75 {result.stats[2]:.3f}",
                         fontsize=10)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("precision")
        plt.tight_layout()
        plt.show()
        """),
        md("""
        For scale: the paper's ResNet-101-FPN reaches 35.7 mask AP on COCO after 160k iterations of 16 images
        (Table 1); the shapes data are far easier, and `tinymask train` with its default recipe (3000 iterations of
        4 images) gets much further than the few minutes above.
        """),
    ]


# =================================================================================================================
# 10 · inspecting weights and activations
# =================================================================================================================

def nb10():
    return [
        md("""
        # 10 · Inspecting weights, activations and gradients

        *Papers:* He et al., *Delving Deep into Rectifiers*, ICCV 2015, §2.2 (the "He" / Kaiming initialisation:
        Eq. 10 scales by the fan-in, Eq. 14 by the fan-out, which torchvision's ResNet uses), cited by ResNet §3.4; Wu & He, *Group Normalization*, ECCV 2018; the initialisations of torchvision's
        Mask R-CNN, which tinymask follows module by module. · *Code:* `init_params` in
        [`tinymask/model.py`](../tinymask/model.py) and the `init_*` functions of
        [`tinymask/backbone/resnet.py`](../tinymask/backbone/resnet.py), [`tinymask/backbone/fpn.py`](../tinymask/backbone/fpn.py),
        [`tinymask/rpn.py`](../tinymask/rpn.py), [`tinymask/roi_heads.py`](../tinymask/roi_heads.py),
        [`tinymask/mask_head.py`](../tinymask/mask_head.py) · *Docs:* [the whole model](../docs/model.md),
        [norms](../docs/layers/norms.md)

        matterport's `inspect_weights` notebook, for tinymask. What you will see:

        1. every layer's initial standard deviation predicted from its initialisation rule, and measured;
        2. per-layer weight statistics before and after a short training, and histograms;
        3. activations for one image, level by level: mean, spread, range, and the fraction of zeros after each ReLU;
        4. gradient sizes per layer, relative to the weights they update.
        """),
        setup("""
        from tinymask.backbone import fpn_forward
        from tinymask.backbone.resnet import bottleneck_forward, stem_forward
        from tinymask.layers import linear_forward, relu_forward
        from tinymask.layers.conv import conv2d_forward
        from tinymask.model import init_params, predict, resnet_config, train_backward, train_forward
        from tinymask.transform import preprocess


        def short(name):
            \"\"\"A parameter name without torchvision's long prefixes.\"\"\"
            for prefix in ("backbone.body.", "backbone.", "roi_heads.", "rpn.head."):
                if name.startswith(prefix):
                    return name[len(prefix):] if prefix != "rpn.head." else "rpn." + name[len(prefix):]
            return name
        """),
        md("""
        ## 1. The initial spread of every layer, predicted

        Each module initialises its weights the way torchvision does, and each rule fixes the standard deviation:

        | layers | rule | std |
        |---|---|---|
        | ResNet convs, mask head convs and deconv | He normal, fan-out | $\\sqrt{2 / (C_\\text{out} k^2)}$ |
        | FPN convs | uniform $\\pm\\sqrt{3 / \\text{fan-in}}$ (`kaiming_uniform_(a=1)`) | $\\sqrt{1 / (C_\\text{in} k^2)}$ |
        | RPN head | normal | 0.01 |
        | box head fc6, fc7 | uniform $\\pm 1/\\sqrt{\\text{fan-in}}$ (PyTorch's `nn.Linear`) | $1 / \\sqrt{3\\,\\text{fan-in}}$ |
        | class scores / box deltas | normal | 0.01 / 0.001 |

        For the stem's 7×7 conv with 32 output channels: $\\sqrt{2 / (32\\cdot 49)} = 0.0357$. (The mask head's
        deconv has layout `(C_in, C_out, k, k)`, so its fan-out is `shape[1]·k²`; its last 1×1 conv to the $K$ masks
        uses fan-out $K$.) A uniform distribution on $\\pm b$ has standard deviation $b/\\sqrt 3$.
        """),
        code("""
        from tinymask.config import MaskRCNNConfig

        cfg = MaskRCNNConfig.preset("small")
        initial = init_params(cfg, seed=0)


        def predicted_std(name, shape):
            \"\"\"The standard deviation the initialisation rule gives (the table above).\"\"\"
            if "rpn." in name:
                return 0.01
            if "cls_score" in name:
                return 0.01
            if "bbox_pred" in name:
                return 0.001
            if "box_head.fc" in name:
                return 1 / np.sqrt(3 * shape[1])
            if "fpn." in name:
                return np.sqrt(1 / np.prod(shape[1:]))
            if "conv5_mask" in name:  # transposed conv: (C_in, C_out, k, k)
                return np.sqrt(2 / (shape[1] * shape[2] * shape[3]))
            if "mask_fcn_logits" in name:
                return np.sqrt(2 / shape[0])
            return np.sqrt(2 / (shape[0] * shape[2] * shape[3]))  # He normal, fan-out


        weights = [n for n, p in initial.items() if p.ndim >= 2]  # conv and fc weights, in forward order
        print(f"{'layer':<38} {'shape':>18} {'predicted std':>13} {'measured':>9}")
        for name in weights:
            p = initial[name]
            print(f"{short(name):<38} {str(p.shape):>18} {predicted_std(name, p.shape):13.4f} {p.std():9.4f}")
        """),
        md("""
        ## 2. After a short training

        The same table after training, with the relative change $\\lVert w - w_0\\rVert / \\lVert w_0\\rVert$ of each
        layer. (In smoke mode the model trains for 2 iterations and barely moves.)
        """),
        train_briefly(),
        code("""
        print(f"{'layer':<38} {'std init':>9} {'std now':>9} {'mean':>8} {'min':>8} {'max':>8} {'change':>7}")
        for name in weights:
            w0, w = initial[name], trained[name]
            change = np.linalg.norm(w - w0) / np.linalg.norm(w0)
            print(f"{short(name):<38} {w0.std():9.4f} {w.std():9.4f} {w.mean():8.4f} {w.min():8.3f} {w.max():8.3f} "
                  f"{change:7.1%}")
        gammas = [n for n in trained if n.endswith(".weight") and trained[n].ndim == 1]
        g = np.concatenate([trained[n] for n in gammas])
        print(f"\\ngroup norm scales γ ({len(gammas)} norms): init all 1, now mean {g.mean():.3f}, "
              f"range {g.min():.3f} to {g.max():.3f}")
        """),
        code("""
        show = [n for n in ("backbone.body.conv1.weight", "backbone.body.layer3.0.conv2.weight",
                            "backbone.fpn.layer_blocks.0.0.weight", "rpn.head.conv.0.0.weight",
                            "roi_heads.box_head.fc6.weight", "roi_heads.box_predictor.cls_score.weight",
                            "roi_heads.mask_head.0.0.weight", "roi_heads.mask_predictor.mask_fcn_logits.weight")
                if n in trained]
        fig, axes = plt.subplots(2, 4, figsize=(16, 6))
        for ax, name in zip(axes.ravel(), show):
            lo, hi = min(initial[name].min(), trained[name].min()), max(initial[name].max(), trained[name].max())
            ax.hist(initial[name].ravel(), bins=60, range=(lo, hi), histtype="step", label="init", density=True)
            ax.hist(trained[name].ravel(), bins=60, range=(lo, hi), histtype="step", label="trained", density=True)
            ax.set_title(short(name), fontsize=9)
        axes[0, 0].legend(fontsize=8)
        plt.tight_layout()
        plt.show()
        """),
        md("""
        ## 3. Activations for one image

        We run the backbone block by block with the library's forward functions, keeping every output: the stem
        (conv, norm, ReLU, max pool), each bottleneck block's output (after its final ReLU), the FPN levels (no ReLU:
        they are linear maps of the blocks), the RPN head's hidden layer and the box head's two fc layers (each after
        a ReLU), recomputed from their weights. "zeros" is the fraction of exact zeros — after a ReLU, the units that
        are off; a unit off for every input is a *dead* ReLU.
        """),
        code("""
        def activations(params, image):
            \"\"\"Named activations of one image: backbone blocks, FPN levels, RPN hidden layer, box head fc6 / fc7.\"\"\"
            rcfg = resnet_config(cfg)
            batch, _, _ = preprocess([image], cfg)
            acts = {}
            x, _ = stem_forward(params, "backbone.body.", batch, rcfg)
            acts["stem"] = x
            features = {}
            for stage in (2, 3, 4, 5):
                for b in range(rcfg.stage_blocks[stage - 2]):
                    stride = rcfg.stride(stage) if b == 0 else 1
                    x, _ = bottleneck_forward(params, f"backbone.body.layer{stage - 1}.{b}.", x, rcfg,
                                              planes=rcfg.planes(stage), stride=stride)
                    acts[f"C{stage} block {b}"] = x
                features[f"C{stage}"] = x
            pyramid, _ = fpn_forward(params, features)
            acts.update(pyramid)
            hidden, _ = conv2d_forward(pyramid["P2"], params["rpn.head.conv.0.0.weight"],
                                       params["rpn.head.conv.0.0.bias"], padding=1)
            acts["RPN hidden (P2)"], _ = relu_forward(hidden)
            _, stages = predict(params, cfg, [image], return_stages=True)
            h = stages["box_features"].reshape(len(stages["box_features"]), -1)  # (P, C·7·7)
            for fc in ("fc6", "fc7"):
                h, _ = linear_forward(h, params[f"roi_heads.box_head.{fc}.weight"], params[f"roi_heads.box_head.{fc}.bias"])
                h, _ = relu_forward(h)
                acts[f"box head {fc}"] = h
            acts["class logits"] = stages["class_logits"]
            return acts


        image = ShapesDataset("val", num_images=1, seed=0)[0]["image"]
        acts = {"init": activations(initial, image), "trained": activations(trained, image)}
        print(f"{'activation':<18} {'shape':>18} | {'mean':>7} {'std':>7} {'min':>7} {'max':>7} {'zeros':>6} "
              f"| {'mean':>7} {'std':>7} {'min':>7} {'max':>7} {'zeros':>6}")
        print(f"{'':<18} {'':>18} | {'at initialisation':^39} | {'trained':^39}")
        for name, a in acts["init"].items():
            row = f"{name:<18} {str(a.shape):>18}"
            for which in ("init", "trained"):
                v = acts[which][name]
                row += f" | {v.mean():7.3f} {v.std():7.3f} {v.min() + 0.0:7.2f} {v.max():7.2f} {np.mean(v == 0):6.1%}"
            print(row)
        for name in ("box head fc6", "box head fc7"):
            dead = {w: np.mean(np.all(acts[w][name] == 0, axis=0)) for w in acts}  # units off for every proposal
            print(f"{name}: units that are zero for all {len(acts['init'][name])} proposals: "
                  f"{dead['init']:.0%} at initialisation, {dead['trained']:.0%} trained")
        """),
        code("""
        names = ["stem", "C2 block 0", "C3 block 0", "C4 block 0", "C5 block 0", "P2", "P3", "P4", "P5"]
        fig, axes = plt.subplots(1, len(names), figsize=(2.1 * len(names), 2.6), sharey=False)
        for ax, name in zip(axes, names):
            for which in ("init", "trained"):
                v = acts[which][name].ravel()
                ax.hist(v[v != 0], bins=50, histtype="step", density=True, label=which)
            ax.set_title(name, fontsize=9)
            ax.set_yticks([])
        axes[0].legend(fontsize=7)
        plt.tight_layout()
        plt.show()
        """),
        md("""
        (Histograms of the non-zero values; the zeros are in the table.) Group norm keeps each block's pre-activation
        at zero mean and unit spread per group, so about half of every ReLU's inputs are negative: the "zeros" column
        of the backbone starts near 50 %.

        ## 4. Gradients, relative to the weights

        A rule of thumb from CS231n: an SGD step $\\eta\\,\\lVert g\\rVert$ should be about $10^{-3}$ of
        $\\lVert w\\rVert$ — much smaller and the layer does not learn, much larger and it thrashes. One training
        batch through `train_forward` / `train_backward`, at initialisation and after training, with the recipe's
        learning rate (the momentum makes the real step a few times larger):
        """),
        code("""
        data = ShapesDataset("train", num_images=4, seed=1)
        images = [data[i]["image"] for i in range(2)]
        targets = [{k: data[i][k] for k in ("boxes", "labels", "masks")} for i in range(2)]
        lr = 0.02
        ratios = {}
        for which, params in (("init", initial), ("trained", trained)):
            _, cache = train_forward(params, cfg, images, targets, np.random.default_rng(0))
            grads = train_backward(cache)
            ratios[which] = [lr * np.linalg.norm(grads[n]) / np.linalg.norm(params[n]) for n in weights]
        fig, ax = plt.subplots(figsize=(14, 3.6))
        x = np.arange(len(weights))
        for dx, which in ((-0.2, "init"), (0.2, "trained")):
            ax.bar(x + dx, ratios[which], width=0.4, label=which)
        ax.axhline(1e-3, color="k", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xticks(x, [short(n).replace(".weight", "") for n in weights], rotation=90, fontsize=7)
        ax.set_ylabel("lr · ||g|| / ||w||")
        ax.legend()
        plt.tight_layout()
        plt.show()
        """),
        md("""
        Layers initialised with small weights (the RPN head at 0.01, the class scores at 0.01) see relatively large
        updates — their weights are small, not their gradients. Three layers stand out at the other end:
        `fpn.layer_blocks.1`–`3`, the output convolutions of P3, P4 and P5, get by far the least gradient. The reason is
        FPN's level assignment (Eq. 1): an RoI of width $w$ and height $h$ is pooled from level
        $k = \lfloor 4 + \log_2(\sqrt{wh}/224)\rfloor$, clamped to 2…5, so every box smaller than 224 / 2 = 112
        pixels reads P2 — and every shape in a 128×128 image is. P3–P5 then feed only the RPN, whose head reads them
        through weights of size 0.01. The levels the shapes' boxes are assigned to:
        """),
        code("""
        from tinymask.layers import assign_fpn_levels

        shapes = ShapesDataset("val", num_images=100, seed=0)  # generating 100 images takes a fraction of a second
        boxes = np.concatenate([shapes[i]["boxes"] for i in range(len(shapes))]).astype(np.float64)
        levels = assign_fpn_levels(boxes, k_min=2, k_max=5)  # FPN Eq. 1 with k0 = 4 and 224
        print({f"P{k}": int(np.sum(levels == k)) for k in (2, 3, 4, 5)}, "of", len(boxes), "boxes;",
              f"sqrt(w·h) from {np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)).min():.0f} "
              f"to {np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)).max():.0f} pixels")
        """),
        md("""
        On COCO images resized to 800 pixels, objects span all four levels; on 128-pixel shapes, a model that should
        use P3–P5 for its RoIs would need a smaller canonical size than 224 in Eq. 1.
        """),
    ]


# =================================================================================================================
# 01 · a tour: the whole pipeline in one sitting
# =================================================================================================================

TOUR_ITERATIONS, TOUR_MINUTES = 300, "4 to 6 minutes"


def nb01():
    return [
        md("""
        # 01 · A tour: from a picture to masks, in one sitting

        *Paper:* He, Gkioxari, Dollár, Girshick, [*Mask R-CNN*](https://arxiv.org/abs/1703.06870), ICCV 2017 — §3
        (the model: a backbone, a region proposal network, and three heads that classify, refine a box and predict a
        mask for every region), §3.1 (training and inference), §4 (COCO AP). · *Docs:* [the index](../docs/index.md)
        (every part of the paper mapped to its module, page, test and notebook), [the whole model](../docs/model.md),
        [using tinymask](../docs/usage.md) · *Code:* [`tinymask/model.py`](../tinymask/model.py),
        [`tinymask/train.py`](../tinymask/train.py), [`tinymask/visualize.py`](../tinymask/visualize.py),
        [`tinymask/evaluate.py`](../tinymask/evaluate.py) · *Tests:* `tests/test_model.py`, `tests/test_train.py`

        What you will see, each step in a few lines of library calls:

        1. one image of the built-in *shapes* data set and its targets (boxes, classes, masks), checked by hand;
        2. the untrained model on it: its size, its five losses (two of them predictable), its useless detections;
        3. a short training run with `tinymask.train.train` — the same loop as `tinymask train`;
        4. the trained model on held-out images, its masks, boxes and scores next to the ground truth;
        5. the COCO table (box and mask AP) on held-out images;
        6. where to go next.

        **Smoke mode.** With `TINYMASK_SMOKE=1` (how CI runs this notebook) the model trains for 3 iterations on a
        handful of images: its detections, scores and AP **mean nothing**, only that every step runs. In full mode it
        trains for 300 iterations of 4 images, about 4 to 6 minutes on a laptop CPU. To look at a model trained for
        longer, run `tinymask train` and point the environment variable `TINYMASK_CHECKPOINT` at its best/ or
        last/ folder before starting Jupyter.
        """),
        setup_one_blas_thread("""
        import tempfile

        from IPython.display import display

        from tinymask.config import MaskRCNNConfig
        from tinymask.data import ShapesDataset
        from tinymask.evaluate import evaluate_model
        from tinymask.model import init_params, predict, train_forward
        from tinymask.train import Recipe, load_checkpoint, train
        from tinymask.visualize import draw_detections, plot_loss_curves
        """),
        md("""
        ## 1. One image and its targets

        A sample of any tinymask data set is a dict of arrays (`tinymask/data/__init__.py` lists them): the image
        `(3, H, W)` in $[0, 1]$, and for its $G$ instances the boxes `(G, 4)` as $(x_0, y_0, x_1, y_1)$ in pixels,
        the class labels `(G,)` (1, 2, 3 = square, circle, triangle; 0 is kept for the background) and the binary
        masks `(G, H, W)`. That is all Mask R-CNN needs to learn from (§3.1).

        The coordinates are continuous: pixel $(i, j)$ — row $i$, column $j$ — covers the square
        $[j, j+1) \\times [i, i+1)$ ([conventions](../docs/conventions.md)). So the tight box around a mask runs from
        the left edge of its leftmost pixel to the right edge of its rightmost one, $x_0 = \\min j$ and
        $x_1 = \\max j + 1$, and the same for $y$. We check that by hand on every instance:
        """),
        code("""
        train_set = ShapesDataset("train", num_images=1000, seed=0)  # generated on demand: nothing is stored
        names = train_set.class_names  # ["background", "square", "circle", "triangle"]
        index = next(i for i in range(100) if len(train_set[i]["labels"]) >= 3)  # an image with 3 or more shapes
        sample = train_set[index]
        image, boxes, labels, masks = sample["image"], sample["boxes"], sample["labels"], sample["masks"]
        print(f"training image {index}: {image.shape} {image.dtype}, values in [{image.min():.2f}, {image.max():.2f}]; "
              f"{len(labels)} instances")
        for k in range(len(labels)):
            rows, cols = np.nonzero(masks[k])  # the pixels of instance k
            by_hand = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
            print(f"  {k}: {names[labels[k]]:<8} box {boxes[k]}  by hand from the mask {by_hand}  "
                  f"area {masks[k].sum()} pixels")
        """),
        md("""
        Drawn with `draw_detections` (every picture here uses `extent=(0, W, H, 0)`, so a box is drawn at exactly its
        coordinates), then each mask on its own with its box:
        """),
        code("""
        G = len(labels)
        fig, axes = plt.subplots(1, G + 1, figsize=(3.4 * (G + 1), 3.6))
        draw_detections(axes[0], image, boxes, labels, masks=masks, class_names=names)
        axes[0].set_title("image with its targets", fontsize=10)
        for k in range(G):
            ax = axes[k + 1]
            ax.imshow(masks[k], cmap="gray", extent=(0, 128, 128, 0), interpolation="nearest")
            x0, y0, x1, y1 = boxes[k]
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="tab:orange", lw=1.5))
            ax.set_title(f"mask {k}: {names[labels[k]]}", fontsize=10)
        plt.tight_layout()
        plt.show()
        """),
        md("""
        ## 2. The model, untrained

        The `small` preset (`tinymask/config.py`) is Mask R-CNN with a narrow ResNet-FPN backbone: one bottleneck
        block per stage, group norm so that it trains from scratch, 64 FPN channels — the architecture of Fig. 4
        (right), sized for 128-pixel images on a CPU. Its parameters are one flat dict named like torchvision's
        state dict.

        `train_forward` runs the network in training mode on a batch and returns its five losses (§3: $L = L_{cls} +
        L_{box} + L_{mask}$ for the heads, plus the RPN's two). Two can be predicted before running anything: the
        RPN's objectness layer and the class-score layer start with weights of spread 0.01, so their logits are
        close to 0 — every anchor is 50 % object ($\\log 2 = 0.693$) and every RoI equally likely to be any of the
        $K = 4$ classes ($\\log 4 = 1.386$).
        """),
        code("""
        cfg = MaskRCNNConfig.preset("small")
        params = init_params(cfg, seed=0)  # {torchvision state-dict name: float32 array}
        print(f"{len(params)} parameter arrays, {sum(v.size for v in params.values()):,} numbers "
              f"(torchvision's ResNet-50-FPN Mask R-CNN has about 44 million)")

        targets = [{"boxes": boxes, "labels": labels, "masks": masks}]
        losses, _ = train_forward(params, cfg, [image], targets, np.random.default_rng(0))
        for name, value in losses.items():
            print(f"  {name:<17} {float(value):.3f}")
        print(f"  log 2 = {np.log(2):.3f}, log 4 = {np.log(4):.3f}")

        untrained = predict(params, cfg, [image])[0]  # {"boxes", "scores", "labels", "masks"}, best first
        print(f"untrained: {len(untrained['scores'])} detections above the 0.05 score threshold, "
              f"the best scoring {untrained['scores'].max() if len(untrained['scores']) else 0:.2f}")
        """),
        md("""
        ## 3. Training

        `tinymask.train.train` is the loop behind `tinymask train`: each iteration takes a batch of images (flipped
        left-right at random), runs `train_forward`, the hand-written `train_backward` from the summed losses back
        into the backbone, and one SGD step; it logs every loss to `log.jsonl` and writes checkpoints. The recipe
        (`tinymask.train.Recipe`) is the paper's — SGD with momentum 0.9, weight decay $10^{-4}$, a step schedule
        (§3.1) — shortened: lr 0.02 after a 50-iteration warm-up, divided by 10 at 70 % and 90 % of the run.
        Notebook 08 looks at this run in detail: the schedule, each loss, the gradient norms, resuming.

        We train into a temporary folder and read the last checkpoint back (with `TINYMASK_CHECKPOINT` set, that
        checkpoint is loaded instead).
        """),
        code(f"TOUR_ITERATIONS = {TOUR_ITERATIONS}  # of 4 images: about {TOUR_MINUTES} on a laptop CPU; SMOKE: 3 of 1\n"
             + dedent("""
        CHECKPOINT = os.environ.get("TINYMASK_CHECKPOINT")  # a checkpoint of `tinymask train` (a run's last/ or best/)
        if CHECKPOINT:
            trained, cfg, meta, _ = load_checkpoint(CHECKPOINT)
            run_dir = os.path.dirname(os.path.abspath(CHECKPOINT))  # the run's folder, with its log.jsonl
            print(f"loaded {CHECKPOINT}: {meta['iteration']} iterations")
        else:
            recipe = Recipe(iterations=3 if SMOKE else TOUR_ITERATIONS, batch_size=1 if SMOKE else 4, lr=0.02,
                            warmup_iters=50, eval_every=0, seed=0)
            run_dir = tempfile.mkdtemp(prefix="tinymask-tour-")
            data = ShapesDataset("train", num_images=8, seed=0) if SMOKE else train_set
            summary = train(cfg, recipe, data, None, run_dir, progress=False, print_fn=lambda *a: None)
            trained, cfg, meta, _ = load_checkpoint(os.path.join(run_dir, "last"))
            print(f"trained {meta['iteration']} iterations of {recipe.batch_size} image(s) in {summary['seconds']:.0f} s "
                  f"(run folder {run_dir})")
        """).strip("\n")),
        md("""
        The run's log as curves (`plot_loss_curves`): each loss term, faint as logged and solid smoothed, and the
        learning rate below. In full mode the total falls, and so do most terms (notebook 08 explains the one that
        rises); in smoke mode there are three points.
        """),
        code("""
        log_path = os.path.join(run_dir, "log.jsonl")
        if os.path.exists(log_path):
            display(plot_loss_curves(log_path))
        else:
            print(f"no log.jsonl next to {CHECKPOINT}")
        """),
        md("""
        ## 4. Predictions on held-out images

        `predict(params, cfg, images)` is §3.1 "Inference": the RPN's proposals, the box head's scores and boxes,
        per-class NMS, then the mask head on the surviving boxes, each 28×28 mask pasted into the image and
        thresholded at 0.5. It returns, per image, `boxes` `(D, 4)`, `scores` `(D,)`, `labels` `(D,)` and `masks`
        `(D, H, W)`, best first. The images come from the `val` split, a random stream the training never saw.
        Ground truth on top, the prediction below (detections scoring at least 0.5). After a few minutes of
        training the boxes are found before the classes are sure, so many scores are still below 0.5; pass a lower
        `score_threshold` to `draw_detections` to see them.
        """),
        code("""
        val = ShapesDataset("val", num_images=4 if SMOKE else 50, seed=0)
        shown = [val[i] for i in range(3)]
        predictions = predict(trained, cfg, [s["image"] for s in shown])  # one dict per image
        first = predictions[0]
        print({k: v.shape for k, v in first.items()})
        names = cfg.class_names  # the model's classes (a TINYMASK_CHECKPOINT may have others)
        print("best 3 of the first image: scores", first["scores"][:3], "labels",
              [names[l] for l in first["labels"][:3]], "\\nboxes\\n", first["boxes"][:3])

        fig, axes = plt.subplots(2, 3, figsize=(12, 8.4))
        for col, (s, pred) in enumerate(zip(shown, predictions)):
            draw_detections(axes[0, col], s["image"], s["boxes"], s["labels"], masks=s["masks"], class_names=names)
            draw_detections(axes[1, col], s["image"], pred["boxes"], pred["labels"], pred["scores"], pred["masks"],
                            class_names=names, score_threshold=0.5)
            axes[0, col].set_title(f"ground truth ({len(s['labels'])})", fontsize=10)
            axes[1, col].set_title(f"prediction ({np.sum(pred['scores'] >= 0.5)} scoring 0.5 or more)", fontsize=10)
        plt.tight_layout()
        plt.show()
        """),
        md("""
        ## 5. The COCO table

        `evaluate_model` predicts every held-out image and scores the detections the way the paper's tables do
        (§4, and Lin et al., *Microsoft COCO*, ECCV 2014): for boxes (`bbox`, box IoU) and for masks (`segm`, mask
        IoU). AP averages precision over recall levels and over IoU thresholds $0.50, 0.55, \\ldots, 0.95$; AP50 and
        AP75 use one threshold each; S / M / L split by object area (under $32^2$, up to $96^2$, above); AR is recall
        at 1, 10 and 100 detections per image. Notebook 09 computes AP by hand and draws the precision-recall
        curves; [evaluation](../docs/evaluation.md) derives every rule.
        """),
        code("""
        report = evaluate_model(trained, cfg, val)
        print(f"{report['num_images']} held-out images, {len(report['results'])} detections, {report['seconds']:.0f} s\\n")
        print(report["table"])
        if SMOKE and not CHECKPOINT:
            print("\\n(smoke mode: a model trained for 3 iterations; these numbers mean nothing)")
        """),
        md("""
        The paper's ResNet-101-FPN reaches 35.7 mask AP on COCO after 160k iterations of 16 images (Table 1). The
        shapes are far easier, and the few minutes above are far shorter; the `Recipe` docstring gives what longer
        runs of `tinymask train` reach (mask AP50 about 0.9 after 900 iterations), measured by
        `benchmarks/time_to_accuracy.py`.

        ## 6. Where to go next

        Each stage of the pipeline above has its own notebook, which opens with an example small enough to check by
        hand:

        | notebook | what it takes apart |
        |---|---|
        | [02 · layers and gradient checking](02_layers_and_gradcheck.ipynb) | convolution as im2col, the transposed convolution, the gradient check every layer passes |
        | [03 · backbone](03_backbone.ipynb) | ResNet's stages and the FPN's pyramid, level by level |
        | [04 · anchors and box coding](04_anchors_and_box_coding.ipynb) | anchors, matching, box encoding (Faster R-CNN Eq. 2) |
        | [05 · RPN](05_rpn.ipynb) | the proposal network, its loss and its proposals |
        | [06 · RoIPool vs RoIAlign](06_roipool_vs_roialign.ipynb) | the paper's key layer, against the roundings it removes |
        | [07 · heads and losses](07_heads_and_losses.ipynb) | the box and mask heads, mask targets, the losses |
        | [08 · training](08_training.ipynb) | the loop, the learning-rate schedule, each loss, checkpoints and resuming |
        | [09 · inference and evaluation](09_inference_and_evaluation.ipynb) | inference step by step, COCO AP by hand |
        | [10 · inspecting weights](10_inspect_weights.ipynb) | weights, activations and gradients, layer by layer |
        | [11 · kernels](11_kernels.ipynb) | the NumPy, Numba and CUDA backends of the hot loops |

        The docs' [index](../docs/index.md) maps every section and equation of the paper to its module, page, test
        and notebook; [using tinymask](../docs/usage.md) covers training on your own COCO-format data, torchvision
        weights, evaluation and checkpoints.
        """),
    ]


# =================================================================================================================
# 08 · training
# =================================================================================================================

def nb08():
    return [
        md("""
        # 08 · Training: the loop, the schedule, the losses, and resuming

        *Paper:* He et al., *Mask R-CNN*, ICCV 2017, §3.1 "Training": the losses are minimised jointly with SGD,
        "a learning rate of 0.02 which is decreased by 10 at the 120k iteration. We use a weight decay of 0.0001 and
        momentum of 0.9"; Appendix B and Faster R-CNN §3.2 (approximate joint training: the proposals are constants);
        Goyal et al., *Accurate, Large Minibatch SGD*, 2017 (linear warm-up and the linear scaling rule).
        · *Docs:* [the whole model](../docs/model.md), [using tinymask](../docs/usage.md) (checkpoints, resuming)
        · *Code:* [`tinymask/train.py`](../tinymask/train.py), [`tinymask/optim.py`](../tinymask/optim.py),
        [`tinymask/visualize.py`](../tinymask/visualize.py) · *Tests:* `tests/test_train.py`, `tests/test_optim.py`

        What you will see:

        1. the recipe — every knob of `Recipe`, where its default comes from;
        2. the learning-rate schedule: warm-up and steps, by hand on a short one, then the real ones;
        3. a training run, stopped and resumed at a few iterations so that we can keep those models;
        4. each loss term over the iterations, the learning rate actually used, and the gradient norm;
        5. the same held-out images predicted by the model after 0, a few, more and all iterations, and its AP;
        6. what a checkpoint holds, and a resumed run computing exactly what the uninterrupted one does.

        In full mode the run is 300 iterations of 4 images (about 4 to 6 minutes on a laptop CPU, plus a minute or
        two of evaluation). In smoke mode (`TINYMASK_SMOKE=1`, CI) it is 6 iterations of one image: the curves are
        a few points and the predictions and AP **mean nothing**; the mechanics are the same.
        """),
        setup_one_blas_thread("""
        import tempfile
        from dataclasses import fields

        from IPython.display import display

        from tinymask.config import MaskRCNNConfig
        from tinymask.data import ShapesDataset
        from tinymask.evaluate import evaluate_model
        from tinymask.model import LOSS_NAMES, init_params, predict
        from tinymask.optim import LRSchedule
        from tinymask.train import Recipe, load_checkpoint, train
        from tinymask.visualize import draw_detections, plot_loss_curves, read_log
        """),
        md("""
        ## 1. The recipe

        A run is described by two objects: the model, `MaskRCNNConfig` (notebook 01), and how to train it,
        `tinymask.train.Recipe`. Its docstring gives the paper's numbers and why tinymask's defaults differ:
        """),
        code("""
        print(Recipe.__doc__)
        default = Recipe()
        for f in fields(Recipe):
            print(f"  {f.name:<16} {getattr(default, f.name)!r}")
        """),
        md("""
        In short: the paper trains with 16 images per batch at lr 0.02 for 160k iterations. The **linear scaling
        rule** (Goyal et al. §2.1) says that with $B$ images the lr should be $0.02 \\cdot B / 16$ — 0.005 for 4 —
        because the gradient of a batch is an average and its noise shrinks with $B$. tinymask's `small` preset, a
        narrow network with group norm trained from scratch on easy 128-pixel images, learns faster at 0.02 with 4
        images *after a warm-up*, but close to the edge: its FPN outputs have no normalisation and grow during the
        warm-up, and one bad batch can then throw the box head's fc layers far enough to diverge. So the recipe
        clips the gradient's global norm at 10 (`clip_grad_norm`; Mask R-CNN does not clip), which cuts a few
        updates of the warm-up and almost none after it (`Recipe`'s module docstring has the measurements). The
        `tinymask train` default is 1500 iterations. Weight decay applies to conv and fc weights only, never to
        biases or norm parameters (`tinymask.optim.decays_weight`).

        ## 2. The learning-rate schedule

        `Recipe.schedule()` returns an `LRSchedule` (`tinymask/optim.py`): a linear **warm-up** from
        $\\eta f$ to $\\eta$ over the first $T_w$ iterations, then **steps** that multiply by $\\gamma = 0.1$:

        $$\\eta_t = \\eta\\,\\gamma^{\\#\\{s\\,\\le\\,t\\}} \\cdot \\begin{cases} f + (1 - f)\\, t / T_w & t < T_w \\\\
        1 & t \\ge T_w \\end{cases}$$

        A short one to check by hand: $\\eta = 0.02$, $f = 0.001$, $T_w = 4$, steps at 7 and 9. At $t = 0$ the rate
        is $0.02 \\cdot 0.001 = 2\\cdot 10^{-5}$; at $t = 2$, halfway, $0.02\\,(0.001 \\cdot 0.5 + 0.5) = 0.01001$;
        from $t = 4$ it is 0.02; from $t = 7$, 0.002; from $t = 9$, 0.0002.
        """),
        code("""
        schedule = LRSchedule(base_lr=0.02, warmup_iters=4, warmup_factor=0.001, steps=[7, 9], gamma=0.1)
        for t in range(11):
            by_hand = 0.02 * (0.001 * (1 - t / 4) + t / 4) if t < 4 else 0.02 * 0.1 ** ((t >= 7) + (t >= 9))
            print(f"t = {t:2d}   schedule {schedule(t):.6f}   by hand {by_hand:.6f}")
        """),
        md("""
        The steps are placed at fractions of the run (`decay_at`, 70 % and 90 %), so a shorter or longer run keeps
        the same shape. The default recipe and the run of this notebook (a 50-iteration warm-up):
        """),
        code("""
        ITERATIONS = 6 if SMOKE else 300  # of 4 images: about 4 to 6 minutes on a laptop CPU; SMOKE: 6 of 1
        recipe = Recipe(iterations=ITERATIONS, batch_size=1 if SMOKE else 4, lr=0.02, warmup_iters=50, eval_every=0,
                        seed=0)
        fig, ax = plt.subplots(figsize=(9, 3))
        for r, label in ((default, "Recipe() default"), (recipe, "this notebook's run")):
            s = r.schedule()
            t = np.arange(r.iterations)
            ax.plot(t, [s(i) for i in t], label=f"{label}: {r.iterations} iterations, warm-up {r.warmup_iters}, "
                                                 f"steps at {s.steps}")
        ax.set_yscale("log")
        ax.set_xlabel("iteration t")
        ax.set_ylabel("learning rate")
        ax.legend(fontsize=8)
        plt.show()
        """),
        md("""
        Why warm up? At initialisation the gradients are large and point in unreliable directions (notebook 10
        measures them); a full-size step there can push the group-norm network into a state it takes hundreds of
        iterations to leave, or make a loss overflow (`TrainingDiverged`). Why step down? Late in training a large
        rate keeps the weights bouncing around a minimum; dividing it by 10 lets them settle, and the loss visibly
        drops at each step.

        ## 3. A run, stopped and resumed

        `train(cfg, recipe, train_set, val_set, out_dir)` runs the loop (the "One iteration" section of
        `tinymask/train.py` lists its five steps) and keeps two checkpoints: last/ and, when there is a held-out
        set, best/. To keep the model at several points of the run, we stop it with `stop_after=k` — exactly as
        if it had been interrupted there — copy last/, and resume with `resume=True`. Resuming loses nothing
        (section 6 checks it), so the models below are those of one uninterrupted run, with the recipe, data and
        seed of notebook 01's.
        """),
        code("""
        SNAPSHOTS = [2, 4, 6] if SMOKE else [25, 75, 150, 300]  # iterations at which we keep the model
        cfg = MaskRCNNConfig.preset("small")
        train_set = ShapesDataset("train", num_images=8 if SMOKE else 1000, seed=0)
        run_dir = tempfile.mkdtemp(prefix="tinymask-training-")
        snapshots = {0: init_params(cfg, seed=recipe.seed)}  # the run starts from these
        for k, stop in enumerate(SNAPSHOTS):
            summary = train(cfg, recipe, train_set, None, run_dir, resume=k > 0, stop_after=stop, progress=False)
            snapshots[stop], _, meta, _ = load_checkpoint(os.path.join(run_dir, "last"))
        print(f"kept the model after {list(snapshots)} iterations; {summary['total_seconds']:.0f} s of training in all")
        """),
        md("""
        ## 4. The loss terms, the learning rate and the gradient norm

        `log.jsonl` has one line per iteration: the iteration (updates done), the total loss, the five terms, the
        lr, the gradient norm, and the time. The five terms (§3, and Faster R-CNN Eq. 1 for the RPN's two):

        - `loss_objectness`: the RPN's binary cross-entropy, object or not, on 128 sampled anchors per image;
          starts near $\\log 2$;
        - `loss_rpn_box_reg`: the RPN's smooth L1 on the box deltas of its positive anchors;
        - `loss_classifier`: the box head's softmax cross-entropy over $K = 4$ classes on 64 sampled RoIs per image;
          starts near $\\log 4$;
        - `loss_box_reg`: the box head's smooth L1 on the deltas of the true class, positive RoIs only;
        - `loss_mask`: the mean per-pixel binary cross-entropy of the true class's 28×28 mask, positive RoIs only.

        Not every term has to fall. `loss_box_reg` is summed over the *positive* RoIs but divided by *all* sampled
        RoIs (as torchvision does), and at first almost none of the proposals overlaps an object: as the RPN learns
        to propose boxes on the shapes, more of the sampled RoIs are positive, and this term grows while the others
        fall. `plot_loss_curves` draws them (faint as logged, solid smoothed) with the lr below:
        """),
        code("""
        log_path = os.path.join(run_dir, "log.jsonl")
        display(plot_loss_curves(log_path))
        records = [r for r in read_log(log_path) if "loss" in r]  # (evaluation lines have no "loss")
        n = max(1, len(records) // 10)
        print(f"{'term':<17} {'first ' + str(n):>10} {'last ' + str(n):>10}   (mean over the first and last {n} iterations)")
        for name in ("loss", *LOSS_NAMES):
            first, last = (np.mean([r[name] for r in part]) for part in (records[:n], records[-n:]))
            print(f"{name:<17} {first:10.3f} {last:10.3f}")
        """),
        md("""
        The lr in the log is what the optimizer used at each update; record $t + 1$ (after $t + 1$ updates) holds
        the rate of iteration $t$, `schedule(t)`. The gradient norm is $\\lVert g\\rVert$ over all trainable
        parameters together, before weight decay and before clipping (Mask R-CNN does not clip; the recipe here
        clips at 10, and `clip_scale` in the log is the factor applied, 1 when it did not act). It tells you
        whether the run is healthy: a norm that grows steadily, or jumps by orders of magnitude, comes before a
        divergence; a lr that is too large for the batch shows here first. The product $\\eta_t \\lVert g\\rVert$
        is the size of the raw gradient step (momentum makes the actual step up to $1/(1 - 0.9) = 10$ times larger).
        """),
        code("""
        it = np.array([r["iteration"] for r in records])
        lr = np.array([r["lr"] for r in records])
        grad_norm = np.array([r["grad_norm"] for r in records])
        schedule = recipe.schedule()
        print("the logged lr is the schedule's:", np.array_equal(lr, [schedule(t - 1) for t in it]))

        fig, axes = plt.subplots(1, 2, figsize=(13, 3.6))
        axes[0].plot(it, grad_norm, lw=0.8)
        axes[0].set_yscale("log")
        axes[0].set_title("gradient norm ||g||", fontsize=10)
        axes[1].plot(it, lr * grad_norm, lw=0.8, color="tab:green")
        axes[1].set_yscale("log")
        axes[1].set_title("lr · ||g||", fontsize=10)
        for ax in axes:
            ax.set_xlabel("iteration")
            for step in schedule.steps:
                ax.axvline(step, color="k", ls=":", lw=1)
        plt.tight_layout()
        plt.show()
        """),
        md("""
        ## 5. The same held-out images, as training goes on

        The models kept in section 3, on three images of the `val` split (never trained on). Ground truth on the
        left, then the model after 0 iterations (its initial weights), and after each stop; detections scoring at
        least 0.5. The untrained model finds nothing that scores 0.5 (its class scores are all near 1/4); the
        later models find more of the shapes, with tighter boxes and masks.
        """),
        code("""
        val = ShapesDataset("val", num_images=2 if SMOKE else 25, seed=0)
        shown = [val[i] for i in range(min(3, len(val)))]
        fig, axes = plt.subplots(len(shown), len(snapshots) + 1, figsize=(2.9 * (len(snapshots) + 1), 3 * len(shown)),
                                 squeeze=False)
        for row, s in enumerate(shown):
            draw_detections(axes[row, 0], s["image"], s["boxes"], s["labels"], masks=s["masks"],
                            class_names=cfg.class_names)
            axes[row, 0].set_title("ground truth", fontsize=9)
            for col, (iteration, params) in enumerate(snapshots.items(), start=1):
                pred = predict(params, cfg, [s["image"]])[0]
                draw_detections(axes[row, col], s["image"], pred["boxes"], pred["labels"], pred["scores"],
                                pred["masks"], class_names=cfg.class_names, score_threshold=0.5)
                axes[row, col].set_title(f"after {iteration} iterations", fontsize=9)
        plt.tight_layout()
        plt.show()
        """),
        md("""
        And in numbers: COCO box and mask AP of each kept model on the held-out images (`evaluate_model`; notebook 09
        explains the metric). AP50 counts a detection right at IoU 0.5, AP averages over IoU 0.5 to 0.95.
        """),
        code("""
        print(f"{len(val)} held-out images")
        print(f"{'iterations':>10} {'box AP':>7} {'box AP50':>9} {'mask AP':>8} {'mask AP50':>10} {'seconds':>8}")
        for iteration, params in snapshots.items():
            report = evaluate_model(params, cfg, val)
            b, m = report["bbox"].summary(), report["segm"].summary()
            print(f"{iteration:>10} {b['AP']:7.3f} {b['AP50']:9.3f} {m['AP']:8.3f} {m['AP50']:10.3f} "
                  f"{report['seconds']:8.1f}")
        if SMOKE:
            print("(smoke mode: a few iterations on one image each; these numbers mean nothing)")
        """),
        md("""
        ## 6. Checkpoints, and resuming exactly

        A checkpoint is a folder: `weights.npz` holds the parameters, the optimizer's momentum buffers (under
        `optimizer.velocity.<name>`) and a JSON metadata entry; `config.json` is the model. Nothing else is needed
        to continue, because nothing random is carried from one iteration to the next: iteration $t$ draws its flips
        from `default_rng([seed, t, 1])` and its anchor and RoI sampling from `default_rng([seed, t, 2])`, and the
        data order of epoch $e$ comes from `(seed, e)`. The folder of our run, and the metadata of last/:
        """),
        code("""
        for name in sorted(os.listdir(run_dir)):
            inside = sorted(os.listdir(os.path.join(run_dir, name))) if os.path.isdir(os.path.join(run_dir, name)) else ""
            print(f"  {name:<16} {inside}")
        params, _, meta, velocity = load_checkpoint(os.path.join(run_dir, "last"))
        print(f"{len(params)} parameters, {len(velocity)} momentum buffers (one per trainable parameter)")
        for key in ("format", "iteration", "seed", "seconds", "rng"):
            print(f"  {key}: {meta[key]}")
        print("  recipe:", meta["recipe"])
        """),
        md("""
        **Resuming is exact.** Train a short run twice: once straight through, once stopped after 2 iterations and
        resumed. Every parameter and every momentum buffer must be *equal*, not merely close — the same
        floating-point operations in the same order (`tests/test_train.py::test_resumed_run_is_bit_identical`
        checks the same):
        """),
        code("""
        short = Recipe(iterations=4, batch_size=1, lr=0.02, warmup_iters=10, eval_every=0, seed=1)
        few = ShapesDataset("train", num_images=6, seed=0)
        straight, stopped = tempfile.mkdtemp(prefix="straight-"), tempfile.mkdtemp(prefix="resumed-")
        quiet = dict(progress=False, print_fn=lambda *a: None)
        train(cfg, short, few, None, straight, **quiet)
        train(cfg, short, few, None, stopped, stop_after=2, **quiet)  # as if Ctrl-C after 2 iterations
        train(cfg, short, few, None, stopped, resume=True, **quiet)  # continue from last/
        pa, _, _, va = load_checkpoint(os.path.join(straight, "last"))
        pb, _, _, vb = load_checkpoint(os.path.join(stopped, "last"))
        print("parameters identical:", all(np.array_equal(pa[k], pb[k]) for k in pa))
        print("momentum identical:  ", all(np.array_equal(va[k], vb[k]) for k in va))
        """),
        md("""
        On the command line the same is `tinymask train --out runs/quick --resume`, which reads the recipe and the
        data description from the checkpoint. Ctrl-C during a run writes last/ before it stops. Options given with
        `--resume` change the run from there on: `--iterations 600` continues a 300-iteration run to 600, but the
        steps move with it (to 70 % and 90 % of 600), so that is a different schedule from a run started with 600.
        `train` also refuses to start a fresh run in a folder that already holds one, so a forgotten `--resume`
        never overwrites a checkpoint. What `tinymask train` writes, and how to train on your own data:
        [using tinymask](../docs/usage.md).
        """),
    ]


# =================================================================================================================
# 11 · kernels: one switch, three backends
# =================================================================================================================

def nb11():
    return [
        md("""
        # 11 · Kernels: the NumPy reference, Numba on the CPU, CUDA on a GPU

        *Paper:* none — an engineering notebook. The maths of each kernel is on its layer's page: im2col in
        [convolution](../docs/layers/convolution.md), RoIAlign in [RoI extractors](../docs/layers/roi_extractors.md),
        NMS in [box logic](../docs/box_logic.md). · *Docs:* [performance](../docs/performance.md) (the design, the
        compile cache, measured speed) · *Code:* [`tinymask/backend.py`](../tinymask/backend.py),
        [`tinymask/ops/numpy_ops.py`](../tinymask/ops/numpy_ops.py),
        [`tinymask/ops/numba_ops.py`](../tinymask/ops/numba_ops.py),
        [`tinymask/ops/cuda_ops.py`](../tinymask/ops/cuda_ops.py) · *Tests:* `tests/test_backends.py`,
        `tests/test_cuda_sim.py`

        tinymask is written in NumPy, and the NumPy code is what you read. A few inner routines are loops NumPy runs
        slowly or in many small pieces — the convolution's im2col / col2im, RoIAlign's sampling and its scatter-add
        backward, RoIPool, mask pasting, NMS — and only those have compiled twins, one module per backend with the
        same functions and signatures, chosen by one switch. What you will see:

        1. which backends can run on this machine, and why not when one cannot; the switch and its precedence;
        2. a convolution, a RoIAlign and an NMS small enough to check by hand, on every backend, and how long the
           first Numba call takes (it compiles);
        3. the backends agreeing at real sizes on conv, RoIAlign and NMS, forward and backward (largest absolute
           differences printed);
        4. timings, best of $N$ runs.

        In smoke mode (`TINYMASK_SMOKE=1`) the sizes are small and the timings say little; in full mode they are
        moderate (the [performance](../docs/performance.md) page has timings at Mask R-CNN's real sizes).
        """),
        setup("""
        import time

        from tinymask.backend import available_backends, describe_backends, get_backend, use_backend
        from tinymask.layers import conv2d_backward, conv2d_forward, roi_align_backward, roi_align_forward
        from tinymask.nms import nms

        rng = np.random.default_rng(0)
        """),
        md("""
        ## 1. The backends, and the switch

        `available_backends()` returns `{name: (available, reason)}`; `describe_backends()` prints it (it is what
        `tinymask info` shows). NumPy is always there. Numba needs `pip install numba`; CUDA needs numba-cuda
        (`pip install "tinymask[cuda]"`) *and* a GPU with its driver — when it cannot run, the reason says which is
        missing, and everything below simply leaves it out.
        """),
        code("""
        print(describe_backends())
        status = available_backends()
        BACKENDS = [name for name, (ok, _) in status.items() if ok]
        if "cuda" in BACKENDS and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            BACKENDS.remove("cuda")  # the simulator runs each GPU thread as a Python thread: for tests at tiny sizes
            print("\\ncuda: the CUDA simulator is on; left out here (far too slow for these sizes)")
        for name, (ok, reason) in status.items():
            if not ok:
                print(f"\\n{name} cannot run here: {reason}")
        print("\\ncompared below:", BACKENDS)
        """),
        md("""
        Which backend a call uses, from the most specific choice to the least: the `backend=` argument of a layer
        call; a `with use_backend(...)` block (or `set_backend`, for the rest of the program); the environment
        variable `TINYMASK_BACKEND`; otherwise `"numpy"`. A forward pass writes its backend's name into the cache
        (the last entry of a convolution's cache), and the backward pass runs on that one, since what a compiled
        forward keeps for its backward is not what the NumPy code keeps.
        """),
        code("""
        x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)  # (N, C, H, W): pixel (y, x) holds 4y + x
        w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=np.float32)  # (F, C, kH, kW)
        print("selected now:", get_backend())
        print("a plain call ran on:", conv2d_forward(x, w)[1][-1])
        for name in BACKENDS:
            print(f"backend={name!r} ran on:", conv2d_forward(x, w, backend=name)[1][-1])
            with use_backend(name):
                print(f"inside use_backend({name!r}): selected {get_backend()!r}, a plain call ran on",
                      conv2d_forward(x, w)[1][-1])
        print("after the blocks:", get_backend())
        """),
        md("""
        ## 2. Three examples by hand, on every backend

        **Convolution.** Notebook 02's example: the 4×4 input holding $4y + x$ and the 2×2 filter
        $\\begin{pmatrix}1 & 2\\\\ 3 & 4\\end{pmatrix}$ give $10\\,x[y, x] + 34$: the first row must read 34, 44, 54.

        **RoIAlign.** Bilinear interpolation reproduces a linear function exactly, so on the map $F[y, x] = 4y + x$
        the average of a bin's samples is $F$ at the bin's centre. One RoI $(0, 0, 2, 2)$ at scale 1 pooled to a
        single bin with 2×2 samples: the samples sit at $0.5$ and $1.5$ on each axis, the centre is $(1, 1)$ and the
        output is $4 + 1 = 5$. With `aligned=True` every coordinate moves by half a cell, $-0.5$, to the centre
        $(0.5, 0.5)$: $2 + 0.5 = 2.5$ ([RoI extractors](../docs/layers/roi_extractors.md)).

        **NMS.** Boxes A $(0, 0, 10, 10)$ scoring 0.9, B $(1, 0, 11, 10)$ scoring 0.8 and C $(20, 20, 30, 30)$
        scoring 0.7. A and B overlap in $9 \\times 10 = 90$ pixels of a union of $100 + 100 - 90 = 110$: IoU
        $= 0.82$, so at threshold 0.5 B is suppressed by A, and C, touching neither, is kept: keep $= [0, 2]$.

        Each backend's first call of each kernel is timed: on Numba it includes compiling the kernel for these
        argument types, or loading it from the on-disk cache if an earlier process compiled it already.
        """),
        code("""
        F_map = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)  # F[y, x] = 4y + x
        roi = np.array([[0, 0.0, 0.0, 2.0, 2.0]], dtype=np.float32)  # [batch index, x0, y0, x1, y1]
        boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], dtype=np.float32)
        scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)


        def first_call(fn):
            t0 = time.perf_counter()
            out = fn()
            return out, time.perf_counter() - t0


        for name in BACKENDS:
            conv, t_conv = first_call(lambda: conv2d_forward(x, w, backend=name)[0])
            pooled, t_roi = first_call(lambda: [roi_align_forward(F_map, roi, output_size=1, spatial_scale=1.0,
                                                                  sampling_ratio=2, aligned=a, backend=name)[0].item()
                                                for a in (False, True)])
            keep, t_nms = first_call(lambda: nms(boxes, scores, 0.5, backend=name))
            print(f"{name:>6}: conv row 0 {conv[0, 0, 0]}, RoIAlign {pooled} (aligned False, True), NMS keep {keep}")
            print(f"        first calls: conv {t_conv:.3f} s, RoIAlign {t_roi:.3f} s, NMS {t_nms:.3f} s")
        """),
        md("""
        **Compile time and the cache.** Numba compiles a kernel the first time it is called with new argument types
        (a new float dtype, say): one to five seconds per kernel, up to about ten for the first RoIAlign, which
        compiles the shared geometry helpers too. The kernels are declared `@njit(cache=True)`, so the machine code
        is written to disk (next to `tinymask/ops/numba_ops.py`, or under `NUMBA_CACHE_DIR` if set) and later
        processes load it in a fraction of a second. The cache is keyed on `numba_ops.py` alone: after editing a
        helper it calls from another file (RoIAlign's geometry in `tinymask/layers/roi_align.py`, say), empty the
        cache or touch `numba_ops.py`. CUDA kernels compile on their first launch too. So every timing below is
        taken after a warm-up call.

        ## 3. The same results at real sizes

        Three cases, forward and backward, in float32 (the training dtype), each run on every backend and compared
        with NumPy:

        - a 3×3 convolution with padding 1 (forward output; backward `dx`, `dw`, `db`);
        - RoIAlign to 7×7 bins, 2×2 samples per bin, on a stride-4 map (a P2 level) with random RoIs of 8 to 128
          pixels (forward output; backward `dfeatures`, a scatter-add where RoIs overlap);
        - NMS at IoU 0.7 on random boxes (the list of kept indices must be *identical*).

        The float outputs differ only by rounding: the compiled kernels add the same numbers in another order (a
        float32 sum of $n$ terms can be off by up to about $n \\cdot 6\\cdot10^{-8}$ of its size), so we print the largest
        absolute difference and the same relative to the largest value. `tests/test_backends.py` makes the same
        comparisons in float64 to $10^{-12}$, over many more configurations.
        """),
        code("""
        if SMOKE:
            N, C, H, W, F_out = 2, 8, 16, 16, 8  # convolution
            C_roi, H_map, W_map, R = 16, 32, 32, 32  # RoIAlign: channels, map size, RoIs
            n_boxes = 300  # NMS
        else:
            N, C, H, W, F_out = 2, 64, 64, 64, 64
            C_roi, H_map, W_map, R = 64, 100, 136, 256
            n_boxes = 2000

        x = rng.standard_normal((N, C, H, W), dtype=np.float32)
        w = (rng.standard_normal((F_out, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
        b = rng.standard_normal(F_out).astype(np.float32)
        dout_conv = rng.standard_normal((N, F_out, H, W), dtype=np.float32)

        features = rng.standard_normal((2, C_roi, H_map, W_map), dtype=np.float32)  # stride 4: image 4·H_map × 4·W_map
        size = rng.uniform(8, 128, (R, 2))  # RoI widths and heights in pixels
        corner = rng.uniform(0, 1, (R, 2)) * (np.array([4 * W_map, 4 * H_map]) - size)
        rois = np.column_stack([rng.integers(0, 2, R), corner, corner + size]).astype(np.float32)  # (R, 5)
        dout_roi = rng.standard_normal((R, C_roi, 7, 7), dtype=np.float32)

        objects = rng.uniform(0, 800, (n_boxes // 10, 2))  # like proposals: about 10 noisy boxes per object
        owner = rng.integers(0, len(objects), n_boxes)
        half = rng.uniform(10, 60, (len(objects), 2))[owner] * rng.uniform(0.8, 1.2, (n_boxes, 2))
        centres = objects[owner] + rng.normal(0, 5, (n_boxes, 2))
        nms_boxes = np.concatenate([centres - half, centres + half], axis=1).astype(np.float32)  # (n, 4)
        nms_scores = rng.random(n_boxes, dtype=np.float32)


        def run_conv(name):
            out, cache = conv2d_forward(x, w, b, padding=1, backend=name)
            dx, dw, db = conv2d_backward(dout_conv, cache)
            return {"out": out, "dx": dx, "dw": dw, "db": db}


        def run_roi_align(name):
            out, cache = roi_align_forward(features, rois, output_size=7, spatial_scale=0.25, sampling_ratio=2,
                                           backend=name)
            dfeatures, _ = roi_align_backward(dout_roi, cache)
            return {"out": out, "dfeatures": dfeatures}


        def run_nms(name):
            return {"keep": nms(nms_boxes, nms_scores, 0.7, backend=name)}


        CASES = {f"conv 3×3, {C}→{F_out} ch, {N}×{H}×{W}": run_conv,
                 f"RoIAlign 7×7, {R} RoIs × {C_roi} ch, map {H_map}×{W_map}": run_roi_align,
                 f"NMS, {n_boxes} boxes, IoU 0.7": run_nms}
        results = {case: {name: fn(name) for name in BACKENDS} for case, fn in CASES.items()}

        for case, by_backend in results.items():
            print(case)
            reference = by_backend["numpy"]
            for name in BACKENDS[1:]:
                for key, ref in reference.items():
                    got = by_backend[name][key]
                    if ref.dtype.kind in "iu":  # indices: must be identical
                        print(f"  {name:>6} {key:<10} identical: {np.array_equal(got, ref)} ({len(ref)} kept)")
                    else:
                        diff = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
                        scale = float(np.max(np.abs(ref))) if ref.size else 1.0
                        print(f"  {name:>6} {key:<10} max |diff| {diff:.2e}   relative to max |value| "
                              f"{diff / scale:.2e}")
            if len(BACKENDS) == 1:
                print("  (only NumPy can run here: nothing to compare)")
        """),
        md("""
        ## 4. Timings

        Each case again, timed with `time.perf_counter` as the best of $N$ runs (the minimum is the least disturbed
        by whatever else the machine is doing; every kernel was warmed up in section 3). Read the ratios rather than
        the absolute times, and only in full mode: at smoke sizes the fixed cost of each call (validation,
        allocation, starting threads) dominates.
        """),
        code("""
        REPEAT = 2 if SMOKE else 5


        def best_of(fn, repeat=REPEAT):
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)


        timings = {case: {name: best_of(lambda: fn(name)) for name in BACKENDS} for case, fn in CASES.items()}
        print(f"{'case':<46}" + "".join(f"{name + ' ms':>12}" for name in BACKENDS)
              + "".join(f"{name + ' vs numpy':>18}" for name in BACKENDS[1:]))
        for case, t in timings.items():
            print(f"{case:<46}" + "".join(f"{1e3 * t[name]:12.1f}" for name in BACKENDS)
                  + "".join(f"{t['numpy'] / t[name]:17.1f}×" for name in BACKENDS[1:]))
        """),
        md("""
        What to expect (the [performance](../docs/performance.md) page has the measurements at Mask R-CNN's real
        sizes, and why):

        - **Convolution** is a matrix product with a gather on either side, and the matrix product is the same
          BLAS call on both CPU backends and takes most of the time, so Numba changes little; it helps where col2im's
          scatter dominates (the mask head's deconvolution).
        - **RoIAlign** gains several times: the kernels run the separable formula channels last, one block of 32
          channels at a time copied into a per-thread scratch buffer, so the SIMD multiply-adds run over contiguous
          channels; copying the blocks (the map in, the gradient out) is still a large share of the time.
        - **NMS** gains the most: the greedy loop is sequential, exactly what NumPy does worst and a compiled loop
          does well.
        - **CUDA** copies every array to the GPU and back on each call, so at these sizes the copies can cost more
          than the kernels; its atomic scatter-adds make the RoIAlign backward's rounding order vary run to run.

        On a small or busy machine, Numba's OpenMP threads and the BLAS threads compete for the cores: setting
        `OMP_WAIT_POLICY=passive` in the environment before starting Jupyter often helps (performance page, §5).
        `benchmarks/bench_kernels.py` times every kernel at the real sizes, with PyTorch alongside when it is
        installed.
        """),
    ]


# =================================================================================================================
# 12 · Table 2 in miniature
# =================================================================================================================

def nb12():
    return [
        md("""
        # 12 · The paper's ablations (Table 2), in miniature

        *Paper:* Mask R-CNN §4.2 "Ablation Experiments", Table 2 (a)–(e). · *Docs:* [ablations](../docs/ablations.md)
        (the full results and what they mean), [RoI extractors](../docs/layers/roi_extractors.md),
        [heads](../docs/heads.md) · *Code:* [`tinymask/ablate.py`](../tinymask/ablate.py), the command
        `tinymask ablate` · *Test:* `tests/test_ablate.py`

        Table 2 is where the paper shows *why* Mask R-CNN is built as it is: independent per-class sigmoid masks
        instead of a softmax over classes (b), RoIAlign instead of RoIPool (c, d), a fully convolutional mask head
        instead of an MLP (e), and FPN instead of C4 (a). `tinymask ablate` trains each variant on synthetic shapes
        with several seeds and prints the paper's tables with its figures beside ours. This notebook:

        1. shows that the rows of each table are one config switch apart;
        2. works out by hand what RoIPool's rounding does to a box at stride 16 and 32 — the effect Table 2(c, d)
           measures;
        3. runs Table 2(d) live at a small size (RoIPool vs RoIAlign on the stride-32 map) and draws both models'
           masks on the same held-out image;
        4. reads the committed full results (`docs/ablations/ablations.json`) and shows their tables and chart.

        Full mode trains 4 small models for 300 iterations (under 3 minutes on 2 cores); smoke mode
        (`TINYMASK_SMOKE=1`) trains them for 2.
        """),
        setup_one_blas_thread("""
        import json
        from pathlib import Path

        from tinymask import ablate as A
        from tinymask.data import ShapesDataset
        from tinymask.inference import load_model
        from tinymask.layers.roi_pool import round_half_away
        from tinymask.model import predict
        from tinymask.visualize import draw_detections
        """),
        md("""
        ## 1. Each table is one switch

        `A.TABLES` lists each table's rows, the tinymask variant playing each row, and the paper's numbers;
        `A.variant_config(variant, class_names)` is that variant's `MaskRCNNConfig`. Below, for every row, the
        config fields that differ from the table's first row. Table (a) changes the architecture (C4: stage 5 is the
        RoI head; FPN: a pyramid), the others change one field each.
        """),
        code("""
        names = ShapesDataset("val", 1).class_names
        for key, table in A.TABLES.items():
            base = A.variant_config(table.rows[0].variant, names).to_dict()
            print(f"Table 2({key}) {table.title} (paper: {table.paper_model})")
            for row in table.rows:
                cfg = A.variant_config(row.variant, names).to_dict()
                diff = {k: cfg[k] for k in cfg if cfg[k] != base[k]}
                shown = {k: v for k, v in diff.items() if k in ("backbone", "mask_loss", "class_agnostic_mask",
                                                                "roi_extractor", "roi_mode", "mask_head")}
                extra = len(diff) - len(shown)
                print(f"   {row.label:34s} {row.variant:13s} {shown or '(the first row)'}"
                      + (f" + {extra} size fields" if extra else ""))
        """),
        md("""
        The models are small (stage widths 32/64/128/256, one block per stage) and see 256×256 images, so that
        a shape of 30–130 pixels covers a few cells of the stride-16 map (16×16) and one to four of the stride-32
        map (8×8) — about what a COCO object covers in an 800-pixel image.

        ## 2. RoIPool's rounding, by hand

        RoIPool (Fast R-CNN §2.1) rounds the RoI to the feature grid, `round(x / stride)`, then splits it into bins
        whose edges are rounded again. RoIAlign (§3) keeps `x / stride` as it is and samples bilinearly. Take a box
        with x0 = 37.0 and x1 = 85.0 in image pixels: at stride 16 the RoI starts at cell round(2.3125) = 2, i.e.
        pixel 32 — 5 pixels too far left; at stride 32 at round(1.156) = 1, i.e. pixel 32 as well, and its end
        85 / 32 = 2.66 rounds to 3 = pixel 96, 11 pixels too far right. For a mask predicted on a 28×28 grid over
        the box, a shift of 11 pixels in a 48-pixel box is 6 mask cells.
        """),
        code("""
        x0, x1 = 37.0, 85.0
        for stride in (4, 16, 32):
            q0, q1 = round_half_away(x0 / stride) * stride, round_half_away(x1 / stride) * stride
            print(f"stride {stride:2d}: RoIPool reads pixels [{q0:5.1f}, {q1:5.1f}) for the box [{x0}, {x1}): "
                  f"start off by {q0 - x0:+5.1f}, end off by {q1 - x1:+5.1f} pixels")

        # The same over many random boxes of 30-130 pixels: the mean shift of an edge, in pixels and as a fraction
        # of the box.
        rng = np.random.default_rng(0)
        size = rng.uniform(30, 130, 10000)
        start = rng.uniform(0, 256 - size)
        for stride in (4, 16, 32):
            shift = np.abs(round_half_away(start / stride) * stride - start)
            print(f"stride {stride:2d}: mean edge shift {shift.mean():5.2f} px = {np.mean(shift / size):6.1%} of the box")
        """),
        md("""
        The mean shift is a quarter of the stride (uniform rounding error), so it grows 8× from stride 4 (FPN's P2)
        to stride 32: that is why the paper finds the largest RoIAlign gain at stride 32 (Table 2d: +7.3 mask AP,
        +10.5 AP75) and why AP75, which needs a precise mask, gains more than AP50.

        ## 3. Table 2(d), live

        `A.ablate(setting, tables, out_dir)` trains every variant of the chosen tables once per seed (each run an
        ordinary training folder with log.jsonl and checkpoints under out_dir/runs), evaluates mask AP on
        held-out images, prints the table and writes JSON, Markdown and a bar chart. Here: Table 2(d) only, two
        seeds, short runs — the full setting (`tinymask ablate --setting full`) trains 800 iterations with three seeds.
        """),
        code("""
        import tempfile

        OUT = Path(tempfile.mkdtemp(prefix="tinymask-ablate-"))
        if SMOKE:
            setting = A.make_setting("quick", iterations=2, seeds=[0], num_train=4, num_val=2, image_size=64)
        else:
            setting = A.make_setting("quick", iterations=300, seeds=[0, 1], num_train=300, num_val=40)
        print(setting)
        report = A.ablate(setting, ["d"], OUT, jobs=1 if SMOKE else 2, command="notebook 12")
        """),
        md("""
        Each cell is the mean over the seeds ± their standard deviation, and the Δ row the difference of the means
        ± its standard error: with two seeds and 300 iterations the error bars are wide, which is the point of
        showing them. Now both models (seed 0) on one held-out image: RoIPool's masks are blockier and shifted
        where the rounding moved the RoI.
        """),
        code("""
        val = ShapesDataset("val", setting.num_val, seed=0, image_size=setting.image_size,
                            difficulty=setting.difficulty)
        sample = val[0]
        fig, axes = plt.subplots(1, 3, figsize=(12, 4))
        H, W = sample["image"].shape[1:]
        axes[0].imshow(sample["image"].transpose(1, 2, 0), extent=(0, W, H, 0))
        axes[0].set_title("held-out image")
        for ax, variant in zip(axes[1:], ("c5-pool", "c5")):
            params, cfg = load_model(A.run_dir(OUT, variant, setting.seeds[0]) + "/last")
            (pred,) = predict(params, cfg, [sample["image"]])
            draw_detections(ax, sample["image"], pred["boxes"], pred["labels"], pred["scores"], pred["masks"],
                            class_names=cfg.class_names, score_threshold=0.5)
            ax.set_title(f"{variant}: {'RoIPool' if 'pool' in variant else 'RoIAlign'}, stride 32")
        plt.show()
        """),
        md("""
        ## 4. The full results

        The full setting's results are committed in `docs/ablations/` (made by `tinymask ablate --setting full`;
        [ablations](../docs/ablations.md) discusses each table). `A.format_table` prints a table of the JSON in the
        paper's layout.
        """),
        code("""
        results = Path("..") / "docs" / "ablations" / "ablations.json"
        if not results.exists():  # the notebook was started from another folder
            results = Path(A.__file__).resolve().parent.parent / "docs" / "ablations" / "ablations.json"
        full = json.loads(results.read_text())
        s = full["setting"]
        print(f"{full['command']}: {len(s['seeds'])} seeds x {s['iterations']} iterations, {s['difficulty']} shapes "
              f"at {s['image_size']} px, {full['minutes']:.0f} min on {full['machine']['cpus']} CPUs\\n")
        for key, table in full["tables"].items():
            print(A.format_table(key, table), end="\\n\\n")
        """),
        code("""
        image = plt.imread(results.with_suffix(".png"))
        plt.figure(figsize=(18, 4))
        plt.imshow(image)
        plt.axis("off")
        plt.show()
        """),
        md("""
        **Reading it.** Compare the *direction* and the *relative size* of each Δ with the paper's, not the absolute
        APs: ours are small models on synthetic shapes, the paper's ResNet-50s on COCO. Where a Δ is within about
        two standard errors of zero, the miniature cannot tell the variants apart. The
        [ablations](../docs/ablations.md) page goes through each table: where we agree with the paper, where we do
        not, and why.
        """),
    ]


NOTEBOOKS = {
    "01_tour": nb01,
    "02_layers_and_gradcheck": nb02,
    "03_backbone": nb03,
    "04_anchors_and_box_coding": nb04,
    "05_rpn": nb05,
    "06_roipool_vs_roialign": nb06,
    "07_heads_and_losses": nb07,
    "08_training": nb08,
    "09_inference_and_evaluation": nb09,
    "10_inspect_weights": nb10,
    "11_kernels": nb11,
    "12_ablations": nb12,
}


def build(name: str) -> nbformat.NotebookNode:
    cells = NOTEBOOKS[name]()
    for i, cell in enumerate(cells):
        cell["id"] = f"c{i:02d}"  # stable ids: a regenerated notebook is byte-identical
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": KERNELSPEC, "language_info": LANGUAGE_INFO})
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(name)) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    prefixes = [a for a in argv if not a.startswith("--")]
    names = [n for n in NOTEBOOKS if not prefixes or any(n.startswith(p) for p in prefixes)]
    stale = []
    for name in names:
        path = HERE / f"{name}.ipynb"
        text = render(name)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print("out of date (run python notebooks/build_notebooks.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
