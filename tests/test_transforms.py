"""Tests for tinymask/data/transforms.py: the flip by hand and its invariants, crowd filtering, batching, and the
resumable epoch order."""
import numpy as np
import pytest

from tinymask.data.shapes import masks_to_boxes, ShapesDataset
from tinymask.data.transforms import (batch_indices, collate, epoch_order, horizontal_flip, random_horizontal_flip,
                                      training_targets)
from tinymask.data import check_sample


def hand_sample():
    """A 4 x 6 image (H = 4, W = 6) with one instance covering rows 1-2, columns 1-2: box (1, 1, 3, 3)."""
    image = np.zeros((3, 4, 6), dtype=np.float32)
    image[0] = np.arange(24, dtype=np.float32).reshape(4, 6) / 23  # red channel: a ramp we can follow
    masks = np.zeros((1, 4, 6), dtype=np.uint8)
    masks[0, 1:3, 1:3] = 1
    return {"image": image, "boxes": np.array([[1, 1, 3, 3]], dtype=np.float32), "labels": np.array([2]),
            "masks": masks, "iscrowd": np.array([False]), "image_id": 7}


def test_flip_by_hand_on_a_4x6_image():
    s = hand_sample()
    f = horizontal_flip(s)
    # x0' = W - x1 = 6 - 3 = 3, x1' = W - x0 = 6 - 1 = 5; y unchanged.
    assert f["boxes"].tolist() == [[3, 1, 5, 3]]
    expected = np.zeros((4, 6), dtype=np.uint8)
    expected[1:3, 3:5] = 1  # columns 1, 2 -> 6 - 1 - 1 = 4, 6 - 1 - 2 = 3
    assert np.array_equal(f["masks"][0], expected)
    assert f["image"][0, 0].tolist() == (np.array([5, 4, 3, 2, 1, 0]) / 23).astype(np.float32).tolist()
    assert f["labels"].tolist() == [2] and f["image_id"] == 7
    assert s["boxes"].tolist() == [[1, 1, 3, 3]]  # the input is unchanged
    assert f["image"].flags.c_contiguous and f["masks"].flags.c_contiguous


def test_flip_twice_is_identity_and_flipped_mask_box_is_flipped_box():
    for s in ShapesDataset("train", 4, seed=0, image_size=64):
        f = horizontal_flip(s)
        check_sample(f)
        assert np.array_equal(masks_to_boxes(f["masks"]), f["boxes"])  # the flipped mask's tight box
        back = horizontal_flip(f)
        for key in ("image", "boxes", "labels", "masks", "iscrowd"):
            assert np.array_equal(back[key], s[key])


def test_flip_of_an_empty_sample():
    s = hand_sample()
    s = training_targets({**s, "iscrowd": np.array([True])})  # no instance left
    f = horizontal_flip(s)
    assert f["boxes"].shape == (0, 4) and f["masks"].shape == (0, 4, 6)


def test_random_flip_is_seeded_and_flips_about_half():
    s = hand_sample()
    rng = np.random.default_rng(0)
    flips = [random_horizontal_flip(s, rng)["boxes"][0, 0] == 3 for _ in range(400)]
    assert 150 < sum(flips) < 250
    again = np.random.default_rng(0)
    assert flips == [random_horizontal_flip(s, again)["boxes"][0, 0] == 3 for _ in range(400)]
    assert random_horizontal_flip(s, rng, p=0.0) is s
    assert random_horizontal_flip(s, rng, p=1.0)["boxes"].tolist() == [[3, 1, 5, 3]]


def test_training_targets_drops_crowds_and_degenerate_boxes():
    masks = np.ones((3, 4, 6), dtype=np.uint8)
    s = {"image": np.zeros((3, 4, 6), np.float32),
         "boxes": np.array([[0, 0, 2, 2], [1, 1, 3, 3], [2, 2, 2, 4]], dtype=np.float32),  # last: zero width
         "labels": np.array([1, 2, 3]), "masks": masks, "iscrowd": np.array([False, True, False]), "image_id": 1}
    t = training_targets(s)
    assert t["labels"].tolist() == [1] and t["boxes"].shape == (1, 4) and t["masks"].shape == (1, 4, 6)
    assert s["labels"].tolist() == [1, 2, 3]  # the input is unchanged


def test_collate_pads_bottom_right():
    a, b = hand_sample(), hand_sample()
    b["image"] = np.ones((3, 5, 3), np.float32)
    b["masks"] = np.zeros((0, 5, 3), np.uint8)
    b["boxes"], b["labels"], b["iscrowd"] = np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool)
    batch = collate([a, b], size_divisible=4)
    assert batch["images"].shape == (2, 3, 8, 8)  # max (5, 6) rounded up to multiples of 4
    assert batch["image_sizes"].tolist() == [[4, 6], [5, 3]]
    assert np.array_equal(batch["images"][0, :, :4, :6], a["image"]) and batch["images"][0, :, 4:].sum() == 0
    assert batch["images"][1, :, :5, :3].min() == 1 and batch["images"][1, :, :, 3:].sum() == 0
    assert [m.shape for m in batch["masks"]] == [(1, 4, 6), (0, 5, 3)]
    assert batch["image_ids"] == [7, 7]


def test_epoch_order_is_resumable():
    first = epoch_order(10, seed=3, epoch=2)
    assert sorted(first.tolist()) == list(range(10)) and first.dtype == np.int64
    assert np.array_equal(first, epoch_order(10, seed=3, epoch=2))  # a restarted run gets the same order
    assert not np.array_equal(first, epoch_order(10, seed=3, epoch=3))
    assert not np.array_equal(first, epoch_order(10, seed=4, epoch=2))
    batches = batch_indices(10, 4, seed=3, epoch=2)
    assert [b.tolist() for b in batches] == [first[:4].tolist(), first[4:8].tolist(), first[8:].tolist()]
    assert len(batch_indices(10, 4, seed=3, epoch=2, drop_last=True)) == 2
    with pytest.raises(ValueError):
        batch_indices(10, 0, seed=0, epoch=0)
