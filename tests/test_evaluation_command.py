"""The evaluation protocol end to end: matching, device batching, masks, the command and its errors."""

import json

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from skimage.metrics import structural_similarity as sk_ssim

from pidm_jax import evaluate
from pidm_jax.evaluation import fid, lpips, masks, protocol, runner

ALEX = {0: (3, 64, 11), 3: (64, 192, 5), 6: (192, 384, 3), 8: (384, 256, 3), 10: (256, 256, 3)}


def _save(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array.astype(np.uint8)).save(path)


def _lpips_weights(path):
  rng = np.random.default_rng(0)
  sd = {}
  for idx, (cin, cout, k) in ALEX.items():
    sd[f"features.{idx}.weight"] = (
        rng.normal(size=(cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))
    ).astype(np.float32)
    sd[f"features.{idx}.bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
  for i, c in enumerate((64, 192, 384, 256, 256)):
    sd[f"lin{i}.model.1.weight"] = np.abs(rng.normal(0, 0.2, (1, c, 1, 1))).astype(np.float32)
  np.savez(path, **sd)
  return path


class TinyFeatures(nnx.Module):
  """Stand-in for InceptionV3 in the command test (the real one is tested on its own)."""

  def __init__(self):
    self.conv = nnx.Conv(3, 6, (3, 3), strides=4, rngs=nnx.Rngs(0))

  def __call__(self, images):
    return jnp.mean(jax.nn.relu(self.conv(images)), axis=(1, 2))


@pytest.fixture
def folders(tmp_path):
  """Five official-named outputs (256x256), their 'deep...' ground truths and six real images."""
  rng = np.random.default_rng(0)
  gen, gt = tmp_path / "gen", tmp_path / "gt"
  for i in range(5):
    target = f"fashionWOMENDressesid0000{i}01_1front"
    truth = rng.uniform(0, 255, (256, 256, 3))
    _save(gt / f"deep{target}.png", truth)
    _save(
        gen / f"fashionMENTeesid0009{i}02_2side_2_{target}_vis.png",
        np.clip(truth + rng.normal(0, 25, truth.shape), 0, 255),
    )
  _save(gt / "deepfashionunused.png", rng.uniform(0, 255, (256, 256, 3)))  # extra GT is fine
  for i in range(6):
    _save(tmp_path / "real" / f"r{i}.jpg", rng.uniform(0, 255, (256, 256, 3)))
  return tmp_path


def test_device_batcher_keeps_every_example_once():
  batcher = runner.DeviceBatcher(6)
  assert batcher.batch_size == 8 and batcher.mesh.devices.size == 8
  step = jax.jit(lambda scale, x: {"sum": x.sum(axis=1) * scale, "row": x})
  data = np.arange(21 * 3, dtype=np.float32).reshape(21, 3)
  outs = [batcher(step, [data[i : i + 8]], jnp.float32(2.0)) for i in range(0, 21, 8)]
  assert [len(o["sum"]) for o in outs] == [8, 8, 5]
  np.testing.assert_array_equal(np.concatenate([o["row"] for o in outs]), data)
  np.testing.assert_array_equal(np.concatenate([o["sum"] for o in outs]), data.sum(1) * 2)
  with pytest.raises(ValueError, match="1..8 examples"):
    batcher(step, [np.zeros((9, 3), np.float32)], jnp.float32(1.0))


def test_matching_rules_and_errors(tmp_path):
  img = np.zeros((4, 4, 3))
  _save(tmp_path / "gt" / "0002_c1s1_000451_03.jpg", img)
  _save(tmp_path / "gt" / "a.png", img)
  _save(tmp_path / "gen" / "0001_c1s1_0_2_0002_c1s1_000451_03_vis.png", img)  # GFLA naming
  _save(tmp_path / "gen" / "a.png", img)  # same-name matching
  pairs = protocol.match_pairs(tmp_path / "gen", tmp_path / "gt")
  assert [p.ground_truth.split("/")[-1] for p in pairs] == ["0002_c1s1_000451_03.jpg", "a.png"]
  for i in range(7):
    _save(tmp_path / "gen" / f"x{i}_2_nothere{i}_vis.png", img)
  with pytest.raises(
      protocol.MatchError, match=r"7 generated file\(s\).*x0_2_nothere0_vis\.png.*" r"\(7 in all\)"
  ):
    protocol.match_pairs(tmp_path / "gen", tmp_path / "gt")
  assert protocol.parse_size("256x176") == (256, 176)
  with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
    protocol.parse_size("256")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    protocol.list_images(tmp_path / "nowhere")


def test_command_end_to_end(folders, tmp_path, monkeypatch, capsys):
  weights = _lpips_weights(tmp_path / "lpips.npz")
  (tmp_path / "inception.pth").write_bytes(b"stand-in weights")  # hashed for the cache key
  monkeypatch.setattr(runner.inception_lib, "load_inception", lambda path, network: TinyFeatures())
  out = tmp_path / "results.json"
  args = [
      "--generated",
      str(folders / "gen"),
      "--ground_truth",
      str(folders / "gt"),
      "--real",
      str(folders / "real"),
      "--size",
      "128x64",
      "--batch_size",
      "3",
      "--fid_weights",
      str(tmp_path / "inception.pth"),
      "--fid_network",
      "pt_inception",
      "--fid_cache_dir",
      str(tmp_path / "cache"),
      "--lpips_weights",
      str(weights),
      "--output",
      str(out),
      "--no_progress",
  ]
  assert evaluate.main(args) == 0
  res = json.loads(out.read_text())
  assert res["num_pairs"] == 5 and res["size_hw"] == [128, 64] and res["skipped"] == {}
  assert "FID" in capsys.readouterr().out

  # The same numbers computed directly from the files.
  pairs = protocol.match_pairs(folders / "gen", folders / "gt")
  load = lambda p: cv2.resize(np.asarray(Image.open(p)).astype(np.float32), (64, 128))
  gens = np.stack([load(p.generated) for p in pairs])
  gts = np.stack([load(p.ground_truth) for p in pairs])
  ssim = [
      sk_ssim(
          t,
          g,
          gaussian_weights=True,
          sigma=1.2,
          use_sample_covariance=False,
          channel_axis=-1,
          data_range=float(g.max() - g.min()),
      )
      for g, t in zip(gens, gts)
  ]
  ssim51 = [
      sk_ssim(t / 255, g / 255, win_size=51, data_range=1, channel_axis=-1)
      for g, t in zip(gens, gts)
  ]
  assert res["metrics"]["ssim"] == pytest.approx(np.mean(ssim), abs=1e-6)
  assert res["metrics"]["ssim_win51"] == pytest.approx(np.mean(ssim51), abs=1e-6)
  lp = lpips.load_lpips(weights)(jnp.asarray(gens / 127.5 - 1), jnp.asarray(gts / 127.5 - 1))
  assert res["metrics"]["lpips"] == pytest.approx(float(np.mean(lp)), abs=1e-6)
  net = TinyFeatures()
  reals = np.stack([load(p) for p in protocol.list_images(folders / "real")])
  want_fid = fid.frechet_distance(
      *fid.activation_statistics(np.asarray(net(gens / 255.0))),
      *fid.activation_statistics(np.asarray(net(reals / 255.0))),
  )
  assert res["metrics"]["fid"] == pytest.approx(want_fid, rel=1e-4)
  assert res["fid"]["network"] == "pt_inception" and "TF-FID" in res["fid"]["label"]
  assert res["fid"]["num_real"] == 6 and not res["fid"]["real_statistics_cached"]

  # A second run reads the real statistics from the cache; no weights -> metrics skipped.
  assert evaluate.main(args) == 0
  assert json.loads(out.read_text())["fid"]["real_statistics_cached"]
  assert evaluate.main(args[:6] + ["--size", "128x64", "--output", str(out), "--no_progress"]) == 0
  res = json.loads(out.read_text())
  assert set(res["skipped"]) == {"lpips", "fid"} and set(res["metrics"]) == {"ssim", "ssim_win51"}
  assert "skipped lpips" in capsys.readouterr().out


def test_command_reports_unmatched_files(folders, capsys):
  _save(folders / "gen" / "a_2_missing_vis.png", np.zeros((8, 8, 3)))
  code = evaluate.main(
      ["--generated", str(folders / "gen"), "--ground_truth", str(folders / "gt"), "--no_progress"]
  )
  assert code == 2
  assert "1 generated file(s)" in capsys.readouterr().err


def _kp_line(name, kp_yx):
  ys = "[" + ", ".join(str(int(v)) for v in kp_yx[:, 0]) + "]"
  xs = "[" + ", ".join(str(int(v)) for v in kp_yx[:, 1]) + "]"
  return f"{name}: {ys}: {xs}\n"


def test_market_body_mask_and_masked_metrics(tmp_path):
  kp = np.full((18, 2), -1.0)
  kp[1], kp[2], kp[3], kp[4] = (30, 32), (32, 24), (50, 22), (70, 20)  # neck, right arm
  kp[8], kp[9] = (70, 26), (100, 26)  # right hip, knee
  m = masks.body_mask(kp)
  assert m.shape == (128, 64) and m.dtype == bool
  for y, x in kp[[1, 2, 3, 4, 8, 9]].astype(int):
    assert m[y, x]
  assert m[40, 23] and m[85, 26]  # on the arm and thigh limbs
  assert not m[5, 5] and not m[120, 60]
  assert not m[75, 45]  # left side: its joints are missing
  csv = tmp_path / "market-annotation-test.csv"
  csv.write_text("name:keypoints_y:keypoints_x\n" + _kp_line("t.jpg", kp))
  table = masks.read_annotation_csv(csv)
  np.testing.assert_array_equal(table["t.jpg"], kp)
  with pytest.raises(ValueError, match=r"have no keypoints.*u\.jpg"):
    masks.check_annotations(["gt/t.jpg", "gt/u.jpg"], table, csv, (128, 64))
  with pytest.raises(ValueError, match="--size 128x64"):
    masks.check_annotations(["gt/t.jpg"], table, csv, (256, 176))

  rng = np.random.default_rng(0)
  truth = rng.uniform(0, 255, (128, 64, 3))
  _save(tmp_path / "gt" / "t.jpg", truth)
  _save(
      tmp_path / "gen" / "s.jpg_2_t_vis.png",
      np.clip(truth + rng.normal(0, 30, truth.shape), 0, 255),
  )
  res = runner.evaluate(
      runner.EvalConfig(
          generated=str(tmp_path / "gen"),
          ground_truth=str(tmp_path / "gt"),
          size=(128, 64),
          market_masks=str(csv),
          batch_size=2,
          progress=False,
      )
  )
  gen = np.asarray(Image.open(tmp_path / "gen" / "s.jpg_2_t_vis.png")).astype(np.float64)
  gt = np.asarray(Image.open(tmp_path / "gt" / "t.jpg")).astype(np.float64)
  g, t = gen * m[..., None], gt * m[..., None]
  want = sk_ssim(
      t,
      g,
      gaussian_weights=True,
      sigma=1.2,
      use_sample_covariance=False,
      channel_axis=-1,
      data_range=g.max() - g.min(),
  )
  assert res["metrics"]["mask_ssim"] == pytest.approx(want, abs=1e-6)
  assert "mask_lpips" in res["skipped"] and "lpips" in res["skipped"]


def test_command_line_convention(folders, tmp_path, capsys):
  """absl flags: --flagfile, one-line errors with status 2, --helpfull."""
  flagfile = tmp_path / "eval.flags"
  flagfile.write_text(
      f"--generated={folders / 'gen'}\n--ground_truth={folders / 'gt'}\n"
      "--size=128x64\n--no_progress\n"
  )
  cfg, output = evaluate.parse_args(
      [f"--flagfile={flagfile}", "--lpips_weights=a.pth,b.pth", "--lpips_weights=c.npz"]
  )
  assert (cfg.size, cfg.progress, output) == ((128, 64), False, None)
  assert cfg.lpips_weights == ("a.pth", "b.pth", "c.npz")
  for argv, message in (
      (["--generated=x", "--ground_truth=y", "--sise=1x1"], "sise"),
      (["--generated=x"], "--ground_truth"),
      (["--generated=x", "--ground_truth=y", "--size=big"], "--size"),
  ):
    with pytest.raises(SystemExit) as e:
      evaluate.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
  with pytest.raises(SystemExit) as e:
    evaluate.parse_args(["--helpfull"])
  assert e.value.code == 0 and "--ground_truth" in capsys.readouterr().out
