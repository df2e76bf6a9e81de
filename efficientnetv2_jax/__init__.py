"""EfficientNetV2 in JAX/Flax: official models, progressive learning, sharded training."""

__version__ = "0.1.0"
