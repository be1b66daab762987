"""A folder of class sub-folders: ``root/<class name>/<image files>``."""

from __future__ import annotations

from pathlib import Path

from trainer.data.images import FileList

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


def scan_folder(root: Path, *, max_pixels: int, max_bytes: int) -> FileList:
    """Every image file one level below each sub-folder of ``root``, labelled by the sub-folder.

    Hidden files and non-image suffixes are skipped; files are listed in sorted order,
    so the same folder always gives the same list.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"training folder {root} does not exist or is not a directory")
    paths: list[Path] = []
    labels: list[str] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(class_dir.iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                labels.append(class_dir.name)
    if not paths:
        raise ValueError(f"no images found in class sub-folders of {root} (expected {root}/<class>/<image>.jpg)")
    return FileList(paths, labels, max_pixels=max_pixels, max_bytes=max_bytes)
