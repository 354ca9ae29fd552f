"""Files in, PNG files out: the library behind ``sample.py``.

:func:`sample_files` reads source images (anything Pillow opens; RGBA, greyscale and palette images
become RGB, transparent pixels white; EXIF orientation honoured), target poses (keypoint files in
every format ``pidm_jax.pose`` reads, a PATN/GFLA ``.csv`` giving one pose per entry, or a ready
``(H, W, 20)`` pose map ``.npy``), an optional reference image and mask for appearance control,
checks all of them and the checkpoint *before* anything is compiled, then samples every
(source, pose) job in fixed-size batches with one compiled sampler and writes one PNG per result
(``<source>_to_<pose>.png``) and a grid.

Images are brought to ``config.data.image_size`` either stretched (PIL bicubic, ignoring the aspect
ratio, as the official model was trained) or padded (scaled to fit, centred on white). Keypoints
are taken to be in the source image's own pixel frame and follow the same resize, unless
``pose_frame`` says 'deepfashion' (the PIDM DeepFashion keypoint frame: 256x256 padded, person in
columns 40..216, mapped like the official loader) or 'network' (already in the network's pixels).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Sequence

import jax
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pidm_jax import checkpointing, encoding, multihost
from pidm_jax import pose as pose_lib
from pidm_jax import sampling, sharding
from pidm_jax.diffusion import GaussianDiffusion
from pidm_jax.models.pidm import check_image_size
from pidm_jax.models.unet import min_size_multiple

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
POSE_EXTENSIONS = (".txt", ".json", ".npy", ".csv")
RESIZE_MODES = ("stretch", "pad")
POSE_FRAMES = ("source", "deepfashion", "network")
PAIRINGS = ("all", "paired")
PAD_VALUE = 255


class InputError(ValueError):
  """A problem with a user's input (file, shape, size, checkpoint), named in the message."""


# ----------------------------------------------------------------------------------------------
# Images


@dataclasses.dataclass(frozen=True)
class Placement:
  """How an original (h, w) image lands in the network's (H, W) frame: x' = x * sx + ox."""

  scale_x: float
  scale_y: float
  offset_x: float
  offset_y: float
  size: tuple[int, int]  # resized (h, w) before padding


