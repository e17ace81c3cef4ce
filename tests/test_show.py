"""Pictures: viz layouts, and `raysegment show` on results of a real (small) bulk inference run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from raysegment.data.preprocess import PreprocessConfig
from raysegment.errors import UserError
from raysegment.io.decode import decode_image
from raysegment.model.checkpoint import ModelSpec, save_checkpoint
from raysegment.model.unet import UNet, UNetConfig
from raysegment.viz import figures as viz
from raysegment.viz.show import SHEET_TILE_HEIGHT

N_IMAGES = 6


def _read_rgb(path: str) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# --- viz ---------------------------------------------------------------------------------------------

def test_side_by_side_layout_colours_and_scaling():
    from raysegment.data.synth import make_phantom

    p = make_phantom(3, 0, 600)
    image = p.image[:, :500]  # not square: 600 x 500
    truth = p.mask[:, :500]
    pred = np.roll(truth, 15, axis=1)
    out = viz.side_by_side(image, truth, pred, "SYN title  dice 0.9")
    bar = viz.bar_height(384)
    assert out.dtype == np.uint8 and out.shape == (round(bar * 1.2) + 384 + bar, 4 * 320 + 3 * viz.GAP, 3)
    ov = out[round(bar * 1.2) : round(bar * 1.2) + 384, 3 * (320 + viz.GAP) :]
    for color in (viz.PRED_COLOR, viz.TRUE_COLOR):  # both outlines are drawn
        assert (np.abs(ov.astype(int) - color).sum(axis=2) < 30).sum() > 200
    no_truth = viz.side_by_side(image, None, pred, "")
    assert no_truth.shape == (384 + bar, 3 * 320 + 2 * viz.GAP, 3)
    small = viz.side_by_side(p.image[:64, :64] / np.float32(255), None, pred[:64, :64], "x", height=128)
    assert small.shape[1] == 3 * 128 + 2 * viz.GAP  # small inputs are enlarged to the tile height
    with pytest.raises(ValueError, match="masks must match"):
        viz.side_by_side(image, truth[:10], pred, "")


def test_contact_sheet_grid():
    tiles = [np.full((100, 80, 3), i * 20, np.uint8) for i in range(5)]
    sheet = viz.contact_sheet(tiles, [f"tile {i}" for i in range(5)], cols=3)
    rows, cols = viz.contact_sheet_grid(5, 3)
    assert (rows, cols) == (2, 3)
    gap = viz.GAP
    assert sheet.shape == (rows * (100 + viz.bar_height(100) + gap) + gap, cols * (80 + gap) + gap, 3)
    assert sheet[gap + 50, gap + 2 * (80 + gap) + 40].tolist() == [40, 40, 40]  # a pixel of tile 2


# --- show on real inference results --------------------------------------------------------------------

@pytest.fixture(scope="module")
def inference(ray_local, tmp_path_factory) -> dict:
    """6 phantoms + 1 corrupt file through the real bulk pipeline, with ground truth (dice per image)."""
    from raysegment.data.synth import write_dataset
    from raysegment.infer.pipeline import InferConfig, run_inference

    base = tmp_path_factory.mktemp("show")
    data = str(base / "data")
    write_dataset(data, n=N_IMAGES, size=160, seed=5, layout="generic")
    (base / "data" / "cxr" / "broken.png").write_bytes(b"not an image at all")
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=2).eval()
    with torch.no_grad():  # an untrained model whose masks are not empty: about half the pixels are lung
        model.head.bias -= torch.quantile(model(torch.rand(2, 1, 64, 64)).flatten(), 0.5)
    checkpoint = str(base / "ckpt")
    spec = ModelSpec(UNetConfig(base_channels=4, depth=2), PreprocessConfig(size=64))
    save_checkpoint(checkpoint, model, spec)
    out = str(base / "results")
    run_inference(InferConfig(input=os.path.join(data, "cxr"), checkpoint=checkpoint, output=out,
                              ground_truth=data, batch_size=4))
    return {"results": out, "data": data, "base": base}


def test_show_worst_draws_pictures_and_a_contact_sheet(inference, capsys):
    from raysegment.cli import main
    from raysegment.infer.results import read_results

    out = str(inference["base"] / "worst")
    assert main(["show", inference["results"], "--worst", "4", "--out", out, "--cols", "3"]) == 0
    printed = capsys.readouterr().out
    assert "contact_sheet.png (4 tiles)" in printed and "broken.png" in printed  # error row listed, not drawn

    table = read_results(inference["results"], columns=["image_id", "dice", "status"]).to_pylist()
    worst = sorted((r for r in table if r["status"] == "ok"), key=lambda r: r["dice"])[:4]
    names = sorted(f for f in os.listdir(out) if f[0].isdigit())
    assert names == [f"{i:03d}_{r['image_id']}.png" for i, r in enumerate(worst, 1)]
    bar = viz.bar_height(384)
    for name in names:  # 160x160 phantoms -> four 384x384 panels (truth given by the rows' truth_uri)
        shape = _read_rgb(os.path.join(out, name)).shape
        assert shape == (round(bar * 1.2) + 384 + bar, 4 * 384 + 3 * viz.GAP, 3)
    sheet = _read_rgb(os.path.join(out, "contact_sheet.png"))
    rows, cols = viz.contact_sheet_grid(4, 3)
    cell = SHEET_TILE_HEIGHT  # square images: tiles are cell x cell
    assert sheet.shape == (rows * (cell + viz.bar_height(cell) + viz.GAP) + viz.GAP,
                           cols * (cell + viz.GAP) + viz.GAP, 3)
    index = Path(out, "index.csv").read_text()
    assert "error row" in index and "broken.png" in index


def test_show_qc_flagged_and_uri_with_external_ground_truth(inference, tmp_path):
    from raysegment.viz.show import show

    flagged = show(inference["results"], str(tmp_path / "qc"), qc_flagged=True, limit=2)
    assert len(flagged.pictures) == flagged.tiles == 2  # an untrained model: everything is flagged

    cxr = os.path.join(inference["data"], "cxr")
    uris = [os.path.join(cxr, "SYN_0001_1.png"), os.path.join(cxr, "broken.png")]
    picked = show(inference["results"], str(tmp_path / "uri"), uris=uris, ground_truth=inference["data"])
    assert [os.path.basename(p) for p in picked.pictures] == ["001_SYN_0001_1.png"]
    assert picked.errors and picked.errors[0][0].endswith("broken.png") and "decode" in picked.errors[0][1]
    image = decode_image(Path(picked.pictures[0]).read_bytes()).image
    assert image.shape[0] > 384
    with pytest.raises(UserError, match="not in the results"):
        show(inference["results"], str(tmp_path / "x"), uris=["/nope.png"])
    auto = show(inference["results"], str(tmp_path / "auto"), limit=3)  # no choice, truth: lowest dice
    worst = show(inference["results"], str(tmp_path / "worst3"), worst=3)
    assert [os.path.basename(p) for p in auto.pictures] == [os.path.basename(p) for p in worst.pictures]
    assert len(auto.pictures) == 3


def test_select_rows_without_dice_says_how_to_get_it():
    import pyarrow as pa

    from raysegment.viz.show import select_rows

    table = pa.Table.from_pylist([
        {"image_uri": "a.png", "status": "ok", "dice": None, "qc_flag": True, "mean_confidence": 0.4},
        {"image_uri": "b.png", "status": "ok", "dice": None, "qc_flag": False, "mean_confidence": 0.9},
        {"image_uri": "c.png", "status": "error", "dice": None, "qc_flag": None, "mean_confidence": None},
    ])
    with pytest.raises(UserError, match="--ground-truth"):
        select_rows(table, worst=3)
    rows, errors = select_rows(table)  # no choice and no dice: the QC-flagged
    assert [r["image_uri"] for r in rows] == ["a.png"] and [r["image_uri"] for r in errors] == ["c.png"]
