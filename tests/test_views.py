"""BYOL's two augmented views (data/views.py): per-sample draws, the same on any slice of the global batch,
the blur."""
import torch

from dlcv.data import views


def test_views_are_per_sample_in_range_and_asymmetric():
    x = torch.rand(1, 3, 32, 32).expand(64, 3, 32, 32).contiguous()  # one image, 64 times
    v1, v2 = views.two_views(x, views.ViewSpec(), 24, torch.Generator().manual_seed(0), 64, 0)
    assert v1.shape == v2.shape == (64, 3, 24, 24)
    assert v1.min() >= 0 and v1.max() <= 1 and v2.min() >= 0 and v2.max() <= 1
    assert len({tuple(v.flatten()[:50].tolist()) for v in v1}) == 64  # every copy augmented differently
    assert not torch.allclose(v1, v2)
    # solarisation (view 2 only, p = 0.2): pixels above 0.5 are inverted, so view 1 never needs it
    only_solarize = views.ViewSpec(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=0.0, jitter=0.0,
                                   grayscale=0.0, blur=(0.0, 0.0), solarize=(0.0, 1.0))
    a, b = views.two_views(x, only_solarize, 32, torch.Generator().manual_seed(0), 64, 0)
    assert torch.allclose(a, x, atol=1e-5)
    assert torch.allclose(b, torch.where(x >= 0.5, 1 - x, x), atol=1e-5)


def test_views_sliced_equal_the_global_batch():
    x = torch.rand(8, 3, 16, 16)
    whole = views.two_views(x, views.ViewSpec(), 16, torch.Generator().manual_seed(1), 8, 0)
    halves = [views.two_views(x[o:o + 4], views.ViewSpec(), 16, torch.Generator().manual_seed(1), 8, o)
              for o in (0, 4)]
    for v in range(2):
        assert torch.allclose(torch.cat([h[v] for h in halves]), whole[v], atol=1e-5)


def test_blur_keeps_constants_and_smooths_with_its_sigma():
    x = torch.rand(2, 3, 16, 16)
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(views.gaussian_blur(flat, torch.tensor([0.5, 2.0])), flat, atol=1e-6)
    blurred = views.gaussian_blur(x, torch.tensor([0.01, 2.0]))
    assert torch.allclose(blurred[0], x[0], atol=1e-5)  # tiny sigma: unchanged
    assert blurred[1].std() < x[1].std() * 0.7  # large sigma: smoothed
