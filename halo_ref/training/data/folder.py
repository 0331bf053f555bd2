"""Image folders: `--dataset folder:PATH`, the layout image tools write, or an archive of it.

PATH is a folder, or a `.tar`, `.tar.gz`/`.tgz` or `.zip` file holding one (read in memory,
member by member: nothing is extracted to disk, and members whose names are absolute or climb
out with `..` are refused). Inside, either

    train/<class>/<images>  and  test/<class>/<images>     (the official split), or
    <class>/<images>                                        (one tree: a test set is held out)

A root holding nothing but a single folder of folders is entered (archives usually wrap the
tree in one). With one tree, or `train/` without `test/`, `--test-split` (default 0.2) of each class is
held out as the test set, stratified with a fixed seed. Class names are the folder names in
sorted order (label 0 is the first); images inside a class folder are read in sorted order,
from its subfolders too. Hidden files and folders (".name", `__MACOSX`) are not read, nor are
files beside the class folders (a README): a note names them.

Images are read by `halo_ref.training.data.images` (Pillow: PNG, JPEG, and whatever else it
reads; grey kept one-channel when every image is grey; alpha composited on black). With
`--image-size S` every image is brought to S x S by the cover-and-centre-crop rule; without it,
images that all have one size keep it, and images of several sizes are all brought to S x S
with S the median of their shorter sides, at most 64 (a note says so).

Problems are one-line errors naming the file or folder: a file Pillow cannot read (not an
image, or corrupt), an empty class folder, a class in test/ that train/ lacks, an archive
member that is a link or points outside. With `--skip-bad-images` each such file, folder or
class is left out instead, and the notes count them.

Decoding is the slow part (tens of microseconds per small image), so the decoded arrays are
cached: an .npz under the data folder's `folders/`, keyed by a hash of the source (every file's
path, size and modification time; an archive's own), the size rule, the skip flag and Pillow's
version. Change any file and the key changes; the old entry of that source is then replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np

from ..._atomic import atomic_write
from ..._checks import HaloRefError, arg
from .dataset import Dataset
from .images import RESIZE_RULE, BadImage, header, pillow_version, read_image
from .splits import TEST_SPLIT_SEED, split_test

ARCHIVES = (".tar", ".tar.gz", ".tgz", ".zip")
MAX_FILE_BYTES = 64 << 20  # larger than any sensible training image: refused, not read
DEFAULT_MAX_SIDE = 64  # images of mixed sizes are brought to at most 64 x 64 unless asked
DEFAULT_TEST_SPLIT = 0.2
CACHE_VERSION = 1
_HIDDEN = ("__MACOSX",)


# -- where the files are: a folder or an archive ---------------------------------------------
class _Source:
    """The files of a tree: `files` maps a path inside it ("train/cat/1.png") to its size,
    `dirs` holds every folder, `bad` the entries refused before reading (path, reason)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.files: dict[str, int] = {}
        self.dirs: set[str] = set()
        self.bad: list[tuple[str, str]] = []

    def add_file(self, path: str, size: int) -> None:
        if size > MAX_FILE_BYTES:
            self.bad.append((path, f"is {size:,} bytes, more than an image file may take "
                                   f"({MAX_FILE_BYTES >> 20} MB)"))  # fmt: skip
        else:
            self.files[path] = size

    def stamp(self) -> list:  # pragma: no cover - each source defines it
        raise NotImplementedError

    def read(self, path: str) -> bytes:  # pragma: no cover
        raise NotImplementedError


def _hidden(parts) -> bool:
    return any(p.startswith(".") or p in _HIDDEN for p in parts)


class _FolderSource(_Source):
    def __init__(self, root: str, where: str) -> None:
        super().__init__(where)
        self.root = root
        self._stamp = []
        for folder, subdirs, names in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if not _hidden([d]))
            rel = os.path.relpath(folder, root).replace(os.sep, "/")
            rel = "" if rel == "." else rel
            if rel:
                self.dirs.add(rel)
            for name in sorted(names):
                if _hidden([name]):
                    continue
                path = posixpath.join(rel, name)
                st = os.stat(os.path.join(folder, name))
                self.add_file(path, st.st_size)
                self._stamp.append((path, st.st_size, st.st_mtime_ns))

    def stamp(self) -> list:
        return self._stamp

    def read(self, path: str) -> bytes:
        with open(os.path.join(self.root, *path.split("/")), "rb") as f:
            return f.read()


