"""A loopback Google Cloud Storage for tests: real gs:// paths, no network, objects held in memory.

A child process runs an HTTP server (a thread per connection) that answers the part of the GCS JSON API and
media download/upload that the GCS clients of the test process use, and each client is pointed at it by its
own setting:
  * TensorFlow's gfile (and through it etils.epath, so Orbax's directory operations) has no endpoint
    setting, so the server is also its HTTPS proxy (``HTTPS_PROXY``): it accepts CONNECT for the Google
    storage hosts, terminates TLS with a throw-away CA made with ``cryptography`` (``CURL_CA_BUNDLE``)
    and serves the decrypted requests itself;
  * tensorstore (Orbax's array data): ``TENSORSTORE_GCS_HTTP_URL``;
  * google-cloud-cpp (array_record's reader): ``CLOUD_STORAGE_EMULATOR_ENDPOINT``;
  * google-cloud-storage (Orbax asks it for the bucket's layout): ``STORAGE_EMULATOR_HOST``.
Credentials are a fixed test token (``GOOGLE_AUTH_TOKEN_FOR_TESTING``) or the emulator modes, so nothing
looks for real credentials. CONNECT to any other host is refused, so a test cannot leak onto the network.
Every bucket exists; objects are kept until the server stops.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import email.parser
import email.policy
import hashlib
import http.client
import http.server
import itertools
import json
import os
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Iterator

STORAGE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
TOKEN = "fake-gcs-test-token"
PAGE_SIZE = 1000
REQUESTS_PATH = "/_fake_gcs/requests"


@dataclasses.dataclass
class StoredObject:
    """One object's bytes, generation (GCS's version number, used by preconditions) and update time."""

    data: bytes
    generation: int
    updated: str


@dataclasses.dataclass
class FakeGcsState:
    """Objects by (bucket, name); upload sessions; a log of (method, host, path, time) for debugging."""

    objects: dict = dataclasses.field(default_factory=dict)
    uploads: dict = dataclasses.field(default_factory=dict)
    requests: list = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    generations: Iterator[int] = dataclasses.field(default_factory=lambda: itertools.count(1))

    def put(self, bucket: str, name: str, data: bytes) -> StoredObject:
        """Stores ``data`` as a new generation of bucket/name."""
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with self.lock:
            stored = StoredObject(bytes(data), next(self.generations), now)
            self.objects[(bucket, name)] = stored
        return stored


def _metadata(bucket: str, name: str, stored: StoredObject) -> dict:
    """The JSON API's object resource."""
    return {
        "kind": "storage#object", "id": f"{bucket}/{name}/{stored.generation}", "bucket": bucket, "name": name,
        "generation": str(stored.generation), "metageneration": "1", "size": str(len(stored.data)),
        "contentType": "application/octet-stream", "timeCreated": stored.updated, "updated": stored.updated,
        "md5Hash": base64.b64encode(hashlib.md5(stored.data).digest()).decode(),
        "storageClass": "STANDARD",
    }


class _PreconditionFailed(Exception):
    pass


