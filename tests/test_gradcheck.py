"""The gradient checker itself: it must pass right backwards and catch wrong ones."""
import numpy as np
import pytest

from tinymask.gradcheck import check_layer, check_loss, numerical_gradient, rel_error


def square_forward(x):
    return x ** 2, x


def square_backward(dout, cache):
    return 2 * cache * dout


def wrong_backward(dout, cache):
    return 2.1 * cache * dout  # 5% off: the checker must see it


def test_numerical_gradient_of_known_function(rng):
    x = rng.standard_normal((3, 4))
    num = numerical_gradient(lambda: np.sum(np.sin(x)), x)
    assert rel_error(num, np.cos(x)) < 1e-9


def test_check_layer_passes_right_and_catches_wrong(rng):
    x = rng.standard_normal((2, 3))
    assert check_layer(square_forward, square_backward, [x])["input0"] < 1e-9
    assert check_layer(square_forward, wrong_backward, [x])["input0"] > 1e-2


def test_check_layer_catches_one_wrong_element(rng):
    x = rng.standard_normal((10, 10))

    def one_wrong(dout, cache):
        g = 2 * cache * dout
        g[3, 4] += 0.5
        return g

    assert check_layer(square_forward, one_wrong, [x])["input0"] > 1e-3


def test_inputs_left_unchanged(rng):
    x = rng.standard_normal((4,))
    before = x.copy()
    numerical_gradient(lambda: np.sum(x ** 3), x)
    np.testing.assert_array_equal(x, before)


def test_rel_error_basics():
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error(np.ones(3), -np.ones(3)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes"):
        rel_error(np.ones(3), np.ones(4))


def test_float32_refused():
    x = np.ones(3, dtype=np.float32)
    with pytest.raises(TypeError, match="float64"):
        numerical_gradient(lambda: np.sum(x), x)


def test_check_loss(rng):
    x = rng.standard_normal(5)
    assert check_loss(lambda z: (np.sum(z ** 2), 2 * z), [x]) < 1e-9
    assert check_loss(lambda z: (np.sum(z ** 2), z), [x]) > 0.1


def test_views_are_nudged_in_place(rng):
    a = rng.standard_normal((3, 4))
    x = a.T  # not contiguous: a reshape would copy
    num = numerical_gradient(lambda: np.sum(x ** 2), x)
    assert rel_error(num, 2 * x) < 1e-9
