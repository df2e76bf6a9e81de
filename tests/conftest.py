"""Test setup: 8 virtual CPU devices compiled at LLVM -O0 (processes.TEST_XLA_FLAGS; set before JAX is imported),
TensorFlow kept off accelerators, the longest files scheduled first, and one persistent compilation cache for the
trainer subprocesses of a test session."""

import os

import pytest

from processes import cpu_xla_flags

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {cpu_xla_flags(8)}".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The files that take longest (whole trainings and many compilations; seconds measured alone on the 2-core
# machine), longest first. `pytest -n 2 --dist loadfile` hands out whole files in collection order (pytest.ini
# turns off xdist's reordering by test count, which put the few-test, long files last), so the two workers start
# with these and end together instead of one running a long file alone at the end.
LONGEST_FIRST = ("test_resume.py", "test_models.py", "test_pretrained.py", "test_train.py", "test_imagenet21k.py",
                 "test_program.py", "test_host_sync.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable: the other files keep their order.


@pytest.fixture(scope="session")
def compilation_cache_dir(tmp_path_factory) -> str:
    """One persistent XLA compilation cache for every trainer subprocess of this session (of this xdist worker):
    a program compiled by one run (e.g. the same model's init or eval step) is loaded by the next."""
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="session")
def photo_jpegs(tmp_path_factory) -> dict:
    """{name: path} of the real-photo JPEGs of tests/photos.py (500x375, 375x500, 120x90, 1400x1050, grey)."""
    import photos  # pylint: disable=import-outside-toplevel

    return photos.photo_jpegs(tmp_path_factory.mktemp("photos"))
