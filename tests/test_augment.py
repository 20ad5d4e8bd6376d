import torch

from dlcv.data import augment
from dlcv.engine import batches


def test_random_crop_cuts_the_padded_image_at_each_samples_offset():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    dy, dx = torch.tensor([0, 4]), torch.tensor([2, 1])
    out = augment.random_crop(x, 2, dy, dx, "zeros")
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    assert torch.equal(out[0], padded[0, :, 0:5, 2:7])
    assert torch.equal(out[1], padded[1, :, 4:9, 1:6])


def test_flip_is_per_sample():
    x = torch.arange(8, dtype=torch.float32).view(2, 1, 1, 4)
    out = augment.random_flip(x, torch.tensor([True, False]))
    assert out[0, 0, 0].tolist() == [3, 2, 1, 0] and out[1, 0, 0].tolist() == [4, 5, 6, 7]


def test_zero_rotation_is_identity_and_90_degrees_rotates():
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(augment.random_rotation(x, torch.zeros(2)), x, atol=1e-5)
    rot = augment.random_rotation(x, torch.tensor([90.0, 90.0]))
    assert torch.allclose(rot, torch.rot90(x, 1, (2, 3)), atol=1e-4) or \
        torch.allclose(rot, torch.rot90(x, -1, (2, 3)), atol=1e-4)


def test_cutout_zeroes_a_square_per_sample():
    x = torch.ones(2, 1, 9, 9)
    out = augment.random_cutout(x, 3, torch.tensor([4, 0]), torch.tensor([4, 0]))
    assert out[0].sum() == 81 - 9 and out[1].sum() == 81 - 4  # clipped at the corner


def test_samples_get_different_parameters():
    x = torch.rand(64, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    flipped = augment.augment_batch(x, augment.AugmentSpec(flip=True), gen, 64, 0)
    n_flipped = sum(torch.equal(flipped[i], x[i].flip(-1)) for i in range(64))
    assert 16 < n_flipped < 48  # about half, each image decided on its own
    cropped = augment.augment_batch(x, augment.AugmentSpec(crop_padding=2), gen, 64, 0)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = {(dy, dx) for i in range(64) for dy in range(5) for dx in range(5)
              if torch.equal(cropped[i], padded[i, :, dy:dy + 8, dx:dx + 8])}
    assert len(shifts) > 10  # many different offsets in one batch


def test_sliced_augmentation_equals_the_global_batch():
    """What a rank augments is exactly its slice of what one process would augment (DDP == 1 process)."""
    x = torch.rand(8, 3, 8, 8)
    spec = augment.AugmentSpec(flip=True, crop_padding=2, rotation=10.0, cutout=3)
    whole = augment.augment_batch(x, spec, torch.Generator().manual_seed(3), 8, 0)
    halves = [augment.augment_batch(x[o:o + 4], spec, torch.Generator().manual_seed(3), 8, o) for o in (0, 4)]
    assert torch.allclose(torch.cat(halves), whole, atol=1e-6)


def test_train_batches_split_over_ranks_reassemble_the_single_process_batches():
    single = [idx for idx, _ in batches.train_batches(23, 6, seed=1, epoch=2, rank=0, world=1)]
    ranks = [list(batches.train_batches(23, 6, seed=1, epoch=2, rank=r, world=2)) for r in range(2)]
    assert len(single) == 3  # 23 // 6, last partial batch dropped
    for step, idx in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][step][0], ranks[1][step][0]]), idx)
        assert ranks[1][step][1] == 3
    other_epoch = [idx for idx, _ in batches.train_batches(23, 6, seed=1, epoch=3, rank=0, world=1)]
    assert not torch.equal(torch.cat(single), torch.cat(other_epoch))


def test_eval_batches_cover_every_item_once():
    seen = torch.cat([b for r in range(3) for b in batches.eval_batches(10, 2, r, 3)])
    assert sorted(seen.tolist()) == list(range(10))
