"""A small PIDM for the CPU demo: 32x32 synthetic studio people, base width 8, 3 levels, float32.

Every departure from the paper's recipe was chosen by measurement; docs/demo_config.md has the
figures of each choice.
"""

from configs import default


def get_config():
  config = default.get_config()
  model = config.model
  model.base_width = 8
  model.channel_mult = (1, 2, 4)
  model.num_res_blocks = 1
  model.attention_resolutions = (16,)
  model.image_size = 32
  model.embed_dim = 64
  model.num_groups = 4
  model.dropout = 0.0
  model.dtype = "float32"

  config.data.dataset = "synthetic_people"
  config.data.builder_config = "studio32"
  config.data.image_size = (32, 32)
  config.data.scale_aug = 0.0
  config.data.flip_prob = 0.0
  config.data.worker_count = 0

  train = config.train
  train.batch_size = 8
  train.num_train_steps = 6000
  train.learning_rate = 2e-3
  train.warmup_steps = 50
  train.warmup_init_lr = 1e-4
  train.lr_decay = "cosine"
  train.ema_decay = 0.99
  train.log_every = 500
  train.checkpoint_every = 2000
  train.high_noise_fraction = 0.25
  train.sample_every = 0
  train.num_sample_pairs = 16

  config.diffusion.beta_schedule = "cosine"
  config.diffusion.prediction = "v"

  sample = config.sample
  sample.algorithm = "ddim"
  sample.steps = 100
  sample.eta = 1.0
  sample.clip_denoised = True
  sample.guidance_scale = 2.0
  sample.batch_size = 16
  return config
