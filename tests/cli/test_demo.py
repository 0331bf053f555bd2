"""`halo-ref demo`: the layer agrees with the dense oracle, the per-pixel loop and finite
differences."""

from __future__ import annotations

import subprocess
import sys


def test_demo_reports_agreement():
    done = subprocess.run(
        [sys.executable, "-m", "halo_ref", "demo"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "all agree" in done.stdout
    assert "vs masked global attention (oracle): relative error" in done.stdout
