"""efficientnetv2_jax: EfficientNetV2 (Tan & Le, 2021) training in JAX/Flax."""

import setuptools

setuptools.setup(
    name="efficientnetv2_jax",
    version="0.1.0",
    description="EfficientNetV2 in JAX/Flax: official models, progressive learning, TPU-pod training.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["efficientnetv2_jax", "efficientnetv2_jax.*", "launch"]),
    package_data={"efficientnetv2_jax.labels": ["*.txt", "*.txt.gz", "NOTICE"]},  # Official label files.
    install_requires=[
        "jax[cpu]==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "clu==0.0.12",
        "ml-collections==1.1.0",
        "tensorflow-cpu==2.21.0",
        "tensorflow-datasets==4.9.10",
        "array-record==0.8.6",
        "google-cloud-storage>=3.0",  # Orbax asks it for a gs:// bucket's layout when it lists checkpoint steps.
        "scikit-learn>=1.5",
        "matplotlib>=3.8",
        "pillow>=10",
        "importlib-resources>=6",
        "tensorboard>=2.19",
        "safetensors>=0.4",
        "scipy>=1.11",
        "cmeel-mimalloc==3.4.3; sys_platform == 'linux'",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.8", "pytest-timeout>=2.3", "h5py>=3.10", "scikit-image>=0.22",
                 "cryptography>=42",  # tests/fake_gcs.py: the throw-away CA of the loopback GCS.
                 "jax[tpu]==0.10.2"],  # libtpu: the planner's tests compile for TPU topologies on the CPU.
        "tpu": ["jax[tpu]==0.10.2"],
    },
)
