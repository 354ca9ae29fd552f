"""A drawn person: an appearance, a pose on the COCO-18 skeleton, and an OpenCV renderer.

Everything is procedural and driven by a ``np.random.Generator``, so a seed fixes the whole set.

* ``sample_appearance``: one identity's look: skin, hair (colour and style), a top (colour, pattern,
  sleeve length), a bottom (trousers, shorts or skirt, colour, pattern), shoes, body proportions.
* ``sample_pose``: joint angles within plausible ranges: facing direction (front, three-quarter,
  back), torso lean, head tilt, shoulder/elbow/hip/knee angles, foreshortening, placement.
* ``render``: draws the person on a light background at a given size and returns the image and the
  exact (18, 2) keypoints (x, y) in its pixel frame, -1 for joints that are hidden (the far ear or
  eye when the person turns, the face seen from the back) or randomly undetected (as OpenPose misses
  some joints, ears most often).

Geometry is computed in "figure units" (standing height about 1, y pointing down) and mapped to
pixels at the end; drawing uses anti-aliased OpenCV primitives with sub-pixel coordinates.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

NOSE, NECK, R_SHOULDER, R_ELBOW, R_WRIST, L_SHOULDER, L_ELBOW, L_WRIST = range(8)
R_HIP, R_KNEE, R_ANKLE, L_HIP, L_KNEE, L_ANKLE, R_EYE, L_EYE, R_EAR, L_EAR = range(8, 18)

Colour = tuple[float, float, float]

# Every body colour keeps one channel at or below this value; backgrounds have every channel at or
# above BACKGROUND_MIN, so a body pixel always differs from the background by at least 50 somewhere.
BODY_MAX_MIN_CHANNEL = 150
BACKGROUND_MIN = 200

_SHIFT = 4  # OpenCV sub-pixel bits
_ONE = 1 << _SHIFT
_EYE_COLOUR = (45.0, 35.0, 35.0)


@dataclasses.dataclass(frozen=True)
class Appearance:
  """One identity's look and body proportions (lengths in figure units, standing height ~1)."""

  skin: Colour
  hair: Colour
  hair_style: str  # 'short', 'long' or 'bald'
  top: Colour
  top_pattern: str  # 'plain', 'hstripes', 'vstripes', 'checks' or 'dots'
  top_pattern_colour: Colour
  top_period: float
  sleeves: str  # 'none', 'short' or 'long'
  bottom: Colour
  bottom_style: str  # 'trousers', 'shorts' or 'skirt'
  bottom_pattern: str  # 'plain' or 'vstripes'
  bottom_pattern_colour: Colour
  shoes: Colour
  head_radius: float
  neck: float
  shoulder_half: float
  torso: float
  hip_half: float
  upper_arm: float
  forearm: float
  thigh: float
  shin: float
  arm_width: float
  leg_width: float
  height_fraction: float  # standing height as a fraction of the image height


@dataclasses.dataclass(frozen=True)
class Pose:
  """Joint angles in degrees (limb angles from straight down, positive away from the body)."""

  yaw: float  # 0 facing the camera, 180 back; > 0 turned to its own left
  lean: float
  head_tilt: float
  shoulder: tuple[float, float]  # (right, left)
  elbow: tuple[float, float]  # bend added to the upper arm's angle
  hip: tuple[float, float]
  knee: tuple[float, float]
  foreshortening: tuple[float, float, float, float]  # upper arm, forearm, thigh, shin
  shift_x: float  # horizontal placement, fraction of the width
  ground: float  # lowest point, fraction of the height
  undetected: tuple[int, ...]  # joints to report missing although visible


def _body_colour(rng: np.random.Generator, low: float = 20.0, high: float = 235.0) -> Colour:
  """A random RGB colour with one channel at most BODY_MAX_MIN_CHANNEL (never background-like)."""
  while True:
    c = rng.uniform(low, high, 3)
    if c.min() <= BODY_MAX_MIN_CHANNEL:
      return tuple(float(v) for v in c)


def _skin(rng: np.random.Generator) -> Colour:
  tone = rng.uniform(0.0, 1.0)  # 0 light .. 1 dark
  r = 235 - 150 * tone + rng.uniform(-8, 8)
  g = 195 - 140 * tone + rng.uniform(-8, 8)
  b = min(150 - 110 * tone + rng.uniform(-8, 8), BODY_MAX_MIN_CHANNEL)
  return (float(r), float(g), float(b))


