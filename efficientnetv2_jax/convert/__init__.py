"""Import official EfficientNetV2 weights into this framework's variables: Keras files (`from_keras`) and the
official TF checkpoints (`from_tf_checkpoint`) and timm state dicts (`from_timm`);
CLI `python -m efficientnetv2_jax.convert {keras,tf,timm}`."""

from efficientnetv2_jax.convert.keras_weights import KERAS_CONSTRUCTORS, from_keras, load_keras_model
from efficientnetv2_jax.convert.tf_checkpoint import from_tf_checkpoint
from efficientnetv2_jax.convert.timm_weights import from_timm

__all__ = ["KERAS_CONSTRUCTORS", "from_keras", "from_tf_checkpoint", "from_timm", "load_keras_model"]
