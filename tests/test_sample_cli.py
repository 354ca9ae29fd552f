"""Tests of sample.py and pidm_jax.inference: inputs, end-to-end PNGs and grid, input errors."""

import json
import os
import re
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType
from PIL import Image

from configs import tiny
from pidm_jax import checkpointing, inference, pose as pose_lib, sampling
from pidm_jax.models import PIDM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (32, 32)  # configs/tiny.py data.image_size


def _randomised_params(config, seed=1, scale=0.15):
  """Random non-zero parameters of the tiny PIDM as a pure dict (NumPy draws, no compilation)."""
  abstract = nnx.eval_shape(lambda: PIDM(config.model, rngs=nnx.Rngs(0)))
  params = nnx.state(abstract, nnx.Param).to_pure_dict()
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype), params)


def _read_png(path) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image)


def _mesh(devices):
  return jax.make_mesh(
      (devices, 1),
      ("data", "fsdp"),
      devices=jax.devices()[:devices],
      axis_types=(AxisType.Auto,) * 2,
  )


def _keypoints(rng, width, height):
  kp = np.stack([rng.uniform(2, width - 3, 18), rng.uniform(2, height - 3, 18)], axis=1)
  kp[[3, 16]] = -1  # two missing joints
  return kp


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """A tiny checkpoint, images in several modes and poses in every supported format."""
  root = tmp_path_factory.mktemp("sample_cli")
  config = tiny.get_config()
  checkpointing.save_params(root / "ckpt", _randomised_params(config), config)
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (48, 40, 3), np.uint8)).save(root / "a.jpg")
  rgba = rng.integers(0, 255, (20, 30, 4), np.uint8)
  rgba[:, :10, 3] = 0  # transparent left third
  Image.fromarray(rgba, "RGBA").save(root / "b.png")
  Image.fromarray(rng.integers(0, 255, (32, 32), np.uint8), "L").save(root / "grey.png")
  poses = root / "poses"
  poses.mkdir()
  np.savetxt(poses / "p.txt", _keypoints(rng, 40, 48))
  people = {
      "people": [
          {
              "pose_keypoints_2d": np.concatenate(
                  [_keypoints(rng, 40, 48), np.ones((18, 1))], axis=1
              )
              .ravel()
              .tolist()
          }
      ]
  }
  (poses / "q.json").write_text(json.dumps(people))
  np.save(poses / "m.npy", rng.uniform(0, 1, SIZE + (20,)).astype(np.float32))
  kps = [_keypoints(rng, 40, 48) for _ in range(2)]
  (poses / "r.csv").write_text(
      "name:keypoints_y:keypoints_x\n"
      + "".join(
          f"person_{i}.jpg:{kp[:, 1].tolist()}:{kp[:, 0].tolist()}\n" for i, kp in enumerate(kps)
      )
  )
  mask = np.zeros((48, 40), np.uint8)
  mask[10:30] = 255
  Image.fromarray(mask).save(root / "mask.png")
  (root / "bad.png").write_text("not an image")
  (root / "pose.dat").write_text("1 2")
  np.savetxt(root / "short.txt", np.ones((17, 2)))
  np.save(root / "small_map.npy", np.zeros((16, 16, 20), np.float32))
  return root


# ----------------------------------------------------------------------------------------------
# Inputs


def test_images_become_rgb_and_are_resized(files):
  rgba, original = inference.load_image(str(files / "b.png"), SIZE)
  assert rgba.shape == SIZE + (3,) and rgba.dtype == np.uint8 and original == (20, 30)
  assert (rgba[:, :8] == 255).all()  # transparent pixels become white
  grey, _ = inference.load_image(str(files / "grey.png"), SIZE)
  assert grey.shape == SIZE + (3,)
  assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
  padded, _ = inference.load_image(str(files / "b.png"), SIZE, "pad")
  # 20x30 scaled by 32/30 -> 21x32 (h x w), centred: rows 5..25 hold the image, the rest white
  assert (padded[:5] == 255).all() and (padded[26:] == 255).all()
  assert not (padded[5:26, 12:] == 255).all()


def test_exif_orientation_is_applied(tmp_path):
  image = np.zeros((24, 40, 3), np.uint8)
  image[:, :20] = 255  # left half white
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise to display
  Image.fromarray(image).save(tmp_path / "rot.jpg", exif=exif, quality=95)
  out, original = inference.load_image(str(tmp_path / "rot.jpg"), (40, 24))
  assert original == (40, 24)
  assert out[:15].mean() > 200 and out[25:].mean() < 50  # white half now on top


