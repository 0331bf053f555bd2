"""The `halo-ref` command line: `main` (also `python -m halo_ref`) and one module per
sub-command, each with `register(subparsers)` and `run(args)`."""
