"""Resumable, verified file downloads with a progress line (bytes, rate, ETA), for the official weights.

`download(url, destination)` writes `destination.part` and renames it to `destination` only once it is complete
(size as announced by the server) and, when the server sends Google Cloud Storage's `x-goog-hash` header, its
MD5 matches. A dropped connection is resumed with an HTTP Range request (in the same call, and in a later call
after a kill, from the `.part` file), so nothing that is not whole is ever found at `destination`.
`http(s)://` and `file://` URLs are accepted.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import pathlib
import re
import sys
import time
import urllib.error
import urllib.request
from typing import TextIO

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
MAX_ATTEMPTS = 20  # Attempts that each added bytes (a dropped link); one without progress ends the download.
PROGRESS_INTERVAL_S = 0.5  # On a terminal; piped output gets a line every 10 s.
PIPED_PROGRESS_INTERVAL_S = 10.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(OSError):
    """The file could not be fetched (no network, HTTP error, connection lost too often)."""


class CorruptDownload(DownloadError):
    """The bytes fetched do not match the size or checksum the server announced; they were deleted."""


class Progress:
    """Prints `name: 12.3/83.2 MB  9.1 MB/s  ETA 0:00:07` to `stream`, in place on a terminal, else periodically."""

    def __init__(self, name: str, stream: TextIO | None, start_bytes: int = 0):
        self._name, self._stream, self._start_bytes = name, stream, start_bytes
        self._start = self._last = time.monotonic()
        self._tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def line(self, done: int, total: int | None) -> str:
        """The progress text for `done` of `total` bytes (total None when the server did not say)."""
        elapsed = max(time.monotonic() - self._start, 1e-6)
        rate = (done - self._start_bytes) / elapsed
        size = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
        eta = "?" if not total or rate <= 0 else _clock(max(total - done, 0) / rate)
        return f"{self._name}: {size}  {rate / 1e6:.1f} MB/s  ETA {eta}"

    def update(self, done: int, total: int | None) -> None:
        """Shows the progress if enough time passed since the last line."""
        now = time.monotonic()
        interval = PROGRESS_INTERVAL_S if self._tty else PIPED_PROGRESS_INTERVAL_S
        if self._stream is None or now - self._last < interval:
            return
        self._last = now
        self._write(self.line(done, total), final=False)

    def finish(self, done: int, total: int | None) -> None:
        """Shows the final figures and ends the line."""
        if self._stream is not None:
            self._write(self.line(done, total), final=True)

    def _write(self, text: str, final: bool) -> None:
        if self._tty:
            self._stream.write("\r" + text + ("\n" if final else ""))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _goog_md5(headers) -> bytes | None:
    """The MD5 digest from GCS's `x-goog-hash: crc32c=...,md5=<base64>` header, if sent."""
    for value in headers.get_all("x-goog-hash") or []:
        for part in value.split(","):
            key, _, digest = part.strip().partition("=")
            if key == "md5":
                return base64.b64decode(digest)
    return None


def _open(url: str, offset: int):
    """(response, offset the body starts at, total size or None, MD5 or None) for `url` from byte `offset`."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    length = response.headers.get("Content-Length")
    if getattr(response, "status", None) == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            response.close()
            raise DownloadError(f"{url}: the server answered the resume request with an unexpected range "
                                f"{response.headers.get('Content-Range')!r}.")
        total = None if match.group(3) == "*" else int(match.group(3))
        return response, offset, total, _goog_md5(response.headers)
    return response, 0, int(length) if length is not None else None, _goog_md5(response.headers)


def _fetch_once(url: str, part: pathlib.Path, progress: Progress) -> tuple[int | None, bytes | None]:
    """Appends what the server sends after `part`'s current size; returns (total size, MD5) as announced."""
    offset = _size(part)
    try:
        response, start, total, md5 = _open(url, offset)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # Nothing left after `offset`: start over rather than trust it.
            part.unlink()
        raise
    with response, open(part, "ab" if start else "wb") as out:
        done = start
        while chunk := response.read(CHUNK_BYTES):
            out.write(chunk)
            done += len(chunk)
            progress.update(done, total)
    return total, md5


def _size(path: pathlib.Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _file_md5(path: pathlib.Path) -> bytes:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.digest()


def download(url: str, destination: str | os.PathLike, *, progress_stream: TextIO | None = None) -> None:
    """Fetches `url` into `destination` through `destination.part`, resuming after dropped connections.

    The progress line goes to `progress_stream` (default: sys.stderr at call time).

    Raises DownloadError when the server cannot be reached or keeps failing without progress, and
    CorruptDownload (after deleting the bytes) when the size or the GCS MD5 does not match.
    """
    destination = pathlib.Path(destination)
    part = destination.with_name(destination.name + ".part")
    progress = Progress(destination.name, progress_stream or sys.stderr, _size(part))
    for _ in range(MAX_ATTEMPTS):
        before, error = _size(part), None
        try:
            total, md5 = _fetch_once(url, part, progress)
        except urllib.error.HTTPError as http_error:
            if http_error.code != 416:
                raise DownloadError(f"cannot download {url}: HTTP {http_error.code} {http_error.reason}") from None
            total, md5, error = None, None, http_error
        except (urllib.error.URLError, http.client.HTTPException, OSError) as os_error:
            total, md5, error = None, None, os_error
        size = _size(part)
        if error is None and (total is None or size == total):
            break
        if total is not None and size > total:
            part.unlink()
            raise CorruptDownload(f"{url}: received {size} bytes but the server announced {total}; deleted.")
        if size == before:  # No progress in this attempt: no network, or the server stopped sending.
            reason = getattr(error, "reason", error) or "the connection closed before the end"
            raise DownloadError(f"cannot download {url}: {reason}")
    else:
        raise DownloadError(f"cannot download {url}: the connection dropped {MAX_ATTEMPTS} times.")
    progress.finish(size, total)
    if md5 is not None and _file_md5(part) != md5:
        part.unlink()
        raise CorruptDownload(f"{url}: the MD5 of the {size} bytes received does not match the server's "
                              "x-goog-hash; deleted.")
    os.replace(part, destination)
