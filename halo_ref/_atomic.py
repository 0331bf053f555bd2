"""Atomic files: write to a temporary file beside the target, then rename it over the target.

`os.replace` is atomic, so a reader, a crash or a kill -9 sees either the previous file or the
complete new one, never half of one. Every file halo_ref writes for a user goes through here:
checkpoints, metrics, figures, golden vectors, the CIFAR-10 download.
"""

from __future__ import annotations

import os
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)  # read the umask once, so that finished files get the usual permissions


def atomic_write(path, write, *, suffix: str = ".tmp") -> str:
    """Call write(binary_file) on a temporary file next to `path`, then rename it to `path`.

    The temporary file is named ".<name>.<random><suffix>". If `write` (or anything else)
    raises, it is removed and `path` is left as it was. Returns `path`.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private (0600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