def _member_path(name: str) -> str | None:
    """A member's path inside the archive, or None when it is absolute or climbs out."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


class _ArchiveSource(_Source):
    """A .tar(.gz) or .zip, read member by member in one pass (a compressed tar cannot seek
    back cheaply), the bytes of each image kept in memory until it is decoded."""

    def __init__(self, path: str, where: str) -> None:
        super().__init__(where)
        st = os.stat(path)
        self._stamp = [(os.path.abspath(path), st.st_size, st.st_mtime_ns)]
        self._data: dict[str, bytes] = {}
        try:
            if path.endswith(".zip"):
                self._read_zip(path)
            else:
                self._read_tar(path)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise HaloRefError(
                f"{where}: cannot read the archive ({first}); check that it is a complete .tar, "
                ".tar.gz or .zip file"
            ) from None

    def _member(self, name: str, *, is_dir: bool, is_file: bool, size: int):
        """Classify one member; returns its path when its bytes should be read."""
        path = _member_path(name)
        if path is None:
            self.bad.append((name, "points outside the archive (an absolute path or '..')"))
            return None
        if not path or _hidden(path.split("/")):
            return None
        if is_dir:
            self.dirs.add(path)
            return None
        if not is_file:
            self.bad.append((path, "is a link or a special file, not a regular file"))
            return None
        self.add_file(path, size)
        return path if path in self.files else None

    def _read_tar(self, path: str) -> None:
        with tarfile.open(path, mode="r|*") as tar:  # a stream: one pass, no seeking back
            for m in tar:
                keep = self._member(m.name, is_dir=m.isdir(), is_file=m.isfile(), size=m.size)
                if keep is not None:
                    self._data[keep] = tar.extractfile(m).read()

    def _read_zip(self, path: str) -> None:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                is_dir = info.is_dir()
                link = (info.external_attr >> 16) & 0o170000 == 0o120000  # a Unix symlink
                keep = self._member(info.filename, is_dir=is_dir, is_file=not is_dir and not link,
                                    size=info.file_size)  # fmt: skip
                if keep is not None:
                    self._data[keep] = z.read(info)

    def stamp(self) -> list:
        return self._stamp

    def read(self, path: str) -> bytes:
        return self._data[path]


# -- the layout: splits and classes ------------------------------------------------------------
@dataclass
class _Layout:
    """What the tree holds: per split ("train" and "test", or "all" for one tree), each class's
    files; the class names (of train, or of the tree); and what was not used and why."""

    root: str
    splits: dict[str, dict[str, list[str]]]
    classes: list[str]
    ignored: list[str] = field(default_factory=list)  # files beside the class folders
    bad: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, path, reason)


def _children(source: _Source, folder: str) -> tuple[list[str], list[str]]:
    """The sub-folder names and file paths directly inside `folder` ("" is the root)."""
    prefix = folder + "/" if folder else ""
    inside = [p[len(prefix) :] for p in (*source.dirs, *source.files) if p.startswith(prefix)]
    subdirs = {rest.split("/")[0] for rest in inside if rest and ("/" in rest or prefix + rest
                                                                  in source.dirs)}  # fmt: skip
    files = [prefix + rest for rest in inside if "/" not in rest and prefix + rest in source.files]
    return sorted(subdirs), sorted(files)


def _by_class(source: _Source, folder: str) -> dict[str, list[str]]:
    """Each class folder's images (from its subfolders too), in sorted order."""
    prefix = folder + "/" if folder else ""
    groups: dict[str, list[str]] = {}
    for f in source.files:
        rest = f[len(prefix) :] if f.startswith(prefix) else None
        if rest and "/" in rest:
            groups.setdefault(rest.split("/")[0], []).append(f)
    return {c: sorted(files) for c, files in groups.items()}


def _layout(source: _Source, where: str, skip: bool) -> _Layout:
    root = ""
    subdirs, files = _children(source, root)
    # enter a folder that wraps the tree (it holds folders itself, unlike a lone class folder)
    while len(subdirs) == 1 and not files and subdirs[0] not in ("train", "test"):
        inner = posixpath.join(root, subdirs[0])
        if not _children(source, inner)[0]:
            break
        root = inner
        subdirs, files = _children(source, root)
    named = lambda d: posixpath.join(root, d)  # noqa: E731 - a path inside the tree
    if "train" in subdirs:
        split_dirs = {"train": named("train")}
        if "test" in subdirs:
            split_dirs["test"] = named("test")
    elif "test" in subdirs:
        raise HaloRefError(
            f"{where}: {named('test')}/ has no train/ beside it; add {named('train')}/<class>/ "
            "with the training images, or put the classes at the top of the tree"
        )
    else:
        split_dirs = {"all": root}
    layout = _Layout(root=root, splits={}, classes=[], ignored=list(files))
    for split, folder in split_dirs.items():
        classes, stray = _children(source, folder)
        layout.ignored += stray
        images = _by_class(source, folder)
        layout.splits[split] = {c: images[c] for c in classes if c in images}
        layout.bad += [("class", posixpath.join(folder, c), "is empty")
                       for c in classes if c not in images]  # fmt: skip
    train = layout.splits.get("train", layout.splits.get("all"))
    layout.classes = sorted(train)
    for c in sorted(set(layout.splits.get("test", {})) - set(train)):
        n = len(layout.splits["test"].pop(c))
        layout.bad.append(("test class", posixpath.join(split_dirs["test"], c),
                           f"is a class that {split_dirs['train']}/ does not have ({n} images)"))  # fmt: skip
    layout.bad = [("file", p, why) for p, why in source.bad] + layout.bad
    if layout.bad and not skip:
        raise _error(where, *layout.bad[0])
    top = split_dirs.get("train", root or ".")
    if len(layout.classes) < 2:
        found = f"only {layout.classes[0]!r}" if layout.classes else "none"
        raise HaloRefError(
            f"{where}: a classifier needs at least two class folders in {top}/ ({found}); "
            "the layout is <class>/<images>, or train/<class>/ and test/<class>/"
        )
    return layout


def _error(where: str, kind: str, path: str, reason: str) -> HaloRefError:
    """The one-line error for a bad file, class folder or test class."""
    skip = arg("skip_bad_images")
    if kind == "class":
        return HaloRefError(
            f"{where}: class folder {path}/ {reason}; put its images in it or remove it, or "
            f"pass {skip} to leave the class out"
        )
    if kind == "test class":
        return HaloRefError(
            f"{where}: {path}/ {reason}; add that class to the training images or remove it, "
            f"or pass {skip} to leave its images out"
        )
    return HaloRefError(f"{where}: {path} {reason}; remove or replace it, or pass {skip} to "
                        "leave such files out")  # fmt: skip


# -- decoding ----------------------------------------------------------------------------------
@dataclass
class _Decoded:
    """Decoded images of each split, their labels, and the notes the run should print."""

    arrays: dict[str, tuple[np.ndarray, np.ndarray]]
    classes: list[str]
    notes: list[str]


def _decode(source: _Source, layout: _Layout, where, image_size, skip, progress) -> _Decoded:
    from tqdm import tqdm

    label = {c: k for k, c in enumerate(layout.classes)}
    items = [(split, f, label[c]) for split, by_class in layout.splits.items()
             for c in layout.classes for f in by_class.get(c, [])]  # fmt: skip
    bad = list(layout.bad)
    heads = []
    for split, f, y in items:  # first pass, headers only: sizes and grey or colour
        try:
            heads.append((split, f, y, *header(source.read(f), f)))
        except BadImage as exc:
            bad.append(_unreadable(where, f, exc, skip))
    if not heads:
        raise HaloRefError(f"{where}: no image could be read")
    channels = 1 if all(grey for *_, grey in heads) else 3
    size, size_note = _target_size([hw for *_, hw, _ in heads], image_size)
    out = {s: ([], []) for s in layout.splits}
    t0 = time.perf_counter()
    for split, f, y, _, _ in tqdm(heads, desc="decoding images", unit="img", disable=not progress,
                                  leave=False, dynamic_ncols=True):  # fmt: skip
        try:
            out[split][0].append(read_image(source.read(f), f, channels=channels, size=size))
            out[split][1].append(y)
        except BadImage as exc:
            bad.append(_unreadable(where, f, exc, skip))
    seconds = time.perf_counter() - t0
    arrays = {}
    for split, (xs, ys) in out.items():
        x = np.stack(xs) if xs else np.zeros((0, *size, channels), np.uint8)  # N, H, W, C
        arrays[split] = (x, np.asarray(ys, dtype=np.int64))
    kind = "grey" if channels == 1 else "RGB"
    notes = [f"decoded {sum(len(x) for x, _ in arrays.values()):,} {kind} images of "
             f"{size[0]}x{size[1]} in {seconds:.1f} s"]  # fmt: skip
    if size_note:
        notes.append(size_note)
    if layout.ignored:
        notes.append(f"ignored {len(layout.ignored)} file(s) beside the class folders "
                     f"({', '.join(layout.ignored[:3])}{', ...' if len(layout.ignored) > 3 else ''})")  # fmt: skip
    if bad:
        notes.append(_skipped(bad))
    return _Decoded(arrays, list(layout.classes), notes)


