import pytest
import torch
import torchvision

from dlcv.data import augment
from dlcv.data.views import ViewSpec
from dlcv.engine import batches
from dlcv.errors import DlcvError


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


def _draw(global_size, offset=0, n=None, seed=0):
    return augment.GlobalDraw(torch.Generator().manual_seed(seed), global_size, offset, n or global_size,
                              torch.device("cpu"))


def _dihedral(t):
    """The 8 flips / 90-degree rotations of the last two dimensions."""
    return [r.flip(-1) if f else r for k in range(4) for r in [t.rot90(k, (-2, -1))] for f in (False, True)]


def test_tile_flips_and_rotations_are_exact_per_sample_and_joint():
    x = torch.rand(16, 3, 8, 8)
    y = torch.randint(0, 7, (16, 8, 8), dtype=torch.uint8)
    out_x, out_y = augment.tile_geometry(x, y, _draw(16), 8, flip=True, rotate90=True)
    used = set()
    for i in range(16):
        match = [k for k, t in enumerate(_dihedral(x[i])) if torch.allclose(t, out_x[i], atol=1e-6)]
        assert len(match) == 1, i  # the image is exactly one of the 8 symmetries of the tile
        assert torch.equal(_dihedral(y[i])[match[0]], out_y[i])  # and the mask got the same one
        used.add(match[0])
    assert len(used) >= 4  # per-sample parameters


def test_tile_crops_keep_image_and_mask_aligned():
    classes = torch.randint(0, 7, (4, 4, 4)).repeat_interleave(32, 1).repeat_interleave(32, 2).to(torch.uint8)
    image = (classes.float() / 6)[:, None].expand(-1, 3, -1, -1)  # the image encodes each pixel's class
    x, y = augment.tile_geometry(image, classes, _draw(4), 64, flip=True, rotate90=True, scale=(0.4, 1.0))
    assert x.shape == (4, 3, 64, 64) and y.shape == (4, 64, 64) and y.dtype == torch.uint8
    assert set(y.unique().tolist()) <= set(range(7))  # nearest: no blended class values
    agree = (x[:, 0] * 6).round() == y.float()
    assert agree.float().mean() > 0.9  # bilinear image vs nearest mask differ only along class edges
    assert not torch.equal(x[0], x[1])


@pytest.mark.parametrize("balanced", [0.0, 0.5])
def test_tile_geometry_of_a_rank_slice_equals_the_global_batch(balanced):
    x = torch.rand(6, 3, 16, 16)
    y = torch.randint(0, 7, (6, 16, 16), dtype=torch.uint8)
    opts = {"flip": True, "rotate90": True, "scale": (0.3, 1.0), "balanced": balanced}
    whole = augment.tile_geometry(x, y, _draw(6), 12, **opts)
    halves = [augment.tile_geometry(x[o:o + 3], y[o:o + 3], _draw(6, o, 3), 12, **opts) for o in (0, 3)]
    assert torch.allclose(whole[0], torch.cat([h[0] for h in halves]))
    assert torch.equal(whole[1], torch.cat([h[1] for h in halves]))


def test_class_pixel_draws_a_present_class_then_one_of_its_pixels():
    y = torch.zeros(300, 16, 16, dtype=torch.uint8)
    y[:, 13, 2] = 4  # one pixel of class 4 in every mask
    y[:, 0, :] = 6  # a class outside 0..5 is never drawn
    y[-1] = 255  # a mask with no class of 0..5
    px, py, found = augment.class_pixel(y, _draw(300), 6)
    assert found[:-1].all() and not found[-1]
    px, py = px[:-1], py[:-1]
    on_rare = (px == 2.5 / 16) & (py == 13.5 / 16)  # the centre of that one pixel
    assert 0.4 < on_rare.float().mean() < 0.6  # two classes present: each drawn about half the time
    rows = (py[~on_rare] * 16 - 0.5).round().long()
    assert (rows >= 1).all()  # class 0's pixels, never the unknown row
    assert len(set(zip(px[~on_rare].tolist(), py[~on_rare].tolist()))) > 50  # spread over class 0's pixels


def test_balanced_crops_show_a_rare_class_more_often():
    y = torch.zeros(200, 64, 64, dtype=torch.uint8)
    y[:, 60:, 60:] = 2  # a 4x4 corner of a rare class
    x = torch.rand(200, 3, 64, 64)
    seen = {}
    for balanced in (0.0, 1.0):
        _, crops = augment.tile_geometry(x, y, _draw(200), 32, scale=(0.25, 0.25), balanced=balanced, classes=6)
        seen[balanced] = (crops == 2).flatten(1).any(1).float().mean().item()
    assert seen[0.0] < 0.1 and seen[1.0] > 0.4  # uniform centres rarely reach the corner; half pick class 2


