"""Import official EfficientNetV2 weights into this framework's variables (`from_keras`; TF and timm later)."""

from efficientnetv2_jax.convert.keras_weights import KERAS_CONSTRUCTORS, from_keras, load_keras_model

__all__ = ["KERAS_CONSTRUCTORS", "from_keras", "load_keras_model"]
