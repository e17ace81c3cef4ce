"""The run report (issue #25): one self-contained HTML page per results folder, without Ray (results folders
are written directly: raysegment.testing.results), read back as a DOM (tests/report_helpers.py) and, when
Chromium is on PATH, rendered by headless Chromium (screenshot + DOM with JavaScript off)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import urllib.parse
from collections import Counter

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from report_helpers import counts, edited, expected_queue, gray_share, near, parse, png_of

from raysegment.infer import worklist
from raysegment.io.decode import decode_image
from raysegment.io.rle import decode_rle
from raysegment.outputs import results as results_module
from raysegment.outputs.results import SUMMARY_COLUMNS, read_results, summarize_results
from raysegment.postprocess.ctr import measure_ctr
from raysegment.testing.results import SKIP_REASON, synthetic_table, write_films, write_run
from raysegment.viz import figures as viz
from raysegment.viz import report_data
from raysegment.viz.report import THUMB_HEIGHT, build_report, render

ROW_COLUMNS = ["image_uri", "image_id", "status", "error_stage", "error_type", "error", "qc_flag",
               "qc_reasons", "quality_score", "mean_confidence", "lung_area_cm2", "ctr", "dice", "mask_rle",
               "height", "width", "structures"]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _site(uri: str, root: str) -> str:
    return os.path.relpath(uri, root).split(os.sep)[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """24 phantom films in three site folders plus one row whose original was moved away (the first of the
    queue: flagged, lowest quality), errors and `skipped` rows, ground truth, pixel spacing, heart + CTR."""
    base = tmp_path_factory.mktemp("report")
    inputs = str(base / "in")
    films = []
    for k, site in enumerate(("siteA", "siteB", "siteC")):
        films += write_films(os.path.join(inputs, site), 8, size=128, seed=k, prefix=f"{site.lower()}_")
    moved = os.path.join(inputs, "siteC", "moved.png")
    table = synthetic_table([f.uri for f in films], films, seed=11, error_rate=0.12, skipped_rate=0.08,
                            truth=True, spacing_mm=0.4)
    rows = table.to_pylist()
    twin = next(r for r in rows if r["status"] == "ok")  # the moved film's row: an ok row's masks
    rows.append({**twin, "image_uri": moved, "image_id": "moved", "qc_flag": True,
                 "qc_reasons": ["low_quality_score"], "quality_score": 0.05})
    table = pa.Table.from_pylist(rows, schema=table.schema)
    out = str(base / "results")
    summary = write_run(out, table, input_uri=inputs)
    # a later summary.json may count files the listing skipped by name (never rows): the page shows them
    listing_skips = {"hidden": 4, "os-clutter": 3}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({**summary, "skipped": listing_skips}, f)
    report = build_report(out, queue=10)
    html = _read(report.path)
    rows = read_results(out, columns=ROW_COLUMNS).to_pylist()
    return {"base": base, "inputs": inputs, "out": out, "summary": summary, "report": report, "html": html,
            "dom": parse(html), "rows": rows, "moved": moved, "films": films}


def test_the_run_section_counts_every_status_exactly(world):
    rows, dom = world["rows"], world["dom"]
    status = Counter(r["status"] for r in rows)
    assert set(status) == {"ok", "error", "skipped"}  # the fixture has all three
    shown = counts(dom)
    assert shown == {"images": len(rows), "ok": status["ok"], "errors": status["error"],
                     "status-skipped": status["skipped"],
                     "qc_flagged": sum(1 for r in rows if r["status"] == "ok" and r["qc_flag"]), "queue": 10}
    # the same counts as the run summary's code (summary.json of this one-run folder)
    s = world["summary"]
    assert (shown["images"], shown["ok"], shown["qc_flagged"]) == (s["images"], s["ok"], s["qc_flagged"])
    run = dom.one("section", id="run")
    assert run.one(data_figure="wall_s").text() == "12.5 s"
    assert run.one(data_figure="images_per_s").text() == f"{len(rows) / 12.5:.2f}"
    text = run.text()
    for what in ("0123456789abcdef", "fedcba9876543210", world["inputs"], "low_quality_score",
                 "skipped by name (latest run's listing, no rows)hidden 4, os-clutter 3"):
        assert what in text
    assert "Patient data" in dom.one(id="patient-data").text()


def test_the_queue_is_the_exact_bottom_n_with_pictures_names_links_and_reasons(world):
    dom, rows = world["dom"], {r["image_uri"]: r for r in world["rows"]}
    entries = dom.one("section", id="queue").find("article", cls="queue-entry")
    want = expected_queue(world["out"], 10)
    assert want[0] == world["moved"]
    links = [e.one("a", cls="uri") for e in entries]
    assert [urllib.parse.unquote(a.attrs["href"][len("file://"):]) for a in links] == want
    for rank, (entry, uri, a) in enumerate(zip(entries, want, links, strict=True), 1):
        row = rows[uri]
        assert entry.attrs["data-rank"] == str(rank)
        assert a.text() == row["image_id"]
        assert [c.text() for c in entry.find("span", cls="chip")] == (row["qc_reasons"] or [])
        assert f"quality {row['quality_score']:.2f}" in entry.text()
        assert ("flagged" in entry.classes) is bool(row["qc_flag"])
        picture = png_of(entry.one("img"))
        assert picture.shape[0] == THUMB_HEIGHT
        assert near(picture, viz.STRUCTURE_COLORS["lungs"]).sum() > 100
        assert near(picture, viz.STRUCTURE_COLORS["heart"]).sum() > 30
    # A film whose original is there: exactly the outline overlay of its masks with the CTR's two widths.
    uri = want[1]
    row = rows[uri]
    with open(uri, "rb") as f:
        image = decode_image(f.read()).image
    lungs = decode_rle(row["mask_rle"], row["height"], row["width"])
    heart = decode_rle(row["structures"][0]["mask_rle"], row["height"], row["width"])
    expected = viz.overlay(image, None, lungs, THUMB_HEIGHT, structures={"heart": heart},
                           ctr=measure_ctr(lungs, heart))
    assert np.array_equal(png_of(entries[1].one("img")), expected)
    assert not np.array_equal(expected, viz.overlay(image, None, lungs, THUMB_HEIGHT,
                                                    structures={"heart": heart}))  # the CTR lines show


def test_an_original_that_cannot_be_read_back_shows_the_mask_alone_with_a_note(world):
    first = world["dom"].one("section", id="queue").find("article", cls="queue-entry")[0]
    assert first.one("a", cls="uri").text() == "moved"
    note = first.one("p", cls="thumb-note").text()
    assert note.startswith("original not readable (FileNotFoundError") and note.endswith("the mask alone")
    alone = png_of(first.one("img"))
    other = png_of(world["dom"].find("article", cls="queue-entry")[1].one("img"))
    assert gray_share(alone) < 0.01 and gray_share(other) > 0.3  # no X-ray behind the mask
    row = next(r for r in world["rows"] if r["image_uri"] == world["moved"])
    lungs = decode_rle(row["mask_rle"], 128, 128)
    heart = decode_rle(row["structures"][0]["mask_rle"], 128, 128)
    expected = viz.mask_panel(lungs, {"heart": heart}, (THUMB_HEIGHT, THUMB_HEIGHT))  # each in its colour
    viz.draw_ctr(expected, measure_ctr(lungs, heart), heart, lungs.shape)
    assert np.array_equal(alone, expected)


def test_errors_and_skipped_rows_are_grouped_by_reason_with_examples(world):
    want = Counter()
    for r in world["rows"]:
        if r["status"] == "error":
            want[("error", f"{r['error_stage']}/{r['error_type']}")] += 1
        elif r["status"] == "skipped":
            want[("skipped", SKIP_REASON)] += 1
    table = world["dom"].one("section", id="problems").one("table")
    shown = {}
    for tr in table.find("tr", cls="problem"):
        cells = tr.find("td")
        shown[(cells[0].text(), cells[1].text())] = int(cells[2].text())
        examples = cells[3].find("li")
        assert 1 <= len(examples) <= 3 and all(li.one("a", cls="uri") for li in examples)
    assert shown == dict(want)
    by_reason = world["summary"]["errors_by_reason"]  # the error groups are the run summary's
    assert all(by_reason[reason] == n for (status, reason), n in want.items() if status == "error")


def test_distributions_are_plotted_with_exact_counts_and_the_ctr_line(world):
    ok = [r for r in world["rows"] if r["status"] == "ok"]
    section = world["dom"].one("section", id="distributions")
    plots = {f.attrs["data-measure"]: f for f in section.find("figure", cls="plot")}
    assert set(plots) == {"quality_score", "lung_area_cm2", "ctr", "mean_confidence", "dice"}
    for measure, figure in plots.items():
        n = sum(1 for r in ok if r[measure] is not None)
        assert figure.attrs["data-n"] == str(n) and f"n = {n} images (exact)" in figure.text()
        svg = figure.one("svg", cls="plot-svg")
        assert len(svg.find("rect", cls="bar")) >= 3
        assert "sample" not in figure.one("figcaption").text()  # every value plotted
    ctr_svg = plots["ctr"].one("svg")
    [line] = ctr_svg.find("line", cls="ref")
    over = sum(1 for r in ok if r["ctr"] > 0.5)
    assert f"CTR over 0.5: {over} (" in plots["ctr"].text()
    # the line sits at 0.5 of the axis: between the ticks that straddle it
    ticks = {float(t.text()): float(t.attrs["x"]) for t in ctr_svg.find("text", cls="label")
             if t.attrs.get("text-anchor") == "middle" and t.text().replace(".", "").isdigit()}
    lo, hi = min(ticks), max(ticks)
    x = ticks[lo] + (0.5 - lo) / (hi - lo) * (ticks[hi] - ticks[lo])
    assert float(line.attrs["x1"]) == pytest.approx(x, abs=0.2)


def test_the_per_folder_table_counts_each_top_level_folder(world):
    want: dict[str, Counter] = {}
    for r in world["rows"]:
        c = want.setdefault(_site(r["image_uri"], world["inputs"]), Counter())
        c["images"] += 1
        c[r["status"]] += 1
        c["flagged"] += bool(r["status"] == "ok" and r["qc_flag"])
    table = world["dom"].one("section", id="sites").one("table")
    shown = {}
    for tr in table.find("tr", cls="site"):
        cells = [td.text() for td in tr.find("td")]
        shown[cells[0]] = (int(cells[1]), int(cells[2]), int(cells[3]), int(cells[4]),
                           int(cells[5].split()[0]))
    assert shown == {s: (c["images"], c["ok"], c["error"], c["skipped"], c["flagged"])
                     for s, c in want.items()}


def test_the_page_is_self_contained(world):
    html, dom = world["html"], world["dom"]
    assert "http://" not in html and "https://" not in html and "<link" not in html
    assert all(img.attrs["src"].startswith("data:image/png;base64,") for img in dom.find("img"))
    assert all("src" not in s.attrs for s in dom.find("script"))
    script = "".join(s.text() for s in dom.find("script"))
    assert not any(word in script for word in ("fetch", "XMLHttpRequest", "import", "src"))
    # the script only reorders table rows on a click: it creates no content, so all of it is there without it
    assert not any(word in script for word in ("innerHTML", "createElement", "write(", "insertAdjacent",
                                                "textContent =", "DOMContentLoaded", "onload"))
    assert script.count("addEventListener('click'") == 1
    assert len(dom.find("style")) == 1
    assert world["report"].size_bytes == len(html.encode("utf-8"))


def test_redacted_pages_carry_no_names_and_no_films(world, tmp_path):
    names = {world["inputs"], world["out"], *("siteA", "siteB", "siteC")}
    for r in world["rows"]:
        names |= {r["image_uri"], os.path.basename(r["image_uri"]), r["image_id"]}
    shareable = build_report(world["out"], str(tmp_path / "share.html"), queue=10, thumbnails=False,
                             redact_names=True)
    html = _read(shareable.path)
    leaked = sorted(n for n in names if n in html)
    assert leaked == [], leaked
    dom = parse(html)
    assert not dom.find("img") and "shareable" in dom.one(id="patient-data").classes
    entries = dom.one("section", id="queue").find("tr", cls="queue-entry")
    assert [e.find("td")[1].text() for e in entries] == [
        "film-" + hashlib.sha256(u.encode()).hexdigest()[:10] for u in expected_queue(world["out"], 10)]
    assert counts(dom) == counts(world["dom"])  # the same numbers
    # names redacted, films kept
    films = parse(_read(build_report(world["out"], str(tmp_path / "films.html"), queue=3,
                                     redact_names=True).path))
    assert len(films.find("img")) == 3 and "films" in films.one(id="patient-data").text()


def test_without_a_calibration_the_queue_goes_by_qc_reasons_then_confidence(tmp_path):
    films = write_films(str(tmp_path / "in"), 4, size=64)
    uris = [str(tmp_path / "in" / f"x{i:03d}.png") for i in range(60)]
    table = synthetic_table(uris, films, seed=3, calibration_id=None, error_rate=0)
    # hand-made ties: reasons counts and confidences the order must tell apart
    table = edited(table, {7: {"qc_flag": True, "qc_reasons": ["no_lung", "low_confidence"],
                               "mean_confidence": None},
                           8: {"qc_flag": True, "qc_reasons": ["low_confidence"], "mean_confidence": 0.31},
                           9: {"qc_flag": True, "qc_reasons": ["low_confidence"], "mean_confidence": 0.31},
                           10: {"qc_flag": True, "qc_reasons": ["low_confidence"], "mean_confidence": 0.30}})
    out = str(tmp_path / "out")
    write_run(out, table)
    data = report_data.collect(out, queue=6)
    got = [r["image_uri"] for r in data.queue]
    assert got[:4] == [uris[7], uris[10], uris[8], uris[9]] and got == expected_queue(out, 6)
    page = parse(render(data, {}, thumbnails=False))
    assert "checkpoint had no calibration.json" in page.one("section", id="queue").text()
    assert "run `raysegment calibrate`" in page.one("section", id="distributions").text()


def test_queue_counts_and_sites_stay_exact_when_rows_spill_into_partitions(tmp_path, monkeypatch):
    """10^3 rows spilled into partition files (as 10^7 would), two runs (the latest row wins), a sample
    smaller than the rows: the queue and every count exact, the plots from the sample, the page says so."""
    monkeypatch.setattr(worklist, "SMALL", 100)
    monkeypatch.setattr(results_module, "SAMPLE", 300)
    films = write_films(str(tmp_path / "in"), 3, size=64)
    uris = [str(tmp_path / "in" / f"s{i % 7}" / f"x{i:05d}.png") for i in range(1500)]
    first = synthetic_table(uris, films, seed=5, error_rate=0.05, skipped_rate=0.02)
    first = edited(first, {
        **{i: {"qc_flag": True, "qc_reasons": ["low_quality_score"], "quality_score": 0.5, "status": "ok"}
           for i in range(100, 1500, 47)},  # ties on the quality
        **{i: {"qc_flag": True, "qc_reasons": ["no_lung"], "quality_score": None, "mean_confidence": None,
               "status": "ok"} for i in range(51, 1500, 131)}})  # flagged, but no quality_score: after
    out = str(tmp_path / "out")
    write_run(out, first, rows_per_file=250)
    second = synthetic_table(uris[:500], films, seed=6, run_id="20260102T000000Z-bbbbbb", error_rate=0.3)
    write_run(out, second, rows_per_file=250)
    data = report_data.collect(out, queue=40, site_rows=3)
    assert [r["image_uri"] for r in data.queue] == expected_queue(out, 40)
    table = read_results(out, columns=["image_uri", *SUMMARY_COLUMNS])
    whole = summarize_results(table)
    for key in ("images", "ok", "errors", "errors_by_reason", "qc_flagged", "qc_reasons"):
        assert data.summary[key] == whole[key], key
    values, n = data.samples["lung_fraction"]
    assert n == whole["lung_fraction"]["n"] > 300 == values.size
    status = Counter(table.column("status").to_pylist())
    assert data.statuses == dict(status) and data.images == 1500
    assert [s for s, _ in data.sites] == ["s0", "s1", "s2", report_data.OTHER] and data.n_sites == 7
    assert sum(s.images for _, s in data.sites) == 1500
    assert data.sites[-1][1].images == sum(1 for u in uris if _site(u, str(tmp_path / "in")) in
                                           {"s3", "s4", "s5", "s6"})
    page = parse(render(data, {}, thumbnails=False))
    caption = page.one("figure", data_measure="lung_fraction").text()
    assert f"plotted from a uniform sample of 300 of the {n:,} values" in caption
    assert "the 3 largest shown" in page.one("section", id="sites").text()


# --- malformed and partial results -----------------------------------------------------------------------

def _v1(table: pa.Table) -> pa.Table:
    added = {"qc_notes", "quality_score", "calibration_id", "exif_rotation", "inversion_corrected",
             "mask_rle", "dicom_seg_uri", "structures", "ctr", "heart_width_px", "thoracic_width_px",
             "thoracic_row"}
    return table.select([c for c in table.column_names if c not in added])


def _case(name: str, root, films) -> str:
    """A results folder in one of the states a report must survive."""
    out = str(root / name)
    uris = [f.uri for f in films]
    if name == "empty":
        os.makedirs(out)
    elif name == "v1":
        table = _v1(synthetic_table(uris, films, schema_version=1, error_rate=0,
                                    run_id="20240101T000000Z-aaaaaa"))
        os.makedirs(os.path.join(out, "runs", "20240101T000000Z-aaaaaa"))
        pq.write_table(table, os.path.join(out, "runs", "20240101T000000Z-aaaaaa", "part-0.parquet"))
    elif name == "torn":
        write_run(out, synthetic_table(uris, films, error_rate=0))
        folder = os.path.join(out, "runs", "20260101T000000Z-aaaaaa")
        with open(os.path.join(folder, "part-9.parquet"), "wb") as f:
            f.write(b"PAR1 a run killed while writing")
        pq.write_table(pa.table({"image_uri": ["/x.png"], "qc_reasons": [3]}),
                       os.path.join(folder, "part-8.parquet"))  # a column of another type
        with open(os.path.join(out, "summary.json"), "w") as f:
            f.write('{"ok": 3, ')
    elif name == "no-ok":
        write_run(out, synthetic_table(uris, films, error_rate=1.0))
    elif name == "cut-short":
        write_run(out, synthetic_table(uris, films, error_rate=0), summary=False)
        os.makedirs(os.path.join(out, "todo", "20260101T000000Z-aaaaaa"))
        with open(os.path.join(out, "todo", "20260101T000000Z-aaaaaa", "part-00000.parquet"), "wb") as f:
            f.write(b"")
    return out


CASES = {  # state -> what the page must say
    "empty": ["no result files: nothing has been written to this folder yet",
              "no ok rows: nothing to review"],
    "v1": ["rows were written with schema version 1", "every row was written with schema version 1",
           "run 20240101T000000Z-aaaaaa has no summary.json"],
    "torn": ["summary.json could not be read (JSONDecodeError", "2 of 3 result files could not be read",
             "part-8.parquet"],
    "no-ok": ["no ok rows: nothing to review", "quality_score (predicted dice): no ok rows",
              "cardiothoracic ratio: no ok rows"],
    "cut-short": ["has no summary.json: it is still running, or was stopped before its end",
                  "run the same `raysegment infer` command again to resume"],
}


@pytest.mark.parametrize("state", sorted(CASES))
def test_malformed_or_partial_results_give_a_report_that_says_so(tmp_path, state):
    films = write_films(str(tmp_path / "in"), 3, size=64)
    out = _case(state, tmp_path, films)
    report = build_report(out, queue=5)
    dom = parse(_read(report.path))
    text = " ".join(dom.text().split())
    for phrase in CASES[state]:
        assert phrase in text, (phrase, text[:3000])
    assert "could not be built" not in text  # every section built
    assert {s.attrs["id"] for s in dom.find("section")} == {"run", "queue", "problems", "distributions",
                                                            "sites"}
    if state == "v1":  # older rows fill what they can: counts, queue, lung fraction, confidence
        assert counts(dom)["ok"] == 3 and len(dom.find("article", cls="queue-entry")) == 3
        assert {f.attrs["data-measure"] for f in dom.find("figure", cls="plot")} == {"lung_fraction",
                                                                                      "mean_confidence"}
        assert "cardiothoracic ratio: every row was written with schema version 1" in text


# --- the command line ------------------------------------------------------------------------------------

def test_cli_report_prints_its_path_and_user_errors_are_one_line_exit_2(world, tmp_path, capsys):
    from raysegment.cli import main

    out = tmp_path / "r.html"
    assert main(["report", world["out"], "--out", str(out), "--queue", "4", "--no-thumbnails"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"report: {out} ({len(world['rows'])} images, 4 in the review queue, ")
    assert len(parse(out.read_text()).find("tr", cls="queue-entry")) == 4
    for args, message in (
            ([str(tmp_path / "nowhere")], f"no such results folder: {tmp_path / 'nowhere'}"),
            ([str(out)], f"{out} is a file: pass the --output folder of a `raysegment infer` run"),
            ([world["out"], "--queue", "-1"], "--queue must be between 0 and 1000, got -1")):
        assert main(["report", *args]) == 2
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert lines[0] == f"raysegment report: error: {message}" and len(lines) <= 2, captured.err
        assert "Traceback" not in captured.err


def test_infer_writes_the_report_with_its_wall_time_unless_no_report(tmp_path, monkeypatch, capsys):
    from raysegment.cli import main
    from raysegment.infer import pipeline

    films = write_films(str(tmp_path / "in"), 3, size=64)

    def run_inference(config):  # the pipeline's part is tested elsewhere: here its summary and rows
        table = synthetic_table([f.uri for f in films], films, error_rate=0)
        return write_run(config.io.output, table, wall_s=2.0)

    monkeypatch.setattr(pipeline, "run_inference", run_inference)
    out = tmp_path / "out"
    assert main(["infer", "--input", str(tmp_path / "in"), "--checkpoint", "ck", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"  report: {out / 'report.html'} (" in printed
    run = parse((out / "report.html").read_text()).one("section", id="run")
    assert run.one(data_figure="wall_s").text() == "2.0 s"
    assert run.one(data_figure="images_per_s").text() == "1.50"
    quiet = tmp_path / "quiet"
    assert main(["infer", "--input", str(tmp_path / "in"), "--checkpoint", "ck", "--output", str(quiet),
                 "--no-report"]) == 0
    assert "  report" not in capsys.readouterr().out and not (quiet / "report.html").exists()
    assert (quiet / "summary.json").exists()


def test_a_report_of_s3_results_is_an_s3_object_served_as_html(world, s3_endpoint):
    from raysegment.io import storage

    bucket = s3_endpoint.create_bucket("report-bucket")
    storage.upload_dir(world["out"], f"{bucket}/results")
    report = build_report(f"{bucket}/results", queue=3)
    assert report.path == f"{bucket}/results/report.html"
    head = s3_endpoint.client().head_object(Bucket="report-bucket", Key="results/report.html")
    assert head["ContentType"] == "text/html; charset=utf-8"
    dom = parse(storage.read_text(report.path))
    assert counts(dom) == {**counts(world["dom"]), "queue": 3}
    assert len(dom.find("img")) == 3  # the originals are local paths the report still reads


# --- in a real browser ------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(args: list[str], profile: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={profile}", "--no-first-run", *args],
                          capture_output=True, timeout=120, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/run installs Debian's `chromium`)")
def test_the_page_renders_in_headless_chromium_with_its_queue_plots_and_the_summary_counts(tmp_path):
    """Chromium's own --screenshot and --dump-dom (no Python browser driver). Headless Chromium needs
    JavaScript for both (--blink-settings=scriptEnabled=false makes them write nothing), so "without
    JavaScript" is checked as: the rendered DOM equals the file's own (the script changes nothing on load;
    test_the_page_is_self_contained: it creates no content)."""
    films = write_films(str(tmp_path / "in" / "a"), 5, size=128, seed=1) + \
        write_films(str(tmp_path / "in" / "b"), 5, size=128, seed=2)
    out = str(tmp_path / "out")
    write_run(out, synthetic_table([f.uri for f in films], films, seed=2, error_rate=0.2, truth=True))
    summary = json.loads(_read(os.path.join(out, "summary.json")))
    report = build_report(out, queue=6)
    url = "file://" + urllib.parse.quote(report.path)

    shot = str(tmp_path / "shot.png")
    done = _chromium([f"--screenshot={shot}", "--window-size=1280,2600", url], str(tmp_path / "profile"))
    assert done.returncode == 0 and os.path.exists(shot), done.stderr[-2000:]
    rgb = cv2.cvtColor(cv2.imread(shot, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert rgb.shape == (2600, 1280, 3)
    assert (rgb < 245).any(axis=-1).mean() > 0.05 and rgb.std() > 20  # not blank
    assert gray_share(rgb) > 0.02  # the thumbnails are drawn
    assert near(rgb, viz.STRUCTURE_COLORS["lungs"], 20).sum() > 500  # their outlines
    assert near(rgb, (0x56, 0xB4, 0xE9), 6).sum() > 500  # the histogram bars (SVG)

    done = _chromium(["--dump-dom", url], str(tmp_path / "profile2"))
    assert done.returncode == 0, done.stderr[-2000:]
    dom = parse(done.stdout.decode("utf-8"))
    static = parse(_read(report.path))
    assert " ".join(dom.one("body").text().split()) == " ".join(static.one("body").text().split())
    assert len(dom.find("article", cls="queue-entry")) == 6 == len(dom.one("section", id="queue").find("img"))
    # quality, lung fraction (no pixel spacing), CTR, confidence, dice
    assert len(dom.find("svg", cls="plot-svg")) == 5
    shown = counts(dom)
    assert {k: shown[k] for k in ("images", "ok", "errors", "qc_flagged")} == {
        k: summary[k] for k in ("images", "ok", "errors", "qc_flagged")}
    assert shown["errors"] > 0 and len(dom.find("tr", cls="site")) == 2


def test_odd_file_names_are_escaped_and_still_link_to_their_originals(tmp_path):
    """HTML-special characters and a name that is not UTF-8 (stored as a file:// URI, docs/formats.md)."""
    from raysegment.io import names

    [film] = write_films(str(tmp_path / "in"), 1, size=64)
    odd = str(tmp_path / "in" / 'a <b> & "c".png')
    os.link(film.uri, odd)
    raw = os.fsencode(str(tmp_path / "in")) + b"/caf\xe9.png"
    os.link(film.uri, raw)
    latin1 = names.path_to_uri(raw)
    assert latin1.startswith(names.FILE_SCHEME)
    out = str(tmp_path / "out")
    write_run(out, synthetic_table([odd, latin1], [film], error_rate=0))
    dom = parse(_read(build_report(out, queue=2).path))
    links = {a.text(): a.attrs["href"] for a in dom.one("section", id="queue").find("a", cls="uri")}
    assert links == {'a <b> & "c"': "file://" + urllib.parse.quote(odd), "caf%E9": latin1}
    assert len(dom.find("img")) == 2 and not dom.find(cls="thumb-note")  # both originals read back
