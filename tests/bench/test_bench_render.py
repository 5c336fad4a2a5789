"""The benchmark tables of README.md and docs/ are what their committed result files render."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench import common, render

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("doc", render.DOCUMENTS)
def test_every_table_is_what_its_result_file_renders(doc: str) -> None:
    stale = render.stale_blocks((ROOT / doc).read_text())
    assert not stale, f"{doc}: stale tables {stale}: run `python -m bench.render`"


def test_the_readme_headline_is_rendered() -> None:
    text = (ROOT / "README.md").read_text()
    assert "<!-- bench: headline -->" in text
    headline = text.split("<!-- bench: headline -->", 1)[1].split("<!-- /bench -->", 1)[0]
    assert headline.count("\n|") > 10  # one row or more per result file


def test_a_figure_edited_by_hand_is_caught() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- bench: headline -->\n.*?<!-- /bench -->", text, re.DOTALL)
    assert block
    tampered = block.group(0).replace("0 failures", "0 failure", 1)
    if tampered == block.group(0):
        tampered = re.sub(r"\d", lambda m: str((int(m.group(0)) + 1) % 10), block.group(0), count=1)
    assert render.stale_blocks(text.replace(block.group(0), tampered)) == ["headline"]


def _results(tmp_path: Path, commit: str) -> Path:
    record = json.loads((common.RESULTS / "aca_scale.json").read_text()) | {"commit": commit}
    (tmp_path / "aca_scale.json").write_text(json.dumps(record))
    return tmp_path


@pytest.mark.parametrize("commit", ["abc1234-dirty", "unknown"])
def test_a_result_from_an_uncommitted_tree_is_refused(tmp_path: Path, commit: str) -> None:
    doc = "<!-- bench: aca_scale.json lifecycles -->\n<!-- /bench -->"
    with pytest.raises(render.RenderError, match="aca_scale.json was measured at commit"):
        render.render(doc, _results(tmp_path, commit))


def test_a_block_renders_its_table_with_where_it_came_from(tmp_path: Path) -> None:
    doc = "before\n<!-- bench: aca_scale.json lifecycles -->\nold\n<!-- /bench -->\nafter"
    out = render.render(doc, _results(tmp_path, "abc1234"))
    assert out.startswith("before\n<!-- bench: aca_scale.json lifecycles -->\n| lifecycles/s |")
    assert "commit abc1234" in out and out.endswith("<!-- /bench -->\nafter")
    assert render.stale_blocks(out, tmp_path) == []


def test_an_unknown_table_or_file_is_named(tmp_path: Path) -> None:
    results = _results(tmp_path, "abc1234")
    with pytest.raises(render.RenderError, match="has no table 'nope'.*lifecycles"):
        render.render("<!-- bench: aca_scale.json nope -->\n<!-- /bench -->", results)
    with pytest.raises(render.RenderError, match="no module renders it"):
        render.render("<!-- bench: stray.json t -->\n<!-- /bench -->", results)


def test_a_result_of_a_dirty_tree_is_kept_out_of_bench_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "commit", lambda: "abc1234-dirty")
    path = common.write_result("render_test", {}, {"x": 1})
    assert common.RESULTS not in path.parents and json.loads(path.read_text())["results"] == {"x": 1}
    monkeypatch.setattr(common, "commit", lambda: "abc1234")
    assert common.result_path("render_test.json") == common.RESULTS / "render_test.json"


NOT_YET_RUN = {"learner_gpu.json"}  # what `bench.learner_gpu` will write once a GPU runs it


def test_every_result_file_a_document_cites_exists() -> None:
    cited = {
        name
        for doc in render.DOCUMENTS
        for name in re.findall(r"bench/results/([\w./-]+\.(?:json|png))", (ROOT / doc).read_text())
    }
    assert cited and not [name for name in cited - NOT_YET_RUN if not (common.RESULTS / name).exists()]
