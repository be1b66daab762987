"""The media store: content addressing, atomic writes, and safe decoding."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import media
from core.config import Settings
from core.media import MediaError, MediaErrorReason, MediaStore, decode_image
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


def test_put_file_and_size_limit_checked_before_reading(tmp_path: Path, store: MediaStore) -> None:
    small = tmp_path / "small.png"
    small.write_bytes(encode(gradient_image(5, 5), "PNG"))
    assert store.put_file(small).key == hashlib.sha256(small.read_bytes()).hexdigest()

    tiny_store = MediaStore(tmp_path / "m2", max_pixels=10**6, max_bytes=50)
    with pytest.raises(MediaError) as err:
        tiny_store.put_file(small)
    assert err.value.reason is MediaErrorReason.TOO_LARGE
    assert "limit of 50 bytes" in str(err.value)
    with pytest.raises(MediaError) as err:
        store.put_file(tmp_path / "nope.png")
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
