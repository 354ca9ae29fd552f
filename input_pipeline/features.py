"""The one record layout shared by every pidm_jax TFDS builder.

Each example is one (source, target) pair of the same person:

* ``source_image``, ``target_image``: uint8 RGB images of the stored size (H, W, 3).
* ``source_keypoints``, ``target_keypoints``: float64 (18, 2) (float64 so that pose maps drawn from
  them are bit-exact with the official renderer, which converts and draws in float64) COCO-18 / OpenPose order, (x, y) in the
  stored image's pixel frame, -1 for a missing joint.
* ``source_id``, ``target_id``: the image names (relative paths for real data sets), used for the
  official output naming (``<src>_2_<tgt>_vis.png``).
* ``person_id``: the identity the pair belongs to.
"""

import cv2
import numpy as np
import tensorflow_datasets as tfds

NUM_KEYPOINTS = 18


def pair_features(height: int, width: int) -> "tfds.features.FeaturesDict":
  """Returns the FeaturesDict of a pair record at the stored resolution ``height`` x ``width``."""
  image = tfds.features.Image(shape=(height, width, 3), dtype=np.uint8, encoding_format="png")
  keypoints = tfds.features.Tensor(shape=(NUM_KEYPOINTS, 2), dtype=np.float64)
  return tfds.features.FeaturesDict(
      {
          "source_image": image,
          "target_image": image,
          "source_keypoints": keypoints,
          "target_keypoints": keypoints,
          "source_id": tfds.features.Text(),
          "target_id": tfds.features.Text(),
          "person_id": tfds.features.Text(),
      }
  )


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of a uint8 RGB (H, W, 3) image: what the Image feature stores (tfds cannot encode
  NumPy arrays without TensorFlow)."""
  ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
  if not ok:
    raise ValueError(f"could not PNG-encode an image of shape {image.shape}")
  return data.tobytes()
