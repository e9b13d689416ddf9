"""README's benchmark tables are generated from benchmarks/results/*.md and are in sync."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location(
        "make_readme_tables", ROOT / "benchmarks" / "make_readme_tables.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _tool()
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_is_in_sync_with_the_results():
    assert tool.MARKER.findall(README), "README has no results markers"
    assert tool.regenerate(README) == README, (
        "README's benchmark tables differ from benchmarks/results/*.md: run "
        "python benchmarks/make_readme_tables.py"
    )


def test_regeneration_is_idempotent():
    once = tool.regenerate(README)
    assert tool.regenerate(once) == once


def test_every_marker_names_a_results_file():
    for m in tool.MARKER.finditer(README):
        assert (tool.RESULTS / f"{m.group('name')}.md").is_file(), m.group("name")


def test_a_new_result_reaches_the_readme(tmp_path):
    (tmp_path / "demo.md").write_text(
        "# title\n\n| a | b | c |\n|---|---|---|\n| 1 | 2 | 3 |\n\ntext\n\n| x |\n|---|\n| 9 |\n"
    )
    text = (
        "intro\n<!-- results:demo table=1 columns=c;a -->\nstale\n<!-- /results:demo -->\n"
        "<!-- results:demo table=2 -->\n<!-- /results:demo -->\nend\n"
    )
    out = tool.regenerate(text, tmp_path)
    assert "| c | a |\n|---|---|\n| 3 | 1 |" in out
    assert "| x |\n|---|\n| 9 |" in out
    assert "stale" not in out and out.startswith("intro\n") and out.endswith("end\n")
    assert tool.regenerate(out, tmp_path) == out
    (tmp_path / "demo.md").write_text("| a | b | c |\n|---|---|---|\n| 7 | 2 | 3 |\n")
    with pytest.raises(ValueError, match="table=2 does not exist"):
        tool.regenerate(out, tmp_path)
    with pytest.raises(ValueError, match="not in the table header"):
        tool.regenerate("<!-- results:demo columns=zz -->\n<!-- /results:demo -->", tmp_path)
    with pytest.raises(ValueError, match="has no file"):
        tool.regenerate("<!-- results:nope -->\n<!-- /results:nope -->", tmp_path)
