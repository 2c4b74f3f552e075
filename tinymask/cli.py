"""The `tinymask` command line.

    tinymask demo     # run every layer forward and backward and gradient-check it, printing a table
    tinymask info     # versions of tinymask and its dependencies
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def _demo(args) -> int:
    from . import layers as L
    from .gradcheck import check_layer, check_loss
    from .losses import binary_cross_entropy_with_logits, smooth_l1, softmax_cross_entropy

    rng = np.random.default_rng(args.seed)
    print("tinymask demo: every layer's hand-written backward against central differences (float64).")
    print("A correct backward agrees to about 1e-9; a wrong one is off by order 1.\n")
    x = rng.standard_normal((2, 3, 9, 8))
    checks = [
        ("conv2d 3x3, stride 2, padding 1", L.conv2d_forward, L.conv2d_backward,
         [x, rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)], dict(stride=2, padding=1)),
        ("conv_transpose2d 2x2, stride 2 (mask head deconv)", L.conv_transpose2d_forward, L.conv_transpose2d_backward,
         [x, rng.standard_normal((3, 2, 2, 2)), rng.standard_normal(2)], dict(stride=2)),
        ("linear", L.linear_forward, L.linear_backward,
         [rng.standard_normal((5, 6)), rng.standard_normal((3, 6)), rng.standard_normal(3)], {}),
        ("relu", L.relu_forward, L.relu_backward, [x + np.sign(x) * 0.1], {}),
        ("sigmoid", L.sigmoid_forward, L.sigmoid_backward, [x], {}),
        ("max_pool2d 3x3, stride 2, padding 1 (ResNet stem)", L.max_pool2d_forward, L.max_pool2d_backward,
         [0.01 * rng.permutation(np.arange(x.size, dtype=float)).reshape(x.shape)], dict(kernel_size=3, stride=2, padding=1)),
        ("group_norm, 3 groups", L.group_norm_forward, L.group_norm_backward,
         [rng.standard_normal((2, 6, 4, 5)), rng.standard_normal(6), rng.standard_normal(6)], dict(num_groups=3)),
        ("upsample_nearest to 13x11 (FPN top-down)", L.upsample_nearest_forward, L.upsample_nearest_backward,
         [x], dict(size=(13, 11))),
    ]
    worst = 0.0
    for name, fwd, bwd, inputs, kwargs in checks:
        names = ["x", "w", "b"][:len(inputs)]
        errors = check_layer(fwd, bwd, inputs, kwargs=kwargs, names=names)
        worst = max(worst, *errors.values())
        print(f"  {name:52s} " + "  ".join(f"{k}: {v:.1e}" for k, v in errors.items()))
    labels = rng.integers(0, 4, 6)
    for name, fn, inputs in [("softmax_cross_entropy", softmax_cross_entropy, [rng.standard_normal((6, 4)), labels]),
                             ("smooth_l1 (beta 1/9)", lambda p, t: smooth_l1(p, t, beta=1 / 9),
                              [rng.standard_normal(8) + 1.0, np.zeros(8)]),
                             ("binary_cross_entropy_with_logits", binary_cross_entropy_with_logits,
                              [rng.standard_normal((3, 4)) * 3, (rng.random((3, 4)) > 0.5).astype(float)])]:
        err = check_loss(fn, inputs)
        worst = max(worst, err)
        print(f"  {name:52s} x: {err:.1e}")
    ok = worst < 1e-7
    print(f"\nworst relative error {worst:.1e}: {'all gradients agree' if ok else 'SOME GRADIENT IS WRONG'}")
    return 0 if ok else 1


def _info(args) -> int:
    import numba

    from . import __version__
    print(f"tinymask {__version__}\nnumpy {np.__version__}\nnumba {numba.__version__}\npython {sys.version.split()[0]}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tinymask", description="Mask R-CNN from scratch in NumPy.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="gradient-check every layer and print the errors")
    demo.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default 0)")
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="print versions")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