def test_keypoints_follow_the_source_resize(files):
  kp = np.loadtxt(files / "poses" / "p.txt")
  pose = inference.read_poses(str(files / "poses" / "p.txt"), SIZE)[0]
  stretch = inference.placement((48, 40), SIZE, "stretch")
  want = pose_lib.pose_map(pose_lib.scale_keypoints(kp, (48, 40), SIZE), *SIZE)
  np.testing.assert_array_equal(inference.render_pose(pose, SIZE, "source", stretch), want)
  pad = inference.placement((48, 40), SIZE, "pad")  # 48x40 -> 32x27, 2 columns of padding
  assert (pad.offset_x, pad.offset_y, pad.size) == (2.0, 0.0, (32, 27))
  moved = kp * [27 / 40, 32 / 48] + [2, 0]
  moved[kp[:, 0] == -1] = -1
  np.testing.assert_array_equal(
      inference.render_pose(pose, SIZE, "source", pad), pose_lib.pose_map(moved, *SIZE)
  )
  np.testing.assert_array_equal(
      inference.render_pose(pose, SIZE, "deepfashion", None),
      pose_lib.pose_map(pose_lib.deepfashion_to_frame(kp, *SIZE), *SIZE),
  )


def test_pose_files_of_every_format(files):
  poses = [
      p
      for f in sorted(os.listdir(files / "poses"))
      for p in inference.read_poses(str(files / "poses" / f), SIZE)
  ]
  assert [p.name for p in poses] == ["m", "p", "q", "person_0", "person_1"]
  assert poses[0].pose_map.shape == SIZE + (20,) and poses[0].keypoints is None
  assert all(p.keypoints.shape == (18, 2) for p in poses[1:])


# ----------------------------------------------------------------------------------------------
# End to end


def _run_cli(*args, config=os.path.join(ROOT, "configs", "tiny.py")):
  # one CPU device: the smallest program to compile (sharded sampling is tested elsewhere)
  env = dict(
      os.environ,
      PYTHONPATH=ROOT,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
  )
  config_flag = [f"--config={config}"] if config else []
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "sample.py"), *config_flag, *args],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )


def test_sample_py_uses_the_checkpoints_own_config(files, tmp_path):
  """A v-prediction checkpoint samples without --config exactly as with its own config, and an
  eps config is refused, naming the field, before anything compiles."""
  config = tiny.get_config()
  config.diffusion.prediction = "v"
  checkpointing.save_params(tmp_path / "v_ckpt", _randomised_params(config, seed=4), config)
  args = [
      f"--checkpoint={tmp_path / 'v_ckpt'}",
      f"--source={files / 'a.jpg'}",
      f"--pose={files / 'poses' / 'p.txt'}",
      "--config.sample.steps=2",
      "--seed=1",
  ]
  result = _run_cli(*args, f"--out={tmp_path / 'stored'}", config=None)
  assert result.returncode == 0, result.stderr[-3000:]
  config.sample.steps = 2
  inference.sample_files(
      config,
      str(tmp_path / "v_ckpt"),
      [str(files / "a.jpg")],
      [str(files / "poses" / "p.txt")],
      str(tmp_path / "own"),
      seed=1,
      mesh=_mesh(1),
      progress=False,
  )
  np.testing.assert_array_equal(
      _read_png(tmp_path / "stored" / "a_to_p.png"), _read_png(tmp_path / "own" / "a_to_p.png")
  )

  refused = _run_cli(*args, f"--out={tmp_path / 'refused'}")  # configs/tiny.py predicts eps
  assert refused.returncode != 0
  err = refused.stderr.strip().splitlines()
  assert err[-1].strip() == "diffusion.prediction: stored 'v', given 'eps'", err[-5:]
  assert "was written with another model or diffusion" in refused.stderr
  assert "compiling the sampler took" not in refused.stdout + refused.stderr
  assert not (tmp_path / "refused").exists() or not os.listdir(tmp_path / "refused")


