"""Content-addressed image store with safe decoding.

Every image that enters Lookalike (catalog imports, API uploads) goes through
:func:`decode_image`, which refuses anything that is not a plain photo-like image
before it can cost memory or CPU:

* the encoded size is capped (``max_bytes``) before anything is parsed;
* only a short list of raster formats is accepted (no EPS/PDF, which would run
  Ghostscript; no exotic container formats with a long CVE history);
* the pixel count from the *header* is checked against ``max_pixels`` before a
  single pixel is decoded (decompression bombs: a few KB that claim 50k x 50k);
  Pillow's own bomb guard (:data:`PIL.Image.MAX_IMAGE_PIXELS`) stays active as a
  second line, and its warning is escalated to an error inside the decode, so the
  effective cap is the smaller of the two. Nothing here mutates Pillow's globals;
* the pixels are fully decoded, so truncated files fail here and not later in a
  worker;
* EXIF orientation is applied and the result is converted to RGB (transparent
  pixels are composited on white, which is what product cut-outs expect).

Image files named by a catalog import are read by :func:`read_import_file`: only from
inside the import roots (:class:`ImportRoots`), only regular files (a FIFO or a device is
refused without being read), and never more than ``max_bytes`` + 1 bytes, whatever size a
file claims (docs/CONFIG.md, "Where an import may read images").

The store keeps the *original* bytes under ``root/ab/cd/<sha256>`` (mode 0644 less
the umask). Writes go to a temporary file in the destination directory and are
renamed into place, so a reader never sees a partial file under a key and a crash
leaves at most a stray ``.tmp-*`` file. Each write is fsynced, unless a bulk writer
opts out and calls :meth:`MediaStore.sync` once before committing rows that point at
its files. Storing the same bytes twice is a no-op (a short file left by a crash is
rewritten).
"""

from __future__ import annotations

import enum
import errno
import hashlib
import io
import os
import re
import secrets
import stat
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from core.artifacts import ArtifactCache, ArtifactExists, ArtifactNotFound, open_cache
from core.config import Settings

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""Formats accepted by :func:`decode_image` (the JPEG plugin also opens camera MPO files)."""

_KEY_RE = re.compile(r"[0-9a-f]{64}")
_HEADER_LOCK = threading.Lock()
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
"""EXIF orientations that swap width and height (the 90- and 270-degree ones)."""
_TMP_PREFIX = ".tmp-"
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_SOURCE_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
"""Opening an import's image file: O_NONBLOCK so that a FIFO without a writer cannot block
the open (it is refused by its type right after), O_NOFOLLOW so that a link put in place
after the path was resolved is refused instead of followed, O_NOCTTY for terminals."""
_READ_CHUNK = 1 << 20


class MediaErrorReason(str, enum.Enum):
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_LARGE = "too_large"
    UNSUPPORTED_FORMAT = "unsupported_format"
    NOT_FOUND = "not_found"
    OUTSIDE_IMPORT_ROOTS = "outside_import_roots"
    NOT_A_FILE = "not_a_file"
    UNREADABLE = "unreadable"


class MediaError(ValueError):
    """An image was refused; ``reason`` says why in a machine-readable way."""

    def __init__(self, reason: MediaErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class StoredImage:
    """What the store knows about stored bytes; width/height are after EXIF rotation."""

    key: str
    width: int
    height: int
    format: str


def decode_image(data: bytes, *, max_pixels: int, max_bytes: int | None = None) -> Image.Image:
    """Decode ``data`` into an RGB image, or raise :class:`MediaError` saying why not."""
    return _to_rgb(_apply_orientation(_load(data, max_pixels=max_pixels, max_bytes=max_bytes)))


def _load(data: bytes, *, max_pixels: int, max_bytes: int | None) -> Image.Image:
    """The fully decoded image as stored (no rotation, original mode), after every check."""
    if max_bytes is not None and len(data) > max_bytes:
        raise MediaError(
            MediaErrorReason.TOO_LARGE,
            f"image is {len(data):,} bytes, more than the limit of {max_bytes:,} bytes",
        )
    if not data:
        raise MediaError(MediaErrorReason.NOT_AN_IMAGE, "empty file: not an image")
    try:
        # Pillow only *warns* between its limit and twice its limit; that is a bomb for us too.
        # Warning filters are process-wide and catch_warnings is not thread-safe, hence the
        # lock; it covers only the header parse, so pixel decoding still runs in parallel.
        with _HEADER_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = _open_checked(data, max_pixels)
        image.load()
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError(MediaErrorReason.TOO_MANY_PIXELS, f"image refused as a decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise MediaError(MediaErrorReason.TRUNCATED, f"image data is truncated or corrupt: {exc}") from exc
    except MemoryError as exc:  # a header that slipped past the checks
        raise MediaError(MediaErrorReason.TOO_MANY_PIXELS, "image needs too much memory to decode") from exc
    _check_pixels(image.size, max_pixels)  # GIF frames may grow the canvas while loading
    return image


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Parse only the header, identify the format, and enforce the pixel cap."""
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        found = _identify_any(data)
        if found is not None:
            raise MediaError(
                MediaErrorReason.UNSUPPORTED_FORMAT,
                f"image format {found} is not supported (accepted: {', '.join(ALLOWED_FORMATS)})",
            ) from None
        raise MediaError(MediaErrorReason.NOT_AN_IMAGE, "not an image (unrecognised file contents)") from None
    _check_pixels(image.size, max_pixels)
    return image


