"""Bring a model file to local disk from its `model_uri`, refusing schemes not allowed.

Runs in the loader thread while the main thread imports onnxruntime and the server
(paper 001's advice: overlap the download with the imports).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kindling.errors import ModelLoadError

ATTEMPTS = 3
BACKOFF_S = 0.5


def fetch_model(
    uri: str,
    allowed_schemes: tuple[str, ...],
    cache_dir: Path,
    timeout_s: float,
) -> Path:
    """Return a local path holding the model at `uri`, downloading it once into `cache_dir`."""
    if "://" not in uri:  # a plain path: '#', '?' and '%' are part of the file name
        path = Path(uri)
        if "file" not in allowed_schemes:
            raise ModelLoadError("model_uri scheme 'file' is not allowed")
        if not path.is_file():
            raise ModelLoadError(f"model_uri {uri!r}: no such file")
        return path
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in allowed_schemes:
        raise ModelLoadError(
            f"model_uri scheme {scheme!r} is not allowed (allowed: {', '.join(allowed_schemes)})"
        )
    if scheme == "file":
        path = Path(unquote(parts.path))
        if not path.is_file():
            raise ModelLoadError(f"model_uri {uri!r}: no such file")
        return path
    target = cache_dir / "downloads" / hashlib.sha256(uri.encode()).hexdigest() / "model.onnx"
    if target.is_file():
        return target
    if scheme in ("http", "https"):
        download = _download_http
    elif scheme == "s3":
        download = _download_s3
    else:
        raise ModelLoadError(f"model_uri scheme {scheme!r} has no downloader")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".part{os.getpid()}")
    last_error = ""
    for attempt in range(ATTEMPTS):
        try:
            download(uri, partial, timeout_s)
            partial.replace(target)  # atomic: a reader never sees half a model
            return target
        except ModelLoadError:
            partial.unlink(missing_ok=True)
            raise
        except Exception as exc:  # network errors vary by library; all are retried
            last_error = f"{type(exc).__name__}: {exc}"  # a message, not the open response
            partial.unlink(missing_ok=True)
            if attempt + 1 < ATTEMPTS:
                time.sleep(BACKOFF_S * 2**attempt)
    raise ModelLoadError(f"downloading {uri!r} failed after {ATTEMPTS} attempts: {last_error}")


def _download_http(uri: str, dest: Path, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri, timeout=timeout_s) as response, dest.open("wb") as out:
            expected = response.length  # from Content-Length; None when chunked
            written = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                written += len(chunk)
    except urllib.error.HTTPError as exc:
        exc.close()
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            # Retrying a 404 or 403 only delays the error the operator needs to see.
            raise ModelLoadError(f"downloading {uri!r} failed: HTTP {exc.code}") from None
        raise OSError(f"HTTP {exc.code}") from None
    # http.client ends a read early, without an error, when the connection drops; a
    # short file must be retried, never cached.
    if expected is not None and written != expected:
        raise OSError(f"connection closed after {written} of {expected} bytes")


def _download_s3(uri: str, dest: Path, timeout_s: float) -> None:
    try:
        import boto3  # optional extra: pip install 'kindling[s3]'
        from botocore.config import Config
    except ImportError as exc:
        raise ModelLoadError(
            "s3:// model_uri needs the s3 extra: pip install 'kindling[s3]'"
        ) from exc
    parts = urlsplit(uri)
    # boto3 reads credentials and AWS_ENDPOINT_URL (MinIO, Ceph) from the environment itself.
    client = boto3.client("s3", config=Config(connect_timeout=timeout_s, read_timeout=timeout_s))
    client.download_file(parts.netloc, parts.path.lstrip("/"), str(dest))
