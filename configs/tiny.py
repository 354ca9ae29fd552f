"""A tiny PIDM for tests: 32x32 images, base width 32, 2 levels, every block kind present
(down/up ResBlocks, 1x1 skips, cross-attention on both sides and in the middle)."""

from configs import default


def get_config():
  config = default.get_config()
  model = config.model
  model.base_width = 32
  model.channel_mult = (1, 2)
  model.num_res_blocks = 1
  model.attention_resolutions = (16,)
  model.image_size = 32
  model.embed_dim = 64
  model.dropout = 0.1
  model.dtype = "float32"

  config.diffusion.num_timesteps = 1000

  config.data.dataset = "synthetic_people"
  config.data.builder_config = "res64"
  config.data.image_size = (32, 32)
  config.data.worker_count = 0

  train = config.train
  train.batch_size = 8
  train.num_train_steps = 10
  train.warmup_steps = 4
  train.log_every = 2
  train.checkpoint_every = 5
  train.sample_every = 0

  config.sample.steps = 5
  config.sample.batch_size = 4
  return config