def test_sample_py_writes_pngs_and_grid(files, tmp_path):
  """All pairs of 2 sources x 5 poses (every pose format), with appearance control."""
  out = tmp_path / "out"
  result = _run_cli(
      f"--checkpoint={files / 'ckpt'}",
      f"--source={files / 'a.jpg'}",
      f"--source={files / 'b.png'}",
      f"--pose_dir={files / 'poses'}",
      f"--reference={files / 'grey.png'}",
      f"--mask={files / 'mask.png'}",
      f"--out={out}",
      "--config.sample.steps=2",
      "--seed=3",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  poses = ["m", "p", "q", "person_0", "person_1"]
  names = sorted(f"{s}_to_{p}.png" for s in ("a", "b") for p in poses)
  assert sorted(os.listdir(out)) == sorted(names + ["grid.png"])
  images = [_read_png(out / n).astype(int) for n in names]
  assert all(im.shape == SIZE + (3,) for im in images)
  # outside the mask: the reference noised to t = 0 (std 0.01, about 1.3 grey levels); inside:
  # generated
  reference = inference.load_image(str(files / "grey.png"), SIZE)[0].astype(int)
  keep = inference.load_mask(str(files / "mask.png"), SIZE)[..., 0] == 0
  for image in images:
    assert np.abs(image[keep] - reference[keep]).mean() < 2.0
    assert np.abs(image[~keep] - reference[~keep]).mean() > 10.0
  grid = _read_png(out / "grid.png")
  # skeleton header, one row per source, then reference | mask; 1 + 5 columns
  assert grid.shape == (4 * 32, 6 * 32, 3)
  np.testing.assert_array_equal(
      grid[32:64, :32], inference.load_image(str(files / "a.jpg"), SIZE)[0]
  )
  np.testing.assert_array_equal(grid[32:64, 64:96], images[names.index("a_to_p.png")])
  np.testing.assert_array_equal(grid[96:, :32], reference)
  log = result.stdout + result.stderr
  # config.sample.batch_size = 4 on one device: three batches, the last one padded
  assert "10 images in 3 batch(es) of 4" in log, log
  timing = re.search(
      r"compiling the sampler took ([\d.]+) s, running the first batch ([\d.]+) s; "
      r"the other 2 batch\(es\) in ([\d.]+) s",
      log,
  )
  assert timing, log


def test_paired_jobs_and_grid():
  assert inference.make_jobs(2, 3, "all") == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
  assert inference.make_jobs(3, 3, "paired") == [(0, 0), (1, 1), (2, 2)]
  assert inference.output_names(["a_to_p", "a_to_p", "b_to_p"]) == [
      "a_to_p.png",
      "a_to_p_2.png",
      "b_to_p.png",
  ]
  tiles = [np.full(SIZE + (3,), v, np.uint8) for v in (10, 20, 30, 40)]
  sources = [inference.SourceInput("s", "s.png", tiles[0], SIZE)]
  maps = np.zeros(SIZE + (20,), np.float32)
  grid = inference._make_grid(
      [(0, 0)],
      [tiles[1]],
      sources,
      lambda s, p: maps,
      "paired",
      1,
      tiles[2],
      np.ones(SIZE + (1,), np.float32),
  )
  assert grid.shape == (32, 5 * 32, 3)  # skeleton | source | reference | mask | result
  assert [int(grid[0, 32 * k, 0]) for k in range(5)] == [0, 10, 30, 255, 20]


# ----------------------------------------------------------------------------------------------
# Errors, all raised before anything is compiled


@pytest.fixture()
def no_compile(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("the sampler was built although the inputs are bad")

  monkeypatch.setattr(sampling, "get_sampler", fail)


def _generate(files, tmp_path, config=None, sources=("a.jpg",), poses=("poses/p.txt",), **kw):
  config = config or tiny.get_config()
  kw.setdefault("mesh", _mesh(1))
  return inference.sample_files(
      config,
      str(kw.pop("checkpoint", files / "ckpt")),
      [str(files / s) for s in sources],
      [str(files / p) for p in poses],
      str(tmp_path / "out"),
      progress=False,
      **kw,
  )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sources=("missing.jpg",)), r"source image .*missing\.jpg: file not found"),
        (dict(sources=("bad.png",)), r"source image .*bad\.png: not a readable image"),
        (dict(poses=("short.txt",)), r"short\.txt: expected 18 lines of 'x y', got 17 lines"),
        (
            dict(poses=("small_map.npy",)),
            r"small_map\.npy: expected a pose map of shape " r"\(32, 32, 20\)",
        ),
        (dict(poses=("missing.txt",)), r"pose file .*missing\.txt: file not found"),
        (dict(poses=("pose.dat",)), r"pose\.dat: unknown type '\.dat'.*or a photo"),
        # a photo as the pose: the estimator finds nobody in noise (or says how to install it)
        (dict(poses=("a.jpg",)), r"a\.jpg: (no person found|poses from photos need)"),
        (
            dict(sources=("a.jpg", "b.png"), pairing="paired"),
            r"--pairing=paired needs as many sources as poses, got 2 sources and 1 poses",
        ),
        (dict(reference="a.jpg"), r"needs both --reference and --mask"),
        (dict(checkpoint="nowhere"), r"nowhere does not exist"),
    ],
    ids=[
        "missing-source",
        "unreadable-source",
        "keypoint-shape",
        "pose-map-shape",
        "missing-pose",
        "pose-type",
        "photo-without-person",
        "pairing",
        "reference-without-mask",
        "no-checkpoint",
    ],
)
def test_bad_inputs_name_the_file(files, tmp_path, no_compile, kwargs, match):
  with pytest.raises(inference.InputError, match=match):
    _generate(files, tmp_path, **kwargs)


