"""The `halo-ref` command line: `main` (also `python -m halo_ref`) and one module per
sub-command, each with `register(subparsers)` and `run(args)`.

Process-wide settings (the kernel cache folder, OpenMP's passive waiting) are made by
`halo_ref._runtime` when `halo_ref` is imported, so the library and the command line share them.
"""
