"""A small PIDM for the CPU demo: 64x64 synthetic people, base width 16, 3 levels, float32.

Same wiring as the paper's model (``configs/default.py``), much narrower and shallower so that a
2-core CPU trains it in minutes: 52 GFLOP per step of 8 samples (XLA cost analysis), about 1.2 s
per step measured on a shared 2-core machine (less when it is idle).

Status (measured 2026-11-26 on a shared 2-core CPU): after 600 steps the samples draw a figure in
the target pose with DDPM-50 (x0 clipped), while the official DDIM (x0 unclipped) of a model this
young is still noise, hence ``sample.algorithm = 'ddpm'`` here. The goal that the demo's test SSIM
clearly beats copying the source image has not been shown yet.
"""

from configs import default


def get_config():
  config = default.get_config()
  model = config.model
  model.base_width = 16
  model.channel_mult = (1, 2, 4)
  model.num_res_blocks = 1
  model.attention_resolutions = (16,)
  model.image_size = 64
  model.embed_dim = 64
  model.num_groups = 8
  model.dropout = 0.0
  model.dtype = "float32"

  config.data.dataset = "synthetic_people"
  config.data.builder_config = "res64"
  config.data.image_size = (64, 64)
  config.data.scale_aug = 0.0
  config.data.flip_prob = 0.0
  config.data.worker_count = 0

  train = config.train
  train.batch_size = 8
  train.num_train_steps = 500
  train.learning_rate = 2e-3
  train.warmup_steps = 50
  train.warmup_init_lr = 1e-4
  train.ema_decay = 0.99
  train.log_every = 25
  train.checkpoint_every = 250
  train.sample_every = 0
  train.num_sample_pairs = 8

  config.sample.algorithm = "ddpm"  # respaced ancestral chain with x0 clipping
  config.sample.steps = 50
  config.sample.guidance_scale = 1.0
  config.sample.batch_size = 8
  return config