_HAIR = ((25, 20, 18), (70, 45, 25), (120, 80, 40), (200, 160, 90), (150, 60, 30), (140, 140, 140))


def sample_appearance(rng: np.random.Generator) -> Appearance:
  """Draws one identity: colours, patterns and body proportions."""
  hair = np.array(_HAIR[rng.integers(len(_HAIR))], np.float64) + rng.uniform(-10, 10, 3)
  return Appearance(
      skin=_skin(rng),
      hair=tuple(float(v) for v in np.clip(hair, 0, BODY_MAX_MIN_CHANNEL)),
      hair_style=str(rng.choice(["short", "long", "bald"], p=[0.5, 0.4, 0.1])),
      top=_body_colour(rng),
      top_pattern=str(
          rng.choice(
              ["plain", "hstripes", "vstripes", "checks", "dots"], p=[0.3, 0.2, 0.15, 0.2, 0.15]
          )
      ),
      top_pattern_colour=_body_colour(rng),
      top_period=float(rng.uniform(0.03, 0.07)),
      sleeves=str(rng.choice(["none", "short", "long"], p=[0.2, 0.4, 0.4])),
      bottom=_body_colour(rng, 10.0, 200.0),
      bottom_style=str(rng.choice(["trousers", "shorts", "skirt"], p=[0.6, 0.2, 0.2])),
      bottom_pattern=str(rng.choice(["plain", "vstripes"], p=[0.8, 0.2])),
      bottom_pattern_colour=_body_colour(rng),
      shoes=_body_colour(rng, 10.0, 120.0),
      head_radius=float(rng.uniform(0.062, 0.074)),
      neck=float(rng.uniform(0.035, 0.05)),
      shoulder_half=float(rng.uniform(0.095, 0.125)),
      torso=float(rng.uniform(0.27, 0.31)),
      hip_half=float(rng.uniform(0.055, 0.08)),
      upper_arm=float(rng.uniform(0.15, 0.18)),
      forearm=float(rng.uniform(0.13, 0.16)),
      thigh=float(rng.uniform(0.22, 0.25)),
      shin=float(rng.uniform(0.21, 0.24)),
      arm_width=float(rng.uniform(0.042, 0.055)),
      leg_width=float(rng.uniform(0.06, 0.08)),
      height_fraction=float(rng.uniform(0.78, 0.9)),
  )


def restyled(
    appearance: Appearance, *, build: float = 1.0, pattern_scale: float = 1.0
) -> Appearance:
  """The same look with limbs, shoulders and hips ``build`` times as wide and patterns
  ``pattern_scale`` times as coarse (both 1 leave it unchanged)."""
  if build <= 0 or pattern_scale <= 0:
    raise ValueError(f"build and pattern_scale must be > 0, got {build} and {pattern_scale}")
  a = appearance
  return dataclasses.replace(
      a,
      arm_width=a.arm_width * build,
      leg_width=a.leg_width * build,
      shoulder_half=a.shoulder_half * build,
      hip_half=a.hip_half * build,
      top_period=a.top_period * pattern_scale,
  )


def _arm_angle(rng: np.random.Generator) -> float:
  band = rng.choice(3, p=[0.5, 0.3, 0.2])
  return float(rng.uniform(*[(0, 35), (35, 100), (100, 165)][band]))


def sample_pose(rng: np.random.Generator) -> Pose:
  """Draws one plausible pose: facing, lean, arm and leg angles, placement, undetected joints."""
  yaw = float(rng.uniform(145, 215)) if rng.random() < 0.15 else float(rng.uniform(-70, 70))
  elbow = tuple(float(rng.uniform(0, 140) * (1 if rng.random() < 0.3 else -1)) for _ in range(2))
  undetected = [j for j in (R_EAR, L_EAR) if rng.random() < 0.25]
  undetected += [j for j in (R_WRIST, L_WRIST, R_ANKLE, L_ANKLE) if rng.random() < 0.03]
  return Pose(
      yaw=yaw,
      lean=float(rng.uniform(-8, 8)),
      head_tilt=float(rng.uniform(-12, 12)),
      shoulder=(_arm_angle(rng), _arm_angle(rng)),
      elbow=elbow,
      hip=(float(rng.uniform(-8, 25)), float(rng.uniform(-8, 25))),
      knee=(float(rng.uniform(-20, 20)), float(rng.uniform(-20, 20))),
      foreshortening=(
          float(rng.uniform(0.75, 1)),
          float(rng.uniform(0.65, 1)),
          float(rng.uniform(0.85, 1)),
          float(rng.uniform(0.85, 1)),
      ),
      shift_x=float(rng.uniform(-0.06, 0.06)),
      ground=float(rng.uniform(0.93, 0.97)),
      undetected=tuple(undetected),
  )