def test_jitter_with_matches_torchvision_per_image_in_each_images_order():
    """hsv hue + per-image orders is exactly ColorJitter; the old YIQ hue is a different change (keeps luma)."""
    from torchvision.transforms.v2 import functional as TF
    torch.manual_seed(0)
    x = torch.rand(6, 3, 12, 12)
    b, c, s = torch.rand(3, 6) * 0.8 + 0.6
    h = torch.rand(6) * 0.2 - 0.1
    order = torch.stack([torch.randperm(4) for _ in range(6)])
    order[0] = torch.tensor([3, 2, 1, 0])  # hue first: the orders differ where it matters
    got = augment.jitter_with(x, b, c, s, h, order, hue_space="hsv")
    for i in range(6):
        want = x[i]
        for op in order[i].tolist():
            want = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue][op](
                want, [b, c, s, h][op][i].item())
        assert torch.allclose(got[i], want, atol=2e-3), i
    assert not torch.allclose(got, augment.jitter_with(x, b, c, s, h, None, hue_space="hsv"), atol=1e-2)
    one = torch.ones(6)  # hue alone: YIQ's rotation keeps luma, HSV's shift keeps the max channel
    yiq, hsv = (augment.jitter_with(x, one, one, one, h, hue_space=space) for space in ("yiq", "hsv"))
    inside = (yiq > 0.001).all(1) & (yiq < 0.999).all(1)  # pixels the final clamp left alone
    assert inside.float().mean() > 0.3
    assert torch.allclose(augment.grayscale(yiq)[:, 0][inside], augment.grayscale(x)[:, 0][inside], atol=1e-4)
    assert torch.allclose(hsv.amax(1), x.amax(1), atol=1e-5)
    assert not torch.allclose(yiq, hsv, atol=0.05)
    with pytest.raises(DlcvError, match="views.hue_space must be one of yiq, hsv"):
        ViewSpec(hue_space="hls")


def test_colour_jitter_is_per_sample_and_identity_at_zero_strength():
    x = torch.rand(1, 3, 8, 8).repeat(4, 1, 1, 1)
    spec = augment.AugmentSpec(color_jitter=(0.4, 0.4, 0.4, 0.1))
    out = augment.augment_batch(x, spec, torch.Generator().manual_seed(0), 4, 0)
    assert out.min() >= 0 and out.max() <= 1
    assert all(not torch.allclose(out[0], out[i]) for i in (1, 2, 3))  # one draw per image
    still = augment.augment_batch(x, augment.AugmentSpec(color_jitter=(0, 0, 0, 0)), torch.Generator(), 4, 0)
    assert torch.allclose(still, x, atol=1e-5)
    with pytest.raises(DlcvError, match="color_jitter needs 4 values"):
        augment.AugmentSpec(color_jitter=(0.4, 0.4))


def test_resized_crop_of_the_whole_image_is_the_identity_and_flip_flips():
    x = torch.rand(4, 3, 8, 8)
    draw = augment.GlobalDraw(torch.Generator().manual_seed(0), 4, 0, 4, x.device)
    same = augment.random_resized_crop(x, 8, draw, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(same, x, atol=1e-5)
    flipped = augment.random_resized_crop(x, 8, draw, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                          flip=torch.tensor([True, False, True, False]))
    assert torch.allclose(flipped[0], x[0].flip(-1), atol=1e-5) and torch.allclose(flipped[1], x[1], atol=1e-5)


def test_resized_crop_boxes_lie_inside_the_image_with_torchvisions_area_statistics():
    n = 20000
    draw = augment.GlobalDraw(torch.Generator().manual_seed(0), n, 0, n, torch.device("cpu"))
    cx, cy, width, height = augment.resized_crop_boxes(draw, 224, 224)
    for centre, side in ((cx, width), (cy, height)):
        assert (centre - side / 2).min() >= -1e-6 and (centre + side / 2).max() <= 1 + 1e-6
    get_params, image = torchvision.transforms.RandomResizedCrop.get_params, torch.empty(3, 224, 224)
    with torch.random.fork_rng():  # get_params draws from the global generator
        torch.manual_seed(0)
        boxes = [get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    reference = torch.tensor([h * w / 224 ** 2 for _, _, h, w in boxes])
    area = width * height  # one standard error of either mean is ~0.002
    assert abs(area.mean() - reference.mean()) < 0.01
    assert abs((area > 0.75).float().mean() - (reference > 0.75).float().mean()) < 0.01


def test_resized_crop_falls_back_to_the_centred_image_at_the_nearest_allowed_aspect():
    draw = augment.GlobalDraw(torch.Generator().manual_seed(0), 3, 0, 3, torch.device("cpu"))
    # no box of the whole area with aspect 2-3 fits a square: torchvision takes the full width, height / 2
    boxes = augment.resized_crop_boxes(draw, 32, 32, scale=(1.0, 1.0), ratio=(2.0, 3.0))
    for got, want in zip(boxes, (0.5, 0.5, 1.0, 0.5)):
        assert torch.allclose(got, torch.full((3,), want))
    # a 20 x 40 image is wider than 4/3: the full height, width 20 * 4/3 of 40
    boxes = augment.resized_crop_boxes(draw, 20, 40, scale=(1.0, 1.0))
    for got, want in zip(boxes, (0.5, 0.5, 2 / 3, 1.0)):
        assert torch.allclose(got, torch.full((3,), want))


def test_jitter_with_zero_strength_is_the_identity():
    x = torch.rand(6, 3, 16, 16)
    draw = augment.GlobalDraw(torch.Generator().manual_seed(0), 6, 0, 6, x.device)
    assert torch.allclose(augment.colour_jitter(x, draw, 0.0, 0.0, 0.0, 0.0), x, atol=1e-5)