def test_image_size_the_model_cannot_take(files, tmp_path, no_compile):
  config = tiny.get_config()
  config.data.image_size = (31, 32)
  with pytest.raises(
      inference.InputError, match=r"config.data.image_size: image size 31x32 .* " r"multiples of 2"
  ):
    _generate(files, tmp_path, config)


def test_checkpoint_of_another_model(files, tmp_path, no_compile):
  config = tiny.get_config()
  config.model.base_width = 64
  # refused from the config stored with the checkpoint, one line per differing field
  with pytest.raises(
      inference.InputError,
      match=r"ckpt was written with another model or diffusion(.|\n)*\n  "
      r"model.base_width: stored \d+, given 64$",
  ):
    _generate(files, tmp_path, config)
  # without a stored config, the restore itself finds the parameters that do not fit
  os.remove(files / "ckpt" / "config.json")
  try:
    with pytest.raises(inference.InputError, match=r"ckpt.*does not match the model config"):
      _generate(files, tmp_path, config)
  finally:
    checkpointing.write_config_json(files / "ckpt", tiny.get_config())


def test_sample_py_error_is_one_line(files, tmp_path):
  result = _run_cli(
      f"--checkpoint={files / 'ckpt'}",
      f"--source={files / 'a.jpg'}",
      f"--pose={files / 'short.txt'}",
      f"--out={tmp_path}",
  )
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "short.txt: expected 18 lines" in last
  assert not os.listdir(tmp_path)


def test_image_modes_are_scaled_to_the_8bit_original(tmp_path):
  """16-bit, palette, greyscale, CMYK and alpha images give the 8-bit RGB original exactly."""
  rng = np.random.default_rng(3)
  colours = rng.integers(0, 256, (8, 3), np.uint8)
  rgb = colours[rng.integers(0, 8, (16, 12))]  # 8 colours: a palette holds them exactly
  grey = np.asarray(Image.fromarray(rgb).convert("L"))
  grey_rgb = np.repeat(grey[..., None], 3, axis=-1)
  size = rgb.shape[:2]  # no resize: pixels compare one to one
  load = lambda name: inference.load_image(str(tmp_path / name), size)[0]

  Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # 16-bit PNG
  assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
  np.testing.assert_array_equal(load("grey16.png"), grey_rgb)
  rgb16 = rgb.astype(np.uint16) * 257
  cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])  # 16-bit RGB PNG
  np.testing.assert_array_equal(load("rgb16.png"), rgb)
  Image.fromarray(grey).save(tmp_path / "grey8.png")
  np.testing.assert_array_equal(load("grey8.png"), grey_rgb)
  Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(
      tmp_path / "palette.png"
  )
  assert Image.open(tmp_path / "palette.png").mode == "P"
  np.testing.assert_array_equal(load("palette.png"), rgb)
  Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
  assert Image.open(tmp_path / "cmyk.tif").mode == "CMYK"
  np.testing.assert_array_equal(load("cmyk.tif"), rgb)
  alpha = np.full(size, 255, np.uint8)
  alpha[:, :4] = 0  # transparent: the padding colour
  Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
  want = rgb.copy()
  want[:, :4] = inference.PAD_VALUE
  np.testing.assert_array_equal(load("rgba.png"), want)
  Image.fromarray(np.dstack([grey, alpha]), "LA").save(tmp_path / "la.png")
  want = grey_rgb.copy()
  want[:, :4] = inference.PAD_VALUE
  np.testing.assert_array_equal(load("la.png"), want)
  # refused by name: floating point (no defined range), 32-bit integers beyond 16 bits
  Image.fromarray(grey.astype(np.float32) / 255, "F").save(tmp_path / "float.tif")
  with pytest.raises(inference.InputError, match=r"float\.tif: floating-point images"):
    load("float.tif")
  Image.fromarray(grey.astype(np.int32) * 70000, "I").save(tmp_path / "int32.tif")
  with pytest.raises(inference.InputError, match=r"int32\.tif: a 32-bit integer image"):
    load("int32.tif")


