"""Reading a run report (viz/report.py) back in tests: its DOM as a tiny tree (html.parser, no browser
needed), the expected review queue computed independently from read_results, and results folders whose
rows are edited by hand."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from html.parser import HTMLParser

import cv2
import numpy as np
import pyarrow as pa

from raysegment.outputs.results import SCHEMA, read_results

VOID = {"img", "br", "meta", "link", "input", "hr", "line", "rect", "path", "circle"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list = field(default_factory=list)  # Node or str

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find(self, tag: str | None = None, cls: str | None = None, **attrs) -> list[Node]:
        """Every element below (self included) with this tag, class and attribute values (None: present)."""
        out = []
        stack = [self]
        while stack:
            node = stack.pop()
            if ((tag is None or node.tag == tag) and (cls is None or cls in node.classes)
                    and all(node.attrs.get(k.replace("_", "-")) == v if v is not None
                            else k.replace("_", "-") in node.attrs for k, v in attrs.items())):
                out.append(node)
            stack.extend(reversed([c for c in node.children if isinstance(c, Node)]))
        return out

    def one(self, tag: str | None = None, cls: str | None = None, **attrs) -> Node:
        found = self.find(tag, cls, **attrs)
        assert len(found) == 1, (tag, cls, attrs, len(found))
        return found[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        for i in range(len(self.stack) - 1, 0, -1):  # close up to the matching open element
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    return builder.root


def counts(dom: Node) -> dict[str, int]:
    """The page's key figures: data-count -> the number shown."""
    return {n.attrs["data-count"]: int(n.text().replace(",", "")) for n in dom.find(data_count=None)}


def png_of(img: Node) -> np.ndarray:
    """An <img src="data:image/png;base64,..."> as RGB."""
    src = img.attrs["src"]
    assert src.startswith("data:image/png;base64,"), src[:40]
    data = np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def near(rgb: np.ndarray, color, tol: int = 30) -> np.ndarray:
    return (np.abs(rgb.astype(int) - np.array(color)) <= tol).all(axis=-1)


def gray_share(rgb: np.ndarray) -> float:
    """Share of mid-gray pixels (an X-ray), as opposed to black background and coloured masks."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    gray = (np.abs(r - g) < 6) & (np.abs(g - b) < 6) & (r > 25) & (r < 230)
    return float(gray.mean())


def expected_queue(results: str, n: int) -> list[str]:
    """The review queue as the issue states it, computed from read_results by hand: ok rows; QC-flagged
    first, then quality_score ascending with the rows without one last, then more QC reasons first, then
    lower mean confidence (none first), then image_uri."""
    rows = [r for r in read_results(results, columns=["image_uri", "status", "qc_flag", "qc_reasons",
                                                      "quality_score", "mean_confidence"]).to_pylist()
            if r["status"] == "ok"]

    def key(r):
        q, c = r["quality_score"], r["mean_confidence"]
        return (not r["qc_flag"], q is None, q if q is not None else 0.0, -len(r["qc_reasons"] or []),
                c if c is not None else -1.0, r["image_uri"])

    return [r["image_uri"] for r in sorted(rows, key=key)[:n]]


def edited(table: pa.Table, changes: dict[int, dict]) -> pa.Table:
    """`table` with rows changed by hand: row index -> {column: value}."""
    rows = table.to_pylist()
    for i, change in changes.items():
        rows[i].update(change)
    return pa.Table.from_pylist(rows, schema=SCHEMA)
