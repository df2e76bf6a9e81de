"""Test setup: 8 virtual CPU devices (set before JAX is imported) and TensorFlow kept off accelerators."""

import os

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def photo_jpegs(tmp_path_factory) -> dict:
    """{name: path} of the real-photo JPEGs of tests/photos.py (500x375, 375x500, 120x90, 1400x1050, grey)."""
    import photos  # pylint: disable=import-outside-toplevel

    return photos.photo_jpegs(tmp_path_factory.mktemp("photos"))
