"""Multi-structure models (lungs, heart, clavicles), partial labels and the CTR: the fast parts, no Ray.

The end-to-end run (train on two partly labelled sources, infer, evaluate, show) is in
tests/test_anatomy_pipeline.py.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

from raysegment.data.datasets import load_sources, load_split_dataset, load_structures, parse_truth
from raysegment.data.preprocess import PreprocessConfig, geometry
from raysegment.errors import CheckpointError, ConfigError
from raysegment.model.checkpoint import ModelSpec, load_model, save_checkpoint
from raysegment.model.forward import forward_probabilities, forward_structures
from raysegment.model.unet import UNetConfig
from raysegment.outputs.results import SummaryAccumulator
from raysegment.postprocess.masks import PostprocessConfig
from raysegment.postprocess.scoring import score
from raysegment.testing.models import untrained_unet
from raysegment.train.config import TrainConfig
from raysegment.train.losses import bce_dice_loss, bce_loss, soft_dice_loss

PARTS = ("right_lung", "left_lung", "heart", "right_clavicle", "left_clavicle")
S = 64


def boxes(size: int = S) -> dict[str, np.ndarray]:
    """Masks of known geometry (image left = patient's right): lungs rows 10-49, heart rows 35-54."""
    m = {p: np.zeros((size, size), bool) for p in PARTS}
    m["right_lung"][10:50, 6:28] = True  # columns 6..27
    m["left_lung"][14:46, 36:60] = True  # columns 36..59
    m["heart"][35:55, 22:44] = True  # columns 22..43
    m["right_clavicle"][5:8, 8:30] = True
    m["left_clavicle"][5:8, 34:58] = True
    return m


def write_structures(root: str, names: list[str], skip: dict[str, str] | None = None) -> None:
    """A structures/ layout (as JSRT): cxr/<name>.png and structures/<part>/<name>.png."""
    for d in ("cxr", *(f"structures/{p}" for p in PARTS)):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    m = boxes()
    for name in names:
        cv2.imwrite(os.path.join(root, "cxr", name + ".png"), np.full((S, S), 128, np.uint8))
        for part in PARTS:
            if (skip or {}).get(name) != part:
                path = os.path.join(root, "structures", part, name + ".png")
                cv2.imwrite(path, m[part].astype(np.uint8) * 255)


def write_generic(root: str, names: list[str]) -> None:
    m = boxes()
    for d in ("cxr", "masks"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for name in names:
        cv2.imwrite(os.path.join(root, "cxr", name + ".png"), np.full((S, S), 128, np.uint8))
        cv2.imwrite(os.path.join(root, "masks", name + ".png"),
                    (m["right_lung"] | m["left_lung"]).astype(np.uint8) * 255)


# --- partial labels: the masked loss -------------------------------------------------------------

@pytest.mark.parametrize("loss", [soft_dice_loss, bce_loss, bce_dice_loss])
def test_masked_loss_gives_zero_gradient_to_unlabelled_structures(loss):
    torch.manual_seed(0)
    logits = torch.randn(3, 3, 16, 16, requires_grad=True)
    target = (torch.rand(3, 3, 16, 16) > 0.5).float()
    labelled = torch.tensor([[1, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)  # row 0: lungs only
    loss(logits, target, labelled).backward()
    per_entry = logits.grad.abs().sum((2, 3))
    assert torch.all(per_entry[~labelled] == 0)  # exactly zero, not small
    assert torch.all(per_entry[labelled] > 0)
    # An unlabelled channel's target cannot change the loss: it is not a label, whatever it holds.
    other = target.clone()
    other[~labelled] = 1 - other[~labelled]
    assert loss(logits, other, labelled).item() == pytest.approx(loss(logits, target, labelled).item(),
                                                                 abs=1e-7)


def test_loss_without_labels_is_the_one_channel_loss_of_before():
    torch.manual_seed(1)
    logits, target = torch.randn(4, 1, 8, 8), (torch.rand(4, 1, 8, 8) > 0.5).float()
    prob = torch.sigmoid(logits).flatten(1)
    dice = (2 * (prob * target.flatten(1)).sum(1) + 1) / (prob.sum(1) + target.flatten(1).sum(1) + 1)
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - dice.mean().item(), abs=1e-6)
    full = torch.ones(4, 1, dtype=torch.bool)
    assert bce_loss(logits, target, full).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, target).item(), abs=1e-6)


# --- checkpoints ---------------------------------------------------------------------------------

def test_multi_structure_checkpoint_round_trips(tmp_path):
    structures = ("lungs", "heart", "clavicles")
    config = UNetConfig(out_channels=3, base_channels=4, depth=2)
    spec = ModelSpec(config, PreprocessConfig(size=32), 0.4, structures)
    torch.manual_seed(0)
    from raysegment.model.unet import UNet

    model = UNet.from_config(config).eval()
    save_checkpoint(str(tmp_path / "ck"), model, spec)
    loaded = load_model(str(tmp_path / "ck"))
    assert loaded.spec == spec and loaded.spec.structures == structures
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["structures"] == list(structures)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32), dtype=np.uint8)
    probs = forward_structures(loaded.model, images)
    assert probs.shape == (2, 3, 32, 32) and probs.dtype == np.uint8
    assert np.array_equal(forward_probabilities(loaded.model, images), probs[:, 0])  # channel 0 = lungs
    assert np.array_equal(forward_structures(model, images), probs)  # the same weights


