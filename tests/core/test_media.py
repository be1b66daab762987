"""The media store: content addressing, atomic writes, and safe decoding."""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from core import media
from core.config import Settings
from core.media import ImportRoots, MediaError, MediaErrorReason, MediaStore, decode_image
from tests.fixtures.images import bomb_png, encode, gradient_image


@pytest.fixture
def store(tmp_path: Path) -> MediaStore:
    return MediaStore(tmp_path / "media", max_pixels=1_000_000, max_bytes=1_000_000)


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_put_bytes_is_content_addressed_and_keeps_the_original_bytes(store: MediaStore) -> None:
    data = encode(gradient_image(30, 20), "JPEG")
    stored = store.put_bytes(data)
    key = hashlib.sha256(data).hexdigest()
    assert stored.key == key
    assert (stored.width, stored.height, stored.format) == (30, 20, "JPEG")
    assert store.path(key) == store.root / key[:2] / key[2:4] / key
    assert store.path(key).read_bytes() == data
    assert store.exists(key)
    assert _all_files(store.root) == [store.path(key)]


def test_put_is_idempotent_and_does_not_rewrite(store: MediaStore) -> None:
    data = encode(gradient_image(8, 8), "PNG")
    first = store.put_bytes(data)
    before = store.path(first.key).stat()
    second = store.put_bytes(data)
    after = store.path(first.key).stat()
    assert first == second
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert len(_all_files(store.root)) == 1


def test_same_pixels_in_another_encoding_is_another_key(store: MediaStore) -> None:
    image = gradient_image(8, 8)
    a = store.put_bytes(encode(image, "PNG"))
    b = store.put_bytes(encode(image, "BMP"))
    assert a.key != b.key
    assert np.array_equal(np.asarray(store.open(a.key)), np.asarray(store.open(b.key)))


