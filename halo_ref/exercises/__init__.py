"""Exercises graded by the library (`halo-ref exercises DIR`).

`write_exercises(folder)` writes skeleton files, ex1_blocking.py ... ex5_bottleneck.py, with the
maths in each docstring and a TODO in place of each body, a README, and test_exercises.py, which
grades every learner function against halo_ref (`halo_ref.exercises.grading`). The reference
solutions are halo_ref's own functions (`SOLUTIONS`); `fill_solutions(folder)` puts them into the
skeletons, which is how the test suite shows that every exercise can pass.
"""

from __future__ import annotations

import os
import re
from importlib import resources

from .._atomic import atomic_write
from .._checks import HaloRefError

SKELETONS = ("ex1_blocking.py", "ex2_softmax.py", "ex3_relpos.py", "ex4_attention.py",
             "ex5_bottleneck.py", "test_exercises.py")  # fmt: skip
README = """# halo_ref exercises

Fill in the functions marked TODO, in order: ex1_blocking.py, ex2_softmax.py, ex3_relpos.py,
ex4_attention.py, ex5_bottleneck.py. Each docstring gives the maths and the shapes; the pages
"Derivations" and "From constructor arguments to shapes" of halo_ref's documentation derive them.

Grade your work (it needs hypothesis and pytest: pip install "halo_ref[dev]"):

    python -m pytest                      # everything
    python -m pytest -k blocks_from_map   # one function

A failing test names the case, the error, the property of the inputs that the failures share
and a hint. halo_ref's own code is the reference, so do not import it for the functions you
write (exercise 5 gives you its convolution, BatchNorm and SiLU layers).
"""
PYTEST_INI = "[pytest]\n# this folder is its own project: no options inherited from a parent\naddopts = -q --tb=short\n"


def _skeleton(name: str) -> str:
    return resources.files(__package__).joinpath("skeletons", name).read_text(encoding="utf-8")


def write_exercises(folder: str) -> list[str]:
    """Write the exercises into `folder` (created if missing); returns the paths written.

    Refuses, before writing anything, when any of the files already exists: a learner's work is
    never overwritten.
    """
    files = {name: _skeleton(name) for name in SKELETONS}
    files["README.md"] = README
    files["pytest.ini"] = PYTEST_INI
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise HaloRefError(f"exercises: {folder} is a file; pass a folder")
    existing = [n for n in files if os.path.exists(os.path.join(folder, n))]
    if existing:
        raise HaloRefError(
            f"exercises: {folder} already has {', '.join(existing)}; refusing to overwrite your "
            "work: choose a new folder"
        )
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, text in files.items():
        path = os.path.join(folder, name)
        atomic_write(path, lambda f, t=text: f.write(t.encode("utf-8")))
        paths.append(path)
    return paths


# The reference solutions: halo_ref's own code, as the body of each skeleton function.
SOLUTIONS = {
    "blocks_from_map": "from halo_ref.attention.blocking import blocks_from_map as ref\n"
    "return ref(x, block_size)",
    "gather_windows": "from halo_ref.attention.blocking import gather_windows as ref\n"
    "return ref(x, block_size, halo_size)",
    "scatter_windows": "from halo_ref.attention.blocking import scatter_windows as ref\n"
    "return ref(windows, H, W, block_size, halo_size)",
    "softmax_backward": "from halo_ref.nn.functional import softmax_backward as ref\n"
    "return ref(dp, p)",
    "relpos_forward": "from halo_ref.attention.relpos import relpos_forward as ref\n"
    "return ref(q, height_rel, width_rel, block_size)",
    "relpos_backward": "from halo_ref.attention.relpos import relpos_backward as ref\n"
    "return ref(dbias, cache)",
    "halo_attention_forward": "from halo_ref.attention.core import halo_attention_forward as ref\n"
    "return ref(q_map, kv_map, height_rel, width_rel, num_heads=num_heads,\n"
    "           block_size=block_size, halo_size=halo_size, scale=scale)",
    "halo_attention_backward": "from halo_ref.attention.core import halo_attention_backward as ref\n"
    "return ref(dout, cache)",
    "bottleneck_forward": "from halo_ref.exercises.solutions import bottleneck_forward as ref\n"
    "return ref(x, params, num_heads=num_heads, block_size=block_size, halo_size=halo_size)",
    "bottleneck_backward": "from halo_ref.exercises.solutions import bottleneck_backward as ref\n"
    "return ref(dout, cache)",
}

_TODO = re.compile(
    r"(    # TODO: your code here\n    raise NotImplementedError\(\"(\w+): replace this line with "
    r"your code\"\)\n)"
)


def fill(text: str, bodies: dict) -> str:
    """`text` of a skeleton with each TODO body replaced by bodies[function name] (if given)."""

    def body(match):
        name = match.group(2)
        if name not in bodies:
            return match.group(1)
        return "".join(f"    {line}\n" for line in bodies[name].splitlines())

    return _TODO.sub(body, text)


def fill_solutions(folder: str, bodies: dict | None = None) -> None:
    """Put `bodies` (default: the reference `SOLUTIONS`) into the skeletons in `folder`."""
    bodies = SOLUTIONS if bodies is None else bodies
    for name in SKELETONS:
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        filled = fill(text, bodies)
        atomic_write(path, lambda f, t=filled: f.write(t.encode("utf-8")))