def _identify_any(data: bytes) -> str | None:
    """Name the format of data that no accepted plugin claimed, for a better message."""
    try:
        with Image.open(io.BytesIO(data)) as probe:  # header only; never loaded
            return probe.format
    except Exception:  # noqa: BLE001 - any failure just means "unknown"
        return None


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise MediaError(MediaErrorReason.NOT_AN_IMAGE, f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise MediaError(
            MediaErrorReason.TOO_MANY_PIXELS,
            f"image is {width}x{height} = {width * height:,} pixels, more than the limit of {max_pixels:,}",
        )


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    """The size after EXIF rotation, without rotating any pixels."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF is ignored here as in _apply_orientation
        orientation = 1
    width, height = image.size
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip per EXIF; junk EXIF must not cost us an otherwise good photo."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed EXIF: keep the pixels as stored
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit grey: scale to 8 bits instead of clipping everything above 255 to white.
        return image.convert("I").point(lambda v: v / 256).convert("L").convert("RGB")
    has_alpha = image.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


class ImportRoots:
    """The folders a catalog import may read image files from (docs/CONFIG.md, "Where an import
    may read images"): the catalog's own folder and ``LOOKALIKE_IMPORT_ROOTS``.

    The folders are resolved (symbolic links, ``..``) once, here; a path is inside when its
    resolved form is one of them or below one. No roots: no local file may be read.
    """

    def __init__(self, folders: Iterable[Path | str]) -> None:
        self.folders: tuple[Path, ...] = tuple(dict.fromkeys(Path(os.path.realpath(f)) for f in folders))

    def resolve(self, path: Path) -> str:
        """``path`` with every link resolved, if that is inside a root; else :class:`MediaError`.

        The refusal is the same whether or not the file exists, and names no path: job
        results are shown to API clients, and must not tell what lies outside the roots.
        """
        try:
            resolved = os.path.realpath(path)
        except (OSError, ValueError):  # a NUL, a path too long to resolve
            resolved = None
        if resolved is None or not any(Path(resolved).is_relative_to(root) for root in self.folders):
            raise MediaError(MediaErrorReason.OUTSIDE_IMPORT_ROOTS,
                             "not inside the import folders (the catalog's folder or LOOKALIKE_IMPORT_ROOTS)")
        return resolved


def read_import_file(path: Path, roots: ImportRoots, *, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path``, read to at most ``max_bytes`` + 1 bytes.

    Refused with :class:`MediaError`: a path outside ``roots`` (a link pointing out of
    them included), anything that is not a regular file (a FIFO, a device, a socket, a
    directory: none of them is read at all), and a file larger than ``max_bytes`` (its
    size is not trusted: ``/proc`` files claim 0 bytes and a growing file grows). The
    messages name no path: the caller quotes the reference as its row wrote it.
    """
    resolved = roots.resolve(path)
    try:
        fd = os.open(resolved, _SOURCE_FLAGS)
    except FileNotFoundError:
        raise MediaError(MediaErrorReason.NOT_FOUND, "file not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link put in place after the path was resolved
            raise MediaError(MediaErrorReason.NOT_A_FILE, "not a regular file (a symbolic link)") from None
        raise MediaError(MediaErrorReason.UNREADABLE, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MediaError(MediaErrorReason.NOT_A_FILE, f"not a regular file ({_file_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise _too_large(max_bytes)
        return read_at_most(fd, max_bytes)
    except OSError as exc:  # EIO, EISDIR on odd file systems
        raise MediaError(MediaErrorReason.UNREADABLE, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(fd)


def read_at_most(fd: int, max_bytes: int) -> bytes:
    """Everything ``fd`` holds, or :class:`MediaError` after reading ``max_bytes`` + 1 bytes of it."""
    chunks: list[bytes] = []
    total = 0
    while total <= max_bytes:
        chunk = os.read(fd, min(_READ_CHUNK, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    raise _too_large(max_bytes)


def _too_large(max_bytes: int) -> MediaError:
    return MediaError(MediaErrorReason.TOO_LARGE, f"file is more than the limit of {max_bytes:,} bytes")


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def media_key(data: bytes) -> str:
    """The store key of ``data``: its SHA-256 in lower-case hex."""
    return hashlib.sha256(data).hexdigest()


def is_media_key(value: object) -> bool:
    """True for text that can be a store key (64 lower-case hex characters), stored or not."""
    return isinstance(value, str) and _KEY_RE.fullmatch(value) is not None


MEDIA_PREFIX = "media/"
"""Where images live in the artifact store (core/artifacts): ``media/ab/cd/<key>``."""


class MediaStore:
    """Original image bytes addressed by their SHA-256: on local disk, or in a shared object store.

    With ``shared`` (an object store is configured), every image is uploaded before
    ``put_bytes`` returns (so a row that points at it may commit) and ``root`` is this
    host's cache of them: any host reads any image, downloading it once.
    """

    def __init__(self, root: Path, *, max_pixels: int, max_bytes: int, fsync: bool = True,
                 shared: ArtifactCache | None = None) -> None:
        self.root = Path(root)
        self.shared = shared
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.fsync = fsync
        """Flush every write to disk before renaming it; bulk writers turn it off and call :meth:`sync`."""
        self._made_dirs: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings, *, fsync: bool = True) -> MediaStore:
        shared = open_cache(settings) if settings.artifact_store else None
        root = shared.objects / MEDIA_PREFIX if shared is not None else settings.media_dir
        return cls(root, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes,
                   fsync=fsync, shared=shared)

    def path(self, key: str) -> Path:
        """Where ``key`` lives on this host (whether or not it is there); refuses anything but a key."""
        return self.root / self._relative(key)

    @staticmethod
    def _relative(key: str) -> str:
        if not is_media_key(key):
            raise ValueError(f"invalid media key {key!r}: expected 64 lower-case hex characters")
        return f"{key[:2]}/{key[2:4]}/{key}"

    def _store_key(self, key: str) -> str:
        return MEDIA_PREFIX + self._relative(key)

    def exists(self, key: str) -> bool:
        if self.path(key).is_file():
            return True
        return self.shared is not None and self.shared.store.exists(self._store_key(key))

    def local_file(self, key: str) -> Path:
        """A file on this host holding ``key``'s bytes (downloaded once from the store if need be)."""
        path = self.path(key)
        if path.is_file():
            return path
        if self.shared is not None:
            try:
                with self.shared.fetch(self._store_key(key)) as cached:
                    return cached.path
            except ArtifactNotFound:
                pass
        raise MediaError(MediaErrorReason.NOT_FOUND, f"no image stored under key {key}")

    def describe(self, data: bytes) -> StoredImage:
        """Validate ``data`` like :meth:`put_bytes` would, without storing anything.

        The pixels are fully decoded (that is the validation) but not rotated or
        converted: the size after EXIF rotation is computed from the tag.
        """
        image = _load(data, max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        width, height = _oriented_size(image)
        return StoredImage(key=media_key(data), width=width, height=height, format=image.format or "UNKNOWN")

    def put_bytes(self, data: bytes) -> StoredImage:
        """Validate and store ``data``; storing bytes that are already there changes nothing."""
        stored = self.describe(data)
        target = self.path(stored.key)
        try:
            if target.stat().st_size == len(data):
                return stored
        except FileNotFoundError:
            pass
        if self.shared is not None:  # uploaded first: the local copy is only this host's cache of it
            try:
                self.shared.store.put_bytes(self._store_key(stored.key), data)
            except ArtifactExists:  # content-addressed: the same bytes are there already
                pass
            self.shared.keep(self._store_key(stored.key), data)
            return stored
        # Missing, or a short file left by a crash before it reached the disk: (re)write it.
        self._write_atomically(target, data)
        return stored

    def read_source(self, path: Path, roots: ImportRoots) -> bytes:
        """Read an image file to be stored: see :func:`read_import_file` (the cap is ``max_bytes``)."""
        return read_import_file(path, roots, max_bytes=self.max_bytes)

    def read_bytes(self, key: str) -> bytes:
        """The original bytes stored under ``key``."""
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            pass
        return self.local_file(key).read_bytes()  # from the store, if there is one; else NOT_FOUND

    def open(self, key: str) -> Image.Image:
        """The stored image, decoded to RGB with EXIF orientation applied."""
        return decode_image(self.read_bytes(key), max_pixels=self.max_pixels)

    def sync(self) -> None:
        """Make every write so far durable (one ``sync()`` instead of an fsync per file)."""
        os.sync()

    def _write_atomically(self, target: Path, data: bytes) -> None:
        # os.open rather than mkstemp: mkstemp makes 0600 files, which an API process
        # running as another user could not read; the umask decides here, as for any file.
        directory = str(target.parent)
        if directory not in self._made_dirs:  # one mkdir per shard and process, not per image
            _make_shard(directory)
            self._made_dirs.add(directory)
        tmp_name = os.path.join(directory, f"{_TMP_PREFIX}{secrets.token_hex(8)}")
        try:
            fd = os.open(tmp_name, _CREATE_FLAGS, 0o644)
        except FileNotFoundError:  # the shard was removed behind our back (a clean-up job)
            _make_shard(directory)
            fd = os.open(tmp_name, _CREATE_FLAGS, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise


def _make_shard(directory: str) -> None:
    """mkdir the ``ab/cd`` shard (and ``ab`` if needed) without os.makedirs' extra stat calls."""
    try:
        os.mkdir(directory)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