def _direction(angle_deg: float, side: float) -> np.ndarray:
  """Unit vector ``angle_deg`` from straight down, turned towards lateral sign ``side``."""
  a = math.radians(angle_deg)
  return np.array([side * math.sin(a), math.cos(a)])


@dataclasses.dataclass
class _Figure:
  joints: np.ndarray  # (18, 2) figure units, all joints (visible or not)
  visible: np.ndarray  # (18,) bool
  head: np.ndarray  # head centre
  head_up: np.ndarray  # unit vector from the head centre to its top
  far_side: str  # 'right' or 'left': the side turned away from the camera
  side_sign: dict  # lateral image sign of the person's right/left side
  width_factor: float  # horizontal compression of the torso from turning


def _figure(a: Appearance, p: Pose) -> _Figure:
  """Forward kinematics of the skeleton, in figure units with the neck at the origin."""
  c = math.cos(math.radians(p.yaw))
  s = math.sin(math.radians(p.yaw))
  right = -1.0 if c > 0 else 1.0  # facing the camera: its right is on the image left
  side = {"right": right, "left": -right}
  wf = max(abs(c), 0.35)
  lean = math.radians(p.lean)
  down = np.array([math.sin(lean), math.cos(lean)])
  across = np.array([math.cos(lean), -math.sin(lean)])
  j = np.zeros((18, 2))
  j[NECK] = (0.0, 0.0)
  hip_centre = j[NECK] + a.torso * down
  f_ua, f_fa, f_th, f_sh = p.foreshortening
  for name, sh, el, wr, hp, kn, an, k in (
      ("right", R_SHOULDER, R_ELBOW, R_WRIST, R_HIP, R_KNEE, R_ANKLE, 0),
      ("left", L_SHOULDER, L_ELBOW, L_WRIST, L_HIP, L_KNEE, L_ANKLE, 1),
  ):
    sg = side[name]
    j[sh] = j[NECK] + sg * a.shoulder_half * wf * across + 0.012 * down
    j[el] = j[sh] + a.upper_arm * f_ua * _direction(p.shoulder[k], sg)
    j[wr] = j[el] + a.forearm * f_fa * _direction(p.shoulder[k] + p.elbow[k], sg)
    j[hp] = hip_centre + sg * a.hip_half * wf * across
    j[kn] = j[hp] + a.thigh * f_th * _direction(p.hip[k], sg)
    j[an] = j[kn] + a.shin * f_sh * _direction(p.hip[k] + p.knee[k], sg)
  tilt = lean + math.radians(p.head_tilt)
  head_up = np.array([-math.sin(tilt), -math.cos(tilt)])
  head_across = np.array([math.cos(tilt), -math.sin(tilt)])
  r = a.head_radius
  head = j[NECK] + (a.neck + r) * head_up
  visible = np.ones(18, bool)
  # Face features on a sphere: azimuth phi (0 = towards the camera when yaw = 0).
  for joint, phi, reach, height, min_cos in (
      (NOSE, 0.0, 0.9, -0.15, 0.2),
      (R_EYE, -30.0, 0.8, 0.2, 0.25),
      (L_EYE, 30.0, 0.8, 0.2, 0.25),
      (R_EAR, -90.0, 0.85, 0.05, -0.15),
      (L_EAR, 90.0, 0.85, 0.05, -0.15),
  ):
    az = math.radians(phi + p.yaw)
    j[joint] = head + reach * r * math.sin(az) * head_across + height * r * head_up
    visible[joint] = math.cos(az) > min_cos
  far = "left" if s > 0 else "right"
  return _Figure(j, visible, head, head_up, far, side, wf)


