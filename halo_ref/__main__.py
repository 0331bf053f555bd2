"""`python -m halo_ref` runs the `halo-ref` command line."""

import sys

from .cli import main

sys.exit(main())
