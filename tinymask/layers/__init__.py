"""Differentiable layers, each a `*_forward(...) -> (out, cache)` / `*_backward(dout, cache) -> grads` pair.

See docs/conventions.md for the convention. Import from the concept's module (`tinymask.layers.conv`) or from here.

Every backward checks that `dout` is a float array of its forward's output shape. `finite_checks` (from
`tinymask/_validate.py`) turns on the NaN/infinity checks of every layer's inputs, outputs and gradients:
`with finite_checks(): ...` (docs/conventions.md, "Bad input").
"""
from tinymask._validate import finite_checks
from tinymask.layers.activations import relu_backward, relu_forward, sigmoid, sigmoid_backward, sigmoid_forward
from tinymask.layers.conv import conv2d_backward, conv2d_backward_naive, conv2d_forward, conv2d_forward_naive
from tinymask.layers.conv_transpose import (conv_transpose2d_backward, conv_transpose2d_backward_naive,
                                            conv_transpose2d_forward, conv_transpose2d_forward_naive)
from tinymask.layers.linear import linear_backward, linear_forward
from tinymask.layers.multiscale_roi import multiscale_roi_backward, multiscale_roi_forward
from tinymask.layers.norm import (frozen_batch_norm_backward, frozen_batch_norm_forward, group_norm_backward,
                                  group_norm_forward)
from tinymask.layers.pooling import (global_avg_pool_backward, global_avg_pool_forward, max_pool2d_backward,
                                     max_pool2d_forward)
from tinymask.layers.roi_align import roi_align_backward, roi_align_forward
from tinymask.layers.roi_align_naive import roi_align_backward_naive, roi_align_forward_naive
from tinymask.layers.roi_pool import roi_pool_backward, roi_pool_forward
from tinymask.layers.roi_warp import roi_warp_backward, roi_warp_forward
from tinymask.layers.upsample import upsample_nearest_backward, upsample_nearest_forward
