"""Image-folder domains in the DomainBed layout: ``root/<domain>/<class>/<image>``.

Images are decoded with Pillow (torchvision's ImageFolder loader), resized to `size`×`size` and kept as
uint8 tensors. Each domain is decoded once per image size into the memory-mapped cache (data/cache.py),
keyed by its file list, file sizes, modification times and the image size, so a second trial (or a
concurrent one) does not decode images again.
"""

from __future__ import annotations

import hashlib
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from normsearch.data.cache import cached
from normsearch.data.domains import Domain, DomainSet
from normsearch.data.subset import stratified_take
from normsearch.errors import NormsearchError

MAX_PIXELS = 50_000_000  # the default of data.max_pixels (data/spec.py says why)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass
class FolderReport:
    """What loading found: per domain, whether it came from the cache and how many files were skipped."""

    cached: dict[str, bool]
    skipped: dict[str, list[str]]


def _files(domain_dir: Path) -> dict[str, list[Path]]:
    classes = sorted(p.name for p in domain_dir.iterdir() if p.is_dir())
    return {
        c: sorted(p for p in (domain_dir / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for c in classes
    }


class _Unreadable(Exception):
    """An image file that is refused before (or instead of) decoding; skip_unreadable skips it."""


_NOT_REGULAR = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _check_regular(path: Path) -> None:
    """Refuse anything but a regular file from `stat` alone: opening a FIFO named ``x.png`` blocks until a
    writer comes (``run`` hung on one), and a device such as /dev/zero never ends."""
    mode = path.stat().st_mode
    for test, what in _NOT_REGULAR:
        if test(mode):
            raise _Unreadable(f"is {what}, not an image file")


def _open_bounded(path: Path, max_pixels: int) -> Image.Image:
    """Open an image reading its header only, refusing it when width × height exceeds `max_pixels`.

    Pillow's own decompression-bomb check runs inside `Image.open` against a process-wide limit; it is set
    to ours for the call (a warning above it, an error at twice it, both turned into our refusal)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            handle = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _Unreadable(f"holds more than data.max_pixels {max_pixels} pixels") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    width, height = handle.size
    if width * height > max_pixels:  # formats whose size Pillow learns after open
        handle.close()
        raise _Unreadable(f"is {width}×{height} pixels, above data.max_pixels {max_pixels}")
    return handle


def _decode(path: Path, size: int, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    # Pillow is what torchvision's ImageFolder loads with (`default_loader`); torchvision.io's decoders
    # are deprecated since torchvision 0.29.
    _check_regular(path)
    with _open_bounded(path, max_pixels) as handle:
        return image_tensor(handle, size)


def image_tensor(picture: Image.Image, size: int) -> torch.Tensor:
    """A Pillow image as the uint8 (3, size, size) tensor training sees: RGB, resized bilinearly with
    antialiasing (aspect ratio not kept). `normsearch.load_model`'s preprocess goes through here too."""
    pixels = np.asarray(picture.convert("RGB"), dtype=np.uint8)
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
    if image.shape[1:] != (size, size):
        resized = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True)
        image = resized[0].round().clamp(0, 255).to(torch.uint8)
    return image


def load_folder(
    root: str | Path,
    domains: list[str] | None = None,
    size: int = 32,
    skip_unreadable: bool = False,
    use_cache: bool = True,
    max_pixels: int = MAX_PIXELS,
    max_per_domain: int | None = None,
    seed: int = 0,
) -> tuple[DomainSet, FolderReport]:
    """Load the named domains (default: all) of a DomainBed-style folder as a DomainSet. An image file
    that is not a regular file, holds more than `max_pixels` pixels or does not decode is one error line,
    or with `skip_unreadable` is skipped and named in the report. `max_per_domain` keeps that many files
    of each domain, chosen per class with `seed` (data/subset.py), before anything is decoded."""
    root = Path(root)
    wanted = _wanted_domains(root, domains)
    loaded: dict[str, Domain] = {}
    class_sets: dict[str, list[str]] = {}
    report = FolderReport({}, {})
    for name in wanted:
        files = _class_files(root, name)
        class_sets[name] = list(files)
        if max_per_domain is not None:
            files = capped_files(files, max_per_domain, seed)
        first = next(iter(class_sets))
        if class_sets[name] != class_sets[first]:
            raise NormsearchError(
                f"data root {root}: domains {first!r} and {name!r} have different classes: "
                f"{class_sets[first]} vs {class_sets[name]}"
            )
        key = _cache_key(root, files, size, skip_unreadable, max_pixels)

        def decode(name: str = name, files: dict[str, list[Path]] = files) -> tuple:
            return _decode_domain(root, name, files, size, skip_unreadable, max_pixels)

        if use_cache:
            entry = cached(name, key, decode)
            images, labels, skipped = (
                torch.from_numpy(entry.images),
                torch.from_numpy(entry.labels),
                entry.skipped,
            )
            report.cached[name] = not entry.decoded_now
        else:
            arrays, label_array, skipped = decode()
            images, labels = torch.from_numpy(arrays), torch.from_numpy(label_array)
            report.cached[name] = False
        loaded[name] = Domain(name, images, labels)
        report.skipped[name] = skipped
    return DomainSet(class_sets[wanted[0]], loaded, class_sets), report


def _wanted_domains(root: Path, domains: list[str] | None) -> list[str]:
    """The domains to load (default: every sub-folder of `root`), each checked to be a folder there."""
    if not root.is_dir():
        raise NormsearchError(f"data root {root}: no such folder")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    wanted = domains if domains is not None else found
    for name in wanted:
        if (root / name).is_file():
            raise NormsearchError(f"data root {root}: {name!r} is a file, not a domain folder")
        if name not in found:
            raise NormsearchError(
                f"data root {root}: no domain {name!r}; domains found: {', '.join(found) or 'none'}"
            )
    return wanted


def _class_files(root: Path, name: str) -> dict[str, list[Path]]:
    """Domain `name`'s image files per class folder; a domain without class folders (images lying loose
    in it, say) or a class without images is one error line naming the layout."""
    files = _files(root / name)
    if not files:
        loose = any(p.suffix.lower() in IMAGE_SUFFIXES for p in (root / name).iterdir())
        raise NormsearchError(
            f"data root {root}: domain {name!r} has no class folders"
            + (" (its images lie loose in it)" if loose else "")
            + "; the layout is <root>/<domain>/<class>/<image>"
        )
    for cls, paths in files.items():
        if not paths:
            raise NormsearchError(f"data root {root}: class {cls!r} of domain {name!r} has no images")
    return files


def _cache_key(
    root: Path, files: dict[str, list[Path]], size: int, skip_unreadable: bool, max_pixels: int
) -> str:
    """The decoded-domain cache key: the decoding settings and each file's path, size and mtime, so an
    edited, added or removed image decodes again."""
    return hashlib.sha256(
        repr(
            (
                size,
                skip_unreadable,
                max_pixels,
                [
                    (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                    for paths in files.values()
                    for p in paths
                ],
            )
        ).encode()
    ).hexdigest()[:20]


def capped_files(files: dict[str, list[Path]], total: int, seed: int) -> dict[str, list[Path]]:
    """The files of one domain (class -> sorted paths) that `data.max_per_domain` keeps: `total` chosen
    per class with `seed` (data/subset.py). Every class stays, even one left with no file."""
    labels = [k for k, paths in enumerate(files.values()) for _ in paths]
    kept = set(stratified_take(labels, total, seed).tolist())
    flat = [(cls, path) for cls, paths in files.items() for path in paths]
    out: dict[str, list[Path]] = {cls: [] for cls in files}
    for position, (cls, path) in enumerate(flat):
        if position in kept:
            out[cls].append(path)
    return out


def _decode_domain(
    root: Path, name: str, files: dict[str, list[Path]], size: int, skip_unreadable: bool, max_pixels: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode every image of one domain: (uint8 N×3×size×size, int64 labels, skipped relative paths)."""
    images, labels, skipped = [], [], []
    for label, paths in enumerate(files.values()):
        for path in paths:
            try:
                images.append(_decode(path, size, max_pixels))
            except (_Unreadable, UnidentifiedImageError, ValueError, OSError) as error:
                if not skip_unreadable:
                    raise NormsearchError(
                        f"{path}: unreadable image ({str(error).splitlines()[0][:80]}); set "
                        "data.skip_unreadable: true in the recipe (or --set data.skip_unreadable=true) to "
                        "skip such files"
                    ) from None
                skipped.append(str(path.relative_to(root)))
                continue
            labels.append(label)
    if not images:
        raise NormsearchError(f"data root {root}: domain {name!r} has no readable images")
    return torch.stack(images).numpy(), np.asarray(labels, dtype=np.int64), skipped
