"""`tinymask ablate` (paper Table 2 in miniature): its variants, its statistics and its machinery at a tiny size.

Accuracy is not tested here (that takes minutes per run); the command's results are in docs/ablations.md.
"""
import json
import math
import os

import pytest

from tinymask.training import ablations as A
from tinymask.cli import main
from tinymask.config import MaskRCNNConfig

CLASSES = ["background", "a", "b", "c"]


def differing_fields(c1: MaskRCNNConfig, c2: MaskRCNNConfig) -> set:
    d1, d2 = c1.to_dict(), c2.to_dict()
    return {k for k in d1 if d1[k] != d2[k]}


@pytest.mark.parametrize("key, allowed", [
    ("a", None),  # the backbone: anything architectural may change
    ("b", {"mask_loss", "class_agnostic_mask"}),
    ("c", {"roi_extractor", "roi_mode"}),
    ("d", {"roi_extractor", "roi_mode"}),
    ("e", {"mask_head"}),
])
def test_rows_of_a_table_differ_only_in_its_switch(key, allowed):
    configs = [A.variant_config(r.variant, CLASSES) for r in A.TABLES[key].rows]
    if allowed is None:
        assert {c.backbone for c in configs} == {"c4", "fpn"}
        return
    for c in configs[1:]:
        assert differing_fields(configs[0], c) <= allowed
        assert differing_fields(configs[0], c)  # and they do differ


def test_table_backbones_match_the_paper():
    assert {A.variant_config(r.variant, CLASSES).backbone for r in A.TABLES["c"].rows} == {"c4"}
    assert {A.variant_config(r.variant, CLASSES).backbone for r in A.TABLES["d"].rows} == {"c5"}
    assert {A.variant_config(r.variant, CLASSES).backbone for r in A.TABLES["e"].rows} == {"fpn"}
    assert A.variant_config("fpn", CLASSES, image_size=96).min_size == 96
    stride16 = A.variant_config("c4", CLASSES)
    assert stride16.box_pool_size == 14 and stride16.mask_resolution == 14  # Fig. 4 left
    assert A.variant_config("c5", CLASSES).mask_resolution == 28  # Fig. 4 right's heads


def test_every_variant_is_used_and_known():
    used = {r.variant for t in A.TABLES.values() for r in t.rows}
    assert used == set(A.VARIANTS)
    assert A.variants_for(["b", "c"])[0] == "c4-softmax" and len(A.variants_for(["b", "c"])) == 7
    with pytest.raises(ValueError, match="unknown variant"):
        A.variant_config("c6", CLASSES)


def fake_result(variant, seed, ap, ap75=None):
    segm = {"AP": ap, "AP50": min(1.0, ap + 0.3), "AP75": ap if ap75 is None else ap75}
    return {"variant": variant, "seed": seed, "segm": segm, "bbox": dict(segm), "seconds": 1.0}


def test_aggregate_means_stds_and_delta_standard_errors():
    results = [fake_result("c5-pool", 0, 0.10), fake_result("c5-pool", 1, 0.14),
               fake_result("c5", 0, 0.20), fake_result("c5", 1, 0.30)]
    t = A.aggregate(results, ["d"])["d"]
    pool, align = t["rows"]
    assert pool["ours"]["mask"]["AP"]["mean"] == pytest.approx(12.0)
    assert pool["ours"]["mask"]["AP"]["std"] == pytest.approx(math.sqrt(8.0))  # sample std of 10 and 14
    assert align["ours"]["mask"]["AP"]["std"] == pytest.approx(math.sqrt(50.0))
    (delta,) = t["deltas"]
    assert delta["mask"]["AP"]["ours"] == pytest.approx(13.0)
    assert delta["mask"]["AP"]["se"] == pytest.approx(math.sqrt(8.0 / 2 + 50.0 / 2))
    assert delta["mask"]["AP75"]["paper"] == pytest.approx(10.5)  # 32.1 - 21.6, the paper's Δ row
    assert delta["box"]["AP"]["paper"] == pytest.approx(5.8)
    text = A.format_table("d", t)
    assert "23.6" in text and "+10.5" in text and "box AP" in text and " 12.0 ± 2.8" in text
    md = A.format_table("d", t, markdown=True)
    assert md.count("\n|") == 5  # header, rule, two rows, one Δ


