"""Sphinx configuration for the halo_ref documentation.

Build (from the repository root; -W turns every warning into an error, as in CI):

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

The tutorials in tutorials/ are executed by sphinx-gallery in quick mode
(HALO_REF_TUTORIAL_QUICK=1, the same setting the test suite uses), so the build takes a minute
or two. The CLI and API reference pages are generated from the code at build time by the two
small directives defined at the end of this file, so they cannot fall out of date.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import pkgutil
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# set before any tutorial runs: tiny sizes, headless figures, stable argparse help width
os.environ.setdefault("HALO_REF_TUTORIAL_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["COLUMNS"] = "90"

import halo_ref  # noqa: E402

project = "halo_ref"
author = "halo_ref contributors"
copyright = "halo_ref contributors, MIT licence"
release = version = halo_ref.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "auto_tutorials/*.ipynb", "auto_tutorials/*.py"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
# `name` in docstrings links to the object when it exists and is plain code otherwise
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# ignore-module-all: a package re-exporting a function under __all__ must not document it twice
autodoc_default_options = {"members": True, "ignore-module-all": True}
# halo_ref.verification.torch_side imports PyTorch (optional): documented from a stand-in where
# it is not installed
if importlib.util.find_spec("torch") is None:
    autodoc_mock_imports = ["torch"]

# Maths renders offline: MathJax 3 is served from this site's own _static folder (the files come
# from the PyPI package sphinx-mathjax-offline, pinned in the "docs" extra), never from a CDN.
# The SVG output draws glyphs as paths, so no web fonts are needed either.
_MATHJAX = importlib.util.find_spec("sphinx-mathjax-offline")
if _MATHJAX is None:
    raise RuntimeError('MathJax files missing: pip install -e ".[docs]" (sphinx-mathjax-offline)')
html_static_path = [str(Path(_MATHJAX.origin).parent / "static")]  # copied as _static/mathjax/
mathjax_path = "mathjax/tex-svg.js"


def _offline_animation_player():
    """matplotlib's JavaScript animation player (what sphinx-gallery embeds for an animation)
    draws its buttons with Font Awesome icons from a CDN stylesheet: offline they are blank.
    Drop the link and put plain Unicode symbols in the buttons instead."""
    import matplotlib.animation as animation

    icons = {
        '<i class="fa fa-minus"></i>': "&minus;",
        '<i class="fa fa-fast-backward"></i>': "|&#9664;&#9664;",
        '<i class="fa fa-step-backward"></i>': "|&#9664;",
        '<i class="fa fa-play fa-flip-horizontal"></i>': "&#9664;",
        '<i class="fa fa-pause"></i>': "&#10074;&#10074;",
        '<i class="fa fa-play"></i>': "&#9654;",
        '<i class="fa fa-step-forward"></i>': "&#9654;|",
        '<i class="fa fa-fast-forward"></i>': "&#9654;&#9654;|",
        '<i class="fa fa-plus"></i>': "+",
    }
    template = animation.DISPLAY_TEMPLATE
    for icon, text in icons.items():
        if icon not in template:
            raise RuntimeError(f"matplotlib's animation player changed: {icon} not found")
        template = template.replace(icon, text)
    animation.DISPLAY_TEMPLATE = template
    animation.JS_INCLUDE = re.sub(r'<link rel="stylesheet"\s+href="https?://[^"]*">', "",
                                  animation.JS_INCLUDE)  # fmt: skip
    if "http" in animation.JS_INCLUDE:
        raise RuntimeError("matplotlib's animation player still loads a file from the web")


_offline_animation_player()

html_theme = "furo"
html_title = f"halo_ref {release}"
html_theme_options = {"navigation_with_keys": True}
pygments_style = "friendly"
pygments_dark_style = "monokai"

sphinx_gallery_conf = {
    "examples_dirs": "../tutorials",
    "gallery_dirs": "auto_tutorials",
    "filename_pattern": r"\.py$",  # execute every tutorial, not only plot_*.py
    # a notebook-style script without a sphinx-gallery header, needing PyTorch: shown on its own
    # page (verify_tutorial.md) instead of being executed here
    "ignore_pattern": r"__init__\.py|verify_broken_implementations\.py",
    "within_subsection_order": "FileNameSortKey",  # 01_ ... 07_, then the rest
    "abort_on_example_error": True,
    "write_computation_times": False,  # no sg_execution_times.rst in the source tree
    "download_all_examples": False,
    "remove_config_comments": True,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
    # a 2x copy of every figure for sharp screens (figures are saved at 100 dpi, <= 7 in wide)
    "image_srcset": ["2x"],
    # only what a cell prints is shown: no `Text(...)` or `[<Line2D ...>]` left by its last line
    "capture_repr": (),
    # FuncAnimation objects become a player (JavaScript and embedded frames, no ffmpeg needed)
    "matplotlib_animations": (True, "jshtml"),
    "thumbnail_size": (400, 280),
}

# Pages written alongside other issues; left out of the toctree (instead of a broken link) until
# they exist, see `_prune_missing` below.
OPTIONAL_PAGES = ("models", "verification")


# -- generated reference pages -----------------------------------------------------------------
from docutils import nodes  # noqa: E402
from docutils.parsers.rst import Directive  # noqa: E402
from docutils.statemachine import StringList  # noqa: E402

# API page: modules grouped by concept; any module not listed lands in "Other modules".
API_GROUPS = [
    ("Halo attention: the data path", [
        "halo_ref.attention", "halo_ref.attention.blocking", "halo_ref.attention.relpos",
        "halo_ref.attention.core", "halo_ref.attention.kernels", "halo_ref.attention.dense",
        "halo_ref.attention.layer", "halo_ref.attention.bottleneck"]),
    ("The backend switch", ["halo_ref.backend"]),
    ("Building blocks", [
        "halo_ref.nn", "halo_ref.nn.functional", "halo_ref.nn.kernels", "halo_ref.nn.module",
        "halo_ref.nn.layers", "halo_ref.nn.init"]),
    ("Models", [
        "halo_ref.models", "halo_ref.models.configs", "halo_ref.models.classifier",
        "halo_ref.models.halonet", "halo_ref.models.timm_byobnet", "halo_ref.models.pretrained",
        "halo_ref.imagenet"]),
    ("Training", [
        "halo_ref.training", "halo_ref.training.config", "halo_ref.training.data",
        "halo_ref.training.data.dataset", "halo_ref.training.data.augment",
        "halo_ref.training.data.cifar10", "halo_ref.training.data.npz",
        "halo_ref.training.optim", "halo_ref.training.state", "halo_ref.training.checkpoint",
        "halo_ref.training.evaluate", "halo_ref.training.loop"]),
    ("Verification", [
        "halo_ref.verification", "halo_ref.verification.testing",
        "halo_ref.verification.vectors", "halo_ref.verification.verify",
        "halo_ref.verification.semantics", "halo_ref.verification.adapters",
        "halo_ref.verification.torch_side", "halo_ref.verification.conformance"]),
    ("Pictures", ["halo_ref.viz"]),
    ("Exercises", ["halo_ref.exercises", "halo_ref.exercises.grading",
                   "halo_ref.exercises.solutions"]),
    ("Command line", ["halo_ref.cli", "halo_ref.cli.main"]),
]  # fmt: skip


def _public_modules() -> list[str]:
    """Every importable public module of halo_ref (no _private parts, no CLI sub-commands)."""
    found = []
    for info in pkgutil.walk_packages(halo_ref.__path__, "halo_ref."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts):
            continue
        if parts[1] == "cli" and parts[2:] not in ([], ["main"]):  # one module per command
            continue
        found.append(info.name)
    return sorted(found)


class ApiReference(Directive):
    """`.. halo-ref-api::` -- one section per module with its autodoc'd members."""

    def run(self):
        present = set(_public_modules())
        listed = {m for _, mods in API_GROUPS for m in mods}
        groups = [(t, [m for m in mods if m in present]) for t, mods in API_GROUPS]
        groups.append(("Other modules", sorted(present - listed)))
        lines = []
        for title, mods in groups:
            if not mods:
                continue
            lines += [title, "-" * len(title), ""]
            for mod in mods:
                lines += [f"``{mod}``", "~" * (len(mod) + 4), "", f".. automodule:: {mod}", ""]
        self.state_machine.insert_input(
            StringList(lines, source="<halo-ref-api>"), "<halo-ref-api>"
        )
        return []


