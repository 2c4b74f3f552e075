"""SGD with momentum and weight decay, the warm-up + step schedule, and clipping, each checked by hand."""
import numpy as np
import pytest

from tinymask.training.optim import decays_weight, global_norm, LRSchedule, SGD


def make_params():
    return {"conv.weight": np.array([[[[1.0, -2.0]]]]),  # 4-D: decayed
            "fc.weight": np.array([[0.5, 0.5], [1.0, 0.0]]),  # 2-D: decayed
            "conv.bias": np.array([3.0]),  # 1-D bias: not decayed
            "gn.weight": np.array([1.0, 1.0])}  # 1-D norm scale: not decayed


def test_decay_rule_is_by_dimension():
    p = make_params()
    assert [decays_weight(k, v) for k, v in p.items()] == [True, True, False, False]


def test_momentum_and_weight_decay_by_hand():
    params = make_params()
    grads = {k: np.full_like(v, 0.5) for k, v in params.items()}
    opt = SGD(params, momentum=0.9, weight_decay=0.1)
    opt.step(params, grads, lr=0.2)
    # step 1, decayed:   g' = 0.5 + 0.1·p, v = g', p = p − 0.2·v
    #   conv.weight 1 -> g' = 0.6, p = 1 − 0.12 = 0.88;  −2 -> g' = 0.3, p = −2 − 0.06 = −2.06
    # not decayed:       v = 0.5, p = p − 0.1
    np.testing.assert_allclose(params["conv.weight"].ravel(), [0.88, -2.06])
    np.testing.assert_allclose(params["conv.bias"], [2.9])
    np.testing.assert_allclose(params["gn.weight"], [0.9, 0.9])
    opt.step(params, grads, lr=0.2)
    # step 2, conv.weight[0]: g' = 0.5 + 0.1·0.88 = 0.588, v = 0.9·0.6 + 0.588 = 1.128, p = 0.88 − 0.2256 = 0.6544
    # conv.bias:              v = 0.9·0.5 + 0.5 = 0.95, p = 2.9 − 0.19 = 2.71
    np.testing.assert_allclose(params["conv.weight"].ravel()[0], 0.6544)
    np.testing.assert_allclose(params["conv.bias"], [2.71])
    np.testing.assert_allclose(opt.velocity["conv.bias"], [0.95])


def test_frozen_parameters_are_never_touched():
    params = make_params()
    frozen = params["gn.weight"].copy()
    opt = SGD(params, trainable=["conv.weight", "fc.weight", "conv.bias"], weight_decay=0.1)
    grads = {k: np.ones_like(v) for k, v in params.items() if k != "gn.weight"}
    opt.step(params, grads, lr=0.5)
    np.testing.assert_array_equal(params["gn.weight"], frozen)
    assert "gn.weight" not in opt.state_dict()
    with pytest.raises(KeyError, match="no gradient"):
        opt.step(params, {"conv.weight": np.ones((1, 1, 1, 2))}, lr=0.1)


def test_matches_torch_sgd_with_param_groups():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(3)}
    tp = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    topt = torch.optim.SGD([{"params": [tp["w"]], "weight_decay": 1e-2}, {"params": [tp["b"]], "weight_decay": 0.0}],
                           lr=0.1, momentum=0.9)
    opt = SGD(params, momentum=0.9, weight_decay=1e-2)
    for step in range(4):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        for k in tp:
            tp[k].grad = torch.tensor(grads[k])
        lr = 0.1 * (0.5 if step >= 2 else 1.0)
        for group in topt.param_groups:
            group["lr"] = lr
        topt.step()
        opt.step(params, grads, lr)
    for k in params:
        np.testing.assert_allclose(params[k], tp[k].detach().numpy(), rtol=1e-12, atol=1e-12)


def test_warmup_then_steps():
    s = LRSchedule(base_lr=0.1, warmup_iters=10, warmup_factor=0.01, steps=[20, 30], gamma=0.1)
    assert s(0) == pytest.approx(0.001)  # f·η
    assert s(5) == pytest.approx(0.1 * (0.01 * 0.5 + 0.5))  # half way: (f + 1) / 2 · η
    assert s(10) == pytest.approx(0.1)
    assert s(19) == pytest.approx(0.1)
    assert s(20) == pytest.approx(0.01)  # the step applies at its own iteration
    assert s(29) == pytest.approx(0.01)
    assert s(30) == pytest.approx(0.001)
    assert LRSchedule(0.1)(123) == 0.1  # no warm-up, no steps


def test_steps_derived_from_the_iteration_count():
    assert LRSchedule.for_iterations(0.02, 1000).steps == [700, 900]
    assert LRSchedule.for_iterations(0.02, 10, decay_at=(0.5,)).steps == [5]
    with pytest.raises(ValueError):
        LRSchedule(0.1, steps=[30, 20])
    with pytest.raises(ValueError):
        LRSchedule(0.0)


def test_clipping_by_global_norm():
    params = {"a": np.zeros(3), "b": np.zeros((2, 2))}
    grads = {"a": np.array([3.0, 0.0, 0.0]), "b": np.array([[0.0, 4.0], [0.0, 0.0]])}  # global norm 5
    assert global_norm(grads) == pytest.approx(5.0)
    opt = SGD(params, momentum=0.0, weight_decay=0.0, clip_grad_norm=1.0)
    info = opt.step(params, grads, lr=1.0)
    assert info["grad_norm"] == pytest.approx(5.0) and info["clip_scale"] == pytest.approx(0.2, rel=1e-5)
    np.testing.assert_allclose(params["a"], [-0.6, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(params["b"], [[0, -0.8], [0, 0]], rtol=1e-5)
    # below the threshold nothing is scaled
    opt2 = SGD({"a": np.zeros(3)}, momentum=0.0, weight_decay=0.0, clip_grad_norm=10.0)
    assert opt2.step({"a": np.zeros(3)}, {"a": np.array([3.0, 0, 0])}, lr=1.0)["clip_scale"] == 1.0


def test_non_finite_gradient_changes_nothing():
    params = make_params()
    before = {k: v.copy() for k, v in params.items()}
    opt = SGD(params)
    grads = {k: np.ones_like(v) for k, v in params.items()}
    grads["fc.weight"][0, 1] = np.nan
    with pytest.raises(FloatingPointError, match="fc.weight"):
        opt.step(params, grads, lr=0.1)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
        assert not opt.velocity[k].any()


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    a = {"w": rng.standard_normal((2, 3)).astype(np.float32), "b": rng.standard_normal(2).astype(np.float32)}
    b = {k: v.copy() for k, v in a.items()}
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in a.items()} for _ in range(3)]
    opt_a = SGD(a)
    for g in grads:
        opt_a.step(a, g, 0.1)
    opt_b = SGD(b)
    opt_b.step(b, grads[0], 0.1)
    state = {k: v.copy() for k, v in opt_b.state_dict().items()}
    opt_c = SGD(b)  # a fresh optimizer, as after loading a checkpoint
    opt_c.load_state_dict(state)
    for g in grads[1:]:
        opt_c.step(b, g, 0.1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].dtype == np.float32 and opt_c.velocity[k].dtype == np.float32
    with pytest.raises(ValueError, match="does not match"):
        opt_c.load_state_dict({"w": state["w"]})
