"""evaluate on training's own folder measures a trained domain on training's test split: under
`data.max_per_domain` that split is drawn from the capped images, as training drew it (issue 23)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from normsearch.data.spec import DataConfig, load_data
from normsearch.deploy.evaluate import _load_root, _trained_split
from normsearch.run.finalized import FinalFolder


def test_trained_domain_split_as_training_split_its_capped_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORMSEARCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    for d, domain in enumerate(("photo", "art")):
        for k, cls in enumerate(("a", "b", "c")):
            (root / domain / cls).mkdir(parents=True)
            for i in range(10 + 3 * k):  # 10/13/16 images: the cap of 20 keeps 5/7/8
                colour = (15 * i + 5, 80 * k + 10, 100 * d + 20)  # one colour per file
                Image.new("RGB", (8, 8), colour).save(root / domain / cls / f"{i}.png")
    config = DataConfig(
        dataset="folder", root=str(root), source="photo", select=["art"], size=8,
        val_fraction=0.2, test_fraction=0.2, max_per_domain=20, seed=3,
    )  # fmt: skip
    trained = load_data(config)["photo"]
    folder = FinalFolder(tmp_path / "model")
    folder.path.mkdir()
    folder.write_document({"provenance": {"data": config.model_dump(mode="json")}})

    data = _load_root(root, None, 8)
    assert len(data["photo"]) == 39  # evaluate loads the whole folder
    assert _trained_split(folder, data, root) == {"photo"}
    x, y = data["photo"].split("test")
    expected_x, expected_y = trained.split("test")
    assert torch.equal(x, expected_x) and torch.equal(y, expected_y)
    # Not a single image training trained on is among them.
    seen = {tuple(image[:, 0, 0].tolist()) for image in trained.split("train")[0]}
    assert not seen & {tuple(image[:, 0, 0].tolist()) for image in x}