def _unreadable(where: str, path: str, exc: BadImage, skip: bool) -> tuple[str, str, str]:
    """A file Pillow could not read: the one-line error, or (with skip) its entry in the
    count of what was left out."""
    reason = str(exc)[len(path) + 1 :]  # the message without the leading file name
    if not skip:
        raise _error(where, "file", path, reason)
    return ("file", path, reason)


def _target_size(sizes, image_size) -> tuple[tuple[int, int], str | None]:
    """(H, W) every image is brought to, and a note when a rule, not --image-size, chose it."""
    if image_size is not None:
        return (image_size, image_size), None
    distinct = sorted(set(sizes))
    if len(distinct) == 1:
        return distinct[0], None
    side = int(min(DEFAULT_MAX_SIDE, np.median([min(hw) for hw in sizes])))
    lo, hi = distinct[0], distinct[-1]
    return (side, side), (
        f"the images have {len(distinct)} different sizes ({lo[0]}x{lo[1]} to {hi[0]}x{hi[1]}): "
        f"each was scaled to cover {side}x{side} and centre-cropped (the median shorter side, "
        f"at most {DEFAULT_MAX_SIDE}; {arg('image_size')} chooses another size)"
    )


def _skipped(bad) -> str:
    counts = {}
    for kind, path, _ in bad:
        counts.setdefault(kind, []).append(path)
    words = {"file": "unreadable file(s)", "class": "empty class folder(s)",
             "test class": "test class(es) missing from train"}  # fmt: skip
    parts = [f"{len(paths)} {words[kind]} (first: {paths[0]})" for kind, paths in counts.items()]
    return f"{arg('skip_bad_images')}: left out " + ", ".join(parts)


# -- the cache ---------------------------------------------------------------------------------
def _cache_key(source: _Source, path: str, image_size, skip) -> tuple[str, str]:
    """(the source's id, the key of its content and the decoding settings)."""
    source_id = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
    settings = {"version": CACHE_VERSION, "files": source.stamp(), "image_size": image_size,
                "skip": bool(skip), "pillow": pillow_version(), "resize": RESIZE_RULE,
                "max_side": DEFAULT_MAX_SIDE}  # fmt: skip
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
    return source_id, digest


def _load_cache(file: str) -> _Decoded | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()]))
            arrays = {s: (z[f"x/{s}"], z[f"y/{s}"]) for s in meta["splits"]}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # missing, unreadable or from another version: decode again
    return _Decoded(arrays, meta["classes"], meta["notes"])


def _save_cache(folder: str, source_id: str, digest: str, decoded: _Decoded) -> str | None:
    """Write the cache entry (atomically) and remove the source's older ones; returns a note
    when the cache cannot be written (the run goes on without it)."""
    arrays = {}
    for split, (x, y) in decoded.arrays.items():
        arrays[f"x/{split}"], arrays[f"y/{split}"] = x, y
    meta = {"splits": list(decoded.arrays), "classes": decoded.classes, "notes": decoded.notes}
    arrays["meta"] = np.array(json.dumps(meta))
    target = os.path.join(folder, f"{source_id}-{digest}.npz")
    try:
        os.makedirs(folder, exist_ok=True)
        atomic_write(target, lambda f: np.savez(f, **arrays))
        for name in os.listdir(folder):
            if name.startswith(source_id + "-") and name != os.path.basename(target):
                os.unlink(os.path.join(folder, name))
    except OSError as exc:
        return f"the decoded images could not be cached in {folder} ({exc.strerror or exc})"
    return None


# -- the loader --------------------------------------------------------------------------------
def load_folder(
    path: str,
    *,
    image_size: int | None = None,
    test_split: float | None = None,
    skip_bad_images: bool = False,
    cache_dir: str | None = None,
    progress: bool = False,
) -> Dataset:
    """The image folder (or archive) at `path` as a `Dataset` (see the module docstring).

    image_size: bring every image to S x S (None: keep a common size, see the docstring);
    test_split: the fraction held out as the test set when the tree has no test/ (default
    0.2; an error when it has one); skip_bad_images: leave bad files, empty class folders and
    test-only classes out (counted in the notes) instead of stopping; cache_dir: where decoded
    arrays are cached (None: no cache).
    """
    where = arg("dataset", f"folder:{path}")
    source = _open(path, where)
    source_id, digest = _cache_key(source, path, image_size, skip_bad_images)
    cache_file = os.path.join(cache_dir, f"{source_id}-{digest}.npz") if cache_dir else None
    t0 = time.perf_counter()
    decoded = _load_cache(cache_file) if cache_file else None
    if decoded is not None:
        n = sum(len(x) for x, _ in decoded.arrays.values())
        decoded.notes = [f"read {n:,} decoded images from the cache {cache_file} in "
                         f"{time.perf_counter() - t0:.1f} s", *decoded.notes[1:]]  # fmt: skip
    else:
        if isinstance(source, _Pending):
            source = source.open()
        layout = _layout(source, where, skip_bad_images)
        decoded = _decode(source, layout, where, image_size, skip_bad_images, progress)
        if cache_dir:
            problem = _save_cache(cache_dir, source_id, digest, decoded)
            if problem:
                decoded.notes.append(problem)
    return _dataset(path, where, decoded, test_split)


class _Pending:
    """An archive not read yet: its stamp (path, size, mtime) is all the cache key needs."""

    def __init__(self, path: str, where: str) -> None:
        self.path, self.where = path, where
        st = os.stat(path)
        self._stamp = [(os.path.abspath(path), st.st_size, st.st_mtime_ns)]

    def stamp(self) -> list:
        return self._stamp

    def open(self) -> _ArchiveSource:
        return _ArchiveSource(self.path, self.where)


def _open(path: str, where: str):
    if os.path.isdir(path):
        return _FolderSource(path, where)
    if not os.path.exists(path):
        raise HaloRefError(f"{where}: no such folder or file")
    if not path.lower().endswith(ARCHIVES):
        raise HaloRefError(
            f"{where}: not a folder, nor a .tar, .tar.gz, .tgz or .zip archive of one"
        )
    return _Pending(path, where)


def _dataset(path: str, where: str, decoded: _Decoded, test_split: float | None) -> Dataset:
    arrays, notes = decoded.arrays, list(decoded.notes)
    k = len(decoded.classes)
    if "test" in arrays:
        if test_split is not None:
            raise HaloRefError(
                f"{arg('test_split', test_split)}: {where} has its own test/ folder; drop "
                f"{arg('test_split')} to use it"
            )
        (x_train, y_train), (x_test, y_test) = arrays["train"], arrays["test"]
    else:
        fraction = DEFAULT_TEST_SPLIT if test_split is None else test_split
        x, y = arrays.get("train", arrays.get("all"))
        (x_train, y_train), (x_test, y_test) = split_test(x, y, k, fraction)
        notes.append(
            f"no test/ folder: {len(x_test):,} images ({fraction:g} of each class, seed "
            f"{TEST_SPLIT_SEED}) are held out as the test set ({arg('test_split')} to change)"
        )
    if len(x_train) == 0 or len(x_test) == 0:
        raise HaloRefError(f"{where}: no training or no test image is left")
    name = os.path.basename(os.path.normpath(path))
    return Dataset(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   num_classes=k, class_names=list(decoded.classes), notes=notes)  # fmt: skip