class _Canvas:
  """Float RGB image with alpha-masked painting of constant colours or texture images."""

  def __init__(self, background: np.ndarray, scale: float, origin: np.ndarray):
    self.image = background
    self.h, self.w = background.shape[:2]
    self.scale = scale
    self.origin = origin

  def px(self, point) -> np.ndarray:
    """Figure units -> float pixels."""
    return self.origin + self.scale * np.asarray(point, np.float64)

  def fixed(self, point) -> tuple[int, int]:
    """Figure units -> OpenCV sub-pixel integer coordinates."""
    x, y = self.px(point) * _ONE
    return int(round(x)), int(round(y))

  def mask(self) -> np.ndarray:
    return np.zeros((self.h, self.w), np.uint8)

  def capsule(self, mask, p, q, radius: float) -> None:
    """A segment p-q with rounded ends of ``radius`` (figure units)."""
    rp = max(radius * self.scale, 0.75)
    (ax, ay), (bx, by) = self.px(p).tolist(), self.px(q).tolist()
    dx, dy = bx - ax, by - ay
    k = rp / max(math.hypot(dx, dy), 1e-9)
    nx, ny = -dy * k, dx * k
    poly = (
        np.array([[ax + nx, ay + ny], [bx + nx, by + ny], [bx - nx, by - ny], [ax - nx, ay - ny]])
        * _ONE
    )
    cv2.fillConvexPoly(mask, np.round(poly).astype(np.int32), 255, cv2.LINE_AA, _SHIFT)
    r = int(round(rp * _ONE))
    for x, y in ((ax, ay), (bx, by)):
      cv2.circle(
          mask, (int(round(x * _ONE)), int(round(y * _ONE))), r, 255, -1, cv2.LINE_AA, _SHIFT
      )

  def polygon(self, mask, points) -> None:
    poly = np.round(np.stack([self.px(p) for p in points]) * _ONE).astype(np.int32)
    cv2.fillPoly(mask, [poly], 255, cv2.LINE_AA, _SHIFT)

  def disc(self, mask, centre, radius: float) -> None:
    cv2.circle(
        mask,
        self.fixed(centre),
        max(int(round(radius * self.scale * _ONE)), _ONE // 2),
        255,
        -1,
        cv2.LINE_AA,
        _SHIFT,
    )

  def ellipse(self, mask, centre, axes, angle: float, start: float = 0, end: float = 360) -> None:
    ax = tuple(max(int(round(v * self.scale * _ONE)), _ONE // 2) for v in axes)
    cv2.ellipse(mask, self.fixed(centre), ax, angle, start, end, 255, -1, cv2.LINE_AA, _SHIFT)

  def paint(self, mask: np.ndarray, fill) -> None:
    """Blends ``fill`` (an RGB colour or an (H, W, 3) texture) where ``mask`` is set."""
    x, y, bw, bh = cv2.boundingRect(mask)
    if bw == 0:
      return
    alpha = mask[y : y + bh, x : x + bw, None].astype(np.float32) / 255.0
    roi = self.image[y : y + bh, x : x + bw]
    if isinstance(fill, np.ndarray):
      fill = fill[y : y + bh, x : x + bw]
    else:
      fill = np.asarray(fill, np.float32)
    roi += (fill - roi) * alpha


def _texture(
    canvas: _Canvas, base: Colour, pattern: str, colour: Colour, period: float, anchor: np.ndarray
):
  """A colour, or an (H, W, 3) pattern image that moves with the body (anchored at ``anchor``)."""
  if pattern == "plain":
    return base
  p = max(period * canvas.scale, 2.0)
  ax, ay = canvas.px(anchor)
  ys, xs = np.mgrid[0 : canvas.h, 0 : canvas.w].astype(np.float32)
  u, v = (xs - ax) / p, (ys - ay) / p
  if pattern == "hstripes":
    on = np.floor(v) % 2 == 1
  elif pattern == "vstripes":
    on = np.floor(u) % 2 == 1
  elif pattern == "checks":
    on = (np.floor(u) + np.floor(v)) % 2 == 1
  elif pattern == "dots":
    on = (u - np.round(u)) ** 2 + (v - np.round(v)) ** 2 < 0.08
  else:
    raise ValueError(
        f"unknown pattern {pattern!r}; expected plain, hstripes, vstripes, checks " "or dots"
    )
  return np.where(on[..., None], np.float32(colour), np.float32(base)).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """A light background: a tinted grey with a gentle vertical gradient, every value >= 200."""
  base = rng.uniform(215, 245) + rng.uniform(-8, 8, 3)
  slope = rng.uniform(-10, 10)
  rows = base[None, :] + slope * np.linspace(-1, 1, h)[:, None]
  rows = np.clip(rows, BACKGROUND_MIN, 255).astype(np.float32)
  return np.repeat(rows[:, None, :], w, axis=1)


def _fit(fig: _Figure, a: Appearance, p: Pose, h: int, w: int) -> tuple[float, np.ndarray]:
  """Scale (pixels per figure unit) and origin (pixel of the neck) placing the body in frame."""
  pts = np.concatenate(
      [
          fig.joints,
          fig.head[None] + a.head_radius * 1.15 * np.array([[0, -1], [0, 1], [-1, 0], [1, 0]]),
      ]
  )
  pad = max(a.leg_width, a.arm_width) * 0.8 + 0.02  # limb half widths, hands and feet
  lo, hi = pts.min(0) - pad, pts.max(0) + pad
  standing = 2 * a.head_radius + a.neck + a.torso + a.thigh + a.shin + 0.03
  scale = a.height_fraction * h / standing
  margin = 0.04
  scale = min(scale, (1 - 2 * margin) * w / (hi[0] - lo[0]), (1 - 2 * margin) * h / (hi[1] - lo[1]))
  oy = p.ground * h - scale * hi[1]
  oy = max(oy, margin * h - scale * lo[1])
  ox = w * (0.5 + p.shift_x)
  ox = min(max(ox, margin * w - scale * lo[0]), (1 - margin) * w - scale * hi[0])
  return scale, np.array([ox, oy])


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A light background (float32 (height, width, 3), every value >= BACKGROUND_MIN)."""
  return _background(rng, height, width)


def render(
    appearance: Appearance,
    pose: Pose,
    height: int,
    width: int,
    rng: np.random.Generator,
    backdrop: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Draws the person in ``pose`` on a light background.

  Args:
    appearance, pose: the identity and the pose.
    height, width: image size in pixels.
    rng: draws the background (a little variation from image to image) unless ``backdrop``
      (a ``background(...)`` of this size, e.g. one shared by all views of an identity) is given.

  Returns:
    (image (height, width, 3) uint8 RGB, keypoints (18, 2) float32 (x, y) pixels, -1 missing).
  """
  a, p = appearance, pose
  fig = _figure(a, p)
  scale, origin = _fit(fig, a, p, height, width)
  if backdrop is None:
    backdrop = _background(rng, height, width)
  elif backdrop.shape != (height, width, 3):
    raise ValueError(f"backdrop must be ({height}, {width}, 3), got {backdrop.shape}")
  cv = _Canvas(np.array(backdrop, np.float32), scale, origin)
  j = fig.joints
  top = _texture(cv, a.top, a.top_pattern, a.top_pattern_colour, a.top_period, j[NECK])
  bottom = _texture(
      cv, a.bottom, a.bottom_pattern, a.bottom_pattern_colour, a.top_period * 1.3, j[NECK]
  )
  arm_r, leg_r = a.arm_width / 2, a.leg_width / 2
  back_view = math.cos(math.radians(p.yaw)) < 0
  turned = abs(math.sin(math.radians(p.yaw))) > 0.35

  def arm(name: str) -> None:
    sh, el, wr = (
        (R_SHOULDER, R_ELBOW, R_WRIST) if name == "right" else (L_SHOULDER, L_ELBOW, L_WRIST)
    )
    skin = cv.mask()
    cv.capsule(skin, j[sh], j[el], arm_r)
    cv.capsule(skin, j[el], j[wr], arm_r * 0.9)
    cv.disc(skin, j[wr], arm_r * 1.25)
    cv.paint(skin, a.skin)
    if a.sleeves != "none":
      sleeve = cv.mask()
      end = j[wr] if a.sleeves == "long" else j[sh] + 0.6 * (j[el] - j[sh])
      cv.capsule(sleeve, j[sh], j[el] if a.sleeves == "long" else end, arm_r * 1.1)
      if a.sleeves == "long":
        cv.capsule(sleeve, j[el], j[wr] + 0.15 * (j[el] - j[wr]), arm_r)
      cv.paint(sleeve, top)

  def leg(name: str) -> None:
    hp, kn, an = (R_HIP, R_KNEE, R_ANKLE) if name == "right" else (L_HIP, L_KNEE, L_ANKLE)
    skin = cv.mask()
    cv.capsule(skin, j[hp], j[kn], leg_r)
    cv.capsule(skin, j[kn], j[an], leg_r * 0.85)
    cv.paint(skin, a.skin)
    if a.bottom_style != "skirt":
      cloth = cv.mask()
      if a.bottom_style == "trousers":
        cv.capsule(cloth, j[hp], j[kn], leg_r * 1.1)
        cv.capsule(cloth, j[kn], j[an] + 0.1 * (j[kn] - j[an]), leg_r)
      else:
        cv.capsule(cloth, j[hp], j[hp] + 0.55 * (j[kn] - j[hp]), leg_r * 1.15)
      cv.paint(cloth, bottom)
    shoe = cv.mask()
    toe = fig.side_sign[name] * 0.5 if not turned else (1.0 if p.yaw % 360 < 180 else -1.0)
    foot = j[an] + np.array([0.035 * toe, 0.02])
    cv.capsule(shoe, j[an] + np.array([0, 0.005]), foot, leg_r * 0.8)
    cv.paint(shoe, a.shoes)

  hair_back = cv.mask()
  if a.hair_style == "long":
    r = a.head_radius
    cv.capsule(hair_back, fig.head, fig.head - (r * 1.6) * fig.head_up, r * 1.05)
    if not back_view:
      cv.paint(hair_back, a.hair)
  near = "left" if fig.far_side == "right" else "right"
  if turned:
    arm(fig.far_side)
  for name in (fig.far_side, near):
    leg(name)
  # Pelvis and torso.
  hip_centre = (j[R_HIP] + j[L_HIP]) / 2
  down = hip_centre - j[NECK]
  pelvis = cv.mask()
  out_r = (j[R_HIP] - hip_centre) / max(np.linalg.norm(j[R_HIP] - hip_centre), 1e-9)
  if a.bottom_style == "skirt":
    hem = hip_centre + 0.5 * ((j[R_KNEE] + j[L_KNEE]) / 2 - hip_centre)
    flare = a.hip_half * fig.width_factor + leg_r * 1.6
    lower = [hem - out_r * flare, hem + out_r * flare]
  else:
    lower = [
        j[L_HIP] + 0.12 * down - out_r * leg_r * 0.5,
        j[R_HIP] + 0.12 * down + out_r * leg_r * 0.5,
    ]
  waist = [j[R_HIP] - 0.2 * down + out_r * leg_r, j[L_HIP] - 0.2 * down - out_r * leg_r]
  cv.polygon(pelvis, waist + lower)
  cv.paint(pelvis, bottom)
  torso = cv.mask()
  out_s = (j[R_SHOULDER] - j[NECK]) / max(np.linalg.norm(j[R_SHOULDER] - j[NECK]), 1e-9)
  cv.polygon(
      torso,
      [
          j[R_SHOULDER] + out_s * arm_r * 0.9,
          j[L_SHOULDER] - out_s * arm_r * 0.9,
          j[L_HIP] - 0.08 * down - out_r * leg_r * 0.6,
          j[R_HIP] - 0.08 * down + out_r * leg_r * 0.6,
      ],
  )
  cv.capsule(torso, j[R_SHOULDER], j[L_SHOULDER], arm_r * 1.05)
  cv.paint(torso, top)
  # Neck and head.
  r = a.head_radius
  skin = cv.mask()
  cv.capsule(skin, j[NECK], fig.head, r * 0.42)
  cv.disc(skin, fig.head, r)
  cv.paint(skin, a.skin)
  if a.hair_style != "bald" or back_view:
    hair = cv.mask()
    if back_view:
      cv.disc(hair, fig.head, r * 1.04)
    else:
      # Upper half of an ellipse whose flat side lies just above the eyes.
      angle = math.degrees(math.atan2(-fig.head_up[1], -fig.head_up[0]))
      cv.ellipse(hair, fig.head + 0.3 * r * fig.head_up, (r * 0.8, r * 1.04), angle, 90, 270)
    cv.paint(hair, a.hair)
  if a.hair_style == "long" and back_view:
    cv.paint(hair_back, a.hair)
  eyes = cv.mask()
  for eye in (R_EYE, L_EYE):
    if fig.visible[eye]:
      cv.disc(eyes, j[eye], r * 0.14)
  cv.paint(eyes, _EYE_COLOUR)
  for name in ((near,) if turned else ("right", "left")):
    arm(name)

  image = np.clip(np.round(cv.image), 0, 255).astype(np.uint8)
  keypoints = cv.px(j).astype(np.float32)
  missing = ~fig.visible
  missing[list(p.undetected)] = True
  keypoints[missing] = -1.0
  return image, keypoints
