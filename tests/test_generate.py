"""Tests of pidm_jax.generate (test-split generation, official names) and of the LPIPS/FID part of
training_eval.TrainingEval.quality (metrics of the samples drawn during training)."""

import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx
from PIL import Image

from configs import tiny
from input_pipeline.synthetic_people import SyntheticPeople, SyntheticPeopleConfig
from pidm_jax import checkpointing, encoding, generate, sharding
from pidm_jax import train as train_lib
from pidm_jax.evaluation import lpips as lpips_lib
from pidm_jax.evaluation import protocol, runner, training_eval
from pidm_jax.models import PIDM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = SyntheticPeopleConfig(
    name="gen_tiny", resolution=64, train_identities=2, test_identities=3, poses_per_identity=3
)  # 9 test pairs


# ----------------------------------------------------------------------------------------------
# Names


def test_official_deepfashion_names():
  assert (
      generate.image_stem("img/MEN/Denim/id_00000080/01_1_front.png")
      == "fashionMENDenimid0000008001_1front"
  )
  assert (
      generate.image_stem("MEN/Denim/id_00000080/01_1_front.jpg")
      == "fashionMENDenimid0000008001_1front"
  )
  # the category keeps its underscore, the file name only its first one
  assert (
      generate.image_stem("img/WOMEN/Blouses_Shirts/id_00000001/02_7_additional.png")
      == "fashionWOMENBlouses_Shirtsid0000000102_7additional"
  )
  # GFLA layout: already flat
  assert (
      generate.image_stem("fashionMENDenimid0000008001_1front.jpg")
      == "fashionMENDenimid0000008001_1front"
  )
  name = generate.output_name(
      "img/MEN/Denim/id_00000080/01_1_front.png", "img/MEN/Denim/id_00000080/01_2_side.png"
  )
  assert name == "fashionMENDenimid0000008001_1front_2_fashionMENDenimid0000008001_2side_vis.png"
  truth = generate.ground_truth_name("img/MEN/Denim/id_00000080/01_2_side.png")
  assert truth == "deepfashionMENDenimid0000008001_2side.png"
  # the evaluation's matching finds that ground truth
  assert "deep" + protocol.target_stem(name) + ".png" == truth


def test_other_ids_become_readable_unambiguous_names():
  assert generate.image_stem("train_00012/pose_2") == "train-00012-pose-2"
  assert generate.image_stem("0002_c1s1_000451_03.jpg") == "0002-c1s1-000451-03"
  name = generate.output_name("test_00001/pose_2", "test_00001/pose_1")
  assert name == "test-00001-pose-2_2_test-00001-pose-1_vis.png"
  assert protocol.target_stem(name) + ".png" == generate.ground_truth_name("test_00001/pose_1")
  with pytest.raises(ValueError, match="empty file name"):
    generate.image_stem("///")


def test_pixel_conversions():
  # samples as the official gen.py saves them: uint8(255 * (x + 1) / 2), truncated
  x = np.array([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0], np.float32)
  np.testing.assert_array_equal(
      encoding.image_to_uint8(x, rounding="truncate"), [0, 0, 127, 254, 255, 255]
  )
  # pipeline images (uint8 -> [-1, 1]) come back exactly
  pixels = np.arange(256, dtype=np.uint8)
  np.testing.assert_array_equal(encoding.image_to_uint8(encoding.image_to_float(pixels)), pixels)


