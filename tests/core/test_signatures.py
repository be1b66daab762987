"""Photo signatures: pHash, crops and the aligned similarity against brute-force references,
on real Fashion-MNIST copies; the signature store computes each photo once."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.catalog.sample import Split, load_split
from core.config import Settings
from core.db import ImageSignature, session_scope
from core.media import MediaStore
from core.signature_store import load_signatures
from core.signatures import (
    MARGINS,
    SIZE,
    aligned_similarity,
    crops,
    descriptors,
    hamming,
    phash,
    thumbnail,
)
from tests.fixtures.near_copies import CopyKind, near_copy

BAR = Settings().duplicate_min_similarity


@pytest.fixture(scope="module")
def fashion() -> list[Image.Image]:
    images, _ = load_split(Path("/usr/share/datasets/fashion-mnist"), Split.TEST)
    return [Image.fromarray(p, "L") for p in images[:300]]


def _dct_reference(x: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D DCT-II by its definition."""
    n = x.shape[0]
    k = np.arange(n)
    basis = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    basis[0] /= np.sqrt(2)
    return basis @ x @ basis.T


def test_phash_and_hamming_match_the_definition(fashion: list[Image.Image]) -> None:
    thumbs = np.stack([thumbnail(im) for im in fashion[:40]])
    hashes = phash(thumbs)
    for thumb, h in zip(thumbs, hashes.tolist(), strict=True):
        low = _dct_reference(thumb.astype(np.float64))[:8, :8].ravel()
        bits = "".join("1" if c > np.median(low) else "0" for c in low)
        assert h == int(bits, 2)
    a, b = hashes[:20], hashes[20:]
    assert hamming(a, b).tolist() == [bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b, strict=True)]


def _crop_reference(thumb: np.ndarray, m: tuple[float, float, float, float]) -> np.ndarray:
    """Bilinear samples at the output pixels' centres of the box (top, bottom, left, right margins)."""
    top, bottom, left, right = m
    out = np.zeros((SIZE, SIZE))

    def at(m0: float, m1: float, i: int) -> tuple[int, int, float]:
        p = min(max((m0 + (i + 0.5) * (1 - m0 - m1) / SIZE) * SIZE - 0.5, 0.0), SIZE - 1.0)
        f = int(np.floor(p))
        return f, min(f + 1, SIZE - 1), p - f

    for i in range(SIZE):
        y0, y1, wy = at(top, bottom, i)
        for j in range(SIZE):
            x0, x1, wx = at(left, right, j)
            out[i, j] = ((1 - wy) * ((1 - wx) * thumb[y0, x0] + wx * thumb[y0, x1])
                         + wy * ((1 - wx) * thumb[y1, x0] + wx * thumb[y1, x1]))
    return out


def _band_reference(x: np.ndarray) -> np.ndarray:
    return gaussian_filter(x, 1.0) - gaussian_filter(x, 3.0)


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x.ravel(), y.ravel())[0, 1])


def test_crops_are_the_brute_force_crops_band_passed(fashion: list[Image.Image]) -> None:
    thumbs = np.stack([thumbnail(im) for im in fashion[:3]]).astype(np.float64)
    got = crops(thumbs)
    assert got.shape == (3, len(MARGINS) ** 4, SIZE * SIZE)
    margins = [(t, b, l_, r) for t in MARGINS for b in MARGINS for l_ in MARGINS for r in MARGINS]
    for n, thumb in enumerate(thumbs):
        for v in (0, 1, 13, 40, 80):
            want = _band_reference(_crop_reference(thumb, margins[v])).ravel()
            want = (want - want.mean()) / np.linalg.norm(want - want.mean())
            np.testing.assert_allclose(got[n, v], want, atol=2e-5)


