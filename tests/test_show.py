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


# --- several structures (multi-structure models) ------------------------------------------------------

def _anatomy(h: int = 384, w: int = 384) -> dict[str, np.ndarray]:
    """A gray gradient 'X-ray' and masks that overlap as real ones do: clavicles over the lung tops, the
    heart over the left lung's (image right) inner edge; both lungs widest on one row."""
    import cv2

    image = np.tile(np.linspace(60, 200, w, dtype=np.float32), (h, 1)).astype(np.uint8)
    m = {k: np.zeros((h, w), np.uint8) for k in ("lungs", "heart", "clavicles")}
    cv2.ellipse(m["lungs"], (w * 3 // 10, h // 2), (w // 8, h * 3 // 10), 0, 0, 360, 1, -1)
    cv2.ellipse(m["lungs"], (w * 7 // 10, h // 2), (w // 8, h * 3 // 10), 0, 0, 360, 1, -1)
    cv2.ellipse(m["heart"], (w * 11 // 20, h * 13 // 20), (w // 7, h // 9), 0, 0, 360, 1, -1)
    m["clavicles"][h // 5 : h // 5 + h // 30, w // 10 : w * 9 // 10] = 1
    return {"image": image, **{k: v.astype(bool) for k, v in m.items()}}


def _near(rgb: np.ndarray, color, tol: int = 30) -> np.ndarray:
    return np.abs(rgb.astype(int) - color).sum(axis=-1) < tol


def test_overlay_draws_each_structure_in_its_colour_where_its_mask_is():
    import cv2

    from raysegment.postprocess.ctr import measure_ctr

    a = _anatomy()
    extra = {"heart": a["heart"], "clavicles": a["clavicles"]}
    assert len(set(viz.STRUCTURE_COLORS.values()) | {viz.TRUE_COLOR}) == 4  # four different colours
    outlined = viz.overlay(a["image"], None, a["lungs"], height=384, fill=0, structures=extra)
    ring = np.ones((7, 7), np.uint8)
    for name, mask in (("lungs", a["lungs"]), *extra.items()):
        drawn = _near(outlined, viz.STRUCTURE_COLORS[name])
        assert drawn.sum() > 100, name  # its outline is there ...
        assert not (drawn & ~cv2.dilate(mask.astype(np.uint8), ring).astype(bool)).any(), name  # ... on it
    # Filled lightly: a heart-only pixel away from every outline is the X-ray tinted 25 % toward the heart's
    # colour; where the clavicles lie over a lung both tints apply.
    filled = viz.overlay(a["image"], None, a["lungs"], height=384, structures=extra)
    inside = cv2.erode(a["heart"].astype(np.uint8), ring).astype(bool) & ~cv2.dilate(
        a["lungs"].astype(np.uint8), ring).astype(bool)
    gray = a["image"][inside].astype(np.float32)[:, None]
    expected = np.round(gray * 0.75 + np.float32(viz.STRUCTURE_COLORS["heart"]) * 0.25).astype(np.uint8)
    assert inside.sum() > 100 and np.array_equal(filled[inside], expected)
    # The CTR's widths: the thoracic width in the lungs' colour on its row between the lungs' outer
    # borders, the heart width in the heart's colour on the heart's centre row between its extremes.
    ctr = measure_ctr(a["lungs"], a["heart"])
    lined = viz.overlay(a["image"], None, a["lungs"], height=384, fill=0, structures=extra, ctr=ctr)
    x0, x1 = ctr.thorax_cols
    assert _near(lined[ctr.thoracic_row, x0 + 8 : x1 - 8], viz.STRUCTURE_COLORS["lungs"]).mean() > 0.95
    rows = np.flatnonzero(a["heart"].any(axis=1))
    heart_row = round((rows[0] + rows[-1]) / 2)
    h0, h1 = ctr.heart_cols
    assert _near(lined[heart_row, h0 + 8 : h1 - 8], viz.STRUCTURE_COLORS["heart"]).mean() > 0.95
    assert not _near(outlined[heart_row, h0 + 8 : h1 - 8], viz.STRUCTURE_COLORS["heart"]).any()


def test_side_by_side_with_structures_colours_each_mask_and_names_it_in_the_legend():
    a = _anatomy(300, 250)
    extra = {"clavicles": a["clavicles"], "heart": a["heart"]}
    out = viz.side_by_side(a["image"], a["lungs"], a["lungs"], "t", height=300, structures=extra,
                           true_structures=extra)
    bar = viz.bar_height(300)
    top, w = round(bar * 1.2), 250
    assert out.shape == (top + 300 + bar, 4 * w + 3 * viz.GAP, 3)
    predicted = out[top : top + 300, 2 * (w + viz.GAP) : 3 * (w + viz.GAP) - viz.GAP]
    colors = viz.STRUCTURE_COLORS
    heart_only = a["heart"] & ~a["lungs"]
    assert (predicted[heart_only] == colors["heart"]).all()
    assert (predicted[a["lungs"] & ~a["heart"] & ~a["clavicles"]] == colors["lungs"]).all()
    both = a["clavicles"] & a["lungs"]  # overlaps show as the mean of the two colours
    blend = np.round((np.float32(colors["clavicles"]) + colors["lungs"]) / 2).astype(np.uint8)
    assert both.any() and (predicted[both] == blend).all()
    assert (predicted[~(a["lungs"] | a["heart"] | a["clavicles"])] == 0).all()
    legend = out[top + 300 :, 3 * (w + viz.GAP) :]
    for color in (*colors.values(), viz.TRUE_COLOR):  # a swatch for each structure, and the truth
        assert _near(legend, color, 10).sum() > 20, color
    with pytest.raises(ValueError, match="not a further structure"):
        viz.overlay(a["image"], None, a["lungs"], structures={"lungs": a["lungs"]})
    with pytest.raises(ValueError, match="masks must match"):
        viz.side_by_side(a["image"], None, a["lungs"], structures={"heart": a["heart"][:10]})


def test_lungs_only_pictures_are_unchanged_by_the_structure_options():
    """No structures (None or {}): exactly the lungs-only picture, without any structure colour."""
    a = _anatomy()
    for draw in (viz.side_by_side, viz.overlay):
        plain = draw(a["image"], a["lungs"], np.roll(a["lungs"], 5, axis=1))
        again = draw(a["image"], a["lungs"], np.roll(a["lungs"], 5, axis=1), structures={},
                     true_structures={})
        assert np.array_equal(plain, again)
        for name in ("heart", "clavicles"):
            assert not _near(plain, viz.STRUCTURE_COLORS[name], 10).any()


def _results_with_structures(tmp_path, truths: dict[str, np.ndarray] | None = None) -> tuple[str, dict]:
    """A results folder with two rows (SCHEMA, as `raysegment infer` writes them): a multi-structure row
    (heart, clavicles, CTR) and a lungs-only row, over the same synthetic 384 x 384 X-ray; with `truths`
    (structure -> mask), both rows' truth_uri names their files as infer writes it ('lungs;heart=...')."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raysegment.data.datasets import Pair
    from raysegment.io.decode import encode_mask_png, encode_png
    from raysegment.io.rle import encode_rle
    from raysegment.outputs.results import SCHEMA
    from raysegment.postprocess.ctr import measure_ctr

    a = _anatomy()
    image_uri = str(tmp_path / "cxr.png")
    Path(image_uri).write_bytes(encode_png(a["image"]))
    ctr = measure_ctr(a["lungs"], a["heart"])
    truth_uri = None
    if truths:
        files = {n: str(tmp_path / f"truth_{n}.png") for n in truths}
        for n, m in truths.items():
            Path(files[n]).write_bytes(encode_mask_png(m))
        truth_uri = Pair("x", image_uri, (files["lungs"],),
                         tuple((n, (f,)) for n, f in files.items() if n != "lungs")).truth_string()
    rows = []
    for i, multi in enumerate((True, False)):
        row = {name: None for name in SCHEMA.names}
        row.update(schema_version=2, run_id=f"20260101T00000{i}Z-cccccc", model_id="m1", package_version="0",
                   image_uri=image_uri if multi else str(tmp_path / "lungs_only.png"),
                   image_id="multi" if multi else "lungs_only", status="ok", height=384, width=384,
                   mask_png=encode_mask_png(a["lungs"]), mask_rle=encode_rle(a["lungs"]), qc_flag=True,
                   truth_uri=truth_uri)
        if multi:
            row.update(ctr=ctr.ctr, heart_width_px=ctr.heart_width_px,
                       thoracic_width_px=ctr.thoracic_width_px, thoracic_row=ctr.thoracic_row,
                       structures=[{"name": n, "area_px": int(a[n].sum()), "area_cm2": None,
                                    "mask_rle": encode_rle(a[n]), "dice": None}
                                   for n in ("heart", "clavicles")])
        rows.append(row)
    Path(rows[1]["image_uri"]).write_bytes(encode_png(a["image"]))
    results = tmp_path / "results"
    for row in rows:
        folder = results / "runs" / row["run_id"]
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([row], schema=SCHEMA), folder / "part-0.parquet")
    return str(results), {"anatomy": a, "ctr": ctr, "rows": rows}


def test_show_draws_the_structures_of_a_row_and_its_ctr_lines(tmp_path):
    from raysegment.viz.show import caption, show

    results, case = _results_with_structures(tmp_path)
    a, ctr, rows = case["anatomy"], case["ctr"], case["rows"]
    drawn = show(results, str(tmp_path / "out"), uris=[r["image_uri"] for r in rows])
    assert [os.path.basename(p) for p in drawn.pictures] == ["001_multi.png", "002_lungs_only.png"]
    multi, lungs_only = (_read_rgb(p) for p in drawn.pictures)
    top = round(viz.bar_height(384) * 1.2)
    assert multi.shape == lungs_only.shape == (top + 384 + viz.bar_height(384), 3 * 384 + 2 * viz.GAP, 3)
    ov = multi[top : top + 384, 2 * (384 + viz.GAP) :]  # X-ray | predicted masks | overlay (no truth)
    for name in ("lungs", "heart", "clavicles"):
        assert _near(ov, viz.STRUCTURE_COLORS[name]).sum() > 100, name
    x0, x1 = ctr.thorax_cols
    assert _near(ov[ctr.thoracic_row, x0 + 8 : x1 - 8], viz.STRUCTURE_COLORS["lungs"]).mean() > 0.95
    rows_ = np.flatnonzero(a["heart"].any(axis=1))
    h0, h1 = ctr.heart_cols
    heart_row = round((rows_[0] + rows_[-1]) / 2)
    assert _near(ov[heart_row, h0 + 8 : h1 - 8], viz.STRUCTURE_COLORS["heart"]).mean() > 0.95
    assert f"CTR {ctr.ctr:.2f}" in caption(rows[0]) and "CTR" not in caption(rows[1])
    # The lungs-only row: exactly the lungs-only picture of before.
    image = decode_image(Path(rows[1]["image_uri"]).read_bytes()).image
    expected = viz.side_by_side(image, None, a["lungs"], f"#2  {caption(rows[1])}", 384)
    assert np.array_equal(lungs_only, expected)
    sheet = _read_rgb(drawn.contact_sheet)
    assert _near(sheet, viz.STRUCTURE_COLORS["heart"]).sum() > 50


def test_show_draws_the_structures_truths_from_truth_uri_and_from_a_structures_dataset(tmp_path):
    from raysegment.data.synth import make_phantom, write_dataset
    from raysegment.io.decode import encode_mask_png
    from raysegment.io.rle import encode_rle
    from raysegment.outputs.results import SCHEMA
    from raysegment.viz.show import caption, show

    a = _anatomy()
    truths = {n: np.roll(a[n], 12, axis=0) for n in ("lungs", "heart", "clavicles")}  # visibly apart
    results, case = _results_with_structures(tmp_path, truths)
    rows = case["rows"]
    assert ";heart=" in rows[0]["truth_uri"]
    drawn = show(results, str(tmp_path / "out"), uris=[r["image_uri"] for r in rows])
    multi, lungs_only = (_read_rgb(p) for p in drawn.pictures)
    top, step = round(viz.bar_height(384) * 1.2), 384 + viz.GAP
    assert multi.shape[1] == 4 * 384 + 3 * viz.GAP  # X-ray | true masks | predicted masks | overlay
    true_panel = multi[top : top + 384, step : step + 384]
    heart_only = truths["heart"] & ~truths["lungs"]
    assert (true_panel[heart_only] == viz.STRUCTURE_COLORS["heart"]).all()
    assert _near(multi[top : top + 384, 3 * step :], viz.TRUE_COLOR).sum() > 300
    # A lungs-only row draws the lung truth alone, whatever further truths its truth_uri names.
    image = decode_image(Path(rows[1]["image_uri"]).read_bytes()).image
    expected = viz.side_by_side(image, truths["lungs"], a["lungs"], f"#2  {caption(rows[1])}", 384)
    assert np.array_equal(lungs_only, expected)

    # --ground-truth DATA with a structures/ layout: the truths come from its structures folders.
    data = tmp_path / "data"
    write_dataset(str(data), n=1, size=128, seed=3, layout="structures")
    p = make_phantom(3, 0, 128)
    row = {name: None for name in SCHEMA.names}
    row.update(schema_version=2, run_id="20260101T000009Z-dddddd", model_id="m1", package_version="0",
               image_uri=str(data / "cxr" / "SYN_0000_0.png"), image_id="SYN_0000_0", status="ok",
               height=128, width=128, mask_png=encode_mask_png(p.mask), mask_rle=encode_rle(p.mask),
               structures=[{"name": "heart", "area_px": int(p.heart_mask.sum()), "area_cm2": None,
                            "mask_rle": encode_rle(np.roll(p.heart_mask, 6, axis=1)), "dice": None}])
    folder = tmp_path / "results2" / "runs" / row["run_id"]
    folder.mkdir(parents=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([row], schema=SCHEMA), folder / "part-0.parquet")
    drawn = show(str(tmp_path / "results2"), str(tmp_path / "out2"), uris=[row["image_uri"]],
                 ground_truth=str(data), tile_height=128)
    picture = _read_rgb(drawn.pictures[0])
    top = round(viz.bar_height(128) * 1.2)
    true_panel = picture[top : top + 128, 128 + viz.GAP : 2 * 128 + viz.GAP]
    assert (true_panel[p.heart_mask] == viz.STRUCTURE_COLORS["heart"]).all()  # the heart's truth
    assert not drawn.notes


# --- show on real inference results --------------------------------------------------------------------

@pytest.fixture(scope="module")
def inference(ray_local, tmp_path_factory) -> dict:
    """6 phantoms + 1 corrupt file through the real bulk pipeline, with ground truth (dice per image)."""
    from raysegment.data.synth import write_dataset
    from raysegment.infer.config import InferConfig, IOSection, ModelSection, ScalingSection
    from raysegment.infer.pipeline import run_inference

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
    run_inference(InferConfig(IOSection(input=os.path.join(data, "cxr"), output=out, ground_truth=data),
                              ModelSection(checkpoint=checkpoint), ScalingSection(batch_size=4)))
    return {"results": out, "data": data, "base": base}


def test_show_worst_draws_pictures_and_a_contact_sheet(inference, capsys):
    from raysegment.cli import main
    from raysegment.outputs.results import read_results

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
