"""Pixel dimensions of a base64 image, read from its header only (PNG, JPEG, GIF).

llm-d-router's estimate backend sizes an image's placeholder run from its dimensions
(``pkg/epp/framework/plugins/requestcontrol/dataproducer/tokenizer/mm_estimate.go``,
``imageDimensionsFromBase64``): Go's ``image.DecodeConfig`` on a streamed base64 decoder
with the PNG, JPEG and GIF readers registered. This module reads the same header fields
with the same acceptance rules, without decoding pixels or depending on an imaging
library:

* PNG: the signature, then ``IHDR`` as the first chunk (13 bytes, valid bit depth / color
  type pair, compression and filter 0, interlace 0 or 1, CRC); a paletted image also needs
  its ``PLTE`` before any ``IDAT``;
* JPEG: ``SOI``, then segments up to a baseline / extended / progressive ``SOF`` (8-bit
  precision, 1, 3 or 4 components), and for a file without a JFIF ``APP0`` up to ``SOS``;
* GIF: ``GIF87a`` / ``GIF89a``, the logical screen size and its global color table.

Dimensions of 0 count as undecodable, as upstream.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Final

__all__ = ["base64_image_size", "data_url_image_size", "image_size"]

_HEAD_B64_CHARS: Final = 1 << 18
"""Base64 characters decoded at most (192 KiB of file): Go streams the decode and reads
only the header; a header past this (a huge JPEG EXIF block) counts as unreadable."""

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_PNG_DEPTHS: Final = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
"""Color type → the bit depths Go's PNG reader accepts for it."""
_JPEG_SOF: Final = (0xC0, 0xC1, 0xC2)
_JPEG_SOS: Final = 0xDA
_JPEG_EOI: Final = 0xD9
_JPEG_APP0: Final = 0xE0
_JPEG_APP15: Final = 0xEF
_JPEG_IGNORED: Final = frozenset({0xC4, 0xDB, 0xDD, 0xEE, 0xFE})
"""DHT, DQT, DRI, APP14, COM: skipped while reading the configuration."""
_JPEG_SOF_LENGTHS: Final = {6 + 3 * n: n for n in (1, 3, 4)}


def data_url_image_size(url: str) -> tuple[int, int] | None:
    """Width and height of a ``data:image/...;base64,`` URL's image, else ``None``."""
    if not url.startswith("data:image/"):
        return None
    idx = url.find("base64,")
    if idx < 0:
        return None
    return base64_image_size(url[idx + len("base64,") :])


def base64_image_size(payload: str) -> tuple[int, int] | None:
    """Width and height of a bare base64 (standard alphabet) PNG, JPEG or GIF, else
    ``None`` (not base64, another format, a bad header, or a zero dimension)."""
    head = payload[:_HEAD_B64_CHARS]
    if "\n" in head or "\r" in head:  # Go's base64 reader drops line breaks
        head = head.replace("\r", "").replace("\n", "")
    # Go decodes as a stream: a bad or partial quad at the end never reaches the header.
    head = head[: len(head) - len(head) % 4]
    try:
        data = base64.b64decode(head, validate=True)
    except (binascii.Error, ValueError):
        return None
    return image_size(data)


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header of a PNG, JPEG or GIF file, else ``None``."""
    if data.startswith(_PNG_SIGNATURE):
        size = _png_size(data)
    elif data.startswith(b"\xff\xd8"):
        size = _jpeg_size(data)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        size = _gif_size(data)
    else:
        return None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _png_chunk(data: bytes, pos: int) -> tuple[bytes, bytes, int] | None:
    """(type, payload, next position) of the chunk at ``pos`` with a valid CRC."""
    if pos + 8 > len(data):
        return None
    length = int.from_bytes(data[pos : pos + 4], "big")
    end = pos + 8 + length
    if length > 0x7FFFFFFF or end + 4 > len(data):
        return None
    kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : end]
    if zlib.crc32(payload, zlib.crc32(kind)) != int.from_bytes(data[end : end + 4], "big"):
        return None
    return kind, payload, end + 4


def _png_size(data: bytes) -> tuple[int, int] | None:
    chunk = _png_chunk(data, len(_PNG_SIGNATURE))
    if chunk is None or chunk[0] != b"IHDR" or len(chunk[1]) != 13:
        return None
    ihdr = chunk[1]
    width = int.from_bytes(ihdr[0:4], "big", signed=True)
    height = int.from_bytes(ihdr[4:8], "big", signed=True)
    depth, color, compression, filtering, interlace = ihdr[8:13]
    if depth not in _PNG_DEPTHS.get(color, ()) or compression or filtering or interlace > 1:
        return None
    if color == 3:  # paletted: Go reads on to the PLTE chunk
        pos = chunk[2]
        while True:
            nxt = _png_chunk(data, pos)
            if nxt is None or nxt[0] in (b"IDAT", b"IEND"):
                return None
            if nxt[0] == b"PLTE":
                if len(nxt[1]) % 3 or not 0 < len(nxt[1]) <= 768:
                    return None
                break
            pos = nxt[2]
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos, n = 2, len(data)
    size: tuple[int, int] | None = None
    is_jfif = False
    while pos + 2 <= n:
        if data[pos] != 0xFF:  # skip stray bytes up to the next marker, as Go does
            pos += 1
            continue
        marker = data[pos + 1]
        pos += 2
        while marker == 0xFF and pos < n:  # fill bytes
            marker = data[pos]
            pos += 1
        if marker == 0 or 0xD0 <= marker <= 0xD7:
            continue
        if marker == _JPEG_EOI or pos + 2 > n:
            return None
        length = int.from_bytes(data[pos : pos + 2], "big") - 2
        pos += 2
        if length < 0 or pos + length > n:
            return None
        segment = data[pos : pos + length]
        pos += length
        if marker in _JPEG_SOF:
            components = _JPEG_SOF_LENGTHS.get(length)
            if size is not None or components is None or segment[0] != 8:
                return None
            if segment[5] != components:
                return None
            size = (int.from_bytes(segment[3:5], "big"), int.from_bytes(segment[1:3], "big"))
            if is_jfif:
                return size
        elif marker == _JPEG_SOS:
            return size
        elif marker == _JPEG_APP0:
            is_jfif = length >= 5 and segment[:5] == b"JFIF\x00"
        elif not (marker in _JPEG_IGNORED or _JPEG_APP0 <= marker <= _JPEG_APP15):
            return None  # an unknown or unsupported marker (lossless SOF, ...)
    return None


def _gif_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 13:
        return None
    flags = data[10]
    if flags & 0x80 and len(data) < 13 + 3 * (1 << ((flags & 7) + 1)):
        return None
    return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