def test_aggregate_refuses_missing_rows_and_lists_diverged_runs():
    with pytest.raises(ValueError, match="no result for variant c5-pool"):
        A.aggregate([fake_result("c5", 0, 0.2)], ["d"])
    diverged = {"variant": "c5", "seed": 1, "segm": None, "bbox": None, "diverged": "NaN", "seconds": 1.0}
    t = A.aggregate([fake_result("c5", 0, 0.2), diverged, fake_result("c5-pool", 0, 0.1)], ["d"])["d"]
    align = t["rows"][1]
    assert align["seeds"] == [0] and align["diverged"] == [1] and align["ours"]["mask"]["AP"]["n"] == 1
    text = A.format_table("d", t)
    assert " 20.0 ± 0.0*" in text and "RoIAlign: seed(s) 1 diverged" in text
    # every seed of a row diverged: its cells say so and the Δ has no value
    t = A.aggregate([diverged, fake_result("c5-pool", 0, 0.1)], ["d"])["d"]
    assert t["rows"][1]["ours"] is None and t["deltas"][0]["mask"]["AP"]["ours"] is None
    assert "diverged" in A.format_table("d", t) and "| diverged |" in A.format_table("d", t, markdown=True)


def test_setting_validation():
    with pytest.raises(ValueError, match="unknown setting"):
        A.make_setting("huge")
    with pytest.raises(ValueError, match="seeds"):
        A.make_setting("quick", seeds=[1, 1])
    with pytest.raises(ValueError, match="iterations"):
        A.make_setting("quick", iterations=0)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        A.make_setting("quick", clip_grad_norm=-1.0)
    s = A.make_setting("full", iterations=5)
    assert s.iterations == 5 and s.seeds == [0, 1, 2]


TINY = dict(iterations=2, seeds=[0, 1], num_train=4, num_val=2, image_size=64)


def test_ablate_machinery_at_a_tiny_size(tmp_path, capsys):
    setting = A.make_setting("quick", **TINY)
    report = A.ablate(setting, ["e"], tmp_path, jobs=1, backend="numpy", command="test")
    out = capsys.readouterr().out
    assert "Table 2(e) Mask branch" in out and "33.6" in out  # the paper's FCN row beside ours
    for name in ("ablations.json", "ablations.md", "ablations.png"):
        assert os.path.getsize(tmp_path / name) > 0
    saved = json.loads((tmp_path / "ablations.json").read_text())
    assert saved["tables"]["e"]["rows"][1]["variant"] == "fpn"
    assert saved["tables"]["e"]["rows"][0]["seeds"] == [0, 1]
    assert len(report["runs"]) == 4
    result = tmp_path / "runs" / "fpn-mlp" / "seed1" / "result.json"
    assert json.loads(result.read_text())["spec"]["iterations"] == 2
    # A second call reuses the finished runs (nothing is trained again) ...
    mtime = result.stat().st_mtime_ns
    A.ablate(setting, ["e"], tmp_path, jobs=1, backend="numpy")
    assert result.stat().st_mtime_ns == mtime
    assert "reusing 4 finished run(s)" in capsys.readouterr().out
    # ... and a run whose result was lost after training is evaluated again from its checkpoint, not retrained.
    result.unlink()
    A.ablate(setting, ["e"], tmp_path, jobs=1, backend="numpy")
    assert json.loads(result.read_text())["segm"] is not None
    # A different setting does not reuse them.
    A.run_one("fpn", 0, vars(A.make_setting("quick", **{**TINY, "iterations": 1})), str(tmp_path), "numpy")
    assert json.loads((tmp_path / "runs" / "fpn" / "seed0" / "result.json").read_text())["spec"]["iterations"] == 1


def test_a_diverging_run_is_recorded_and_the_tables_still_print(tmp_path, capsys):
    setting = A.make_setting("quick", **{**TINY, "seeds": [0], "lr": 1e12, "warmup_iters": 0})  # blows up at once
    report = A.ablate(setting, ["d"], tmp_path, jobs=1, backend="numpy")
    out = capsys.readouterr().out
    assert "DIVERGED" in out and "Table 2(d)" in out
    assert all(r["diverged"] == [0] for r in report["tables"]["d"]["rows"])
    assert json.loads((tmp_path / "runs" / "c5" / "seed0" / "result.json").read_text())["segm"] is None


def test_cli_ablate_two_worker_processes(tmp_path, capsys):
    code = main(["ablate", "--tables", "d", "--iterations", "1", "--seeds", "0", "--num-train", "4",
                 "--num-val", "2", "--image-size", "64", "--jobs", "2", "--backend", "numpy", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "Table 2(d) RoIAlign at stride 32" in out and "+10.5" in out
    assert sorted(os.listdir(tmp_path / "runs")) == ["c5", "c5-pool"]


def test_cli_ablate_rejects_bad_options(tmp_path, capsys):
    assert main(["ablate", "--seeds", "0", "0", "--out", str(tmp_path)]) == 1
    assert "seeds must be distinct" in capsys.readouterr().err
    assert main(["ablate", "--jobs", "0", "--out", str(tmp_path)]) == 1
    assert "--jobs must be >= 1" in capsys.readouterr().err
