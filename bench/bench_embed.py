"""Embedding throughput per backbone: raw forward vs Embedder vs decode-to-vector.

For every backbone at its natural input size and batch 64, one run measures side by
side, in interleaved rounds after a warm-up round, keeping each column's fastest
batch (the one least disturbed by other processes; all columns get the same treatment):

- raw forward ``model(x)`` on a ready tensor, contiguous and channels_last;
- ``Embedder.embed`` on PIL images already at the input size (the embedder's own
  overhead: batching, normalisation, layout, copy out) -- the ratio column divides
  this by the faster raw layout, goal >= 0.90;
- ``Embedder.embed`` on full-size decoded photos (adds the PIL resize);
- bytes -> ``core.media.decode_image`` -> ``Embedder.embed`` (adds decoding).

The whole measurement runs twice in child processes, with glibc's default malloc
and with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736`` (no mmap/munmap
churn for the large activation buffers), to show the allocator's effect.

Images: ../shared/data/clothing-small (real JPEG photos) if present, else
Fashion-MNIST encoded as PNG. Weights are random: speed does not depend on them.

    PYTHONPATH=. python bench/bench_embed.py [--quick] [--backbones resnet18,small_cnn]
"""

from __future__ import annotations

import argparse
import copy
import gzip
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.config import Settings
from core.embedding import Backbone, Embedder, ModelSpec, build_model, images_to_batch
from core.embedding.preprocess import prepare_image
from core.media import decode_image

REPO = Path(__file__).resolve().parents[1]
CLOTHING = REPO.parent / "shared" / "data" / "clothing-small"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
TUNED_MALLOC = ["MALLOC_MMAP_MAX_=0", "MALLOC_TRIM_THRESHOLD_=68719476736"]
VARIANTS: dict[str, list[str]] = {
    # `env` edits the child's environment without this script reading os.environ.
    "glibc default": ["env", "-u", "MALLOC_MMAP_MAX_", "-u", "MALLOC_TRIM_THRESHOLD_"],
    "mmap off, no trim": ["env", *TUNED_MALLOC],
}
QUICK_BACKBONES = (Backbone.SMALL_CNN, Backbone.MOBILENET_V3_SMALL, Backbone.EFFICIENTNET_LITE0)
"""``--quick`` (``make bench``): one small, one mobile and one shipped-weights trunk, minutes not an hour."""
COLUMNS = ["raw_contiguous", "raw_channels_last", "embedder", "embedder_full_size", "with_decode"]


def load_encoded_images(n: int) -> tuple[list[bytes], str]:
    """n encoded images (repeating if the source has fewer) and a description of the source."""
    if CLOTHING.is_dir():
        files = sorted(CLOTHING.glob("*/*/*.jpg"))[:n]
        blobs = [f.read_bytes() for f in files]
        source = f"clothing-small JPEG photos ({len(blobs)} distinct, typically 400x534)"
    else:
        with gzip.open(FASHION_MNIST, "rb") as fh:
            raw = np.frombuffer(fh.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:n]
        blobs = []
        for pixels in raw:
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            blobs.append(buf.getvalue())
        source = f"Fashion-MNIST as PNG ({len(blobs)} distinct, 28x28 gray)"
    return [blobs[i % len(blobs)] for i in range(n)], source


def best_rate(batch: int, seconds: list[float]) -> float:
    # The fastest round is the one least disturbed by other processes on a shared
    # machine (as timeit does); every column gets the same treatment.
    return batch / min(seconds)