def test_lungs_only_checkpoint_without_a_structures_entry_loads_as_lungs(tmp_path):
    spec = ModelSpec(UNetConfig(base_channels=4, depth=2), PreprocessConfig(size=32))
    save_checkpoint(str(tmp_path / "ck"), untrained_unet(4, 2), spec)
    path = tmp_path / "ck" / "config.json"
    info = json.loads(path.read_text())
    del info["structures"]  # as every checkpoint written before multi-structure models
    path.write_text(json.dumps(info))
    assert load_model(str(tmp_path / "ck")).spec.structures == ("lungs",)
    info["structures"] = ["lungs", "heart"]  # two names for a one-channel model
    path.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="output channel"):
        load_model(str(tmp_path / "ck"))


# --- layouts and sources -------------------------------------------------------------------------

def test_structures_layout_pairs_every_structure_and_reports_a_missing_part(tmp_path):
    root = str(tmp_path / "jsrt_like")
    write_structures(root, ["A1", "A2", "A3"], skip={"A3": "left_clavicle"})
    split = load_split_dataset(root)
    assert split.discovery.layout == "structures"
    assert [p.image_id for p in split.discovery.pairs] == ["A1", "A2"]
    assert [os.path.basename(u) for u in split.discovery.unmatched_images] == ["A3.png"]
    pair = split.discovery.pairs[0]
    assert sorted(pair.masks()) == ["clavicles", "heart", "lungs"]
    masks, labelled = load_structures(pair, ("lungs", "heart", "clavicles"), (S, S))
    m = boxes()
    assert labelled.tolist() == [True, True, True]
    assert np.array_equal(masks[0], m["right_lung"] | m["left_lung"]) and np.array_equal(masks[1], m["heart"])
    assert np.array_equal(masks[2], m["right_clavicle"] | m["left_clavicle"])
    # The run's split manifest (a column per structure) reads back to the same pairs and split.
    manifest = tmp_path / "split_manifest.csv"
    manifest.write_text(split.manifest_csv())
    again = load_split_dataset(str(manifest))
    assert [p.masks() for p in again.discovery.pairs] == [p.masks() for p in split.discovery.pairs]
    assert again.splits == split.splits
    # infer's truth_uri carries the further structures after the lungs, and parses back
    lungs, others = parse_truth(pair.truth_string())
    assert lungs == pair.mask_uris and others == dict(pair.others)