class _Handler(http.server.BaseHTTPRequestHandler):
    """GCS JSON API (/storage/v1, /upload/storage/v1, /download/storage/v1) and XML-style media reads."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # Headers and body are separate writes: no 40 ms delayed-ACK stall each.
    server: "_Server"

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        """Quiet: requests are kept in state.requests instead."""

    # ---------------------------------------------------------------- plumbing

    def _reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        self._reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": {"code": status, "message": message, "errors": [{"message": message}]}})

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_CONNECT(self):  # pylint: disable=invalid-name
        """HTTPS proxy for the storage hosts only: answer, then speak TLS with the test CA's certificate."""
        host = self.path.rsplit(":", 1)[0].rstrip(".")
        self.server.state.requests.append(("CONNECT", host, self.path, round(time.time(), 3)))
        if host not in STORAGE_HOSTS:
            self._reply(403, b"fake GCS proxy: only the storage hosts")
            self.close_connection = True
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        tls = self.server.tls.wrap_socket(self.connection, server_side=True)
        self.connection = tls
        self.rfile = tls.makefile("rb")
        self.wfile = socketserver._SocketWriter(tls)  # pylint: disable=protected-access
        self.close_connection = False

    def _dispatch(self) -> None:
        self._body_bytes = self._body() if self.command in ("POST", "PUT", "PATCH") else b""
        url = urllib.parse.urlsplit(self.path)
        host = (self.headers.get("Host") or "").split(":")[0].rstrip(".")
        self.server.state.requests.append((self.command, host, self.path, round(time.time(), 3)))
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        segments = url.path.strip("/").split("/")
        if url.path == REQUESTS_PATH:
            self._json(200, self.server.state.requests[:-1])
            return
        try:
            if segments[:2] == ["storage", "v1"]:
                self._json_api(segments[2:], query)
            elif segments[:3] == ["download", "storage", "v1"]:
                self._json_api(segments[3:], query)
            elif segments[:3] == ["upload", "storage", "v1"]:
                self._upload(segments[3:], query)
            elif host == "storage.googleapis.com" and len(segments) >= 2:
                bucket, name = segments[0], urllib.parse.unquote("/".join(segments[1:]))
                self._media(bucket, name, query)
            else:
                self._error(404, f"fake GCS: no route for {self.command} {self.path}")
        except _PreconditionFailed:
            self._error(412, "precondition failed")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch

    # ---------------------------------------------------------------- objects

    def _lookup(self, bucket: str, name: str) -> StoredObject | None:
        return self.server.state.objects.get((bucket, name))

    def _check(self, stored: StoredObject | None, query: dict) -> None:
        generation = stored.generation if stored else 0
        if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != generation:
            raise _PreconditionFailed
        if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == generation:
            raise _PreconditionFailed

    def _json_api(self, segments: list[str], query: dict) -> None:
        if len(segments) < 2 or segments[0] != "b":
            self._error(404, "fake GCS: unknown JSON API path")
            return
        bucket = segments[1]
        if len(segments) == 2:
            self._json(200, {"kind": "storage#bucket", "name": bucket, "id": bucket, "location": "US"})
        elif len(segments) == 3 and segments[2] == "o" and self.command == "GET":
            self._list(bucket, query)
        elif len(segments) == 4 and segments[2] == "o":
            self._object(bucket, urllib.parse.unquote(segments[3]), query)
        elif len(segments) == 5 and segments[4] == "compose":
            self._compose(bucket, urllib.parse.unquote(segments[3]), query)
        elif len(segments) == 9 and segments[4] in ("rewriteTo", "copyTo"):
            self._copy(bucket, urllib.parse.unquote(segments[3]), segments[6], urllib.parse.unquote(segments[8]),
                       segments[4], query)
        else:
            self._error(404, "fake GCS: unknown object path")

    def _list(self, bucket: str, query: dict) -> None:
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        after, limit = query.get("pageToken", ""), int(query.get("maxResults") or PAGE_SIZE)
        start, end = query.get("startOffset", ""), query.get("endOffset", "")
        with self.server.state.lock:
            names = sorted(n for (b, n) in self.server.state.objects if b == bucket and n.startswith(prefix))
        entries: list[tuple[str, bool]] = []  # (name or prefix, is_prefix), in name order, each once.
        for name in names:
            if name <= after or name < start or (end and name >= end):
                continue
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = name[: cut + len(delimiter)]
                if not entries or entries[-1] != (common, True):
                    entries.append((common, True))
            else:
                entries.append((name, False))
        page, more = entries[:limit], len(entries) > limit
        payload: dict = {"kind": "storage#objects"}
        items = [_metadata(bucket, n, self._lookup(bucket, n)) for n, is_prefix in page if not is_prefix]
        prefixes = [n for n, is_prefix in page if is_prefix]
        if items:
            payload["items"] = items
        if prefixes:
            payload["prefixes"] = prefixes
        if more:  # Continue after the last entry (after every name under a returned prefix).
            last, is_prefix = page[-1]
            payload["nextPageToken"] = last + "\U0010ffff" if is_prefix else last
        self._json(200, payload)

    def _object(self, bucket: str, name: str, query: dict) -> None:
        stored = self._lookup(bucket, name)
        if self.command == "DELETE":
            if stored is None:
                self._error(404, f"No such object: {bucket}/{name}")
                return
            self._check(stored, query)
            with self.server.state.lock:
                self.server.state.objects.pop((bucket, name), None)
            self._reply(204)
        elif query.get("alt") == "media":
            self._media(bucket, name, query)
        elif stored is None:
            self._error(404, f"No such object: {bucket}/{name}")
        else:
            self._check(stored, query)
            self._json(200, _metadata(bucket, name, stored))

    def _media(self, bucket: str, name: str, query: dict) -> None:
        stored = self._lookup(bucket, name)
        if stored is None:
            self._error(404, f"No such object: {bucket}/{name}")
            return
        try:
            self._check(stored, query)
        except _PreconditionFailed:
            if "ifGenerationNotMatch" in query:
                self._reply(304, headers={"x-goog-generation": str(stored.generation)})
                return
            raise
        data, size = stored.data, len(stored.data)
        headers = {"x-goog-generation": str(stored.generation), "x-goog-metageneration": "1",
                   "x-goog-stored-content-length": str(size), "Content-Type": "application/octet-stream",
                   "x-goog-hash": "md5=" + base64.b64encode(hashlib.md5(data).digest()).decode()}
        spec = self.headers.get("Range", "")
        if not spec.startswith("bytes=") or size == 0:
            self._reply(200, data, headers)
            return
        first, _, last = spec[len("bytes="):].partition("-")
        start = size - int(last) if first == "" else int(first)
        stop = size - 1 if first == "" or last == "" else min(int(last), size - 1)
        if start >= size:
            self._reply(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
            return
        headers.pop("x-goog-hash")
        self._reply(206, data[start : stop + 1], {**headers, "Content-Range": f"bytes {start}-{stop}/{size}"})

    def _copy(self, bucket: str, name: str, to_bucket: str, to_name: str, kind: str, query: dict) -> None:
        stored = self._lookup(bucket, name)
        if stored is None:
            self._error(404, f"No such object: {bucket}/{name}")
            return
        self._check(self._lookup(to_bucket, to_name), query)
        copied = self.server.state.put(to_bucket, to_name, stored.data)
        resource = _metadata(to_bucket, to_name, copied)
        if kind == "copyTo":
            self._json(200, resource)
        else:
            size = str(len(stored.data))
            self._json(200, {"kind": "storage#rewriteResponse", "done": True, "totalBytesRewritten": size,
                             "objectSize": size, "resource": resource})

    def _compose(self, bucket: str, name: str, query: dict) -> None:
        request = json.loads(self._body_bytes or b"{}")
        parts = [self._lookup(bucket, source["name"]) for source in request.get("sourceObjects", [])]
        if any(part is None for part in parts):
            self._error(404, "fake GCS: a compose source is missing")
            return
        self._check(self._lookup(bucket, name), query)
        self._json(200, _metadata(bucket, name, self.server.state.put(bucket, name, b"".join(p.data for p in parts))))

    # ---------------------------------------------------------------- uploads

    def _store(self, bucket: str, name: str, data: bytes, query: dict) -> None:
        self._check(self._lookup(bucket, name), query)
        self._json(200, _metadata(bucket, name, self.server.state.put(bucket, name, data)))

    def _upload(self, segments: list[str], query: dict) -> None:
        bucket = segments[1] if len(segments) >= 2 and segments[0] == "b" else ""
        kind, body = query.get("uploadType", "media"), self._body_bytes
        if kind == "media":
            self._store(bucket, query["name"], body, query)
        elif kind == "multipart":
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
            metadata_part, media_part = list(message.iter_parts())[:2]
            name = query.get("name") or json.loads(metadata_part.get_content())["name"]
            self._store(bucket, name, media_part.get_payload(decode=True) or b"", query)
        elif kind == "resumable" and "upload_id" not in query:
            name = query.get("name") or json.loads(body or b"{}")["name"]
            upload_id = os.urandom(8).hex()
            with self.server.state.lock:
                self.server.state.uploads[upload_id] = (bucket, name, bytearray(), query)
            host = self.headers.get("Host")
            scheme = "https" if isinstance(self.connection, ssl.SSLSocket) else "http"
            location = f"{scheme}://{host}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&upload_id={upload_id}"
            self._reply(200, b"", {"Location": location})
        elif kind == "resumable":
            self._resume(query["upload_id"], body)
        else:
            self._error(400, f"fake GCS: uploadType {kind} is not served")

    def _resume(self, upload_id: str, body: bytes) -> None:
        """A chunk of a resumable upload, 'Content-Range: bytes a-b/total' (total '*' while unknown)."""
        bucket, name, received, conditions = self.server.state.uploads[upload_id]
        spec = self.headers.get("Content-Range", "bytes */*")[len("bytes "):]
        span, _, total = spec.partition("/")
        if span != "*":
            start = int(span.split("-")[0])
            del received[start:]
            received.extend(body)
        if total != "*" and len(received) == int(total):
            self._store(bucket, name, bytes(received), conditions)
            return
        headers = {"Range": f"bytes=0-{len(received) - 1}"} if received else {}
        self._reply(308, b"", headers)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    state: FakeGcsState
    tls: ssl.SSLContext


def _make_certificates(folder: str) -> tuple[str, str, str]:
    """A throw-away CA and a certificate for the storage hosts signed by it: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509  # pylint: disable=g-import-not-at-top
    from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=g-import-not-at-top
    from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=g-import-not-at-top
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # pylint: disable=g-import-not-at-top

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key, issuer: str, signer, extensions) -> x509.Certificate:
        builder = x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        builder = builder.issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        builder = builder.public_key(key.public_key()).serial_number(x509.random_serial_number())
        builder = builder.not_valid_before(now - datetime.timedelta(hours=1))
        builder = builder.not_valid_after(now + datetime.timedelta(days=2))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = "fake-gcs test CA"
    ca_usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                             encipher_only=False, decipher_only=False)
    ca_cert = certificate(ca_name, ca_key, ca_name, ca_key, [(x509.BasicConstraints(ca=True, path_length=None), True),
                                                             (ca_usage, True)])
    server_cert = certificate(STORAGE_HOSTS[0], server_key, ca_name, ca_key, [
        (x509.SubjectAlternativeName([x509.DNSName(h) for h in STORAGE_HOSTS]), False),
        (x509.BasicConstraints(ca=False, path_length=None), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)])
    paths = tuple(os.path.join(folder, n) for n in ("ca.pem", "cert.pem", "key.pem"))
    key_pem = server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    for path, data in zip(paths, (ca_cert.public_bytes(serialization.Encoding.PEM),
                                  server_cert.public_bytes(serialization.Encoding.PEM), key_pem)):
        with open(path, "wb") as f:
            f.write(data)
    return paths


@dataclasses.dataclass
class FakeGcs:
    """A running fake: where it listens and the environment that points every client at it."""

    endpoint: str
    environment: dict

    def requests(self) -> list[list[str]]:
        """[method, host, path, unix time] of every request served so far, oldest first."""
        connection = http.client.HTTPConnection(self.endpoint.split("//")[1], timeout=10)
        try:
            connection.request("GET", REQUESTS_PATH)
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()


@contextlib.contextmanager
def serve() -> Iterator[FakeGcs]:
    """Runs the fake GCS in a child process on a free loopback port for the duration of the block.

    A child process, not a thread: the clients call into C++ while holding the GIL (TFRecordWriter's flush,
    array_record reads inside tf.numpy_function), which would starve a server thread of this process.
    The environment is not changed here; apply ``FakeGcs.environment`` where the clients run.
    """
    with tempfile.TemporaryDirectory(prefix="fake_gcs_") as folder:
        child = subprocess.Popen([sys.executable, __file__, folder], stdout=subprocess.PIPE, text=True)
        try:
            port = int(child.stdout.readline() or 0)
            if not port:
                raise RuntimeError(f"the fake GCS server did not start (exit code {child.wait(10)})")
            endpoint = f"http://127.0.0.1:{port}"
            environment = {
                "HTTPS_PROXY": endpoint, "https_proxy": endpoint, "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost", "CURL_CA_BUNDLE": os.path.join(folder, "ca.pem"),
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": TOKEN, "NO_GCE_CHECK": "true", "GCS_STAT_CACHE_MAX_AGE": "0",
                "GCS_MATCHING_PATHS_CACHE_MAX_AGE": "0", "GCS_READ_CACHE_MAX_SIZE_MB": "0",
                "TENSORSTORE_GCS_HTTP_URL": endpoint, "CLOUD_STORAGE_EMULATOR_ENDPOINT": endpoint,
                "STORAGE_EMULATOR_HOST": endpoint,
            }
            yield FakeGcs(endpoint, environment)
        finally:
            child.terminate()
            child.wait(10)


def _run_server(folder: str) -> None:
    """Child process: certificates into ``folder``, then serve forever; the port is the first stdout line."""
    _, cert, key = _make_certificates(folder)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = FakeGcsState()
    server.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.tls.load_cert_chain(cert, key)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    _run_server(sys.argv[1])
