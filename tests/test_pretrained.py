"""Official weights by name, with no network: generated official-layout archives (an EfficientNetV2-B0 1k TF
checkpoint with official variable names, random values) served from a local http.server thread and file://."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import os
import re
import socket
import sys
import tarfile
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from processes import run_one, run_together
from test_convert_tf import write_checkpoint

from efficientnetv2_jax import evaluate, export, inference, labels, predict, pretrained
from efficientnetv2_jax.checkpoint import restore_variables
from efficientnetv2_jax.convert.target import target_leaves
from efficientnetv2_jax.convert.tf_checkpoint import official_names

NAME = "efficientnetv2-b0"
ROOT = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"efficientnetv2-b0\.tgz: (\d+\.\d)/(\d+\.\d) MB  \d+\.\d MB/s  ETA \d+:\d\d:\d\d")


def official_tensors(model_name: str, num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random values under the official TF variable names (depthwise kernels in TF's (k, k, C, 1) layout),
    scaled so that activations stay in range: LeCun-normal kernels, BN variances in [0.5, 1.5]."""
    rng = np.random.default_rng(seed)
    shapes = dict(target_leaves(model_name, num_classes))
    tensors = {"global_step": np.array(1000, np.int64)}
    for path, tf_name in official_names(model_name, num_classes).items():
        shape, leaf = shapes[path], path[-1]
        if path[2] == "dwconv":
            shape = shape[:2] + (shape[3], shape[2])
        if leaf in ("kernel", "depthwise_kernel"):
            fan_in = int(np.prod(shape[:-1])) if path[2] != "dwconv" else shape[0] * shape[1]
            value = rng.normal(0, 1 / np.sqrt(fan_in), shape)
        elif leaf in ("var", "scale"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0, 0.1, shape)
        tensors[tf_name] = value.astype(np.float32)
    return tensors


def official_archive(tensors: dict[str, np.ndarray], name: str, workdir: Path) -> bytes:
    """A `<name>.tgz` laid out as the official ones unpack: `<name>/{checkpoint, model.ckpt-1000.*}`."""
    folder = workdir / name
    folder.mkdir(parents=True)
    write_checkpoint(str(folder / "model.ckpt-1000"), tensors)
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-1000"\n')
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname=name)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def b0(tmp_path_factory):
    """(official tensors, archive bytes) of a random EfficientNetV2-B0 ImageNet-1k checkpoint."""
    tensors = official_tensors(NAME, 1000)
    return tensors, official_archive(tensors, NAME, tmp_path_factory.mktemp("archive"))


class ArchiveServer:
    """Serves {file name: bytes} on 127.0.0.1 (port 0) with HTTP Range, GCS's x-goog-hash MD5 header, an
    optional one-time connection drop after N bytes, and optional throttling; records every request."""

    def __init__(self, files: dict[str, bytes], *, md5: dict[str, bytes] | None = None, seconds_per_mb: float = 0):
        self.files, self.requests, self.drop_after = files, [], {}
        self.md5 = {n: hashlib.md5(d).digest() for n, d in files.items()} if md5 is None else md5
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  (http.server's naming)
                name = self.path.lstrip("/")
                outer.requests.append((name, self.headers.get("Range")))
                if name not in outer.files:
                    self.send_error(404)
                    return
                data = outer.files[name]
                start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"]).group(1)) if self.headers.get(
                    "Range") else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                if name in outer.md5:
                    self.send_header("x-goog-hash", f"crc32c=AAAAAA==,md5={base64.b64encode(outer.md5[name]).decode()}")
                self.end_headers()
                body = data[start:]
                if name in outer.drop_after:
                    self.wfile.write(body[:outer.drop_after.pop(name)])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                for offset in range(0, len(body), 1 << 20):
                    self.wfile.write(body[offset:offset + (1 << 20)])
                    time.sleep(seconds_per_mb)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def full_downloads(self, name: str) -> int:
        return sum(1 for n, byte_range in self.requests if n == name and byte_range is None)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(monkeypatch, tmp_path):
    """serve(files, **options) -> ArchiveServer, with the weights URL and the cache pointed at it and tmp_path."""
    servers = []
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))

    def start(files, **options):
        server = ArchiveServer(files, **options)
        servers.append(server)
        monkeypatch.setenv(pretrained.URL_ENV, server.url)
        return server

    yield start
    for server in servers:
        server.close()


