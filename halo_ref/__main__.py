"""`python -m halo_ref` runs the `halo-ref` command line."""

import sys

from .cli.main import main

sys.exit(main())
