"""Cloud TPU VM launcher for efficientnetv2_jax: `python -m launch.tpu --help`."""
