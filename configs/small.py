"""A small PIDM that trains on CPU in minutes: 64x64 synthetic people, base width 32, 4 levels.

Same wiring as the paper's model (``configs/default.py``), narrower and shallower, float32.
"""

from configs import default


def get_config():
  config = default.get_config()
  model = config.model
  model.base_width = 32
  model.channel_mult = (1, 2, 2, 2)
  model.num_res_blocks = 1
  model.attention_resolutions = (16, 8)
  model.image_size = 64
  model.embed_dim = 128
  model.dropout = 0.0
  model.dtype = "float32"

  config.data.dataset = "synthetic_people"
  config.data.builder_config = "res64"
  config.data.image_size = (64, 64)
  config.data.worker_count = 0

  train = config.train
  train.batch_size = 32
  train.num_train_steps = 1500
  train.learning_rate = 1e-3
  train.warmup_steps = 100
  train.warmup_init_lr = 1e-5
  train.ema_decay = 0.995
  train.log_every = 50
  train.checkpoint_every = 500
  train.sample_every = 500
  train.num_sample_pairs = 8

  config.sample.steps = 25
  config.sample.batch_size = 16
  return config