def test_sources_are_split_each_on_its_own_and_keep_only_their_labels(tmp_path):
    generic, structured = str(tmp_path / "mont"), str(tmp_path / "jsrt")
    write_generic(generic, [f"M{i:02d}" for i in range(30)])
    write_structures(structured, [f"J{i:02d}" for i in range(30)])
    alone = load_split_dataset(structured)
    both = load_sources([("mont", generic, None), ("jsrt", structured, None)], structures=("lungs", "heart"))
    # each source is split as it would be alone: the same test images whichever sources join
    assert {i: s for i, s in both.splits.items() if i.startswith("J")} == alone.splits
    by_id = {p.image_id: p for p in both.discovery.pairs}
    assert sorted(by_id["M00"].masks()) == ["lungs"] and by_id["M00"].source == "mont"
    assert sorted(by_id["J00"].masks()) == ["heart", "lungs"]  # clavicles are not a run structure here
    header = both.manifest_csv().splitlines()[0]
    assert header == "image_id,split,image,mask,heart,source"
    masks, labelled = load_structures(by_id["M00"], ("lungs", "heart"), (S, S))
    assert labelled.tolist() == [True, False] and not masks[1].any()
    # A source restricted to the lungs; a source that labels none of the run's structures; id clashes.
    only_lungs = load_sources([("jsrt", structured, ("lungs",))], structures=("lungs", "heart"))
    assert all(sorted(p.masks()) == ["lungs"] for p in only_lungs.discovery.pairs)
    with pytest.raises(ValueError, match="labels none of heart"):
        load_sources([("mont", generic, ("heart",))], structures=("lungs", "heart"))
    with pytest.raises(ValueError, match="image ids also in another source"):
        load_sources([("a", structured, None), ("b", structured, None)])


def test_a_lungs_only_split_manifest_keeps_its_four_columns(tmp_path):
    write_generic(str(tmp_path / "g"), ["X1", "X2", "X3"])
    header = load_split_dataset(str(tmp_path / "g")).manifest_csv().splitlines()[0]
    assert header == "image_id,split,image,mask"


# --- configuration -------------------------------------------------------------------------------

def test_anatomy_recipe_loads_and_config_errors_name_the_key():
    from raysegment.train.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    recipe = load_config(os.path.join(root, "configs", "anatomy-cpu.yaml"))
    assert recipe.structures == ("lungs", "heart", "clavicles") and recipe.model.out_channels == 3
    assert [n for n, _, _ in recipe.source_list()] == ["montgomery", "jsrt"]
    assert load_config(os.path.join(root, "configs", "anatomy-gpu.yaml")).preprocess.size == 512
    base = {"structures": ["lungs", "heart"], "model": {"out_channels": 2},
            "data": {"sources": [{"path": "a"}, {"path": "b", "structures": ["lungs"]}]}}
    assert TrainConfig.from_dict(base).data.sources[1].structures == ("lungs",)
    cases = [
        ({"model": {"out_channels": 3}}, "model.out_channels: must equal the number of structures (2"),
        ({"structures": ["lungs", "liver"]}, "structures: unknown structure 'liver'"),
        ({"structures": ["heart", "lungs"]}, "structures: must start with lungs"),
        ({"data": {"path": "x", "sources": [{"path": "a"}]}}, "data.sources: give data.path or data.sources"),
        ({"data": {"sources": [{"path": "a", "structures": ["clavicles"]}]}},
         "data.sources[0].structures: ['clavicles'] not among the model's structures"),
        ({"data": {"sources": [{"path": "a/x"}, {"path": "b/x"}]}}, "data.sources: source names must differ"),
    ]
    for change, message in cases:
        data = {**base, **change}
        with pytest.raises(ConfigError) as err:
            TrainConfig.from_dict(data)
        assert str(err.value).startswith(message), (change, str(err.value))


# --- scoring: structures and the CTR -------------------------------------------------------------

def _as_prob(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 250, 5).astype(np.uint8)