def measure_backbone(backbone: Backbone, blobs: list[bytes], batch: int, rounds: int) -> dict[str, float]:
    """Images/s for every column, measured in interleaved rounds after one warm-up round."""
    torch.manual_seed(0)
    spec = ModelSpec.for_backbone(backbone)
    size = spec.input_size
    max_pixels = Settings().max_image_pixels
    decoded = [decode_image(b, max_pixels=max_pixels) for b in blobs]
    presized = [prepare_image(img, size) for img in decoded]
    x = images_to_batch(presized[:batch], spec)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    base = build_model(spec).eval()
    contiguous = copy.deepcopy(base)
    channels_last = copy.deepcopy(base).to(memory_format=torch.channels_last)
    embedder = Embedder(copy.deepcopy(base), device=torch.device("cpu"), batch_size=batch)

    def chunk(items: list, r: int) -> list:
        return items[r * batch : (r + 1) * batch]

    def raw(model: torch.nn.Module, inp: torch.Tensor) -> Callable[[int], object]:
        def run(_: int) -> object:
            with torch.inference_mode():
                return model(inp)

        return run

    cases: dict[str, Callable[[int], object]] = {
        "raw_contiguous": raw(contiguous, x),
        "raw_channels_last": raw(channels_last, x_cl),
        "embedder": lambda r: embedder.embed(chunk(presized, r)),
        "embedder_full_size": lambda r: embedder.embed(chunk(decoded, r)),
        "with_decode": lambda r: embedder.embed([decode_image(b, max_pixels=max_pixels) for b in chunk(blobs, r)]),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds + 1):
        for name, case in cases.items():
            start = time.perf_counter()
            case(r)
            if r > 0:  # round 0 warms up oneDNN's kernel caches and the allocator
                times[name].append(time.perf_counter() - start)
    return {name: best_rate(batch, t) for name, t in times.items()}


def child(args: argparse.Namespace) -> None:
    """Measure every backbone in this process; one JSON line per backbone on stdout."""
    blobs, source = load_encoded_images(args.batch_size * (args.rounds + 1))
    print(json.dumps({"source": source, "threads": torch.get_num_threads()}), flush=True)
    for name in args.backbones:
        rates = measure_backbone(Backbone(name), blobs, args.batch_size, args.rounds)
        print(json.dumps({"backbone": name, **rates}), flush=True)


def run_variant(label: str, args: argparse.Namespace) -> tuple[dict, list[dict]]:
    cmd = [
        *VARIANTS[label],
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--rounds",
        str(args.rounds),
        "--batch-size",
        str(args.batch_size),
        "--backbones",
        ",".join(args.backbones),
    ]
    print(f"... measuring with {label} malloc", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=Path.cwd()).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return lines[0], lines[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"3 measured rounds instead of 6, and only {','.join(b.value for b in QUICK_BACKBONES)}")
    parser.add_argument("--backbones", default=None, help="comma-separated; default: every backbone")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=None, help="measured batches per column")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backbones is None:
        args.backbones = ",".join(b.value for b in (QUICK_BACKBONES if args.quick else Backbone))
    args.backbones = [Backbone(b.strip()).value for b in args.backbones.split(",") if b.strip()]
    args.rounds = args.rounds or (3 if args.quick else 6)
    if args.child:
        child(args)
        return

    results = {label: run_variant(label, args) for label in VARIANTS}
    meta = next(iter(results.values()))[0]
    print(f"\nbatch {args.batch_size}, best of {args.rounds} interleaved rounds, torch "
          f"{torch.__version__}, {meta['threads']} threads, images: {meta['source']}\n")
    print("| backbone | input | malloc | raw contiguous img/s | raw channels_last img/s "
          "| Embedder img/s | ratio | + resize img/s | + decode img/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.backbones:
        for label, (_, rows) in results.items():
            row = next(r for r in rows if r["backbone"] == name)
            best_raw = max(row["raw_contiguous"], row["raw_channels_last"])
            size = ModelSpec.for_backbone(name).input_size
            print(f"| {name} | {size} | {label} | {row['raw_contiguous']:.0f} | {row['raw_channels_last']:.0f} "
                  f"| {row['embedder']:.0f} | {row['embedder'] / best_raw:.2f} "
                  f"| {row['embedder_full_size']:.0f} | {row['with_decode']:.0f} |")
    print("\nEmbedder: embed() of PIL images already at the input size; ratio = Embedder / faster raw "
          "layout. + resize: full-size decoded photos. + decode: from encoded bytes via core.media.decode_image.")


if __name__ == "__main__":
    main()