def test_several_people_the_most_complete_is_used_and_said(tmp_path):
  rng = np.random.default_rng(5)
  full, partial = _keypoints(rng, 40, 48), _keypoints(rng, 40, 48)
  partial[:9] = -1
  as_openpose = lambda kp: {
      "pose_keypoints_2d": np.concatenate(
          [np.where(kp == -1, 0, kp), np.where(kp[:, :1] == -1, 0.0, 1.0)], 1
      )
      .ravel()
      .tolist()
  }
  path = tmp_path / "two.json"
  path.write_text(json.dumps({"people": [as_openpose(partial), as_openpose(full)]}))
  said = []
  chosen = inference.read_poses(str(path), SIZE, log=said.append)[0]
  np.testing.assert_array_equal(chosen.keypoints, full)
  assert (
      len(said) == 1
      and "2 people (joints found: 8, 16); using person 1 (the most " "complete skeleton" in said[0]
      and "--person=N picks another" in said[0]
  ), said
  picked = inference.read_poses(str(path), SIZE, person=0, log=said.append)[0]
  np.testing.assert_array_equal(picked.keypoints, partial)
  with pytest.raises(inference.InputError, match=r"two\.json: --person=2, but it holds 2"):
    inference.read_poses(str(path), SIZE, person=2)


def test_joints_outside_the_image_are_named(files):
  kp = _keypoints(np.random.default_rng(6), 40, 48)
  inside = inference.PoseInput("in", "in.txt", keypoints=kp)
  place = inference.placement((48, 40), SIZE, "stretch")
  assert inference.off_image_joints(inside, SIZE, "source", place) is None
  kp = kp.copy()
  kp[4] = (-5.0, 10.0)  # left of the image (not the -1 mark)
  kp[10] = (20.0, 60.0)  # below it
  outside = inference.PoseInput("out", "out.txt", keypoints=kp)
  message = inference.off_image_joints(outside, SIZE, "source", place)
  assert message.startswith(
      "pose out (out.txt): 2 joint(s) outside the 32x32 image in the " "source frame: "
  ), message
  names = pose_lib.JOINT_NAMES
  assert f"{names[4]} (-5, 10)" in message and f"{names[10]} (20, 60)" in message
  # the pose map itself is what the official renderer draws (unchanged by the check)
  np.testing.assert_array_equal(
      inference.render_pose(outside, SIZE, "source", place),
      pose_lib.pose_map(pose_lib.scale_keypoints(kp, (48, 40), SIZE), *SIZE),
  )


def test_a_photo_gives_the_target_pose(files, tmp_path):
  """``--pose=photo.jpg``: the pose estimator's skeleton (pidm_jax.keypoints) is the target pose;
  the grid's header shows that skeleton as the photo's keypoints placed in the network frame."""
  pytest.importorskip("ai_edge_litert", reason="the [pose] extra is not installed")
  skimage_data = pytest.importorskip("skimage.data")
  from pidm_jax import encoding, keypoints  # pylint: disable=import-outside-toplevel

  photo = skimage_data.astronaut()
  Image.fromarray(photo).save(tmp_path / "posing.jpg", quality=95)
  config = tiny.get_config()
  config.sample.steps = 2
  inference.sample_files(
      config,
      str(files / "ckpt"),
      [str(files / "a.jpg")],
      [str(tmp_path / "posing.jpg")],
      str(tmp_path / "out"),
      seed=1,
      mesh=_mesh(1),
      progress=False,
  )
  assert sorted(os.listdir(tmp_path / "out")) == ["a_to_posing.png", "grid.png"]
  found = keypoints.estimator().estimate(keypoints.load_photo(tmp_path / "posing.jpg"))[0]
  scale = np.array([SIZE[1] / photo.shape[1], SIZE[0] / photo.shape[0]])  # stretch, the default
  kp = np.where(found.keypoints == pose_lib.MISSING, pose_lib.MISSING, found.keypoints * scale)
  skeleton = encoding.pose_to_skeleton(pose_lib.pose_map_uint8(kp, *SIZE))
  np.testing.assert_array_equal(_read_png(tmp_path / "out" / "grid.png")[:32, 32:64], skeleton)