class _FakeEvalData:

  def __init__(self, ids, batch):
    self._ids, self.num_examples = ids, len(ids)
    self.num_batches = -(-len(ids) // batch)

  def ids(self, indices):
    return [self._ids[i] for i in indices]


def test_name_clashes_raise_and_repeated_pairs_are_written_once(tmp_path, monkeypatch):
  from input_pipeline import pipeline  # pylint: disable=import-outside-toplevel

  config = tiny.get_config()
  config.sample.batch_size = 8
  mesh = sharding.create_mesh(config.mesh)
  ids = []
  monkeypatch.setattr(
      pipeline, "create_datasets", lambda *a, **k: (None, _FakeEvalData(ids, k["eval_batch_size"]))
  )
  ids[:] = [("p/a_b", "p/t"), ("p/a-b", "p/t")]
  with pytest.raises(ValueError, match=r"1 output name\(s\) would be shared.*p-a-b_2_p-t_vis"):
    generate.generate_split(config, None, str(tmp_path), mesh=mesh, progress=False)
  ids[:] = [("p/a", "p/t"), ("p/b", "p/t"), ("p/a", "p/t")]
  for s, t in ids:
    (tmp_path / generate.output_name(s, t)).write_bytes(b"")
  logs = []
  result = generate.generate_split(
      config, None, str(tmp_path), mesh=mesh, progress=False, log=logs.append
  )
  assert result.sampled_batches == 0 and result.num_pairs == 3
  assert any("1 (source, target) pair(s) more than once" in line for line in logs)
  assert any("nothing to do" in line for line in logs)


# ----------------------------------------------------------------------------------------------
# End to end: tiny data set, tiny checkpoint, every pair once, then the evaluation


def _randomised_params(config, seed=1, scale=0.15):
  """Random parameters of the tiny PIDM as a pure dict (NumPy draws, no compilation)."""
  abstract = nnx.eval_shape(lambda: PIDM(config.model, rngs=nnx.Rngs(0)))
  params = nnx.state(abstract, nnx.Param).to_pure_dict()
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype), params)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("generate")
  SyntheticPeople(config=DATA, data_dir=str(root / "tfds")).download_and_prepare()
  config = tiny.get_config()
  config.data.builder_config = DATA.name
  config.data.data_dir = str(root / "tfds")
  config.data.image_size = (32, 32)
  config.sample.steps = 2
  config.sample.batch_size = 4
  config.mesh.data = 2
  checkpointing.save_params(root / "ckpt", _randomised_params(config), config)
  source = tfds.data_source(
      f"synthetic_people/{DATA.name}", data_dir=str(root / "tfds"), split="test"
  )
  ids = [
      (r["source_id"].decode(), r["target_id"].decode())
      for r in (source[i] for i in range(len(source)))
  ]
  return root, config, ids


def _mesh(config):
  return sharding.create_mesh(config.mesh, devices=jax.devices()[:2])


