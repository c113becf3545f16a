"""What a server refuses, and how: every refusal is an ``ApiError`` (a status code, a one-line
message, optional headers) that the app turns into a JSON error in one place.

- ``Limits``: the flags' values (upload bytes, pixels, requests in the server, seconds a
  request may take), checked when made.
- ``decode_upload``: an uploaded file's bytes -> uint8 RGB (H,W,3), through the project's one
  image reader (``data_loader.image_io.read_rgb``: 16-bit, RGBA, palette, CMYK, EXIF,
  truncation checks), with the pixel count read from the header first (a decompression bomb is
  a 413 that costs a header read, never an allocation). The bytes stay in memory: no file name
  a client sends is ever used, and the decoder reads an in-memory file (``memfd``).
- ``UploadGate``: an ASGI middleware in front of the upload routes: a request over the upload
  size is refused before its body is read (413), one over the number of requests the server
  holds is refused at once (503 with Retry-After), so memory stays bounded under any load.
"""
import contextlib
import io
import os
import tempfile
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageColor

from data_loader.image_io import ImageReadError, read_rgb

MB = 1 << 20
RETRY_AFTER_S = 1  # what a 503 tells a client to wait: one batch on a CPU takes ~0.1-1 s


class ApiError(Exception):
    """A refusal: HTTP ``status``, a one-line ``message`` for the client, extra ``headers``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


@dataclass(frozen=True)
class Limits:
    """max_upload_bytes: request body (413); max_pixels: width x height from the header (413);
    max_queue: requests in the server at once, queued or running (503); timeout_s: seconds from
    arrival to answer (504). Raises ValueError naming the flag for a value below 1."""
    max_upload_bytes: int = 32 * MB
    max_pixels: int = 36_000_000
    max_queue: int = 64
    timeout_s: float = 60.0

    def __post_init__(self):
        for name, flag in (("max_upload_bytes", "--max-upload-mb"), ("max_pixels", "--max-pixels"),
                           ("max_queue", "--max-queue"), ("timeout_s", "--timeout")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{flag} must be > 0, got {value!r}")


# ---------------------------------------------------------------- reading an upload
def _header_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header of an image in ``data`` (nothing decoded). Raises
    ApiError 415 for what Pillow cannot identify, 413 above Pillow's own bomb limit."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Image.DecompressionBombError as err:
        raise ApiError(413, f"the image declares more pixels than Pillow's decompression-bomb limit ({err}); "
                            f"this server's limit is {max_pixels / 1e6:g} MP (--max-pixels)") from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # UnidentifiedImageError is an OSError
        raise ApiError(415, "the upload is not an image this server reads (JPEG, PNG, WebP, BMP, TIFF)") from err


@contextlib.contextmanager
def _in_memory_file(data: bytes):
    """A path to ``data`` for readers that take paths: an anonymous in-memory file (Linux
    ``memfd``), else a private temporary file removed on exit. The path is ours, never a
    client's."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("upload", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as f:
                f.write(data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    handle, path = tempfile.mkstemp(prefix="serve-upload-")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        yield path
    finally:
        os.remove(path)


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """An uploaded file's bytes -> uint8 RGB (H,W,3) (``read_rgb``'s conversions: 16-bit scaled
    to 8 bits, alpha dropped, EXIF orientation applied).

    Raises ApiError: 415 for an empty upload or one that is not a readable image (text,
    truncated, corrupt); 413 for more than ``max_pixels`` pixels, checked from the header
    before any pixel is decoded.
    """
    if not data:
        raise ApiError(415, "the upload is empty (0 bytes)")
    width, height = _header_size(data, max_pixels)
    if width * height > max_pixels:
        raise ApiError(413, f"the image is {width}x{height} ({width * height / 1e6:.1f} MP), over this server's "
                            f"limit of {max_pixels / 1e6:g} MP (--max-pixels), read from its header")
    with _in_memory_file(data) as path:
        try:
            return read_rgb(path, max_pixels=max_pixels)
        except ImageReadError as err:
            raise ApiError(415, f"the upload is not a readable image: {err.reason}") from err


# ---------------------------------------------------------------- colours from clients
def parse_colour(spec: str, field: str) -> tuple[int, int, int, int]:
    """A client's colour -> (r, g, b, a) uint8 values: ``#00ff00``, ``#0f0``, ``green``,
    ``rgb(0,255,0)`` or rembg's ``r,g,b[,a]``. Never a file name (unlike apply.py's
    ``--background``, a client's string never reaches the file system). ApiError 422 otherwise."""
    text = spec.strip()
    if "," in text and not text.lower().startswith(("rgb", "hsl", "hsv")):
        parts = text.split(",")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) in (3, 4) and all(0 <= v <= 255 for v in values):
            return tuple(values + [255] * (4 - len(values)))
        raise ApiError(422, f"{field} {spec!r}: expected r,g,b or r,g,b,a with integers 0-255")
    try:
        rgb = ImageColor.getrgb(text)
    except ValueError:
        raise ApiError(422, f"{field} {spec!r} is not a colour (e.g. #00ff00, white, 0,255,0,255)") from None
    return tuple(rgb) + ((255,) if len(rgb) == 3 else ())


# ---------------------------------------------------------------- the gate
class UploadGate:
    """ASGI middleware for the POST routes in ``paths``: bodies over ``limits.max_upload_bytes``
    are refused (413) without reading them past the limit; with ``limits.max_queue`` requests
    already in the server, a new one is refused at once (503, Retry-After). ``occupancy`` counts
    the requests held now (the queue length /healthz reports). ``respond(scope, receive, send,
    ApiError)`` sends a refusal."""

    def __init__(self, app, limits: Limits, paths: tuple[str, ...], respond, occupancy: "Occupancy"):
        self.app, self.limits, self.paths, self.respond, self.occupancy = app, limits, paths, respond, occupancy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        held = self.occupancy
        if held.in_server >= self.limits.max_queue:
            return await self.respond(scope, receive, send, ApiError(
                503, f"the server holds {held.in_server} requests, its limit (--max-queue); retry shortly",
                {"Retry-After": str(RETRY_AFTER_S)}))
        held.in_server += 1
        try:
            too_large = self._too_large(scope)
            body = None if too_large else await self._read(receive)
            if too_large or body is None:
                return await self.respond(scope, receive, send, ApiError(
                    413, f"the upload is over this server's limit of {self.limits.max_upload_bytes / MB:g} MB "
                         "(--max-upload-mb)"))
            await self.app(scope, _replay(body, receive), send)
        finally:
            held.in_server -= 1

    def _too_large(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    return int(value) > self.limits.max_upload_bytes
                except ValueError:
                    return False
        return False

    async def _read(self, receive) -> bytes | None:
        """The whole body, or None once it passes the limit (a chunked upload has no length)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_upload_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class Occupancy:
    """The number of upload requests in the server (one event loop changes it: no lock)."""

    def __init__(self):
        self.in_server = 0


def _replay(body: bytes, receive):
    """An ASGI ``receive`` that gives ``body`` once, then the connection's own messages (a
    disconnect, when it comes)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay
