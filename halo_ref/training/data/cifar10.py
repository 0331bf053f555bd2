"""CIFAR-10 (Krizhevsky 2009) from its official "python version" archive.

The archive `cifar-10-python.tar.gz` holds `cifar-10-batches-py/` with five training batches,
one test batch and `batches.meta`. Each batch is a Python 2 pickle of a dict with bytes keys:
b"data" a uint8 array (10000, 3072) with each row the red, green and blue 32x32 planes, and
b"labels" a list of ints. Pickles can run arbitrary code when loaded, so they are read with a
restricted unpickler that admits only the three NumPy callables these files use to rebuild an
array; anything else (os.system, builtins.open, ...) is refused before it can be called.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request

import numpy as np

from ..._atomic import atomic_write
from ..._checks import HaloRefError
from .dataset import Dataset

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
MEMBERS = [*TRAIN_BATCHES, "test_batch", "batches.meta", "readme.html"]
CLASS_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip

# The reconstruct function NumPy names in its array pickles, wherever this NumPy keeps it.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # NumPy 1 (and the official files)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # NumPy 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that can build only dicts, lists, ints, bytes and NumPy arrays."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id")


def load_batch(data: bytes, name: str) -> dict:
    """Unpickle one batch file's bytes with the restricted unpickler; errors name the file."""
    try:
        obj = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any failure of a hostile or corrupt pickle is the same to the user
        raise HaloRefError(
            f"CIFAR-10 file {name} was refused ({exc}); it is not an official batch file. "
            f"Delete it and download the archive again (MD5 {MD5})"
        ) from None
    if not isinstance(obj, dict) or not all(isinstance(k, bytes) for k in obj):
        raise HaloRefError(f"CIFAR-10 file {name} is not a dict with bytes keys; re-download it")
    return obj


def _images_and_labels(batch: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get(b"data"), batch.get(b"labels")
    ok = (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3 * 32 * 32
        and isinstance(labels, list)
        and len(labels) == len(data)
        and all(isinstance(v, int) and 0 <= v < 10 for v in labels)
    )
    if not ok:
        raise HaloRefError(
            f"CIFAR-10 file {name} lacks b'data' (N, 3072) uint8 or b'labels' (N ints in 0..9); "
            "re-download the archive"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # N, 32, 32, 3 (channels last)
    return np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64)


def _md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _by_hand(data_dir: str) -> str:
    return (
        f"download {URL} on a machine with network access and copy it to "
        f"{os.path.join(data_dir, ARCHIVE)} (or pass --data-dir to the folder holding it)"
    )


def download_archive(
    data_dir: str, *, url: str | None = None, md5: str | None = None, progress=True
) -> str:
    """Fetch the archive into `data_dir` and return its path; verified before it is kept.

    The bytes go to a temporary file in `data_dir`, are checked against `md5`, and only then
    renamed to `cifar-10-python.tar.gz`; on any failure the temporary file is removed.
    `url` defaults to $HALO_REF_CIFAR10_URL, else the official address; `md5` to MD5.
    """
    from tqdm import tqdm

    md5 = md5 or MD5
    url = url or os.environ.get("HALO_REF_CIFAR10_URL") or URL
    os.makedirs(data_dir, exist_ok=True)
    final = os.path.join(data_dir, ARCHIVE)

    def fetch(out):
        # runs inside atomic_write: any error, a wrong checksum included, deletes the partial file
        try:
            resp = urllib.request.urlopen(url, timeout=60)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HaloRefError(
                f"cannot download CIFAR-10 from {url} ({reason}); you may be offline: "
                + _by_hand(data_dir)
            ) from None
        h = hashlib.md5()
        with resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc="CIFAR-10", disable=not progress
            ) as bar:
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        if h.hexdigest() != md5:
            raise HaloRefError(
                f"the file downloaded from {url} has MD5 {h.hexdigest()}, expected {md5}; it was "
                "deleted. Try again later, or " + _by_hand(data_dir)
            )

    atomic_write(final, fetch, suffix=".part")
    return final


def extract(archive: str, data_dir: str, *, md5: str | None = None) -> str:
    """Check `archive` against `md5`, then extract the batch files into `data_dir/FOLDER`.

    Only the known member names are read, as regular files (no links, no paths outside); the
    folder appears by a rename once it is complete.
    """
    md5 = md5 or MD5
    digest = _md5(archive)
    if digest != md5:
        raise HaloRefError(
            f"{archive} has MD5 {digest}, expected {md5} (truncated or not the official "
            "archive); delete it and run again with --download, or " + _by_hand(data_dir)
        )
    final = os.path.join(data_dir, FOLDER)
    tmp = tempfile.mkdtemp(prefix=f".{FOLDER}.", dir=data_dir)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in MEMBERS:
                try:
                    info = tar.getmember(f"{FOLDER}/{member}")
                except KeyError:
                    if member == "readme.html":
                        continue
                    raise HaloRefError(
                        f"{archive} lacks {FOLDER}/{member}; re-download it"
                    ) from None
                if not info.isfile():
                    raise HaloRefError(f"{archive}: {info.name} is not a regular file")
                with tar.extractfile(info) as src, open(os.path.join(tmp, member), "wb") as dst:
                    shutil.copyfileobj(src, dst)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_cifar10(
    data_dir: str, *, download: bool = False, url: str | None = None, md5: str | None = None
) -> Dataset:
    """CIFAR-10 as a `Dataset`: 50,000 train and 10,000 test 32x32x3 uint8 images.

    Looks for `data_dir/cifar-10-batches-py/`, else `data_dir/cifar-10-python.tar.gz` (checked
    and extracted), else downloads it when `download` is true, else stops and says what to do.
    """
    folder = os.path.join(data_dir, FOLDER)
    archive = os.path.join(data_dir, ARCHIVE)
    if not os.path.isdir(folder):
        if not os.path.isfile(archive):
            if not download:
                raise HaloRefError(
                    f"CIFAR-10 is not in {data_dir}; add --download to fetch it (163 MB), or "
                    + _by_hand(data_dir)
                )
            download_archive(data_dir, url=url, md5=md5)
        extract(archive, data_dir, md5=md5)
    parts = {}
    for name in [*TRAIN_BATCHES, "test_batch"]:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise HaloRefError(f"{path} is missing; delete {folder} and run again to re-extract")
        with open(path, "rb") as f:
            parts[name] = _images_and_labels(load_batch(f.read(), path), path)
    x_train = np.concatenate([parts[n][0] for n in TRAIN_BATCHES])
    y_train = np.concatenate([parts[n][1] for n in TRAIN_BATCHES])
    return Dataset(
        name="cifar10",
        x_train=x_train,
        y_train=y_train,
        x_test=parts["test_batch"][0],
        y_test=parts["test_batch"][1],
        num_classes=10,
        class_names=list(CLASS_NAMES),
    )