def placement(original: tuple[int, int], size: tuple[int, int], mode: str) -> Placement:
  """The stretch or pad placement of an ``original`` (h, w) image in ``size`` (H, W)."""
  (h, w), (out_h, out_w) = original, size
  if mode == "stretch":
    return Placement(out_w / w, out_h / h, 0.0, 0.0, (out_h, out_w))
  if mode == "pad":
    scale = min(out_h / h, out_w / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    return Placement(
        new_w / w,
        new_h / h,
        float((out_w - new_w) // 2),
        float((out_h - new_h) // 2),
        (new_h, new_w),
    )
  raise InputError(f"resize mode {mode!r} is not one of {RESIZE_MODES}")


def open_rgb(path: str, what: str) -> Image.Image:
  """An image file as 8-bit RGB PIL image (EXIF orientation applied, ``to_rgb8``), or InputError
  naming ``what`` and the file."""
  if not os.path.isfile(path):
    raise InputError(f"{what} {path}: file not found")
  try:
    with Image.open(path) as img:
      img = ImageOps.exif_transpose(img)
      img.load()
  except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
    raise InputError(f"{what} {path}: not a readable image ({type(e).__name__})") from None
  return to_rgb8(img, f"{what} {path}")


# PIL modes holding 16-bit values in integers (a 16-bit greyscale PNG opens as one of these).
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb8(img: Image.Image, where: str = "image") -> Image.Image:
  """Any PIL image as 8-bit RGB, with the scaling its mode needs, or InputError naming the mode.

  * 16-bit greyscale (``I;16*``; ``I``, as PIL opens 16-bit PNGs): value / 257, rounded, so that
    an 8-bit image saved as 16 bits (x * 257) comes back exactly; ``I`` values outside
    0..65535 are refused (not a 16-bit image). PIL's own ``convert("RGB")`` clips these to 255,
    which turns a photo almost white.
  * alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency, ``RGBa``, ``La``): composited onto the
    padding grey (``PAD_VALUE``), the colour the network sees around a padded person.
  * palette, bilevel, greyscale, CMYK, YCbCr and 16-bit RGB (which PIL reads as 8-bit ``RGB``):
    PIL's conversion.
  * floating point (``F``) and modes PIL cannot convert to RGB (``LAB``, ``HSV``): refused; their
    range is not defined by the file.
  """
  mode = img.mode
  if mode in _SIXTEEN_BIT_MODES:
    values = np.asarray(img).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
      raise InputError(
          f"{where}: a 32-bit integer image (values {values.min()}..{values.max()}) "
          "is not a 16-bit image; save it as 8- or 16-bit"
      )
    grey = np.round(values / 257.0).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), "RGB")
  if mode == "F":
    raise InputError(
        f"{where}: floating-point images (mode F) have no defined range; save it as "
        "an 8- or 16-bit image"
    )
  if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
    img = img.convert("RGBA")
    background = Image.new("RGBA", img.size, (PAD_VALUE,) * 3 + (255,))
    img = Image.alpha_composite(background, img)
  try:
    return img.convert("RGB")
  except ValueError as e:
    raise InputError(f"{where}: images of mode {mode} cannot be converted to RGB ({e})") from None


def _place(img: Image.Image, size: tuple[int, int], mode: str, resample, fill) -> np.ndarray:
  place = placement((img.height, img.width), size, mode)
  new_h, new_w = place.size
  if (img.height, img.width) != (new_h, new_w):
    img = img.resize((new_w, new_h), resample)
  if mode == "pad":
    canvas = Image.new(img.mode, (size[1], size[0]), fill)
    canvas.paste(img, (int(place.offset_x), int(place.offset_y)))
    img = canvas
  return np.asarray(img)


def load_image(
    path: str, size: tuple[int, int], mode: str = "stretch", what: str = "image"
) -> tuple[np.ndarray, tuple[int, int]]:
  """Reads an image as uint8 RGB (H, W, 3) in the network frame; returns it and its original
  (h, w) after EXIF orientation."""
  img = open_rgb(path, what)
  original = (img.height, img.width)
  return _place(img, size, mode, Image.BICUBIC, (PAD_VALUE,) * 3), original


def load_mask(path: str, size: tuple[int, int], mode: str = "stretch") -> np.ndarray:
  """Reads a mask image as float32 (H, W, 1) in {0, 1} (white = regenerate); nearest resize."""
  img = open_rgb(path, "mask").convert("L")
  mask = _place(img, size, mode, Image.NEAREST, 0)
  return (mask >= 128).astype(np.float32)[..., None]


# ----------------------------------------------------------------------------------------------
# Poses


@dataclasses.dataclass
class PoseInput:
  """One target pose: keypoints (18, 2) in ``frame``, or a ready (H, W, 20) pose map.
  ``placement`` set (a pose photo's own): the keypoints are in that photo's pixels and are placed
  with it, whatever the run's ``pose_frame``."""

  name: str
  path: str
  keypoints: np.ndarray | None = None
  pose_map: np.ndarray | None = None
  placement: Placement | None = None


def _safe_name(name: str) -> str:
  name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
  return name or "pose"


def pose_from_photo(
    path: str, size: tuple[int, int], person: int | None, resize: str, log=print
) -> PoseInput:
  """The pose of the person in a photo (``pidm_jax.keypoints``, the optional ``[pose]`` extra),
  placed in the network's frame as the photo itself would be (``resize``), as keypoint files are
  placed with ``pose_frame='source'``. Several people: the largest, or the ``person``-th
  (largest first), said through ``log``."""
  from pidm_jax import keypoints  # pylint: disable=g-import-not-at-top  (it imports this module)

  stem = os.path.splitext(os.path.basename(path))[0]
  photo = keypoints.load_photo(path)
  try:
    people = keypoints.estimator().estimate(photo)
  except keypoints.MissingExtra as e:
    raise InputError(f"pose photo {path}: {e}") from None
  chosen = keypoints.choose(people, person, path)
  if len(people) > 1:
    log(
        f"pose photo {path}: {len(people)} people found; using person {people.index(chosen)} "
        f"({'chosen with --person' if person is not None else 'the largest; --person=N picks another'})"
    )
  return PoseInput(
      _safe_name(stem),
      path,
      keypoints=chosen.keypoints,
      placement=placement(photo.shape[:2], size, resize),
  )


def read_poses(
    path: str,
    size: tuple[int, int],
    person: int | None = None,
    log=print,
    resize: str = "stretch",
) -> list[PoseInput]:
  """Reads one pose file (a .csv gives one pose per entry; a photo gives the pose of the person in
  it, ``pose_from_photo``). Raises InputError naming the file.

  An OpenPose JSON with several people gives the ``person``-th (0-based), by default the most
  complete skeleton (``pose.choose_person``), and says which through ``log``.
  """
  if not os.path.isfile(path):
    raise InputError(f"pose file {path}: file not found")
  stem, ext = os.path.splitext(os.path.basename(path))
  ext = ext.lower()
  if ext in IMAGE_EXTENSIONS:
    return [pose_from_photo(path, size, person, resize, log)]
  try:
    if ext == ".csv":
      entries = pose_lib.read_keypoints_csv(path, dtype=np.float64)
      if not entries:
        raise InputError(f"pose file {path}: expected at least one 'name:[y...]:[x...]' line")
      return [
          PoseInput(_safe_name(os.path.splitext(n)[0]), path, keypoints=kp)
          for n, kp in entries.items()
      ]
    if ext == ".npy":
      try:
        array = np.load(path, allow_pickle=False)
      except (ValueError, OSError) as e:
        raise InputError(f"pose file {path}: not a readable .npy file ({e})") from None
      if array.ndim == 3:
        expected = (size[0], size[1], pose_lib.POSE_CHANNELS)
        if array.shape != expected:
          raise InputError(
              f"pose file {path}: expected a pose map of shape {expected} "
              f"(H, W, 20) or (18, 2) keypoints, got shape {array.shape}"
          )
        if array.dtype.kind not in "uif" or not np.all(np.isfinite(array)):
          raise InputError(
              f"pose file {path}: expected a finite numeric pose map, got " f"dtype {array.dtype}"
          )
        array = array.astype(np.float32)
        if array.min() < 0 or array.max() > 1:
          raise InputError(
              f"pose file {path}: expected pose map values in [0, 1], got "
              f"[{array.min():.3g}, {array.max():.3g}]"
          )
        return [PoseInput(_safe_name(stem), path, pose_map=array)]
    if ext not in POSE_EXTENSIONS:
      raise InputError(
          f"pose file {path}: unknown type {ext!r}; expected one of {POSE_EXTENSIONS}, "
          f"or a photo ({', '.join(IMAGE_EXTENSIONS)}) to take the pose from"
      )
    if ext == ".json":
      people = pose_lib.read_openpose_people(path, dtype=np.float64)
      if person is not None and not 0 <= person < len(people):
        raise InputError(
            f"pose file {path}: --person={person}, but it holds {len(people)} "
            f"person(s) (0..{len(people) - 1})"
        )
      chosen = pose_lib.choose_person(people) if person is None else person
      if len(people) > 1:
        joints = [int(np.sum(np.all(kp != pose_lib.MISSING, axis=-1))) for kp in people]
        why = (
            "chosen with --person"
            if person is not None
            else "the most complete skeleton, the larger on a tie; --person=N picks another"
        )
        log(
            f"pose file {path}: {len(people)} people (joints found: "
            f"{', '.join(map(str, joints))}); using person {chosen} ({why})"
        )
      return [PoseInput(_safe_name(stem), path, keypoints=people[chosen])]
    return [
        PoseInput(_safe_name(stem), path, keypoints=pose_lib.read_keypoints(path, dtype=np.float64))
    ]
  except InputError:
    raise
  except (ValueError, OSError, UnicodeDecodeError) as e:
    message = str(e) if os.fspath(path) in str(e) else f"pose file {path}: {e}"
    raise InputError(message.replace("\n", " ")) from None


def render_pose(
    pose: PoseInput, size: tuple[int, int], frame: str, source_place: Placement | None
) -> np.ndarray:
  """The (H, W, 20) float32 pose map of ``pose`` in the network frame."""
  if pose.pose_map is not None:
    return pose.pose_map
  return pose_lib.pose_map(_network_keypoints(pose, size, frame, source_place), size[0], size[1])


def _network_keypoints(
    pose: PoseInput, size: tuple[int, int], frame: str, source_place: Placement | None
) -> np.ndarray:
  """``pose``'s keypoints moved from ``frame`` into the network's pixels (missing stay -1)."""
  kp = np.asarray(pose.keypoints, np.float64)
  if pose.placement is not None:  # a pose photo: its keypoints follow the photo
    frame, source_place = "source", pose.placement
  if frame == "deepfashion":
    return pose_lib.deepfashion_to_frame(kp, size[0], size[1])
  if frame == "source":
    missing = np.any(kp == pose_lib.MISSING, axis=-1)
    kp = kp * np.array([source_place.scale_x, source_place.scale_y]) + np.array(
        [source_place.offset_x, source_place.offset_y]
    )
    kp[missing] = pose_lib.MISSING
    return kp
  if frame != "network":
    raise InputError(f"pose frame {frame!r} is not one of {POSE_FRAMES}")
  return kp


def off_image_joints(
    pose: PoseInput, size: tuple[int, int], frame: str, source_place: Placement | None
) -> str | None:
  """A warning naming the joints of ``pose`` that fall outside the network's image (other than
  the missing mark -1), in ``frame`` as ``render_pose`` places them; None when all are inside.
  Such joints are drawn as the official renderer (OpenCV) draws them, clipped at the border,
  their limbs partly or not at all; the limb distance maps still measure to them."""
  if pose.keypoints is None:
    return None
  kp = np.asarray(pose.keypoints, np.float64)
  missing = np.any(kp == pose_lib.MISSING, axis=-1)
  placed = _network_keypoints(pose, size, frame, source_place)
  h, w = size
  outside = ~missing & (
      (placed[:, 0] < 0) | (placed[:, 0] > w - 1) | (placed[:, 1] < 0) | (placed[:, 1] > h - 1)
  )
  if not outside.any():
    return None
  names = [
      f"{pose_lib.JOINT_NAMES[j]} ({kp[j, 0]:g}, {kp[j, 1]:g})" for j in np.flatnonzero(outside)
  ]
  return (
      f"pose {pose.name} ({pose.path}): {len(names)} joint(s) outside the {w}x{h} image in "
      f"the {frame} frame: {', '.join(names)}; they are drawn clipped at the border (or not "
      "at all); mark undetected joints with -1"
  )


# ----------------------------------------------------------------------------------------------
# Jobs


@dataclasses.dataclass
class SourceInput:
  name: str
  path: str
  image: np.ndarray  # uint8 (H, W, 3), network frame
  original: tuple[int, int]


@dataclasses.dataclass
class SampleRun:
  """What :func:`sample_files` wrote and how long it took."""

  paths: list[str]
  grid_path: str | None
  compile_seconds: float
  sample_seconds: float
  num_batches: int
  batch_size: int


def expand_pose_paths(poses: Sequence[str], pose_dir: str | None) -> list[str]:
  """The --pose files followed by the pose files of --pose_dir (sorted)."""
  paths = list(poses)
  if pose_dir:
    if not os.path.isdir(pose_dir):
      raise InputError(f"pose directory {pose_dir}: not a directory")
    found = sorted(
        os.path.join(pose_dir, f)
        for f in os.listdir(pose_dir)
        if os.path.splitext(f)[1].lower() in POSE_EXTENSIONS
    )
    if not found:
      raise InputError(f"pose directory {pose_dir}: no pose files ({', '.join(POSE_EXTENSIONS)})")
    paths += found
  return paths


def make_jobs(num_sources: int, num_poses: int, pairing: str) -> list[tuple[int, int]]:
  """(source index, pose index) per result: every pair ('all') or position-wise ('paired')."""
  if pairing == "all":
    return [(s, p) for s in range(num_sources) for p in range(num_poses)]
  if pairing == "paired":
    if num_sources != num_poses:
      raise InputError(
          f"--pairing=paired needs as many sources as poses, got {num_sources} "
          f"sources and {num_poses} poses"
      )
    return [(i, i) for i in range(num_sources)]
  raise InputError(f"pairing {pairing!r} is not one of {PAIRINGS}")


def output_names(names: Sequence[str]) -> list[str]:
  """File names ``<name>.png``, with _2, _3, ... added to repeated names."""
  seen: dict[str, int] = {}
  out = []
  for name in names:
    seen[name] = seen.get(name, 0) + 1
    out.append(f"{name}.png" if seen[name] == 1 else f"{name}_{seen[name]}.png")
  return out


def _stem(path: str) -> str:
  return _safe_name(os.path.splitext(os.path.basename(path))[0])


def _save_png(path: str, image: np.ndarray) -> None:
  Image.fromarray(image).save(path)


# ----------------------------------------------------------------------------------------------
# The command


def check_config(config) -> tuple[int, int]:
  """The network input size (H, W) from ``config.data.image_size``, checked against the model."""
  size = tuple(int(v) for v in config.data.image_size)
  if len(size) != 2:
    raise InputError(f"config.data.image_size must be (height, width), got {size}")
  try:
    check_image_size(size[0], size[1], min_size_multiple(config.model))
  except ValueError as e:
    raise InputError(f"config.data.image_size: {e}") from None
  return size


def sample_files(
    config,
    checkpoint: str | None,
    sources: Sequence[str],
    poses: Sequence[str],
    out_dir: str,
    *,
    pose_dir: str | None = None,
    seed: int = 0,
    pairing: str = "all",
    reference: str | None = None,
    mask: str | None = None,
    resize: str = "stretch",
    pose_frame: str = "source",
    person: int | None = None,
    model=None,
    mesh=None,
    progress: bool = True,
    log=print,
) -> SampleRun:
  """Samples every (source, pose) job and writes the PNGs and ``grid.png`` into ``out_dir``.

  Every input (files, sizes, the checkpoint against ``config``) is checked before compilation;
  problems raise :class:`InputError` with the file and what was expected.

  Args:
    config: the run's ConfigDict (model, diffusion, data.image_size, sample, mesh).
    checkpoint: checkpoint directory (EMA parameters), unless ``model`` is given.
    sources, poses: file paths (``poses`` extended by the files of ``pose_dir``).
    out_dir: output directory (created).
    seed: sampling seed (batch k uses fold_in(key(seed), k)).
    pairing: 'all' (every source x every pose) or 'paired' (i-th source with i-th pose).
    reference, mask: appearance control: keep ``reference`` outside the white region of ``mask``.
    resize: 'stretch' (official) or 'pad'.
    pose_frame: 'source', 'deepfashion' or 'network' (see the module docstring).
    person: which person of an OpenPose JSON with several (0-based; default: the most complete).
    model: an already loaded PIDM (skips the checkpoint).
    mesh: the device mesh (default: from ``config.mesh``).
    progress: show a progress bar over batches.
    log: where the timing lines, the chosen person and warnings go.
  """

  if resize not in RESIZE_MODES:
    raise InputError(f"--resize={resize!r} is not one of {RESIZE_MODES}")
  if pose_frame not in POSE_FRAMES:
    raise InputError(f"--pose_frame={pose_frame!r} is not one of {POSE_FRAMES}")
  if (reference is None) != (mask is None):
    raise InputError("appearance control needs both --reference and --mask")
  size = check_config(config)
  try:
    options = sampling.SamplerOptions.from_config(config.sample)
  except ValueError as e:
    raise InputError(f"config.sample: {e}") from None
  if not sources:
    raise InputError("no source image given (--source)")
  pose_paths = expand_pose_paths(poses, pose_dir)
  if not pose_paths:
    raise InputError("no pose given (--pose or --pose_dir)")

  # -- read and check every input (no compilation yet) -----------------------------------------
  source_inputs = []
  for path in sources:
    image, original = load_image(path, size, resize, what="source image")
    source_inputs.append(SourceInput(_stem(path), path, image, original))
  pose_inputs = [p for path in pose_paths for p in read_poses(path, size, person, log, resize)]
  jobs = make_jobs(len(source_inputs), len(pose_inputs), pairing)
  ref_image = ref_mask = None
  if reference is not None:
    ref_image, _ = load_image(reference, size, resize, what="reference image")
    ref_mask = load_mask(mask, size, resize)

  maps: dict[tuple[int, int], np.ndarray] = {}

  def pose_for(s: int, p: int) -> np.ndarray:
    key = (p, s if pose_frame == "source" else -1)
    if key not in maps:
      src = source_inputs[s]
      maps[key] = render_pose(
          pose_inputs[p], size, pose_frame, placement(src.original, size, resize)
      )
    return maps[key]

  warnings = []
  for s, p in jobs:  # renders (and so checks) every pose before compiling
    if (p, s if pose_frame == "source" else -1) in maps:
      continue
    pose_for(s, p)
    message = off_image_joints(
        pose_inputs[p], size, pose_frame, placement(source_inputs[s].original, size, resize)
    )
    if message and message not in warnings:
      warnings.append(message)
      log(f"warning: {message}")

  if mesh is None:
    mesh = sharding.create_mesh(config.mesh)
  if model is None:
    if checkpoint is None:
      raise InputError("no checkpoint given (--checkpoint)")
    try:
      model = checkpointing.load_model(
          checkpoint, config, mesh=mesh, log=lambda m: log(f"warning: {m}")
      )
    except (FileNotFoundError, ValueError) as e:
      # one line, except a config mismatch: one line per differing field
      message = (
          str(e) if isinstance(e, checkpointing.ConfigMismatchError) else " ".join(str(e).split())
      )
      if os.fspath(checkpoint) not in message:
        message = f"checkpoint {checkpoint}: {message}"
      raise InputError(message) from None

  # -- batches ------------------------------------------------------------------------------
  batch_size = sharding.sampling_batch_size(config.sample.batch_size, mesh, len(jobs))
  batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]

  def make_batch(chunk):
    chunk = list(chunk) + [chunk[-1]] * (batch_size - len(chunk))  # pad the last batch
    batch = dict(
        source=np.stack([encoding.image_to_float(source_inputs[s].image) for s, _ in chunk]),
        pose=np.stack([pose_for(s, p) for s, p in chunk]),
    )
    if ref_image is not None:
      batch["reference"] = np.broadcast_to(
          encoding.image_to_float(ref_image), batch["source"].shape
      )
      batch["mask"] = np.broadcast_to(ref_mask, (batch_size,) + ref_mask.shape)
    return batch

  sampler = sampling.get_sampler(GaussianDiffusion.from_config(config.diffusion), options, mesh)
  key = jax.random.key(seed)
  start = time.perf_counter()
  run = sampler.compile(model, make_batch(batches[0]), key)
  compile_seconds = time.perf_counter() - start

  primary = jax.process_index() == 0
  if primary:
    os.makedirs(out_dir, exist_ok=True)
  names = output_names([f"{source_inputs[s].name}_to_{pose_inputs[p].name}" for s, p in jobs])
  results: list[np.ndarray] = []
  iterator = batches
  if progress and primary:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top

    iterator = tqdm(batches, desc="sampling", unit="batch")
  start = time.perf_counter()
  first_seconds = 0.0
  for k, chunk in enumerate(iterator):
    images = multihost.gather(run(model, make_batch(chunk), jax.random.fold_in(key, k)))
    results.extend(encoding.image_to_uint8(images[: len(chunk)]))
    if k == 0:
      first_seconds = time.perf_counter() - start
  sample_seconds = time.perf_counter() - start

  paths = []
  grid_path = None
  if primary:
    for name, image in zip(names, results):
      paths.append(os.path.join(out_dir, name))
      _save_png(paths[-1], image)
    grid_path = os.path.join(out_dir, "grid.png")
    _save_png(
        grid_path,
        _make_grid(
            jobs, results, source_inputs, pose_for, pairing, len(pose_inputs), ref_image, ref_mask
        ),
    )
  # What each figure measures: the ahead-of-time compile of the very program that samples (no
  # compilation happens after it), the first batch's run (it also pays one-off costs such as
  # allocating buffers), then the other batches.
  rest = (
      f"; the other {len(batches) - 1} batch(es) in {sample_seconds - first_seconds:.1f} s "
      f"({(sample_seconds - first_seconds) / (len(batches) - 1):.2f} s per batch)"
      if len(batches) > 1
      else ""
  )
  log(
      f"sampled {len(jobs)} images in {len(batches)} batch(es) of {batch_size} "
      f"({options.algorithm}, {sampler.plan.num_steps} steps): compiling the sampler took "
      f"{compile_seconds:.1f} s, running the first batch {first_seconds:.1f} s{rest}; "
      f"{sample_seconds / max(len(jobs), 1):.2f} s per image in all"
  )
  return SampleRun(paths, grid_path, compile_seconds, sample_seconds, len(batches), batch_size)


def _make_grid(jobs, results, sources, pose_for, pairing, num_poses, ref_image, ref_mask):
  def skeleton(s, p):
    return encoding.pose_to_skeleton(pose_for(s, p))

  extra = []
  if ref_image is not None:
    extra = [ref_image, encoding.mask_to_uint8(ref_mask)]
  if pairing == "paired":
    rows = [
        [skeleton(s, p), sources[s].image] + extra + [img] for (s, p), img in zip(jobs, results)
    ]
  else:  # header of skeletons (drawn for the first source), then source | results per source
    rows = [[None] + [skeleton(0, p) for p in range(num_poses)]]
    for s, src in enumerate(sources):
      rows.append([src.image] + results[s * num_poses : (s + 1) * num_poses])
    if extra:
      rows.append(extra)
  return encoding.grid(rows)