class CliReference(Directive):
    """`.. halo-ref-cli::` -- the help text of `halo-ref` and of every sub-command."""

    def run(self):
        from halo_ref.cli.main import build_parser

        parser = build_parser()
        parser.prog = "halo-ref"
        out = [nodes.literal_block(text=parser.format_help().rstrip())]
        subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, sub in subs.choices.items():
            section = nodes.section(ids=[f"cli-{name}"], names=[f"halo-ref {name}"])
            section += nodes.title(text=f"halo-ref {name}")
            section += nodes.literal_block(text=sub.format_help().rstrip())
            out.append(section)
        return out


_CODE_SPAN = re.compile(r"(``.+?``|`[^`]+`)")


def _plain_docstring(app, what, name, obj, options, lines):
    """Docstrings here are plain text, not reStructuredText: escape the characters that RST
    would read as markup outside code spans (|x| is an absolute value, not a substitution;
    ** is a power, not bold; a trailing underscore is a name, not a link)."""
    for i, line in enumerate(lines):
        parts = _CODE_SPAN.split(line)
        for k in range(0, len(parts), 2):  # even parts are outside code spans
            part = parts[k].replace("\\", "\\\\").replace("*", "\\*").replace("|", "\\|")
            parts[k] = re.sub(r"(\w)_\b", r"\1\\_", part)
        lines[i] = "".join(parts)


def _prune_missing(app, docname, source):
    """Drop toctree entries of optional pages that do not exist (yet)."""
    if docname != "index":
        return
    srcdir = Path(app.srcdir)
    for page in OPTIONAL_PAGES:
        if not any((srcdir / f"{page}{ext}").exists() for ext in (".md", ".rst")):
            source[0] = "\n".join(line for line in source[0].splitlines() if line.strip() != page)


def setup(app):
    app.add_directive("halo-ref-api", ApiReference)
    app.add_directive("halo-ref-cli", CliReference)
    app.connect("source-read", _prune_missing)
    app.connect("autodoc-process-docstring", _plain_docstring)
    # import every public module once now: an import error is reported here, in one line
    for mod in _public_modules():
        importlib.import_module(mod)