def test_a_failure_mid_write_leaves_no_file_under_the_key(
    store: MediaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = encode(gradient_image(8, 8), "PNG")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk vanished")

    monkeypatch.setattr(media.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk vanished"):
        store.put_bytes(data)
    key = hashlib.sha256(data).hexdigest()
    assert not store.exists(key)
    assert _all_files(store.root) == []  # the temp file was cleaned up too


def test_a_short_file_left_by_a_crash_is_repaired(store: MediaStore) -> None:
    data = encode(gradient_image(8, 8), "PNG")
    key = hashlib.sha256(data).hexdigest()
    store.path(key).parent.mkdir(parents=True)
    store.path(key).write_bytes(data[:10])
    store.put_bytes(data)
    assert store.path(key).read_bytes() == data


def test_read_source_and_size_limit_checked_before_reading(tmp_path: Path, store: MediaStore) -> None:
    small = tmp_path / "small.png"
    small.write_bytes(encode(gradient_image(5, 5), "PNG"))
    roots = ImportRoots([tmp_path])
    assert store.put_bytes(store.read_source(small, roots)).key == hashlib.sha256(small.read_bytes()).hexdigest()

    tiny_store = MediaStore(tmp_path / "m2", max_pixels=10**6, max_bytes=50)
    with pytest.raises(MediaError) as err:
        tiny_store.read_source(small, roots)
    assert err.value.reason is MediaErrorReason.TOO_LARGE
    assert "limit of 50 bytes" in str(err.value)
    with pytest.raises(MediaError) as err:
        store.read_source(tmp_path / "nope.png", roots)
    assert err.value.reason is MediaErrorReason.NOT_FOUND


def test_open_returns_rgb_and_missing_keys_are_not_found(store: MediaStore) -> None:
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L")
    key = store.put_bytes(encode(grey, "PNG")).key
    opened = store.open(key)
    assert opened.mode == "RGB"
    arr = np.asarray(opened)
    for channel in range(3):
        assert np.array_equal(arr[:, :, channel], np.asarray(grey))
    with pytest.raises(MediaError) as err:
        store.open("0" * 64)
    assert err.value.reason is MediaErrorReason.NOT_FOUND


@pytest.mark.parametrize("key", ["../../etc/passwd", "ABC", "g" * 64, "A" * 64, "0" * 64 + "\n", "0" * 65])
def test_keys_that_are_not_sha256_hex_are_refused(store: MediaStore, key: str) -> None:
    # One pattern for the store and the API's /media/<key> (service/api/items.py): a trailing
    # newline, which a ``$``-anchored pattern lets through, is no key either.
    assert not media.is_media_key(key)
    with pytest.raises(ValueError, match="invalid media key"):
        store.path(key)
    assert media.is_media_key(media.media_key(b"x"))


def test_transparent_pixels_become_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    decoded = decode_image(encode(rgba, "PNG"), max_pixels=100)
    assert decoded.getpixel((1, 1)) == (255, 255, 255)
    assert decoded.getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(fmt: str) -> None:
    image = gradient_image(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(image, fmt, exif=exif.tobytes())
    decoded = decode_image(data, max_pixels=10_000)
    assert decoded.size == (20, 40)
    expected = np.rot90(np.asarray(image), k=-1)  # clockwise
    got = np.asarray(decoded).astype(int)
    tolerance = 0 if fmt == "PNG" else 12
    assert np.abs(got - expected.astype(int)).max() <= tolerance


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", MediaErrorReason.NOT_AN_IMAGE),
        (b"name,price\nshirt,10\n", MediaErrorReason.NOT_AN_IMAGE),
        (b"%PDF-1.4\n" + b"x" * 100, MediaErrorReason.NOT_AN_IMAGE),
    ],
)
def test_non_images_are_refused(data: bytes, reason: MediaErrorReason) -> None:
    with pytest.raises(MediaError) as err:
        decode_image(data, max_pixels=10**6)
    assert err.value.reason is reason


def test_unsupported_formats_are_named() -> None:
    with pytest.raises(MediaError) as err:
        decode_image(encode(gradient_image(16, 16), "ICO"), max_pixels=10**6)
    assert err.value.reason is MediaErrorReason.UNSUPPORTED_FORMAT
    assert "ICO" in str(err.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_refused(fmt: str) -> None:
    data = encode(gradient_image(64, 64, noise=True), fmt)
    with pytest.raises(MediaError) as err:
        decode_image(data[: len(data) // 2], max_pixels=10**6)
    assert err.value.reason is MediaErrorReason.TRUNCATED


@pytest.mark.parametrize("size", [(60_000, 60_000), (5_000, 5_000)])
def test_a_bomb_header_is_refused_before_decoding(size: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow's own global guard switched off: our cap must not depend on it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    data = bomb_png(*size)
    assert len(data) < 200
    with pytest.raises(MediaError) as err:
        decode_image(data, max_pixels=1_000_000)
    assert err.value.reason is MediaErrorReason.TOO_MANY_PIXELS
    assert f"{size[0]}x{size[1]}" in str(err.value)


def test_a_real_image_over_a_low_pixel_cap_is_refused() -> None:
    data = encode(gradient_image(400, 300), "JPEG")
    assert decode_image(data, max_pixels=120_000).size == (400, 300)
    with pytest.raises(MediaError) as err:
        decode_image(data, max_pixels=119_999)
    assert err.value.reason is MediaErrorReason.TOO_MANY_PIXELS
    assert "120,000 pixels" in str(err.value)


def test_pillows_bomb_warning_is_an_error_not_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # warns above 1000, errors above 2000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any leaked warning fails the test
        for size in [(40, 40), (100, 100)]:
            with pytest.raises(MediaError) as err:
                decode_image(encode(gradient_image(*size), "PNG"), max_pixels=10**6)
            assert err.value.reason is MediaErrorReason.TOO_MANY_PIXELS
            assert "decompression bomb" in str(err.value)
    assert decode_image(encode(gradient_image(30, 30), "PNG"), max_pixels=10**6).size == (30, 30)


def test_bytes_over_the_limit_are_refused_with_the_sizes(store: MediaStore) -> None:
    data = encode(gradient_image(64, 64, noise=True), "PNG")
    small = MediaStore(store.root, max_pixels=10**6, max_bytes=len(data) - 1)
    with pytest.raises(MediaError) as err:
        small.put_bytes(data)
    assert err.value.reason is MediaErrorReason.TOO_LARGE
    assert f"{len(data):,} bytes" in str(err.value)
    assert not small.exists(hashlib.sha256(data).hexdigest())


def test_from_settings_uses_the_media_dir(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, max_image_pixels=123, max_image_bytes=456)
    store = MediaStore.from_settings(settings)
    assert store.root == settings.media_dir
    assert (store.max_pixels, store.max_bytes) == (123, 456)


def test_fsync_off_still_writes_atomically(tmp_path: Path) -> None:
    fast = MediaStore(tmp_path / "m", max_pixels=10**6, max_bytes=10**6, fsync=False)
    data = encode(gradient_image(8, 8), "PNG")
    key = fast.put_bytes(data).key
    fast.sync()
    assert fast.path(key).read_bytes() == data
    assert [p.name for p in _all_files(fast.root)] == [key]
    assert not any(name.startswith(".tmp-") for _, _, names in os.walk(fast.root) for name in names)


def test_files_are_readable_by_others_and_removed_shards_come_back(store: MediaStore) -> None:
    data = encode(gradient_image(8, 8), "PNG")
    key = store.put_bytes(data).key
    umask = os.umask(0)
    os.umask(umask)
    assert store.path(key).stat().st_mode & 0o777 == 0o644 & ~umask  # not mkstemp's 0600
    store.path(key).unlink()
    store.path(key).parent.rmdir()
    assert store.put_bytes(data).key == key
    assert store.path(key).read_bytes() == data


@pytest.mark.parametrize(("orientation", "size"), [(1, (40, 20)), (3, (40, 20)), (6, (20, 40)), (8, (20, 40))])
def test_stored_size_is_the_size_after_exif_rotation(store: MediaStore, orientation: int,
                                                     size: tuple[int, int]) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = store.put_bytes(encode(gradient_image(40, 20), "JPEG", exif=exif.tobytes()))
    assert (stored.width, stored.height) == size
    assert store.open(stored.key).size == size


# ----------------------------------------------------------------------------- import files (issue 12)
CAP = 1000


def _refused(path: Path, roots: ImportRoots, max_bytes: int = CAP) -> MediaError:
    with pytest.raises(MediaError) as err:
        media.read_import_file(path, roots, max_bytes=max_bytes)
    return err.value


def test_a_stream_is_read_to_at_most_the_cap_plus_one_byte() -> None:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"x" * (CAP + 100))
        os.close(write_end)
        with pytest.raises(MediaError) as err:
            media.read_at_most(read_end, CAP)
        assert err.value.reason is MediaErrorReason.TOO_LARGE
        assert len(os.read(read_end, 10_000)) == 99  # what the refusal left unread
    finally:
        os.close(read_end)
    read_end, write_end = os.pipe()
    os.write(write_end, b"y" * CAP)
    os.close(write_end)
    assert media.read_at_most(read_end, CAP) == b"y" * CAP  # exactly the cap is fine
    os.close(read_end)


@settings(max_examples=60, deadline=None, database=None)
@given(size=st.integers(0, 3000), cap=st.integers(0, 2500))
def test_any_stream_is_returned_whole_or_refused_after_cap_plus_one_bytes(size: int, cap: int) -> None:
    data = bytes(i % 251 for i in range(size))
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
        os.close(write_end)
        if size <= cap:
            assert media.read_at_most(read_end, cap) == data
        else:
            with pytest.raises(MediaError):
                media.read_at_most(read_end, cap)
            assert os.read(read_end, 10_000) == data[cap + 1:]
    finally:
        os.close(read_end)


def test_a_file_whose_size_claims_less_than_it_holds_is_refused_at_the_cap() -> None:
    # /proc files say st_size 0 and hold more: the size is not what caps the read.
    maps = Path("/proc/self/maps")
    assert maps.stat().st_size == 0 and len(maps.read_bytes()) > 100
    assert _refused(maps, ImportRoots(["/proc/self"]), max_bytes=100).reason is MediaErrorReason.TOO_LARGE


def test_a_regular_file_over_the_cap_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\x00" * CAP)
    error = _refused(big, ImportRoots([tmp_path]))
    assert error.reason is MediaErrorReason.TOO_LARGE and str(error) == "file is more than the limit of 1,000 bytes"
    assert media.read_import_file(big, ImportRoots([tmp_path]), max_bytes=CAP + 4) == big.read_bytes()


def test_a_character_device_is_refused_without_reading() -> None:
    error = _refused(Path("/dev/zero"), ImportRoots(["/dev"]), max_bytes=10**12)
    assert error.reason is MediaErrorReason.NOT_A_FILE and str(error) == "not a regular file (a character device)"


def test_a_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(media.read_import_file, fifo, ImportRoots([tmp_path]), max_bytes=CAP)
        try:
            with pytest.raises(MediaError) as err:
                future.result(timeout=10)
        finally:
            if not future.done():  # a regression would block in open(): give it a writer
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert err.value.reason is MediaErrorReason.NOT_A_FILE and "FIFO" in str(err.value)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d.png").mkdir()
    assert _refused(tmp_path / "d.png", ImportRoots([tmp_path])).reason is MediaErrorReason.NOT_A_FILE


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """``root/`` (an import root) with an image and links, and ``outside/`` holding a secret image."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    png = encode(gradient_image(4, 4), "PNG")
    (root / "sub" / "a.png").write_bytes(png)
    (outside / "secret.png").write_bytes(png)
    (root / "out.png").symlink_to(outside / "secret.png")
    (root / "outdir").symlink_to(outside)
    (root / "in.png").symlink_to(root / "sub" / "a.png")
    return root, outside


@pytest.mark.parametrize("name", ["out.png", "outdir/secret.png", "outdir/missing.png", "../outside/secret.png",
                                  "../outside/missing.png", "sub/../../outside/secret.png", "/etc/passwd",
                                  "/nonexistent/x.png", "a\x00b.png"])
def test_paths_outside_the_roots_are_refused_alike(layout: tuple[Path, Path], name: str) -> None:
    root, _ = layout
    error = _refused(root / name, ImportRoots([root]))
    # One message for files that exist and files that do not, naming no path.
    assert error.reason is MediaErrorReason.OUTSIDE_IMPORT_ROOTS
    assert str(error) == "not inside the import folders (the catalog's folder or LOOKALIKE_IMPORT_ROOTS)"


def test_links_inside_the_roots_and_extra_roots_are_read(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    data = (root / "sub" / "a.png").read_bytes()
    assert media.read_import_file(root / "in.png", ImportRoots([root]), max_bytes=CAP) == data
    assert media.read_import_file(root / "sub" / "a.png", ImportRoots([root / "sub"]), max_bytes=CAP) == data
    both = ImportRoots([root, outside])
    assert media.read_import_file(root / "out.png", both, max_bytes=CAP) == data  # its target is in a root now
    assert _refused(root / "sub" / "missing.png", both).reason is MediaErrorReason.NOT_FOUND
    error = _refused(root / "sub" / "a.png" / "x.png", both)  # ENOTDIR: said without the path
    assert (error.reason, str(error)) == (MediaErrorReason.UNREADABLE, "cannot be read: Not a directory")
    assert _refused(root / "x.png", ImportRoots([])).reason is MediaErrorReason.OUTSIDE_IMPORT_ROOTS