def test_aligned_similarity_is_the_best_brute_force_correlation(fashion: list[Image.Image]) -> None:
    pictures = [fashion[0], near_copy(fashion[0], CopyKind.CROP5), fashion[1], near_copy(fashion[2], CopyKind.CROP)]
    thumbs = np.stack([thumbnail(im) for im in pictures]).astype(np.float64)
    pairs = [(0, 1), (0, 2), (2, 3), (1, 3)]
    got = aligned_similarity(thumbs, np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
    margins = [(t, b, l_, r) for t in MARGINS for b in MARGINS for l_ in MARGINS for r in MARGINS]
    for (a, b), score in zip(pairs, got.tolist(), strict=True):
        want = max(max(_corr(_band_reference(_crop_reference(thumbs[x], m)), _band_reference(thumbs[y]))
                       for m in margins) for x, y in ((a, b), (b, a)))
        assert score == pytest.approx(want, abs=1e-4)
    # `enough` only skips the search where the whole thumbnails already reach it
    cheap = aligned_similarity(thumbs, np.array([0, 2]), np.array([1, 3]), enough=-1.0)
    assert (cheap <= got[[0, 2]] + 1e-6).all() and cheap[0] < BAR <= got[0]


@pytest.mark.parametrize("kind", [CopyKind.JPEG, CopyKind.RESIZE, CopyKind.CROP])
def test_real_copies_pass_and_their_nearest_distinct_photos_do_not(fashion: list[Image.Image],
                                                                   kind: CopyKind) -> None:
    originals = fashion[:100]
    thumbs = np.stack([thumbnail(im) for im in originals + [near_copy(im, kind) for im in originals]])
    n = len(originals)
    copies = aligned_similarity(thumbs, np.arange(n), np.arange(n, 2 * n))
    assert (copies >= BAR).mean() >= 0.95, np.sort(copies)[:10]
    # each original against its 5 nearest other originals by descriptor: the hardest distinct pairs
    d = descriptors(thumbs[:n])
    sims = d @ d.T
    np.fill_diagonal(sims, -np.inf)
    near = np.argsort(-sims, axis=1)[:, :5]
    a, b = np.repeat(np.arange(n), 5), near.ravel()
    distinct = aligned_similarity(thumbs, a, b)
    assert (distinct >= BAR).mean() <= 0.01
    assert np.median(distinct) < np.min(copies)


def test_descriptors_put_a_cropped_copy_next_to_its_original(fashion: list[Image.Image]) -> None:
    originals = fashion[:200]
    copies = [near_copy(im, CopyKind.CROP) for im in originals[:50]]
    d = descriptors(np.stack([thumbnail(im) for im in originals + copies]))
    ranks = [(d[200 + j] @ d[:200].T > d[200 + j] @ d[j]).sum() for j in range(50)]
    assert np.mean(np.array(ranks) < 20) >= 0.9


def _png(image: Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **options)
    return buf.getvalue()


def test_store_computes_each_photo_once(tmp_path: Path, settings: Settings, sessions: sessionmaker[Session],
                                        fashion: list[Image.Image]) -> None:
    store = MediaStore.from_settings(settings.replace(home=tmp_path), fsync=False)
    keys = [store.put_bytes(_png(im)).key for im in fashion[:5]]
    keys.append(keys[0])  # the same content twice: one row, the same signature
    thumbs, valid, computed = load_signatures(sessions, store, keys + ["0" * 64])
    assert computed == 5 and valid.tolist() == [True] * 6 + [False]
    np.testing.assert_array_equal(thumbs[0], thumbnail(fashion[0]))
    np.testing.assert_array_equal(thumbs[5], thumbs[0])
    again, _, computed = load_signatures(sessions, store, keys)
    assert computed == 0
    np.testing.assert_array_equal(again, thumbs[:6])
    with session_scope(sessions) as s:  # a row of another signature version is recomputed
        s.execute(update(ImageSignature).where(ImageSignature.media_key == keys[1]).values(version=0))
    _, _, computed = load_signatures(sessions, store, keys)
    assert computed == 1
    with session_scope(sessions) as s:
        assert set(s.scalars(select(ImageSignature.version))) == {1}
