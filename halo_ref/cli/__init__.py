"""Sub-commands of the `halo-ref` command line, one module each (see halo_ref.cli)."""
