"""halo_ref.training.data.folder and .images: image folders and archives of them, the pixel
rules (grey, RGB, alpha, 16 bits, sizes), each bad-data case, skipping, and the cache.

Every test writes its own small images (PNG is lossless, so the arrays read back must equal
the arrays written); nothing here needs the shared data.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from halo_ref import HaloRefError
from halo_ref.training.data import load_dataset
from halo_ref.training.data.folder import load_folder
from halo_ref.training.data.images import cover_size, read_image
from halo_ref.training.data.splits import TEST_SPLIT_SEED, stratified_holdout

CLASSES = ("cat", "dog", "emu")  # written in this order; read back sorted (the same here)


def _png(array, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def _write(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def _images(seed, n, shape=(8, 8, 3)):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _split_tree(root, n_train=4, n_test=2, shape=(8, 8, 3)):
    """train/<class>/<i>.png and test/<class>/<i>.png; returns the pixels written per split."""
    written = {"train": [], "test": []}
    files = {}
    for k, c in enumerate(CLASSES):
        for split, n in (("train", n_train), ("test", n_test)):
            for i, img in enumerate(_images(10 * k + len(split), n, shape)):
                files[f"{split}/{c}/{i:02d}.png"] = _png(img)
                written[split].append((img, k))
    _write(root, files)
    return written


def _stack(pairs):
    return np.stack([img for img, _ in pairs]), np.array([k for _, k in pairs])


def _load(path, tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return load_folder(str(path), **kw)


# -- layouts -----------------------------------------------------------------------------------
def test_train_and_test_folders_give_the_pixels_written_with_sorted_class_names(tmp_path):
    written = _split_tree(tmp_path / "data")
    _write(tmp_path / "data", {"README.md": b"about", "train/.DS_Store": b"junk"})
    d = _load(tmp_path / "data", tmp_path)
    for split, x, y in (("train", d.x_train, d.y_train), ("test", d.x_test, d.y_test)):
        xs, ys = _stack(written[split])
        assert np.array_equal(x, xs) and np.array_equal(y, ys)
    assert d.class_names == list(CLASSES) and d.num_classes == 3 and d.x_train.dtype == np.uint8
    assert any("ignored 1 file(s) beside the class folders (README.md)" in n for n in d.notes)


def test_class_names_are_sorted_folder_names_and_subfolders_are_read(tmp_path):
    files = {"zebra/a.png": _png(_images(0, 1)[0]), "ant/deep/er/b.png": _png(_images(1, 1)[0])}
    files.update({f"ant/{i}.png": _png(_images(2 + i, 1)[0]) for i in range(4)})
    files.update({f"zebra/{i}.png": _png(_images(9 + i, 1)[0]) for i in range(4)})
    _write(tmp_path / "t", files)
    d = _load(tmp_path / "t", tmp_path, test_split=0.2)
    assert d.class_names == ["ant", "zebra"] and len(d.x_train) + len(d.x_test) == 10


def test_one_tree_is_split_stratified_with_the_fixed_test_seed(tmp_path):
    files, pixels, labels = {}, [], []
    for k, c in enumerate(CLASSES):
        for i, img in enumerate(_images(k, 10)):
            files[f"wrapper/{c}/{i:02d}.png"] = _png(img)  # a root holding one folder is entered
            pixels.append(img)
            labels.append(k)
    _write(tmp_path / "t", files)
    d = _load(tmp_path / "t", tmp_path)
    held = stratified_holdout(np.array(labels), 3, 0.2, TEST_SPLIT_SEED)
    assert np.array_equal(d.x_test, np.stack(pixels)[held])
    assert np.bincount(d.y_test).tolist() == [2, 2, 2] and len(d.x_train) == 24
    assert any("no test/ folder: 6 images (0.2 of each class" in n for n in d.notes)
    assert len(_load(tmp_path / "t", tmp_path, test_split=0.5).x_test) == 15


def test_a_test_split_is_refused_when_the_tree_has_its_own_test_folder(tmp_path):
    _split_tree(tmp_path / "data")
    with pytest.raises(HaloRefError, match="test_split=0.3: .* has its own test/ folder; drop"):
        _load(tmp_path / "data", tmp_path, test_split=0.3)


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "tgz", "zip"])
def test_archives_read_like_the_folder_without_extracting(tmp_path, kind):
    written = _split_tree(tmp_path / "data")
    archive = tmp_path / f"data.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for folder, _, names in os.walk(tmp_path / "data"):
                for name in names:
                    full = os.path.join(folder, name)
                    z.write(full, "data/" + os.path.relpath(full, tmp_path / "data"))
    else:
        with tarfile.open(archive, "w:gz" if "gz" in kind else "w") as t:
            t.add(tmp_path / "data", arcname="data")
    before = sorted(os.listdir(tmp_path))
    d = _load(archive, tmp_path, cache_dir=None)
    assert sorted(os.listdir(tmp_path)) == before  # nothing extracted beside it
    assert np.array_equal(d.x_train, _stack(written["train"])[0])
    assert np.array_equal(d.y_test, _stack(written["test"])[1])


def test_load_dataset_reads_folders_and_keeps_folder_options_to_folders(tmp_path):
    _split_tree(tmp_path / "data")
    d = load_dataset(f"folder:{tmp_path / 'data'}", data_dir=str(tmp_path / "home"))
    assert d.x_train.shape == (12, 8, 8, 3) and os.listdir(tmp_path / "home" / "folders")
    with pytest.raises(HaloRefError, match="image_size=16 applies to folder: datasets only"):
        load_dataset("digits", image_size=16)


# -- pixels: grey, RGB, alpha, 16 bits, sizes --------------------------------------------------
def test_grey_stays_one_channel_and_mixed_grey_and_rgb_become_rgb(tmp_path):
    grey = _images(0, 8, (6, 6))
    files = {f"{c}/{i}.png": _png(grey[4 * k + i]) for k, c in enumerate(("a", "b"))
             for i in range(4)}  # fmt: skip
    _write(tmp_path / "g", files)
    d = _load(tmp_path / "g", tmp_path, test_split=0.25)
    assert d.image_shape == (6, 6, 1)
    assert sorted(map(bytes, np.concatenate([d.x_train, d.x_test])[..., 0])) == sorted(
        map(bytes, grey)
    )
    colour = _images(1, 1, (6, 6, 3))[0]
    _write(tmp_path / "g", {"a/rgb.png": _png(colour)})
    d = _load(tmp_path / "g", tmp_path, test_split=0.25)
    every = np.concatenate([d.x_train, d.x_test])
    assert d.image_shape == (6, 6, 3)
    assert any(np.array_equal(x, colour) for x in every)  # the colour image as written
    g0 = np.repeat(grey[0][..., None], 3, axis=-1)  # a grey image: its level in R, G and B
    assert any(np.array_equal(x, g0) for x in every)


def test_alpha_is_composited_on_black():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 100, 50, 128)
    rgba[0, 1] = (255, 255, 255, 0)  # fully transparent white: black
    rgba[1, :] = (10, 20, 30, 255)
    out = read_image(_png(rgba, "RGBA"), "x.png", channels=3, size=(2, 2))
    expected = np.rint(rgba[..., :3] * (rgba[..., 3:] / 255.0)).astype(np.uint8)
    assert np.array_equal(out, expected) and out[0, 0].tolist() == [100, 50, 25]
    la = np.stack([np.full((2, 2), 200, np.uint8), np.array([[255, 0], [51, 255]], np.uint8)], -1)
    grey = read_image(_png(la, "LA"), "y.png", channels=1, size=(2, 2))
    assert grey[..., 0].tolist() == [[200, 0], [40, 200]]


def test_sixteen_bit_grey_is_scaled_to_eight_bits():
    v = np.array([[0, 257], [65535, 32896]], np.uint16)
    out = read_image(_png(v), "z.png", channels=1, size=(2, 2))
    assert out[..., 0].tolist() == [[0, 1], [255, 128]]


def test_a_palette_image_of_greys_counts_as_grey(tmp_path):
    p = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16, "L").convert("P")
    buf = io.BytesIO()
    p.save(buf, format="PNG")
    files = {f"{c}/{i}.png": buf.getvalue() for c in ("a", "b") for i in range(2)}
    _write(tmp_path / "p", files)
    assert _load(tmp_path / "p", tmp_path, test_split=0.5).image_shape == (4, 4, 1)


def test_the_size_rule_covers_then_crops_the_centre():
    wide = np.zeros((8, 16), np.uint8)
    wide[:, 4:12] = 255  # the central 8 columns are white
    assert (read_image(_png(wide), "w.png", channels=1, size=(8, 8)) == 255).all()
    flat = np.full((4, 4, 3), 77, np.uint8)  # a constant image stays constant when scaled
    assert (read_image(_png(flat), "f.png", channels=3, size=(10, 10)) == 77).all()
    assert cover_size((30, 40), (28, 28)) == (28, 38) and cover_size((5, 5), (7, 3)) == (7, 7)


def test_mixed_sizes_take_the_median_shorter_side_unless_image_size_is_given(tmp_path):
    sizes = [(8, 8), (10, 12), (12, 20), (16, 16)] * 2
    files = {f"{'ab'[i % 2]}/{i}.png": _png(np.full((*hw, 3), 9 * i, np.uint8))
             for i, hw in enumerate(sizes)}  # fmt: skip
    _write(tmp_path / "m", files)
    d = _load(tmp_path / "m", tmp_path, test_split=0.5)
    assert d.image_shape == (11, 11, 3)  # median of 8, 10, 12, 16 (each twice) is 11
    assert any("4 different sizes (8x8 to 16x16)" in n and "11x11" in n for n in d.notes)
    assert _load(tmp_path / "m", tmp_path, test_split=0.5, image_size=6).image_shape == (6, 6, 3)


# -- bad data: one line naming the file or folder, or skipped and counted ----------------------
def _bad_tree(root, case):
    _split_tree(root)
    png = _png(_images(99, 1)[0])
    if case == "corrupt":
        _write(root, {"train/dog/bad.png": png[: len(png) // 2]})
    elif case == "not an image":
        _write(root, {"train/dog/notes.txt": b"these are my dogs"})
    elif case == "empty class":
        os.makedirs(root / "train" / "fox")
    elif case == "test only class":
        _write(root, {"test/yak/0.png": png, "test/yak/1.png": png})


BAD = {
    "corrupt": (r"dataset='folder:.*': train/dog/bad.png is corrupt or truncated \(.*\); "
                "remove or replace it, or pass skip_bad_images to leave such files out"),
    "not an image": ("train/dog/notes.txt is not an image Pillow can read; remove or replace "
                     "it, or pass skip_bad_images"),
    "empty class": ("class folder train/fox/ is empty; put its images in it or remove it, or "
                    "pass skip_bad_images to leave the class out"),
    "test only class": (r"test/yak/ is a class that train/ does not have \(2 images\); add "
                        "that class to the training images or remove it, or pass "
                        "skip_bad_images to leave its images out"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_data_case_is_a_one_line_error_naming_it(tmp_path, case):
    _bad_tree(tmp_path / "data", case)
    with pytest.raises(HaloRefError, match=BAD[case]) as err:
        _load(tmp_path / "data", tmp_path)
    assert "\n" not in str(err.value)


SKIPPED = {
    "corrupt": ("1 unreadable file(s) (first: train/dog/bad.png)", 12, 6),
    "not an image": ("1 unreadable file(s) (first: train/dog/notes.txt)", 12, 6),
    "empty class": ("1 empty class folder(s) (first: train/fox)", 12, 6),
    "test only class": ("1 test class(es) missing from train (first: test/yak)", 12, 6),
}


@pytest.mark.parametrize("case", sorted(SKIPPED))
def test_skip_bad_images_leaves_each_case_out_and_counts_it(tmp_path, case):
    _bad_tree(tmp_path / "data", case)
    d = _load(tmp_path / "data", tmp_path, skip_bad_images=True)
    note, n_train, n_test = SKIPPED[case]
    assert any(n.startswith("skip_bad_images: left out " + note) for n in d.notes), d.notes
    assert (len(d.x_train), len(d.x_test), d.class_names) == (n_train, n_test, list(CLASSES))


def _tar_with(path, members):
    with tarfile.open(path, "w") as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)


def _member(name, data=b"", kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data)
    if kind == tarfile.SYMTYPE:
        info.linkname, info.size = "/etc/passwd", 0
    return info, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize(
    "name, kind, message",
    [("../evil.png", tarfile.REGTYPE, r"\.\./evil.png points outside the archive"),
     ("/etc/evil.png", tarfile.REGTYPE, "/etc/evil.png points outside the archive"),
     ("a/link.png", tarfile.SYMTYPE, "a/link.png is a link or a special file")],
)  # fmt: skip
def test_archive_members_that_climb_out_or_link_are_refused_or_skipped(tmp_path, name, kind,
                                                                       message):  # fmt: skip
    png = _png(_images(0, 1)[0])
    good = [_member(f"{c}/{i}.png", png) for c in ("a", "b") for i in range(3)]
    _tar_with(tmp_path / "x.tar", [*good, _member(name, png, kind)])
    with pytest.raises(HaloRefError, match=message):
        _load(tmp_path / "x.tar", tmp_path)
    d = _load(tmp_path / "x.tar", tmp_path, skip_bad_images=True, test_split=0.34)
    assert len(d.x_train) + len(d.x_test) == 6 and any("1 unreadable" in n for n in d.notes)
    assert not (tmp_path / "evil.png").exists() and not os.path.exists("/etc/evil.png")


def test_zip_members_that_climb_out_are_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as z:
        for c in ("a", "b"):
            z.writestr(f"{c}/0.png", _png(_images(0, 1)[0]))
        z.writestr("../../evil.png", b"x")
    with pytest.raises(HaloRefError, match=r"\.\./\.\./evil.png points outside the archive"):
        _load(tmp_path / "x.zip", tmp_path)


@pytest.mark.parametrize(
    "setup, message",
    [("missing", "no such folder or file"),
     ("plain file", r"not a folder, nor a \.tar, \.tar\.gz, \.tgz or \.zip archive"),
     ("broken archive", r"cannot read the archive \(.*\); check that it is a complete"),
     ("one class", r"a classifier needs at least two class folders in \./ \(only 'a'\)"),
     ("no classes", r"a classifier needs at least two class folders in \./ \(none\)"),
     ("test without train", "test/ has no train/ beside it; add train/<class>/")],
)  # fmt: skip
def test_unusable_paths_are_one_line_errors(tmp_path, setup, message):
    path = tmp_path / "data"
    png = _png(_images(0, 1)[0])
    if setup == "plain file":
        path = tmp_path / "data.png"
        path.write_bytes(png)
    elif setup == "broken archive":
        path = tmp_path / "data.tar.gz"
        path.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    elif setup == "one class":
        _write(path, {"a/0.png": png, "a/1.png": png})
    elif setup == "no classes":
        _write(path, {"0.png": png, "1.png": png})
    elif setup == "test without train":
        _write(path, {"test/a/0.png": png, "test/b/0.png": png})
    with pytest.raises(HaloRefError, match=message):
        _load(path, tmp_path)


# -- the cache -----------------------------------------------------------------------------------
def test_the_cache_is_used_and_invalidated_when_a_file_changes(tmp_path):
    _split_tree(tmp_path / "data")
    first = _load(tmp_path / "data", tmp_path)
    assert first.notes[0].startswith("decoded 18 RGB images")
    again = _load(tmp_path / "data", tmp_path)
    assert again.notes[0].startswith("read 18 decoded images from the cache")
    assert np.array_equal(again.x_train, first.x_train) and again.class_names == first.class_names
    (entry,) = os.listdir(tmp_path / "cache")

    new = np.full((8, 8, 3), 7, np.uint8)  # same size on disk is possible: the mtime changes too
    target = tmp_path / "data" / "train" / "cat" / "00.png"
    target.write_bytes(_png(new))
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    changed = _load(tmp_path / "data", tmp_path)
    assert changed.notes[0].startswith("decoded 18 RGB images")
    assert np.array_equal(changed.x_train[0], new)
    assert os.listdir(tmp_path / "cache") != [entry] and len(os.listdir(tmp_path / "cache")) == 1


def test_the_cache_key_follows_the_size_rule_and_a_damaged_entry_is_decoded_again(tmp_path):
    _split_tree(tmp_path / "data")
    _load(tmp_path / "data", tmp_path)
    resized = _load(tmp_path / "data", tmp_path, image_size=4)
    assert resized.image_shape == (4, 4, 3) and resized.notes[0].startswith("decoded")
    (entry,) = os.listdir(tmp_path / "cache")
    (tmp_path / "cache" / entry).write_bytes(b"PK\x03\x04 damaged")
    assert _load(tmp_path / "data", tmp_path, image_size=4).notes[0].startswith("decoded")