def test_score_measures_each_structure_and_the_ctr_of_predicted_and_expert_masks(tmp_path):
    write_structures(str(tmp_path), ["A1"])
    pair = load_split_dataset(str(tmp_path)).discovery.pairs[0]
    m = boxes()
    geo = geometry(S, S, PreprocessConfig(size=S))
    others = {"heart": _as_prob(m["heart"]), "clavicles": _as_prob(m["right_clavicle"] | m["left_clavicle"])}
    scored = score(_as_prob(m["right_lung"] | m["left_lung"]), geo, 0.5, PostprocessConfig(), pair.mask_uris,
                   pair.image_uri, None, None, others, dict(pair.others))
    assert [(p.name, p.area_px, p.metrics["dice"]) for p in scored.structures] == [
        ("heart", 20 * 22, 1.0), ("clavicles", 3 * 22 + 3 * 24, 1.0)]
    # heart columns 22..43 -> 21; widest row with both lungs: 6..59 -> 53 (first such row: 14)
    assert (scored.ctr.heart_width_px, scored.ctr.thoracic_width_px, scored.ctr.thoracic_row) == (21, 53, 14)
    assert scored.ctr.ctr == pytest.approx(21 / 53) and scored.truth_ctr == scored.ctr
    assert "ctr_not_measurable" not in scored.qc_notes
    # No heart predicted: no CTR, and a note (never a flag) says so.
    empty = score(_as_prob(m["right_lung"] | m["left_lung"]), geo, 0.5, PostprocessConfig(), None, "", None,
                  None, {"heart": np.zeros((S, S), np.uint8)})
    assert empty.ctr.ctr is None and empty.ctr.reason == "no_heart"
    assert "ctr_not_measurable" in empty.qc_notes and "ctr_not_measurable" not in empty.qc_reasons
    lungs_only = score(_as_prob(m["right_lung"] | m["left_lung"]), geo, 0.5, PostprocessConfig())
    assert lungs_only.structures == [] and lungs_only.ctr is None


def test_summary_adds_structure_dice_and_ctr_only_for_multi_structure_rows():
    def row(uri, ctr, heart_dice):
        return {"image_uri": uri, "status": "ok", "qc_flag": False, "qc_reasons": [], "qc_notes": [],
                "ctr": ctr, "structures": None if ctr is None else [
                    {"name": "heart", "area_px": 10, "area_cm2": None, "mask_rle": "x", "dice": heart_dice}]}
    from raysegment.outputs.results import SCHEMA

    columns = ["image_uri", "status", "qc_flag", "qc_reasons", "qc_notes", "ctr", "structures"]
    schema = pa.schema([SCHEMA.field(c) for c in columns])
    lungs = SummaryAccumulator()
    lungs.add(pa.Table.from_pylist([row("a", None, None)], schema=schema))
    assert "ctr" not in lungs.result() and "structure_dice" not in lungs.result()
    acc = SummaryAccumulator()
    rows = [row("a", 0.4, 0.9), row("b", 0.5, None), row("c", 0.6, 0.8)]
    acc.add(pa.Table.from_pylist(rows, schema=schema))
    out = acc.result()
    assert out["ctr"]["n"] == 3 and out["ctr"]["mean"] == pytest.approx(0.5)
    heart = out["structure_dice"]["heart"]
    assert heart["n"] == 2 and heart["mean"] == pytest.approx(0.85)


def test_sources_are_named_after_their_folder_unless_named():
    one = TrainConfig.from_dict({"data": {"path": "/x/montgomery_512/"}})
    assert one.source_list() == [("montgomery_512", "/x/montgomery_512/", None)]
    two = TrainConfig.from_dict({"structures": ["lungs", "heart"], "model": {"out_channels": 2}, "data": {
        "sources": [{"path": "/d/jsrt_512"}, {"path": "/d/m", "name": "mont", "structures": ["lungs"]}]}})
    assert two.source_list() == [("jsrt_512", "/d/jsrt_512", None), ("mont", "/d/m", ("lungs",))]
