"""The source-swap evaluation: partners of another identity, body regions, CIELAB colour error."""

import numpy as np
import pytest

from pidm_jax.evaluation import source_swap


def test_swap_partners_pick_another_identity():
  ids = ["a", "a", "b", "c", "c", "c"]
  partners = source_swap.swap_partners(ids)
  assert len(partners) == len(ids)
  assert all(ids[j] != ids[i] for i, j in enumerate(partners))
  np.testing.assert_array_equal(partners, source_swap.swap_partners(ids))  # deterministic
  np.testing.assert_array_equal(source_swap.swap_partners(["x", "y", "z", "w"]), [2, 3, 0, 1])
  with pytest.raises(ValueError, match="at least two identities"):
    source_swap.swap_partners(["a", "a"])
  with pytest.raises(ValueError, match="at least two identities"):
    source_swap.swap_partners([])


def test_body_masks_follow_the_keypoints():
  kp = np.full((2, 18, 2), -1.0)
  kp[0, 1] = (16, 8)  # neck (x, y)
  kp[0, 8] = (16, 24)  # right hip: one limb, neck -> hip, a vertical bar at x = 16
  masks = source_swap.body_masks(kp, 32, 32)
  assert masks.shape == (2, 32, 32) and masks.dtype == bool
  assert masks[0, 16, 16] and masks[0, 8, 16] and not masks[0, 16, 2] and not masks[0, 30, 30]
  assert not masks[1].any()  # no keypoint: no body
  # Half-width scaled from 4 px at 128 px height: 1 px here, 2 px at 64.
  assert masks[0, 16].sum() < source_swap.body_masks(kp * 2, 64, 64)[0, 32].sum()
  with pytest.raises(ValueError, match="18, 2"):
    source_swap.body_masks(np.zeros((2, 17, 2)), 32, 32)


def test_body_colour_error_is_cie76_inside_the_mask():
  black, white = -np.ones((1, 4, 4, 3)), np.ones((1, 4, 4, 3))
  mask = np.zeros((1, 4, 4), bool)
  mask[0, :2] = True
  np.testing.assert_allclose(source_swap.body_colour_error(black, white, mask), [100.0], atol=1e-3)
  mixed = white.copy()
  mixed[0, 2:] = -1  # differs only outside the mask
  np.testing.assert_allclose(source_swap.body_colour_error(mixed, white, mask), [0.0], atol=1e-9)
  assert np.isnan(source_swap.body_colour_error(black, white, np.zeros((1, 4, 4), bool)))[0]
  with pytest.raises(ValueError, match="must be"):
    source_swap.body_colour_error(black, white, mask[:, :2])


def _pairs(n=4, size=32):
  rng = np.random.default_rng(0)
  colours = rng.uniform(-0.8, 0.8, (n, 1, 1, 3))
  texture = rng.normal(0, 0.1, (1, size, size, 3))
  image = np.clip(colours + texture, -1, 1).astype(np.float32)
  kp = np.full((n, 18, 2), -1.0, np.float32)
  kp[:, 1], kp[:, 8] = (16, 6), (16, 26)
  return {
      "source_image": image,
      "target_image": image.copy(),
      "target_pose": np.zeros((n, size, size, 20), np.float32),
      "target_keypoints": kp,
  }


def test_evaluate_tells_a_source_copier_from_a_source_ignorer():
  pairs = _pairs()
  ids = ["p0", "p1", "p2", "p3"]
  copier = source_swap.evaluate(lambda source, pose: source, pairs, ids)
  assert copier["ssim"] == pytest.approx(1.0) and copier["body_colour_error"] == pytest.approx(0)
  assert copier["ssim_swapped_source"] < 1.0
  assert copier["body_colour_error_swapped_source"] > 5.0
  np.testing.assert_array_equal(
      copier["samples_swapped_source"], pairs["source_image"][copier["partners"]]
  )
  grey = lambda source, pose: np.zeros_like(source) + pairs["target_image"][0] * 0.1
  ignorer = source_swap.evaluate(grey, pairs, ids)
  assert ignorer["ssim"] == ignorer["ssim_swapped_source"]
  assert ignorer["body_colour_error"] == ignorer["body_colour_error_swapped_source"] > 5.0
  assert set(source_swap.METRIC_KEYS) <= set(copier)
  with pytest.raises(ValueError, match="person ids"):
    source_swap.evaluate(grey, pairs, ids[:3])
