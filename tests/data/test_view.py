"""`data show`'s grid: several classes per row (taken in turn from each class) and a label per row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from normsearch.data.spec import load_data
from normsearch.data.view import save_grid, spread_over_classes, view_config


def test_images_are_taken_in_turn_from_each_class() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2])  # stored class by class, as an image folder is
    assert spread_over_classes(labels, 4) == [0, 3, 5, 1]  # first of each class, then the second of 0
    assert spread_over_classes(labels, 10) == [0, 3, 5, 1, 4, 2]  # all there are, no repeats
    assert spread_over_classes(torch.tensor([1, 0, 1, 0]), 2) == [1, 0]  # class 0 first


def test_grid_rows_carry_the_domain_name_and_several_classes(tmp_path: Path, make_image_folder) -> None:
    root = make_image_folder(tmp_path / "d", ["art", "photo"], ["cat", "dog", "fox"], per_class=10, size=16)
    config = view_config(str(root))
    data = load_data(config)
    h, w = data.domains["art"].images.shape[-2:]
    out = tmp_path / "grid.png"
    save_grid(data, config, out, per_row=3)
    picture = np.asarray(Image.open(out).convert("RGB")).astype(int)
    margin = picture.shape[1] - (3 * (w + 2) + 2)  # three images and their padding, right of the labels
    assert picture.shape[0] == 2 * (h + 2) + 2 and margin > 8
    for row in range(2):  # each row's label area holds dark (text) pixels
        band = picture[2 + row * (h + 2) : 2 + (row + 1) * (h + 2), :margin]
        assert (band.sum(axis=2) < 200).any()
    # The cells are the domain's val images taken one per class, in class order.
    for row, name in enumerate(["art", "photo"]):
        images, labels = data.domains[name].split("val")
        picked = spread_over_classes(labels, 3)
        assert labels[picked].tolist() == [0, 1, 2]
        for c, index in enumerate(picked):
            y, x = 2 + row * (h + 2), margin + 2 + c * (w + 2)
            cell = picture[y : y + h, x : x + w].transpose(2, 0, 1)
            assert np.abs(cell - images[index].expand(3, -1, -1).numpy().astype(int)).max() <= 1
