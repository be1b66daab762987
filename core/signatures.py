"""Image signatures for near-duplicate verification: what the photo itself looks like, model-free.

A signature is a 32 x 32 grayscale thumbnail of the whole photo, squashed to a square
(1 KB, stored per photo content by core/signature_store.py).

Derived from a thumbnail (all vectorised over ``[n, 32, 32]`` uint8 arrays):

* :func:`phash`: the DCT perceptual hash (32 x 32 DCT-II, the 8 x 8 lowest
  frequencies, one bit per coefficient above their median); reported, not decisive
  (docs/DECISIONS.md, "Near-duplicate verification": on Fashion-MNIST it does not
  separate 1-px crops from distinct products).
* :func:`descriptors`: the thumbnail with its uniform background trimmed (the bounding
  box of the pixels that differ from the border's median by more than
  :data:`TRIM_TOLERANCE` of the range), blurred, 16 x 16, a unit vector; its nearest
  neighbours are the second candidate source, since the active model's embedding does
  not keep cropped copies among an image's nearest neighbours. Trimming is for the
  candidates only: JPEG ringing moves the box by a pixel, which the verification would
  see.
* :func:`band_pass`: a difference of Gaussians (sigma 1 and 3 px); the verification
  correlates these, because the silhouette (low frequencies) is shared by every plain
  T-shirt while the texture, seams and print (the band) are what make *this* photo.

:func:`aligned_similarity` is the verification score of a pair: the highest correlation
between the band-passed thumbnail of one image, cropped by each of :data:`MARGINS` on
each side (81 crops), and the other's, both ways round.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.fft import dctn
from scipy.ndimage import gaussian_filter, gaussian_filter1d

SIZE = 32
"""Thumbnail side in pixels (also pHash's DCT size)."""
VERIFY_SIZE = 32
"""Side of the crops compared by :func:`aligned_similarity`."""
TRIM_TOLERANCE = 0.1
"""A pixel is background when it is within this share of the photo's range of the border's median."""
MIN_TRIM = 0.25
"""A trimmed box narrower than this share of a side is noise on a blank photo: keep the whole side."""
MARGINS = (0.0, 0.04, 0.08)
"""Crop margins tried on each side (a share of the side): 1-px and ~5 % crops of a 28-px photo."""
SIGNATURE_VERSION = 1
"""Bump when the thumbnail's definition changes: stored signatures of another version are recomputed."""


def thumbnail(image: Image.Image) -> np.ndarray:
    """The signature of one photo: uint8 ``[SIZE, SIZE]``, grayscale, squashed to a square (bilinear)."""
    return np.asarray(image.convert("L").resize((SIZE, SIZE), Image.BILINEAR, reducing_gap=3.0), dtype=np.uint8)


def trim_box(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the bounding box of the pixels that are not the border's background."""
    h, w = pixels.shape
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    spread = float(pixels.max() - pixels.min())
    if spread <= 0:
        return 0, 0, w, h
    foreground = np.abs(pixels - np.median(border)) > TRIM_TOLERANCE * spread
    rows, cols = np.nonzero(foreground.any(axis=1))[0], np.nonzero(foreground.any(axis=0))[0]
    x0, x1 = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, w)
    y0, y1 = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, h)
    if x1 - x0 < MIN_TRIM * w:
        x0, x1 = 0, w
    if y1 - y0 < MIN_TRIM * h:
        y0, y1 = 0, h
    return x0, y0, x1, y1


def phash(thumbs: np.ndarray) -> np.ndarray:
    """64-bit DCT perceptual hashes (uint64 ``[n]``) of uint8 thumbnails ``[n, SIZE, SIZE]``."""
    low = dctn(np.asarray(thumbs, np.float32), axes=(1, 2), norm="ortho")[:, :8, :8].reshape(len(thumbs), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Differing bits between uint64 hashes (broadcast)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64))).astype(np.int64)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def descriptors(thumbs: np.ndarray) -> np.ndarray:
    """Candidate-search vectors: float32 ``[n, 256]``, the trimmed thumbnail blurred at 16 x 16, unit rows.

    Trimmed (:func:`trim_box`) so that a crop or re-framing that only removes
    background lands on the same vector; blurred so that a pixel of misalignment
    moves it little.
    """
    out = np.empty((len(thumbs), 16, 16), np.float32)
    for row, thumb in enumerate(np.asarray(thumbs, np.uint8)):
        box = trim_box(thumb.astype(np.float32))
        out[row] = np.asarray(Image.fromarray(thumb, "L").resize((16, 16), Image.BILINEAR, box=box), np.float32)
    return _unit_rows(gaussian_filter(out, (0, 0.5, 0.5)))


def _blur_matrix(sigma: float, size: int) -> np.ndarray:
    """``G`` with ``G @ x`` = a Gaussian blur of ``x`` along its first axis (scipy's reflect mode)."""
    return gaussian_filter1d(np.eye(size, dtype=np.float32), sigma, axis=0)


def band_pass(thumbs: np.ndarray) -> np.ndarray:
    """Difference of Gaussians (sigma 1 and 3 px) of thumbnails: float32 ``[n, SIZE, SIZE]``."""
    x = np.asarray(thumbs, np.float32)
    g1, g3 = _blur_matrix(1.0, x.shape[-1]), _blur_matrix(3.0, x.shape[-1])
    return g1 @ x @ g1.T - g3 @ x @ g3.T


