"""The `halo-ref` command line: `main` (also `python -m halo_ref`) and one module per
sub-command, each with `register(subparsers)` and `run(args)`.

Importing this package sets `OMP_WAIT_POLICY=PASSIVE` unless the user set it. Numba's
threading layer here is GNU OpenMP, whose idle threads spin between parallel regions; a
training step has many short regions, so beside any other busy process (a browser, another
job) the spinning threads and that process take turns on the cores and a step runs several
times slower (issue 13: 4.5x slower beside one busy process, 2x with passive waiting). OpenMP
reads the variable once, when its runtime is loaded: Numba loads it at the first parallel
kernel call, after this import (tests/test_runtime.py checks that nothing loads it earlier).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
