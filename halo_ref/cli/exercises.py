"""`halo-ref exercises DIR`: write the graded exercises (see `halo_ref.exercises`)."""

from __future__ import annotations

from ..exercises import write_exercises


def register(sub) -> None:
    p = sub.add_parser(
        "exercises",
        help="write exercises to fill in (blocking, softmax and relative-logit backward, halo "
        "attention, a bottleneck block), graded by halo_ref",
        description="Writes ex1_blocking.py ... ex5_bottleneck.py into DIR, each function's maths "
        "in its docstring and a TODO in place of its body, and test_exercises.py, which grades "
        "every function against halo_ref with hypothesis (run `python -m pytest` in DIR; needs "
        "the dev extra). Refuses to overwrite files that already exist in DIR.",
    )
    p.add_argument("dir", metavar="DIR", help="folder to write into (created if missing)")
    p.set_defaults(func=run)


def run(args) -> int:
    paths = write_exercises(args.dir)
    print(f"wrote {len(paths)} files into {args.dir}:")
    for path in paths:
        print(f"  {path}")
    print(f"fill in the TODOs, then grade them: cd {args.dir} && python -m pytest")
    return 0