def crop_matrix(m0: float, m1: float, *, size: int = SIZE, out: int | None = None) -> np.ndarray:
    """Linear resampling ``[out, size]``: the span ``[m0, 1 - m1]`` of a ``size`` signal, ``out`` samples.

    Bilinear interpolation at the output pixels' centres, as PIL's resize of a crop
    upsamples it: a 1-px crop of a 28-px photo, resized, is matched by this crop of
    the uncropped photo's thumbnail.
    """
    out = VERIFY_SIZE if out is None else out
    matrix = np.zeros((out, size), np.float32)
    for i in range(out):
        p = (m0 + (i + 0.5) * (1.0 - m0 - m1) / out) * size - 0.5
        p = min(max(p, 0.0), size - 1.0)
        f = int(np.floor(p))
        w = p - f
        matrix[i, f] += 1.0 - w
        if f + 1 < size:
            matrix[i, f + 1] += w
    return matrix


def _crop_matrices() -> np.ndarray:
    return np.stack([crop_matrix(a, b) for a in MARGINS for b in MARGINS])


def crops(thumbs: np.ndarray) -> np.ndarray:
    """Every crop of :data:`MARGINS` per side of thumbnails, band-passed, as unit rows.

    float32 ``[n, len(MARGINS)**4, VERIFY_SIZE**2]``; crop 0 is the whole thumbnail.
    The band pass comes after the crop, as it does for the cropped copy itself; both
    are linear and separable, so a crop's band is ``(G1 R) X (G1 C)' - (G3 R) X (G3 C)'``
    with the (top, bottom) margins in ``R`` and the (left, right) ones in ``C``.
    """
    m = _crop_matrices()  # [9, V, SIZE]
    n, v = len(thumbs), VERIFY_SIZE
    x = np.asarray(thumbs, np.float32)[None]
    out = np.zeros((n, len(m), len(m), v, v), np.float32)
    for sigma, sign in ((1.0, 1.0), (3.0, -1.0)):
        gm = _blur_matrix(sigma, v) @ m  # [9, V, SIZE]
        rows = np.matmul(gm[:, None], x)  # [9, n, V, SIZE]
        both = np.matmul(rows[:, None], gm.transpose(0, 2, 1)[None, :, None])  # [9, 9, n, V, V]
        out += sign * both.transpose(2, 0, 1, 3, 4)
    return _unit_rows(out.reshape(-1, v, v)).reshape(n, len(m) ** 2, v * v)


def aligned_similarity(thumbs: np.ndarray, a: np.ndarray, b: np.ndarray, *, enough: float = 1.0,
                       chunk: int = 64) -> np.ndarray:
    """Verification scores (float32 ``[m]``) of the pairs ``(thumbs[a[i]], thumbs[b[i]])``.

    For each pair: the highest correlation of a crop of one image's thumbnail with the
    whole thumbnail of the other, both band-passed, over every crop of :func:`crops`
    and both ways round. 1 is identical; a resized or re-encoded copy scores near 1 at
    crop 0, a cropped one at the crop that matches its margins. A pair whose whole
    thumbnails already correlate at least ``enough`` is not searched further (its score
    is that correlation): the caller's bar, so the decision is the same, for less work.
    """
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    if not len(a):
        return np.zeros(0, np.float32)
    wanted = np.unique(np.concatenate([a, b]))
    slot = np.full(len(thumbs), -1, np.int64)
    slot[wanted] = np.arange(len(wanted))
    full = crop_matrix(0.0, 0.0)
    whole = np.empty((len(wanted), VERIFY_SIZE * VERIFY_SIZE), np.float32)
    for s in range(0, len(wanted), 4096):
        block = thumbs[wanted[s:s + 4096]].astype(np.float32)
        whole[s:s + 4096] = _unit_rows(band_pass(full @ block @ full.T))
    best = np.empty(len(a), np.float32)
    for s in range(0, len(a), 65536):  # gathered in chunks: a million pairs would be gigabytes at once
        best[s:s + 65536] = np.einsum("ij,ij->i", whole[slot[a[s:s + 65536]]], whole[slot[b[s:s + 65536]]])
    search = np.nonzero(best < enough)[0]
    # ordered pairs (query, other): the query's crops against the other's whole thumbnail
    query = np.concatenate([a[search], b[search]])
    other = np.concatenate([b[search], a[search]])
    pair = np.concatenate([search, search])
    order = np.argsort(query, kind="stable")
    query, other, pair = query[order], other[order], pair[order]
    queried = np.unique(query)
    starts = np.searchsorted(query, queried)
    stops = np.searchsorted(query, queried, side="right")
    for s in range(0, len(queried), chunk):
        block = crops(thumbs[queried[s:s + chunk]])
        for j in range(len(block)):
            lo, hi = starts[s + j], stops[s + j]
            scores = (block[j] @ whole[slot[other[lo:hi]]].T).max(axis=0)
            np.maximum.at(best, pair[lo:hi], scores)
    return best.astype(np.float32)