def dead_url() -> str:
    """An http URL on a local port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def assert_official_values(variables: dict, tensors: dict[str, np.ndarray], *, atol: float = 0,
                           trained: bool = False) -> None:
    """Every leaf equals the archive's tensor under its official name (depthwise transposed back), within atol;
    `trained`: only the parameters outside the head (BN moving statistics move 10% per step towards the batch's)."""
    for path, tf_name in official_names(NAME, 1000).items():
        if trained and (path[0] == "batch_stats" or path[1] == "classifier"):
            continue
        leaf = variables
        for key in path:
            leaf = leaf[key]
        expected = tensors[tf_name].transpose(0, 1, 3, 2) if path[2] == "dwconv" else tensors[tf_name]
        np.testing.assert_allclose(np.asarray(leaf), expected, rtol=0, atol=atol, err_msg="/".join(path))


def cache_files(cache: Path) -> list[str]:
    """Relative paths of every file in the cache, except lock files."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and "locks" not in p.parts)


def test_download_with_progress_converts_verifies_and_caches(b0, serve, tmp_path, capsys):
    tensors, archive = b0
    server = serve({f"{NAME}.tgz": archive})
    variables = pretrained.load(NAME)
    assert_official_values(variables, tensors)
    lines = [m for m in map(PROGRESS.search, capsys.readouterr().err.splitlines()) if m]
    assert lines and lines[-1].group(1) == lines[-1].group(2) == f"{len(archive) / 1e6:.1f}"
    assert server.full_downloads(f"{NAME}.tgz") == 1
    cache = tmp_path / "cache"
    assert pretrained.weights_dir(NAME) == cache / "weights" / NAME
    assert all(f.startswith(f"weights/{NAME}/") for f in cache_files(cache))  # Archive and unpacked files gone.


def test_second_call_is_offline_and_takes_milliseconds(b0, serve, monkeypatch):
    tensors, archive = b0
    serve({f"{NAME}.tgz": archive})
    pretrained.load(NAME)
    monkeypatch.setenv(pretrained.URL_ENV, dead_url())
    start = time.perf_counter()
    folder = pretrained.fetch(NAME)
    fetch_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    variables = pretrained.load(NAME)
    load_ms = (time.perf_counter() - start) * 1e3
    print(f"offline second call: fetch {fetch_ms:.2f} ms, load (restore {NAME} variables) {load_ms:.0f} ms")
    assert folder.is_dir() and fetch_ms < 50 and load_ms < 3000
    assert_official_values(variables, tensors)


def test_dropped_connection_is_resumed_with_a_range_request(b0, serve):
    tensors, archive = b0
    server = serve({f"{NAME}.tgz": archive})
    server.drop_after[f"{NAME}.tgz"] = len(archive) // 3
    assert_official_values(pretrained.load(NAME), tensors)
    assert server.requests == [(f"{NAME}.tgz", None), (f"{NAME}.tgz", f"bytes={len(archive) // 3}-")]


def test_partial_download_of_a_killed_process_is_resumed_never_trusted(b0, serve):
    tensors, archive = b0
    server = serve({f"{NAME}.tgz": archive})
    part = pretrained.archive_path(NAME).with_name(f"{NAME}.tgz.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(archive[:1000])  # What a download killed after 1000 bytes leaves.
    assert not pretrained.weights_dir(NAME).exists()
    assert_official_values(pretrained.load(NAME), tensors)
    assert server.requests == [(f"{NAME}.tgz", "bytes=1000-")]


def test_corrupt_archives_are_deleted_and_reported_never_converted(b0, serve, tmp_path):
    _, archive = b0
    truncated = archive[:len(archive) // 2]
    serve({f"{NAME}.tgz": truncated}, md5={})  # No MD5 header: the tar.gz check must catch it.
    with pytest.raises(pretrained.WeightsUnavailable, match=r"efficientnetv2-b0\.tgz is corrupt .*deleted"):
        pretrained.load(NAME)
    assert cache_files(tmp_path / "cache") == []
    serve({f"{NAME}.tgz": truncated}, md5={f"{NAME}.tgz": hashlib.md5(archive).digest()})
    with pytest.raises(pretrained.WeightsUnavailable, match="MD5 .* does not match .*deleted"):
        pretrained.load(NAME)
    assert cache_files(tmp_path / "cache") == []
    serve({f"{NAME}-21k.tgz": archive})  # A 1k archive under a 21k name: wrong class count.
    with pytest.raises(pretrained.WeightsUnavailable, match="21843 classes, the archive 1000"):
        pretrained.load(f"{NAME}-21k")
    assert cache_files(tmp_path / "cache") == []


@pytest.mark.parametrize("member", ["../escaped.txt", "/abs.txt", "link"])
def test_archives_with_unsafe_members_are_refused_and_nothing_is_written_outside(serve, tmp_path, member):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    serve({f"{NAME}.tgz": buffer.getvalue()})
    with pytest.raises(pretrained.WeightsUnavailable, match=f"unsafe member '{re.escape(member)}'.*deleted"):
        pretrained.load(NAME)
    assert cache_files(tmp_path / "cache") == [] and not list(tmp_path.rglob("escaped.txt"))


def test_no_network_names_the_url_and_where_to_drop_the_archive_which_then_works(b0, monkeypatch, tmp_path):
    tensors, archive = b0
    url = dead_url()
    monkeypatch.setenv(pretrained.URL_ENV, url)
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path))
    drop = tmp_path / "downloads" / f"{NAME}.tgz"
    with pytest.raises(pretrained.WeightsUnavailable) as error:
        pretrained.load(NAME)
    message = str(error.value)
    assert "\n" not in message and f"{url}/{NAME}.tgz" in message and str(drop) in message
    drop.write_bytes(archive)
    assert_official_values(pretrained.load(NAME), tensors)


def test_file_url_and_unknown_name(b0, monkeypatch, tmp_path):
    tensors, archive = b0
    (tmp_path / "bucket").mkdir()
    (tmp_path / "bucket" / f"{NAME}.tgz").write_bytes(archive)
    monkeypatch.setenv(pretrained.URL_ENV, (tmp_path / "bucket").as_uri())
    assert_official_values(pretrained.load(NAME, cache_dir=tmp_path / "cache"), tensors)
    with pytest.raises(ValueError, match="efficientnetv2-s-21k-ft1k.*efficientnetv2-xl-21k"):
        pretrained.load("efficientnetv2-xl")  # XL has no ImageNet-1k-only checkpoint.


def test_registry_matches_the_official_readme():
    names = pretrained.list_pretrained()
    assert len(names) == 7 + 8 + 8 and "efficientnetv2-xl" not in names
    entry = pretrained.get("efficientnetv2-xl-21k")
    assert (entry.num_classes, entry.eval_size, entry.label_set, entry.multi_label) == (21843, 224, "imagenet21k", True)
    entry = pretrained.get("efficientnetv2-s-21k-ft1k")
    assert (entry.num_classes, entry.eval_size, entry.label_set) == (1000, 384, "imagenet2012")
    assert entry.url() == pretrained.DEFAULT_URL_BASE + "/efficientnetv2-s-21k-ft1k.tgz"
    assert pretrained.DEFAULT_URL_BASE == "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/v2"


def test_two_processes_racing_for_one_name_download_it_once(b0, serve, tmp_path):
    tensors, archive = b0
    server = serve({f"{NAME}.tgz": archive}, seconds_per_mb=0.05)  # ~1.5 s: the second starts mid-download.
    script = ("import sys, numpy as np; from efficientnetv2_jax import pretrained; "
              f"v = pretrained.load('{NAME}'); np.save(sys.argv[1], v['params']['stem']['conv']['kernel'])")
    results = run_together([[sys.executable, "-c", script, str(tmp_path / f"{i}.npy")] for i in range(2)],
                           timeout=240, cwd=ROOT, env=dict(os.environ))
    assert [code for code, _ in results] == [0, 0], [out[-2000:] for _, out in results]
    assert server.full_downloads(f"{NAME}.tgz") == 1, server.requests
    expected = tensors[f"{NAME}/stem/conv2d/kernel"]
    for i in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"{i}.npy"), expected)


@pytest.mark.timeout(900)  # A whole (2-step) training of a full-size B0 in a subprocess; its wait is bounded at 600 s.
def test_init_from_official_finetunes_digits_with_another_class_count(b0, serve, tmp_path):
    tensors, archive = b0
    serve({f"{NAME}.tgz": archive})
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "efficientnetv2_jax.main", "--config=configs/digits.py", f"--workdir={workdir}",
               f"--config.init_from=official:{NAME}", "--config.model.width=1.0", "--config.model.depth=1.0",
               "--config.total_steps=2", "--config.progressive.num_stages=1", "--config.progressive.base_image_size=16",
               "--config.progressive.train_image_size=16", "--config.eval_image_size=16", "--config.batch_size=16",
               "--config.eval_batch_size=120", "--config.checkpoint_every_steps=0"]
    code, output = run_one(command, timeout=600, cwd=ROOT, env=dict(os.environ))
    assert code == 0, output[-3000:]
    trained = restore_variables(str(workdir), ema=False)
    assert trained["params"]["classifier"]["kernel"].shape == (1280, 10)  # Head re-initialised for 10 digits.
    assert_official_values(trained, tensors, atol=1e-3, trained=True)  # Two warm-up steps moved them < 1e-4.


def test_predict_pretrained_on_a_photo_prints_the_models_own_top5_with_imagenet_names(b0, serve, photo_jpegs,
                                                                                     capsys):
    serve({f"{NAME}.tgz": b0[1]})
    photo = str(photo_jpegs["landscape"])  # 500x375 JPEG.
    assert predict.main(["--pretrained", NAME, "--image-size", "96", photo]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{NAME}, 96x96 px") and out[1] == photo
    loaded = inference.load_pretrained(NAME, image_size=96)  # Cached now.
    logits = loaded.logits_fn()(loaded.variables, predict.load_images([photo], loaded.preprocessing))[0]
    probabilities = np.asarray(jax.nn.softmax(logits))
    best = np.argsort(-probabilities)[:5]
    names = labels.class_names("imagenet2012")
    assert out[2:7] == [f"  {rank}. {probabilities[i]:7.2%}  {names[i]}" for rank, i in enumerate(best, 1)]
    assert probabilities[best[0]] < 0.9, "a saturated softmax would hide a wrong ranking"


def test_evaluate_pretrained_loads_the_official_model_and_checks_the_dataset_against_it(b0, serve, capsys):
    serve({f"{NAME}.tgz": b0[1]})
    assert evaluate.main(["--pretrained", NAME, "--dataset", "digits"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert PROGRESS.search(err[0])
    assert err[1:] == ["error: digits has 10 classes but the checkpoint's classifier has 1000."]


def test_export_pretrained_writes_a_saved_model_that_gives_the_models_probabilities(b0, serve, photo_jpegs,
                                                                                    tmp_path):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    serve({f"{NAME}.tgz": b0[1]})
    output = tmp_path / "saved_model"
    assert export.main(["--pretrained", NAME, "--image-size", "64", "--platforms", "cpu", "--output", str(output)]) == 0
    photo = str(photo_jpegs["landscape"])
    served = tf.saved_model.load(str(output)).signatures["serving_default"](
        images=tf.io.decode_jpeg(tf.io.read_file(photo))[None])["probabilities"].numpy()[0]
    loaded = inference.load_pretrained(NAME, image_size=64)
    logits = loaded.logits_fn()(loaded.variables, predict.load_images([photo], loaded.preprocessing))[0]
    assert served.shape == (1000,)
    np.testing.assert_allclose(served, np.asarray(jax.nn.softmax(logits)), atol=2e-3 * float(np.max(served)))


def test_shipped_class_names_are_the_official_label_files():
    imagenet1k, imagenet21k = labels.class_names("imagenet2012"), labels.class_names("imagenet21k")
    assert len(imagenet1k) == 1000 and len(set(imagenet1k)) == 1000 and len(imagenet21k) == 21843
    assert imagenet1k[0] == "n01440764 tench, Tinca tinca"
    assert imagenet1k[-1] == "n15075141 toilet tissue, toilet paper, bathroom tissue"  # No stray "'}" left.
    assert imagenet21k[0] == "n00004475 organism, being" and imagenet21k[-1].startswith("class 21842 (not in")
