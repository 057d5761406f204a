"""Transforms, the torch dataset, collate, and the grouped / seeded batch samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from detstack.errors import ConfigError, DatasetError
from training.coco import load_dataset
from training.dataset import (
    DetectionDataset,
    GroupedBatchSampler,
    SeededRandomSampler,
    aspect_ratio_groups,
    collate_fn,
)
from training.transforms import (
    Compose,
    RandomHorizontalFlip,
    ToTensor,
    evaluation_transforms,
    hflip,
    training_transforms,
)


def _sample(width=10, height=4):
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, 0] = 255  # left column white
    target = {
        "boxes": np.array([[0, 1, 3, 4], [6, 0, 10, 2]], np.float32),
        "labels": np.array([1, 2], np.int64),
        "image_id": 7,
    }
    return pixels, target


# --------------------------------------------------------------------------- transforms


def test_to_tensor_gives_chw_float_in_unit_range_and_tensor_targets():
    pixels, target = _sample()
    image, out = ToTensor()(pixels, target)
    assert image.shape == (3, 4, 10) and image.dtype == torch.float32
    assert image.max().item() == 1.0 and image.min().item() == 0.0
    assert out["boxes"].dtype == torch.float32 and out["boxes"].shape == (2, 4)
    assert out["labels"].dtype == torch.int64
    assert out["image_id"].dtype == torch.int64 and int(out["image_id"]) == 7
    again, _ = ToTensor()(image, out)
    assert again is image


def test_to_tensor_keeps_an_empty_target_shaped_n_by_4():
    pixels, _ = _sample()
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
    _, out = ToTensor()(pixels, empty)
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)


def test_to_tensor_refuses_a_non_rgb_uint8_array():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        ToTensor()(np.zeros((4, 4), np.uint8), {"boxes": [], "labels": []})


def test_flip_mirrors_pixels_and_boxes_by_their_edges():
    pixels, target = _sample()
    image, out = hflip(*ToTensor()(pixels, target))
    assert image[:, :, -1].eq(1.0).all() and image[:, :, 0].eq(0.0).all()
    assert out["boxes"].tolist() == [[7, 1, 10, 4], [0, 0, 4, 2]]
    assert out["labels"].tolist() == [1, 2]
    # Flipping twice gives the original back, on numpy input too.
    back_pixels, back = hflip(*hflip(pixels, target))
    np.testing.assert_array_equal(back_pixels, pixels)
    np.testing.assert_array_equal(back["boxes"], target["boxes"])


def test_flip_does_not_change_the_input_target():
    pixels, target = _sample()
    original = target["boxes"].copy()
    hflip(pixels, target)
    np.testing.assert_array_equal(target["boxes"], original)


def test_random_flip_follows_its_probability_and_torch_seed():
    pixels, target = _sample()
    transform = Compose([ToTensor(), RandomHorizontalFlip(0.5)])
    torch.manual_seed(1)
    first = [transform(pixels, target)[1]["boxes"][0, 0].item() for _ in range(40)]
    torch.manual_seed(1)
    second = [transform(pixels, target)[1]["boxes"][0, 0].item() for _ in range(40)]
    assert first == second
    assert 10 <= first.count(7.0) <= 30
    assert RandomHorizontalFlip(0.0)(pixels, target)[1] is target
    with pytest.raises(ConfigError, match=r"got 1\.5"):
        RandomHorizontalFlip(1.5)


def test_training_and_evaluation_transforms():
    assert "RandomHorizontalFlip" in repr(training_transforms(0.5))
    assert "RandomHorizontalFlip" not in repr(training_transforms(0.0))
    assert repr(evaluation_transforms()) == "Compose([ToTensor()])"


# --------------------------------------------------------------------------- dataset


def test_detection_dataset_returns_float_chw_images_and_tensor_targets(synthetic_dataset):
    coco = load_dataset(synthetic_dataset)
    data = DetectionDataset(coco, coco.image_ids[:4])
    image, target = data[1]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert set(target) == {"boxes", "labels", "image_id"}
    assert int(target["image_id"]) == coco.image_ids[1]
    np.testing.assert_array_equal(target["boxes"].numpy(), coco.target(coco.image_ids[1])["boxes"])
    assert len(data) == 4 and data.aspect_ratios() == [1.0] * 4


def test_detection_dataset_refuses_unknown_image_ids(synthetic_dataset):
    coco = load_dataset(synthetic_dataset)
    with pytest.raises(DatasetError, match="image ids \\[999\\]"):
        DetectionDataset(coco, [coco.image_ids[0], 999])


def test_dataloader_batches_images_of_different_sizes_with_collate_fn(synthetic_dataset_factory):
    root = synthetic_dataset_factory("mixed", images=8, size=48, aspect_ratios=(0.75, 1.0, 4 / 3))
    coco = load_dataset(root)
    data = DetectionDataset(coco, coco.image_ids, training_transforms())
    loader = DataLoader(data, batch_size=8, collate_fn=collate_fn)
    images, targets = next(iter(loader))
    assert len(images) == len(targets) == 8
    assert len({tuple(i.shape) for i in images}) > 1


# --------------------------------------------------------------------------- samplers


def test_aspect_ratio_groups_separate_portrait_square_and_landscape():
    groups = aspect_ratio_groups([0.3, 0.75, 1.0, 1.05, 1.5, 4.0])
    assert groups[0] < groups[1] < groups[2] == groups[3] < groups[4] < groups[5]


def test_grouped_batches_hold_one_group_each_until_the_leftovers():
    groups = [0, 1] * 10 + [0] * 3  # 13 of group 0, 10 of group 1
    sampler = GroupedBatchSampler(SequentialSampler(range(23)), groups, batch_size=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6
    assert sorted(i for b in batches for i in b) == list(range(23))
    assert all(len(b) == 4 and len({groups[i] for i in b}) == 1 for b in batches[:-1])
    assert len(batches[-1]) == 3  # 1 left of group 0 and 2 of group 1, mixed at the end
    assert [groups[i] for i in batches[0]] == [0, 0, 0, 0]


def test_grouped_sampler_drop_last_yields_only_full_batches():
    sampler = GroupedBatchSampler(range(10), [0] * 10, batch_size=4, drop_last=True)
    assert [len(b) for b in sampler] == [4, 4] and len(sampler) == 2


def test_seeded_sampler_order_depends_only_on_seed_and_epoch():
    a, b = SeededRandomSampler(20, seed=1), SeededRandomSampler(20, seed=1)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    b.set_epoch(1)  # a fresh sampler resumed at epoch 1 sees the same order
    assert list(b) == second != first
    assert sorted(first) == list(range(20))
    assert list(SeededRandomSampler(20, seed=2)) != first


def test_grouped_sampler_forwards_the_epoch_and_is_deterministic():
    groups = aspect_ratio_groups(np.linspace(0.5, 2.0, 30))
    make = lambda: GroupedBatchSampler(SeededRandomSampler(30, seed=5), groups, batch_size=3)  # noqa: E731
    a, b = make(), make()
    assert list(a) == list(b)
    epoch0 = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != epoch0


def test_grouped_sampler_over_distributed_sampler_gives_every_rank_the_same_batch_count():
    groups = [0] * 7 + [1] * 6 + [2] * 4
    counts, seen = [], []
    for rank in range(2):
        inner = DistributedSampler(range(17), num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler = GroupedBatchSampler(inner, groups, batch_size=2)
        sampler.set_epoch(2)
        batches = list(sampler)
        counts.append((len(batches), len(sampler)))
        seen += [i for b in batches for i in b]
    assert counts[0] == counts[1] == (5, 5)
    assert set(seen) == set(range(17))  # DistributedSampler pads one index to 18 samples
