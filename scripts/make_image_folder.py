"""Write a DomainBed-style image folder of generated photos, to try `normsearch` on folder data without a
download: root/<domain>/<class>/<i>.png, each domain with its own colour cast and texture, each class a
shape of its own. Usage: python scripts/make_image_folder.py OUT [--size 256] [--per-class 20]."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DOMAINS = {"art_painting": (40, 0, 0), "cartoon": (0, 40, 0), "photo": (0, 0, 40), "sketch": (0, 0, 0)}
CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--per-class", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for domain, cast in DOMAINS.items():
        for c, cls in enumerate(CLASSES):
            folder = args.out / domain / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(args.per_class):
                noise = rng.integers(0, 120, (args.size, args.size, 3)).astype(np.uint8) + np.uint8(60)
                image = Image.fromarray(np.clip(noise + np.array(cast, np.uint8), 0, 255).astype(np.uint8))
                image = image.filter(ImageFilter.GaussianBlur(2 if domain != "sketch" else 0))
                draw = ImageDraw.Draw(image)
                s, x, y = args.size, *rng.integers(0, args.size // 2, 2)
                box = (int(x), int(y), int(x + s // 3 + 4 * c), int(y + s // 3))
                shape = [draw.ellipse, draw.rectangle][c % 2]
                shape(
                    box,
                    outline=(255, 255, 255),
                    width=3 + c,
                    fill=None if domain == "sketch" else (200, 180, 40 * c % 255),
                )
                image.convert("L" if domain == "sketch" else "RGB").save(folder / f"{i}.png")
    print(f"wrote {len(DOMAINS)} domains x {len(CLASSES)} classes x {args.per_class} images to {args.out}")


if __name__ == "__main__":
    main()
