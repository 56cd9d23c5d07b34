"""Bring a model file to local disk from its `model_uri`, refusing schemes not allowed.

Runs in one thread per model while the loader thread imports onnxruntime (paper 001's
advice: overlap the download with the imports).

Downloads land in `<cache>/downloads/<key>/model.onnx`, which every runtime process of a
node may share (KINDLING_CACHE_DIR on a hostPath or shared volume): the first process to
need a file takes an flock(2) on `model.onnx.lock` beside it and downloads; the others
wait for the lock, then find the file. A download is renamed into place only once it is
complete and checked (Content-Length, config.yaml's `model_sha256`, ONNX framing), so no
process reads half a file and nothing that failed a check is cached. The kernel drops
the lock of a writer that crashed; the next holder removes what it left.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import unquote, urljoin, urlsplit

from kindling.errors import ModelLoadError

if TYPE_CHECKING:
    import urllib.request
    from email.message import Message

ATTEMPTS = 3
BACKOFF_S = 0.5
# RFC 9110 §15.4 leaves the limit to the client; its note recalls that an earlier
# specification (RFC 2068 §10.3) recommended at most five redirections.
MAX_REDIRECTS = 5
# flock(2) has no timeout: a process waiting for another's download polls the lock so that
# the wait ends at its deadline. 50 ms is nothing next to a download.
LOCK_POLL_S = 0.05
CHUNK = 1 << 20
MODEL_NAME = "model.onnx"
LOCK_NAME = f"{MODEL_NAME}.lock"
# The schemes an HTTP redirect may lead to: the HTTP downloader fetches no other.
HTTP_SCHEMES = ("http", "https")


def fetch_model(
    uri: str,
    allowed_schemes: tuple[str, ...],
    cache_dir: Path,
    timeout_s: float,
    sha256: str | None = None,
    root: Path | None = None,
) -> Path:
    """Return a local path holding the model at `uri`, downloading it once into `cache_dir`.

    `timeout_s` bounds the whole fetch: every attempt, the backoff between them and the
    wait for another process downloading the same file. `sha256` (lower-case hex), when
    given, must match the download. `root`, when given, must hold any local file named
    (symlinks resolved)."""
    if "://" not in uri:  # a plain path: '#', '?' and '%' are part of the file name
        if "file" not in allowed_schemes:
            raise ModelLoadError("model_uri scheme 'file' is not allowed")
        return _local_file(Path(uri), uri, root)
    scheme = urlsplit(uri).scheme.lower()
    if scheme not in allowed_schemes:
        raise ModelLoadError(
            f"model_uri scheme {scheme!r} is not allowed (allowed: {', '.join(allowed_schemes)})"
        )
    if scheme == "file":
        return _local_file(Path(unquote(urlsplit(uri).path)), uri, root)
    download = DOWNLOADERS.get(scheme)
    if download is None:
        raise ModelLoadError(f"model_uri scheme {scheme!r} has no downloader")
    # A new checksum in config.yaml means a new file, so it is part of the key.
    key = uri if sha256 is None else f"{uri}\nsha256={sha256}"
    target = cache_dir / "downloads" / hashlib.sha256(key.encode()).hexdigest() / MODEL_NAME
    if target.is_file() and onnx_problem(target) is None:
        return target
    deadline = time.monotonic() + timeout_s
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target, uri, deadline, timeout_s):
        if target.is_file() and onnx_problem(target) is None:
            return target  # another process downloaded it while this one waited
        # What a crashed writer left, and a file cached before downloads were checked.
        for stale in [target, *target.parent.glob(f"{MODEL_NAME}.part*")]:
            stale.unlink(missing_ok=True)
        return _download(download, uri, target, allowed_schemes, deadline, timeout_s, sha256)


def is_download(uri: str) -> bool:
    """Whether `fetch_model` downloads `uri` into the cache (rather than using a local file)."""
    return "://" in uri and urlsplit(uri).scheme.lower() != "file"


def evict(path: Path, fetched: os.stat_result) -> bool:
    """Remove the cached download at `path`, which failed to load, so that the next start
    downloads it again; unless another process has replaced it since (another inode) or
    holds its lock (it is replacing it now). True if removed."""
    try:  # created if missing: a file cached by an older Kindling has no lock beside it
        fd = os.open(path.with_name(LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        now = path.stat()
        if (now.st_dev, now.st_ino) != (fetched.st_dev, fetched.st_ino):
            return False
        path.unlink()
        return True
    except OSError:  # BlockingIOError: a writer holds the lock; FileNotFoundError: gone
        return False
    finally:
        os.close(fd)  # releases the lock


def onnx_problem(path: Path) -> str | None:
    """Why the file at `path` cannot be an ONNX model, or None if it may be one.

    A cheap look at the framing, before a download is cached: an ONNX file is a serialized
    ModelProto (onnx/onnx.proto), top-level protobuf fields each made of a key (field
    number << 3 | wire type) and a value, among them ir_version (1, varint) and graph (7,
    length-delimited). Walking the keys reads a few bytes per top-level field however
    large the graph; an HTML error page, a JSON or gzip body, or a short file fails it.
    onnxruntime has the last word: a cached download it cannot load is evicted.
    """
    fields: set[tuple[int, int]] = set()
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            while (at := f.tell()) < size:
                key = _varint(f)
                number, wire = key >> 3, key & 7
                if number == 0 or wire not in (0, 1, 2, 5):  # 3, 4: groups, unused by ONNX
                    return f"byte {at} is not a protobuf field key"
                if wire == 0:  # varint
                    _varint(f)
                else:  # fixed64, fixed32, or a length-delimited value
                    f.seek({1: 8, 5: 4}.get(wire) or _varint(f), os.SEEK_CUR)
                fields.add((number, wire))
            if f.tell() != size:
                return f"its last field runs past the end of the file ({size} bytes)"
    except (OSError, ValueError) as exc:
        return str(exc)
    if (1, 0) not in fields:
        return "no ir_version field"
    if (7, 2) not in fields:
        return "no graph field"
    return None


def _varint(f: IO[bytes]) -> int:
    """One protobuf base-128 varint (at most 10 bytes for 64 bits)."""
    value = 0
    for shift in range(0, 70, 7):
        byte = f.read(1)
        if not byte:
            raise ValueError("the file ends inside a field")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
    raise ValueError("a protobuf varint longer than 10 bytes")


def _local_file(path: Path, uri: str, root: Path | None) -> Path:
    """A local model file, used in place (never copied); inside `root` when one is set."""
    if root is not None:
        # Resolved before the check: a symlink or '..' inside the root may lead anywhere.
        path = path.resolve()
        if not path.is_relative_to(root.resolve()):
            raise ModelLoadError(
                f"model_uri {uri!r} is outside KINDLING_MODEL_URI_ROOT ({str(root)!r})"
            )
    if not path.is_file():
        raise ModelLoadError(f"model_uri {uri!r}: no such file")
    return path


@contextlib.contextmanager
def _exclusive(target: Path, uri: str, deadline: float, timeout_s: float) -> Iterator[None]:
    """Hold the lock beside `target`, first waiting (until `deadline`) for the process that
    holds it: it is downloading the same file."""
    fd = os.open(target.with_name(LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:  # explains a slow start; a test also waits for this line
                    print(
                        f"kindling: waiting for another process's download of {uri}",
                        file=sys.stderr,
                        flush=True,
                    )
                    announced = True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ModelLoadError(
                        f"waiting for another process's download of {uri!r} timed out after "
                        f"{timeout_s:g} s (KINDLING_DOWNLOAD_TIMEOUT_S)"
                    ) from None
                time.sleep(min(LOCK_POLL_S, remaining))
        yield
    finally:
        os.close(fd)  # releases the lock


class Sink:
    """The partial file as a downloader writes it, hashed on the way when a checksum is to
    be verified (one pass over the bytes, overlapping the network)."""

    def __init__(self, file: IO[bytes], hash_it: bool) -> None:
        self.file = file
        self.size = 0
        self.digest = hashlib.sha256() if hash_it else None

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.size += len(chunk)
        if self.digest is not None:
            self.digest.update(chunk)


# (uri, sink, deadline, cancelled, allowed schemes) -> the size the origin announced, if any.
Downloader = Callable[[str, Sink, float, threading.Event, tuple[str, ...]], int | None]


def _download(
    download: Downloader,
    uri: str,
    target: Path,
    allowed: tuple[str, ...],
    deadline: float,
    timeout_s: float,
    sha256: str | None,
) -> Path:
    """Download into a partial file, check it, rename it into place: up to ATTEMPTS times
    with backoff, all before `deadline`. Runs holding the lock."""
    partial = target.with_name(f"{MODEL_NAME}.part{os.getpid()}")
    last_error = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(min(BACKOFF_S * 2 ** (attempt - 1), max(0.0, deadline - time.monotonic())))
        try:
            _attempt(download, uri, partial, allowed, deadline, timeout_s, sha256, last_error)
            partial.replace(target)  # atomic: a reader never sees half a model
            return target
        except ModelLoadError:
            partial.unlink(missing_ok=True)
            raise
        except Exception as exc:  # network errors vary by library; all are retried
            last_error = f"{type(exc).__name__}: {exc}"  # a message, not the open response
            partial.unlink(missing_ok=True)
    raise ModelLoadError(f"downloading {uri!r} failed after {ATTEMPTS} attempts: {last_error}")


def _attempt(
    download: Downloader,
    uri: str,
    partial: Path,
    allowed: tuple[str, ...],
    deadline: float,
    timeout_s: float,
    sha256: str | None,
    last_error: str,
) -> None:
    """One download into `partial`, then its checks; ModelLoadError if none may help."""
    timed_out = ModelLoadError(
        f"downloading {uri!r} timed out after {timeout_s:g} s (KINDLING_DOWNLOAD_TIMEOUT_S)"
        + (f"; last error: {last_error}" if last_error else "")
    )
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise timed_out
    sink = Sink(partial.open("wb"), sha256 is not None)
    outcome: list[int | Exception | None] = []
    done = threading.Event()
    cancelled = threading.Event()

    def work() -> None:
        try:
            outcome.append(download(uri, sink, deadline, cancelled, allowed))
        except Exception as exc:  # handed to the waiting thread
            outcome.append(exc)
        finally:
            sink.file.close()
            done.set()

    # A socket timeout bounds each read, not a download: an origin that trickles a byte a
    # second never trips it. The download runs in its own thread so that this one stops
    # waiting at the deadline whatever the library does; the abandoned thread stops at
    # its next chunk (or read timeout), writing only to the file unlinked here.
    threading.Thread(target=work, name="kindling-download", daemon=True).start()
    if not done.wait(remaining):
        cancelled.set()
        raise timed_out
    result = outcome[0]
    if isinstance(result, Exception):
        raise result
    # http.client ends a read early, without an error, when the connection drops; a short
    # file must be retried, never cached.
    if result is not None and sink.size != result:
        raise OSError(f"connection closed after {sink.size} of {result} bytes")
    if sink.digest is not None and (got := sink.digest.hexdigest()) != sha256:
        raise ModelLoadError(
            f"downloaded {uri!r} has sha256 {got}, not config.yaml's model_sha256 {sha256}"
        )
    problem = onnx_problem(partial)
    if problem is not None:
        raise ModelLoadError(f"downloaded {uri!r} is not an ONNX model: {problem}")


def _download_http(
    uri: str, out: Sink, deadline: float, cancelled: threading.Event, allowed: tuple[str, ...]
) -> int | None:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(_checked_redirects(uri, allowed))
    try:
        # The socket timeout (the time left) bounds connecting and each read.
        with opener.open(uri, timeout=max(deadline - time.monotonic(), 0.001)) as response:
            expected = response.length  # from Content-Length; None when chunked
            # read1: at most one socket read, so a cancelled download stops at the next
            # chunk even from a trickling origin (read(n) waits for n bytes).
            while not cancelled.is_set() and (chunk := response.read1(CHUNK)):
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        exc.close()
        if 300 <= exc.code < 400:
            raise ModelLoadError(
                f"downloading {uri!r} failed: HTTP {exc.code}, a redirect not followed "
                f"(a loop, more than {MAX_REDIRECTS}, or no Location)"
            ) from None
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            # Retrying a 404 or 403 only delays the error the operator needs to see.
            raise ModelLoadError(f"downloading {uri!r} failed: HTTP {exc.code}") from None
        raise OSError(f"HTTP {exc.code}") from None
    return expected


def _checked_redirects(uri: str, allowed: tuple[str, ...]) -> urllib.request.HTTPRedirectHandler:
    """urllib's redirect handler, checking every hop against the allowlist (urllib itself
    follows a redirect to ftp://) and following at most MAX_REDIRECTS."""
    import urllib.request

    schemes = [s for s in HTTP_SCHEMES if s in allowed]

    class CheckedRedirects(urllib.request.HTTPRedirectHandler):
        max_redirections = MAX_REDIRECTS

        def http_error_302(
            self,
            req: urllib.request.Request,
            fp: IO[bytes],
            code: int,
            msg: str,
            headers: Message,
        ) -> IO[bytes] | None:
            location = headers.get("location") or headers.get("uri")
            if location:
                scheme = urlsplit(urljoin(req.full_url, location)).scheme.lower()
                if scheme not in schemes:
                    fp.close()
                    raise ModelLoadError(
                        f"downloading {uri!r}: HTTP {code} redirects to a {scheme!r} URL; "
                        f"redirects may lead to {', '.join(schemes)} only"
                    )
            return super().http_error_302(req, fp, code, msg, headers)

        http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    return CheckedRedirects()


def _download_s3(
    uri: str, out: Sink, deadline: float, cancelled: threading.Event, allowed: tuple[str, ...]
) -> int | None:
    try:
        import boto3  # optional extra: pip install 'kindling[s3]'
        from botocore.config import Config
    except ImportError as exc:
        raise ModelLoadError(
            "s3:// model_uri needs the s3 extra: pip install 'kindling[s3]'"
        ) from exc
    parts = urlsplit(uri)
    remaining = max(deadline - time.monotonic(), 0.001)
    # boto3 reads credentials and AWS_ENDPOINT_URL (MinIO, Ceph) from the environment itself.
    client = boto3.client("s3", config=Config(connect_timeout=remaining, read_timeout=remaining))
    response = client.get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))
    body = response["Body"]
    try:
        for chunk in body.iter_chunks(CHUNK):
            if cancelled.is_set():
                break
            out.write(chunk)
    finally:
        body.close()
    return response.get("ContentLength")


DOWNLOADERS: dict[str, Downloader] = {
    "http": _download_http,
    "https": _download_http,
    "s3": _download_s3,
}