def test_every_pair_once_resume_and_evaluation(setup, tmp_path, monkeypatch):
  root, config, ids = setup
  out = tmp_path / "gen"
  logs = []
  # the checkpoint is really read once; the resumed run reuses that model (restoring takes seconds)
  loaded = {}
  load_model = checkpointing.load_model
  monkeypatch.setattr(
      checkpointing,
      "load_model",
      lambda directory, config, mesh, log: (
          loaded.setdefault(directory, load_model(directory, config, mesh=mesh))
      ),
  )
  mesh = _mesh(config)
  result = generate.generate_split(
      config,
      str(root / "ckpt"),
      str(out),
      write_ground_truth=True,
      mesh=mesh,
      progress=False,
      log=logs.append,
  )
  assert list(loaded) == [str(root / "ckpt")]
  assert len(ids) == 9
  names = sorted(generate.output_name(s, t) for s, t in ids)
  assert len(set(names)) == 9
  assert sorted(p for p in os.listdir(out) if p.endswith(".png")) == names
  truths = sorted({generate.ground_truth_name(t) for _, t in ids})
  assert len(truths) < 9  # targets shared by several pairs are written once
  assert sorted(os.listdir(out / "ground_truth")) == truths
  assert (result.num_pairs, result.batch_size, result.num_batches) == (9, 4, 3)
  assert (result.sampled_batches, result.written) == (3, 9)
  for name in names:
    with Image.open(out / name) as image:
      assert image.size == (32, 32) and image.mode == "RGB"

  # resume: only the batch with a missing file is sampled again, and reproducibly so
  first = np.asarray(Image.open(out / names[0]))
  by_record = [generate.output_name(s, t) for s, t in ids]
  victim = by_record[5]  # batch 1 (records 4..7)
  before = np.asarray(Image.open(out / victim))
  os.remove(out / victim)
  result = generate.generate_split(
      config,
      str(root / "ckpt"),
      str(out),
      write_ground_truth=True,
      mesh=mesh,
      progress=False,
      log=logs.append,
  )
  assert (result.sampled_batches, result.written) == (1, 4)
  np.testing.assert_array_equal(np.asarray(Image.open(out / victim)), before)
  np.testing.assert_array_equal(np.asarray(Image.open(out / names[0])), first)
  assert sorted(p for p in os.listdir(out) if p.endswith(".png")) == names

  # the source-swap evaluation on a finished folder: nothing regenerated, the figures written
  result = generate.generate_split(
      config,
      str(root / "ckpt"),
      str(out),
      mesh=mesh,
      progress=False,
      source_swap_pairs=6,
      log=logs.append,
  )
  assert (result.sampled_batches, result.written) == (0, 0)
  swap = result.source_swap
  with open(out / "source_swap.json") as f:
    assert json.load(f) == swap
  assert swap["num_pairs"] == 6 and len(swap["partners"]) == 6
  source = tfds.data_source(
      f"synthetic_people/{DATA.name}", data_dir=str(root / "tfds"), split="test"
  )
  person = [source[i]["person_id"] for i in range(6)]
  assert all(person[i] != person[j] for i, j in enumerate(swap["partners"]))
  assert 0.0 < swap["ssim_copy_source"] < 1.0
  for k in ("ssim", "ssim_swapped_source", "body_colour_error", "body_colour_error_swapped_source"):
    assert np.isfinite(swap[k])
  # the same noise for both: a random model's samples still differ with the source
  assert swap["body_colour_error"] != swap["body_colour_error_swapped_source"]
  assert any(line.startswith("source swap on 6 pairs: SSIM ") for line in logs)
  assert sorted(p for p in os.listdir(out) if p.endswith(".png")) == names

  with pytest.raises(ValueError, match="no split 'validation'"):
    generate.generate_split(
        config,
        str(root / "ckpt"),
        str(tmp_path / "other"),
        mesh=mesh,
        split="validation",
        progress=False,
    )

  # the evaluation command's runner matches every output to its ground truth
  results = runner.evaluate(
      runner.EvalConfig(
          generated=str(out),
          ground_truth=str(out / "ground_truth"),
          size=(32, 32),
          batch_size=16,
          ssim_win_size=7,
          progress=False,
      )
  )
  assert results["num_pairs"] == 9
  assert 0.0 < results["metrics"]["ssim"] < 1.0 and np.isfinite(results["metrics"]["ssim_win51"])

  # the CLI parses its flags and finds nothing left to do (no compilation)
  env = dict(
      os.environ,
      PYTHONPATH=ROOT,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=2",
  )
  cli = subprocess.run(
      [
          sys.executable,
          "-m",
          "pidm_jax.generate",
          f"--config={ROOT}/configs/tiny.py",
          f"--checkpoint={root / 'ckpt'}",
          f"--out={out}",
          "--write_ground_truth",
          f"--config.data.builder_config={DATA.name}",
          f"--config.data.data_dir={root / 'tfds'}",
          "--config.data.image_size=(32, 32)",
          "--config.sample.steps=2",
          "--config.sample.batch_size=4",
          "--config.mesh.data=2",
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert cli.returncode == 0, cli.stderr[-3000:]
  assert "all 9 pairs" in cli.stdout + cli.stderr and "nothing to do" in cli.stdout + cli.stderr


# ----------------------------------------------------------------------------------------------
# Metrics of the training-time samples


def _lpips_weight_files(tmp_path):
  """Random torchvision-AlexNet trunk and lpips heads (torch key names) as two .npz files."""
  rng = np.random.default_rng(0)
  trunk, heads = {}, {}
  layers = {0: (3, 64, 11), 3: (64, 192, 5), 6: (192, 384, 3), 8: (384, 256, 3), 10: (256, 256, 3)}
  for idx, (cin, cout, k) in layers.items():
    trunk[f"features.{idx}.weight"] = (
        rng.normal(size=(cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
    ).astype(np.float32)
    trunk[f"features.{idx}.bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
  for i, c in enumerate((64, 192, 384, 256, 256)):
    heads[f"lin{i}.model.1.weight"] = np.abs(rng.normal(0, 0.2, (1, c, 1, 1))).astype(np.float32)
  np.savez(tmp_path / "alexnet.npz", **trunk)
  np.savez(tmp_path / "alex_lin.npz", **heads)
  return [str(tmp_path / "alexnet.npz"), str(tmp_path / "alex_lin.npz")]


class _Writer:

  def __init__(self):
    self.scalars_logged, self.images = {}, []

  def scalars(self, step, values):
    self.scalars_logged.update({(step, k): v for k, v in values.items()})

  def image(self, step, tag, image):
    self.images.append((step, tag, image.shape))


def test_sample_quality_adds_lpips_when_configured(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  pairs = {
      k: rng.uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
      for k in ("source_image", "target_image")
  }
  samples = np.clip(pairs["target_image"] + rng.normal(0, 0.3, (3, 32, 32, 3)), -1, 1)
  config = tiny.get_config()
  said = []
  plain = training_eval.TrainingEval.from_config(config, None, say=said.append).quality(
      pairs, samples
  )  # nothing configured
  assert set(plain) == {"ssim", "ssim_copy_source"}
  assert said == [
      "eval: LPIPS skipped (config.eval.lpips_weights is not set)",
      "eval: small-sample FID skipped (config.eval.fid_weights is not set)",
  ]

  files = _lpips_weight_files(tmp_path)
  config.eval.lpips_weights = ",".join(files)
  evaluator = training_eval.TrainingEval.from_config(config, None)
  quality = evaluator.quality(pairs, samples)
  expected = lpips_lib.load_lpips(files)(
      jnp.asarray(samples, jnp.float32), jnp.asarray(pairs["target_image"])
  )
  assert quality["lpips"] == pytest.approx(float(np.mean(np.asarray(expected))), rel=1e-5)
  assert quality["lpips"] > 0 and quality["ssim"] == plain["ssim"]
  assert "fid_small_sample" not in quality

  # training (every sample_every steps) logs it to TensorBoard under eval/
  swap = {k: 0.5 + i for i, k in enumerate(training_eval.SUMMARY_METRICS)}  # see test_train
  swap.update(samples=samples, samples_swapped_source=samples[::-1], partners=np.array([2, 2, 0]))
  ema = object()
  monkeypatch.setattr(evaluator, "source_swap", lambda model, pairs: swap if model is ema else None)
  pairs["target_pose"] = np.zeros((3, 32, 32, 20), np.float32)
  trainer = types.SimpleNamespace(model_from_params=lambda params: params)
  state = types.SimpleNamespace(ema_params=ema)
  writer = _Writer()
  # pylint: disable-next=protected-access
  logged = train_lib._evaluate_and_log(evaluator, trainer, state, pairs, 7, str(tmp_path), writer)
  assert logged["lpips"] == quality["lpips"]
  assert writer.scalars_logged[(7, "eval/lpips")] == quality["lpips"]
  assert writer.scalars_logged[(7, "eval/ssim")] == swap["ssim"]  # the source-swap figures
  assert (
      writer.scalars_logged[(7, "eval/body_colour_error_swapped_source")]
      == swap["body_colour_error_swapped_source"]
  )
  assert logged["body_x0_mse"] == swap["body_x0_mse"]
  assert os.path.exists(logged["grid"]) and os.path.exists(logged["swap_grid"])
  assert [tag for _, tag, _ in writer.images] == [
      "samples/source|skeleton|sample|target",
      "samples/skeleton|source|sample|other source|its sample|target",
  ]


class _PooledFeatures(nnx.Module):
  """A stand-in for InceptionV3 (its real weights are far too slow for this test): (N, 6) features
  of [0, 1] images, the per-channel means and standard deviations."""

  def __call__(self, images):
    return jnp.concatenate([images.mean(axis=(1, 2)), images.std(axis=(1, 2))], axis=-1)


def test_sample_quality_small_sample_fid_is_wired_and_labelled(tmp_path, monkeypatch):
  from pidm_jax.evaluation import fid, inception  # pylint: disable=import-outside-toplevel

  loaded = []
  monkeypatch.setattr(
      inception,
      "load_inception",
      lambda path, network: loaded.append((path, network)) or _PooledFeatures(),
  )
  rng = np.random.default_rng(1)
  pairs = {
      k: rng.uniform(-1, 1, (5, 16, 16, 3)).astype(np.float32)
      for k in ("source_image", "target_image")
  }
  samples = rng.uniform(-1, 1, (5, 16, 16, 3)).astype(np.float32)
  config = tiny.get_config()
  config.eval.fid_weights = str(tmp_path / "pt_inception.pth")
  config.eval.fid_network = "pt_inception"
  said = []
  evaluator = training_eval.TrainingEval.from_config(config, None, say=said.append)
  quality = evaluator.quality(pairs, samples)
  assert loaded == [(config.eval.fid_weights, "pt_inception")]
  assert "not comparable to the protocol's FID" in said[-1]
  feats = [
      np.asarray(_PooledFeatures()(jnp.asarray((x + 1) / 2)))
      for x in (samples, pairs["target_image"])
  ]
  expected = fid.frechet_distance(
      *fid.activation_statistics(feats[0]), *fid.activation_statistics(feats[1])
  )
  assert quality["fid_small_sample"] == pytest.approx(expected, rel=1e-4)
  assert "lpips" not in quality
  # one pair: no covariance, so no FID
  one = evaluator.quality({k: v[:1] for k, v in pairs.items()}, samples[:1])
  assert "fid_small_sample" not in one and "ssim" in one
  assert said[-1] == "eval: fid_small_sample needs at least 2 sample pairs; skipped"
  assert loaded == [(config.eval.fid_weights, "pt_inception")]  # loaded once per evaluator


def test_one_home_for_pixel_conversions():
  # round: the inverse of image_to_float; uint8 passes through; the rounding is named or refused
  pixels = np.arange(256, dtype=np.uint8)
  np.testing.assert_array_equal(encoding.image_to_uint8(pixels), pixels)
  np.testing.assert_array_equal(
      encoding.image_to_uint8(np.array([-2.0, 0.0, 0.999, 2.0], np.float32)), [0, 128, 255, 255]
  )
  with pytest.raises(ValueError, match="rounding must be one of"):
    encoding.image_to_uint8(pixels, rounding="floor")
  # skeleton: the RGB part of a pose map, float [0, 1] or uint8
  maps = np.zeros((2, 3, 20), np.uint8)
  maps[..., 0], maps[..., 3] = 200, 7
  np.testing.assert_array_equal(
      encoding.pose_to_skeleton(encoding.pose_to_float(maps)), maps[..., :3]
  )
  np.testing.assert_array_equal(encoding.pose_to_skeleton(maps), maps[..., :3])
  # grid: rows of equal tiles, short rows and None left white, mismatched tiles refused
  a, b = np.zeros((2, 3, 3), np.uint8), np.full((2, 3, 3), 9, np.uint8)
  g = encoding.grid([[a, b], [None]])
  assert g.shape == (4, 6, 3) and g[0, 3, 0] == 9 and g[2, 0, 0] == 255 and g[0, 0, 0] == 0
  with pytest.raises(ValueError, match="every tile must be uint8"):
    encoding.grid([[a, np.zeros((3, 3, 3), np.uint8)]])
