"""Code on the documentation pages runs and prints what the page says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fenced_blocks(text, language):
    """The bodies of the ```language fenced blocks of a Markdown text, in order."""
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_shapes_worked_example_prints_what_the_page_shows():
    text = (ROOT / "docs" / "shapes.md").read_text()
    code = [c for c in fenced_blocks(text, "python") if "assert_allclose" in c]
    printed = fenced_blocks(text, "text")
    assert len(code) == 1 and len(printed) == 1, "the page's example or its output block moved"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code[0], "docs/shapes.md", "exec"), {})
    assert out.getvalue() == printed[0]
