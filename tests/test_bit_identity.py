"""halo_ref's results are bit-identical to the reference recorded in tests/fixtures/.

The reference holds the SHA-256 of every output, gradient and parameter that
tests/bit_identity.py computes (every HaloAttention option on each backend and work family, a
`tiny` training step, a one-epoch run on the digits). It was recorded before the package was
restructured (issue 15) and guards any change that must not change a single bit. Updating the
fixture is a decision that the results change, to be stated in the commit message.

The script runs in a child process with an empty Numba cache folder (see its docstring), so this
test pays a full compile.
"""

from __future__ import annotations

import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))


def test_results_are_bit_identical_to_the_recorded_reference():
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(TESTS, "bit_identity.py"),
            "--check",
            os.path.join(TESTS, "fixtures", "bit_identity.json"),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
