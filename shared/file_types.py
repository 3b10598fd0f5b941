"""What an uploaded file's first bytes must look like for the type it was declared as.

A signed PUT URL binds the content type *label* but cannot see the bytes, so a file declared
``image/png`` may hold anything. Before an upload counts as the user's media (and before any
model reads it), :func:`shared.media.resolve_media` reads a short prefix of the object and
asks :func:`matches` whether it carries the declared type's signature ("magic number").
``text/plain`` has none: it must decode as UTF-8 as a whole, which the caller checks with
:func:`utf8_checker` while streaming the object (bounded by ``UPLOAD_MAX_BYTES``).

Pure functions on bytes, no imports from the rest of ``shared``: settings use
:data:`CHECKED_TYPES` to refuse an allowlist naming a type nobody can verify.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

# Enough for every signature below, including an ftyp box's list of compatible brands.
PREFIX_BYTES = 512
TEXT_TYPE = "text/plain"

# ISO base media file format (ISO/IEC 14496-12): the file starts with a box
# ``<size:4><"ftyp"><major brand:4><minor version:4><compatible brands:4*n>``.
HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs",
               b"mif1", b"msf1"}  # fmt: skip
MP4_VIDEO_BRANDS = {
    b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso7", b"iso8", b"iso9",
    b"mp41", b"mp42", b"mp71", b"avc1", b"av01", b"hvc1", b"dash", b"msnv", b"ndas",
    b"M4V ", b"M4VH", b"M4VP", b"f4v ", b"mmp4", b"XAVC", b"3gp4", b"3gp5", b"3gp6",
    b"3gp7", b"3g2a", b"3g2b", b"3g2c",
}  # fmt: skip
QUICKTIME_BRANDS = {b"qt  "}
M4A_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B ", b"mp41", b"mp42", b"isom",
              b"iso2", b"iso5", b"iso6", b"dash", b"3gp4", b"3gp5", b"3gp6"}  # fmt: skip
# A QuickTime movie written without an ftyp box starts with one of these atoms.
QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


def ftyp_brands(prefix: bytes) -> set[bytes]:
    """The major and compatible brands of a leading ftyp box; empty when there is none."""
    if len(prefix) < 16 or prefix[4:8] != b"ftyp":
        return set()
    size = int.from_bytes(prefix[0:4], "big")
    if size < 16:
        return set()
    end = min(size, len(prefix))
    brands = {prefix[8:12]}
    brands.update(prefix[offset : offset + 4] for offset in range(16, end - 3, 4))
    return brands


def _ftyp(accepted: set[bytes]) -> Callable[[bytes], bool]:
    return lambda prefix: bool(ftyp_brands(prefix) & accepted)


def _is_quicktime(prefix: bytes) -> bool:
    return bool(ftyp_brands(prefix) & QUICKTIME_BRANDS) or (
        len(prefix) >= 8 and prefix[4:8] in QUICKTIME_ATOMS
    )


def _is_mp3(prefix: bytes) -> bool:
    """An ID3v2 tag, or an MPEG audio frame header (ISO/IEC 11172-3).

    The frame header is 11 set sync bits, then version, layer, bitrate and sample-rate
    fields; the reserved values (version 01, layer 00, bitrate 1111, rate 11) are refused,
    which also tells AAC's ADTS (layer 00) and JPEG's ``FF D8`` apart from MP3.
    """
    if prefix.startswith(b"ID3"):
        return True
    if len(prefix) < 4 or prefix[0] != 0xFF or prefix[1] & 0xE0 != 0xE0:
        return False
    version, layer = (prefix[1] >> 3) & 0b11, (prefix[1] >> 1) & 0b11
    bitrate, rate = prefix[2] >> 4, (prefix[2] >> 2) & 0b11
    return version != 0b01 and layer != 0b00 and bitrate != 0b1111 and rate != 0b11


def _riff(form: bytes) -> Callable[[bytes], bool]:
    return lambda prefix: prefix[:4] == b"RIFF" and prefix[8:12] == form


def _is_webm(prefix: bytes) -> bool:
    # EBML header, whose DocType element (ID 0x4282) says "webm" (Matroska says "matroska").
    return (
        prefix.startswith(b"\x1a\x45\xdf\xa3")
        and b"\x42\x82" in prefix[:64]
        and (b"webm" in prefix[:64])
    )


SIGNATURES: dict[str, Callable[[bytes], bool]] = {
    "image/png": lambda p: p.startswith(b"\x89PNG\r\n\x1a\n"),
    "image/jpeg": lambda p: p.startswith(b"\xff\xd8\xff"),
    "image/gif": lambda p: p.startswith((b"GIF87a", b"GIF89a")),
    "image/webp": _riff(b"WEBP"),
    "image/heic": _ftyp(HEIF_BRANDS),
    "image/heif": _ftyp(HEIF_BRANDS),
    "video/mp4": _ftyp(MP4_VIDEO_BRANDS),
    "video/quicktime": _is_quicktime,
    "video/webm": _is_webm,
    "audio/mpeg": _is_mp3,
    "audio/mp3": _is_mp3,
    "audio/wav": _riff(b"WAVE"),
    "audio/x-wav": _riff(b"WAVE"),
    "audio/wave": _riff(b"WAVE"),
    "audio/mp4": _ftyp(M4A_BRANDS),
    "audio/x-m4a": _ftyp(M4A_BRANDS),
    "audio/ogg": lambda p: p.startswith(b"OggS"),
    "application/pdf": lambda p: p.startswith(b"%PDF-"),
}

# Every type whose content can be verified: the only ones an allowlist may name.
CHECKED_TYPES = frozenset(SIGNATURES) | {TEXT_TYPE}


def matches(content_type: str, prefix: bytes) -> bool:
    """Whether ``prefix`` (the file's first :data:`PREFIX_BYTES`) is of ``content_type``."""
    signature = SIGNATURES.get(content_type)
    return signature is not None and signature(prefix)


def utf8_checker() -> Callable[[bytes, bool], bool]:
    """A function fed the file's chunks in order; False as soon as they are not UTF-8.

    Incremental, so a character split across two chunks is fine and memory stays at one
    chunk. Pass ``final=True`` with the last chunk: a truncated character at the end fails.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")

    def feed(chunk: bytes, final: bool) -> bool:
        try:
            decoder.decode(chunk, final=final)
        except UnicodeDecodeError:
            return False
        return True

    return feed
