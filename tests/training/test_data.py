"""Datasets: the bundled digits, user .npz files, augmentation, and CIFAR-10's official format.

The CIFAR-10 tests build a tiny archive in the exact official format: Python 2 pickles
(protocol 2, bytes keys, NumPy arrays rebuilt through numpy.core.multiarray._reconstruct), written
opcode by opcode below because Python 3's pickler cannot produce Python 2's byte strings. The
archive is served over HTTP from 127.0.0.1 inside the test; nothing is downloaded.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from helpers import cifar_batch, make_cifar_archive, py2_pickle
from hypothesis import given
from strategies import augment_cases

from halo_ref import HaloRefError
from halo_ref.training.data import cifar10, load_dataset, load_digits
from halo_ref.training.data.augment import augment, channel_stats, normalise, pad_to_multiple
from halo_ref.training.data.dataset import check_classes
from halo_ref.training.data.npz import load_npz

# -- the bundled digits ----------------------------------------------------------------------


def test_digits_are_the_uci_set_with_a_stratified_split():
    d = load_digits()
    assert d.x_train.shape == (1438, 8, 8, 1) and d.x_test.shape == (359, 8, 8, 1)
    assert d.x_train.dtype == np.uint8 and d.x_train.max() == 16  # the UCI counts 0..16
    y = np.concatenate([d.y_train, d.y_test])
    counts = np.bincount(y, minlength=10)
    assert counts.sum() == 1797 and counts.min() >= 170  # every digit ~180 times
    # stratified: each class has 20% (rounded) of its images in the test split
    test_counts = np.bincount(d.y_test, minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * counts) <= 0.5)


def _with_labels(y_train, y_test=None):
    d = load_digits()
    d.y_train = np.asarray(y_train, np.int64)
    d.y_test = d.y_test if y_test is None else np.asarray(y_test, np.int64)
    d.num_classes = int(max(d.y_train.max(), d.y_test.max())) + 1  # as load_npz infers it
    return d


def test_labels_that_leave_classes_out_or_look_stray_get_a_notice():
    # once these built an 11-class model silently: a stray label 10, labels 1..10
    d = load_digits()
    assert check_classes(d, "digits") == []  # every class present, none rare
    y = d.y_train.copy()
    y[5] = 10
    (note,) = check_classes(_with_labels(y), "npz:x")
    assert note.startswith("few training images (class 10: 1) against a median of 144")
    assert "The model has 11 outputs, classes 0..10" in note
    (note,) = check_classes(_with_labels(d.y_train + 1, d.y_test + 1), "npz:x")
    assert note.startswith("no training images of class 0: the model's 11 outputs")
    assert note.endswith("if the labels are 1-based, subtract 1")
    y = np.where(d.y_train == 3, 4, d.y_train)
    (note,) = check_classes(_with_labels(y), "npz:x")
    assert note.startswith("no training images of class 3: the model's 10 outputs")
    assert "1-based" not in note


def test_a_training_set_of_one_class_is_refused():
    # once trained happily and reported 100% test accuracy
    d = _with_labels(np.full(1438, 3), np.full(359, 3))
    with pytest.raises(HaloRefError, match=r"dataset='npz:x': all 1438 training images have "
                       r"label 3; a classifier needs images of at least 2 classes"):  # fmt: skip
        check_classes(d, "npz:x")


def test_load_dataset_names_the_choices_for_an_unknown_name():
    with pytest.raises(HaloRefError, match="digits.*cifar10.*npz:PATH"):
        load_dataset("mnist")


# -- user .npz files ---------------------------------------------------------------------------


def _save(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _good(n=6, shape=(5, 7)):
    rng = np.random.default_rng(0)
    return dict(
        x_train=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        y_train=np.arange(n) % 3,
        x_test=rng.integers(0, 256, (4, *shape), dtype=np.uint8),
        y_test=np.arange(4) % 3,
    )


def test_npz_grey_images_get_a_channel_axis(tmp_path):
    d = load_npz(_save(tmp_path / "d.npz", **_good()))
    assert d.x_train.shape == (6, 5, 7, 1) and d.num_classes == 3


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(x_train=np.zeros((6, 5, 7), np.float32)), "x_train has dtype float32.*uint8"),
        (dict(y_train=np.arange(5)), "y_train has 5 labels but x_train has 6 images"),
        (dict(y_test=np.array([0, 1, -1, 2])), r"y_test\[2\] = -1 is out of range"),
        (dict(y_train=np.linspace(0, 2, 6)), "y_train has dtype float64; labels must be integers"),
        (dict(x_test=np.zeros((4, 6, 7), np.uint8)), "same size"),
        (dict(x_train=np.zeros((6, 5), np.uint8)), r"x_train has shape \(6, 5\)"),
        (dict(num_classes=np.array(2)), r"y_train\[2\] = 2 is out of range.*\[0, 2\)"),
    ],
)
def test_npz_problems_are_one_line_errors(tmp_path, change, message):
    arrays = {**_good(), **change}
    with pytest.raises(HaloRefError, match=message) as info:
        load_npz(_save(tmp_path / "d.npz", **arrays))
    assert "\n" not in str(info.value)


def test_npz_missing_key_truncated_file_and_pickles_are_refused(tmp_path):
    arrays = _good()
    del arrays["y_test"]
    with pytest.raises(HaloRefError, match=r"missing key\(s\) \['y_test'\]"):
        load_npz(_save(tmp_path / "a.npz", **arrays))
    whole = tmp_path / "b.npz"
    _save(whole, **_good())
    (tmp_path / "c.npz").write_bytes(whole.read_bytes()[:100])
    with pytest.raises(HaloRefError, match="cannot read it as an .npz"):
        load_npz(str(tmp_path / "c.npz"))
    objects = {**_good(), "y_test": np.array([0, 1, 2, "x"], dtype=object)}
    with pytest.raises(HaloRefError, match="cannot read"):  # allow_pickle=False refuses objects
        load_npz(_save(tmp_path / "d.npz", **objects))
    (tmp_path / "e.npz").write_text("x_train,y_train\n")
    with pytest.raises(HaloRefError, match="not an .npz file; save one with np.savez"):
        load_npz(str(tmp_path / "e.npz"))
    with pytest.raises(HaloRefError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'nothing.npz'}")


# -- normalisation, padding, augmentation ----------------------------------------------------


def test_normalise_gives_zero_mean_unit_std_per_channel():
    x = np.random.default_rng(1).integers(0, 256, (20, 6, 5, 3), dtype=np.uint8)
    mean, std = channel_stats(x)
    z = normalise(x, mean, std, np.float64)
    assert z.shape == (20, 3, 6, 5)
    # exact up to float64 rounding of ~600 terms: 1e-12 leaves a wide margin
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, rtol=1e-12)


def test_pad_to_multiple_centres_the_image():
    x = np.ones((2, 1, 5, 8))
    y, hw = pad_to_multiple(x, 4)
    assert hw == (8, 8) and y.shape == (2, 1, 8, 8)
    assert y[:, :, 1:6, :].sum() == x.sum() and y[:, :, 0].sum() == 0 and y[:, :, 6:].sum() == 0


@given(augment_cases())
def test_augment_is_a_crop_of_the_padded_image_and_reproducible(case):
    pad, flip, seed = case
    x = np.random.default_rng(seed).standard_normal((3, 2, 5, 6))
    a = augment(x, np.random.default_rng(seed), crop_pad=pad, flip=flip)
    b = augment(x, np.random.default_rng(seed), crop_pad=pad, flip=flip)
    assert np.array_equal(a, b)  # same generator state, same batch, bit for bit
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    for i in range(3):  # each output image is one window of its padded image, maybe mirrored
        windows = [
            padded[i, :, dy : dy + 5, dx : dx + 6]
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
        ]
        candidates = windows + ([w[:, :, ::-1] for w in windows] if flip else [])
        assert any(np.array_equal(a[i], w) for w in candidates)
    if pad == 0 and not flip:
        assert np.array_equal(a, x)


# -- CIFAR-10 in its official format ------------------------------------------------------------


def test_py2_pickle_writer_matches_the_standard_reader():
    # the writer's output must read back with pickle's own loader exactly as the official files
    b = cifar_batch(3, 0, b"x")
    got = pickle.loads(py2_pickle(b), encoding="bytes")
    assert got[b"labels"] == b[b"labels"] and np.array_equal(got[b"data"], b[b"data"])


def test_restricted_unpickler_reads_an_official_batch():
    b = cifar_batch(5, 3, b"training batch 3 of 5")
    got = cifar10.load_batch(py2_pickle(b), "data_batch_3")
    assert got[b"filenames"] == b[b"filenames"] and got[b"batch_label"] == b[b"batch_label"]
    assert got[b"data"].dtype == np.uint8 and np.array_equal(got[b"data"], b[b"data"])


def _evil(module: bytes, name: bytes, arg: bytes) -> bytes:
    """A pickle that calls module.name(arg) when loaded."""
    return b"\x80\x02c" + module + b"\n" + name + b"\n(U" + bytes([len(arg)]) + arg + b"tR."


@pytest.mark.parametrize(
    "module, name, arg_of",
    [
        (b"os", b"system", lambda p: f"touch {p}".encode()),
        (b"posix", b"system", lambda p: f"touch {p}".encode()),
        (b"subprocess", b"getoutput", lambda p: f"touch {p}".encode()),
        (b"builtins", b"exec", lambda p: f"open({str(p)!r}, 'w').close()".encode()),
        (b"__builtin__", b"eval", lambda p: f"open({str(p)!r}, 'w')".encode()),
    ],
)
def test_tampered_batch_that_would_create_a_file_is_refused(tmp_path, module, name, arg_of):
    marker = tmp_path / "pwned"
    payload = _evil(module, name, arg_of(marker))
    pickle.loads(payload)  # the payload is live: an ordinary unpickler runs it...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(HaloRefError, match=f"refused global {module.decode()}.{name.decode()}"):
        cifar10.load_batch(payload, "data_batch_1")
    assert not marker.exists()


def test_tampered_archive_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = _evil(b"os", b"system", f"touch {marker}".encode())
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _, md5, _ = make_cifar_archive(str(data_dir), tamper={"data_batch_2": evil})
    with pytest.raises(HaloRefError, match="data_batch_2 was refused.*not an official batch"):
        cifar10.load_cifar10(str(data_dir), md5=md5)
    assert not marker.exists()


def test_cifar_download_check_extract_and_load(http_folder, tmp_path, capsys):
    www, base = http_folder
    _, md5, batches = make_cifar_archive(str(www))
    data_dir = tmp_path / "cache"
    d = cifar10.load_cifar10(str(data_dir), download=True, url=f"{base}/{cifar10.ARCHIVE}", md5=md5)
    assert "CIFAR-10" in capsys.readouterr().err  # the tqdm progress bar
    assert sorted(os.listdir(data_dir)) == [cifar10.FOLDER, cifar10.ARCHIVE]
    assert d.x_train.shape == (20, 32, 32, 3) and d.x_test.shape == (4, 32, 32, 3)
    # rows are the red, green, blue 32x32 planes: pixel (r, c) of channel k is k*1024 + 32r + c
    first = batches["data_batch_1"][b"data"][0]
    assert d.x_train[0, 5, 7, 2] == first[2 * 1024 + 5 * 32 + 7]
    assert list(d.y_test) == batches["test_batch"][b"labels"]
    # a second load uses the extracted folder, even with the archive gone and no network
    os.unlink(data_dir / cifar10.ARCHIVE)
    again = cifar10.load_cifar10(str(data_dir), md5=md5)
    assert np.array_equal(again.x_train, d.x_train)


def test_cifar_checksum_mismatch_leaves_nothing_behind(http_folder, tmp_path):
    www, base = http_folder
    make_cifar_archive(str(www))
    data_dir = tmp_path / "cache"
    with pytest.raises(HaloRefError, match="has MD5 .* expected c58f30108f7.*deleted"):
        cifar10.load_cifar10(str(data_dir), download=True, url=f"{base}/{cifar10.ARCHIVE}")
    assert os.listdir(data_dir) == []  # no partial file, no extracted folder


def test_cifar_offline_and_missing_messages_say_how_to_place_the_file(tmp_path, http_folder):
    with pytest.raises(HaloRefError, match="add --download.*copy it to .*cifar-10-python.tar.gz"):
        load_dataset("cifar10", data_dir=str(tmp_path / "empty"))
    _, base = http_folder
    with pytest.raises(HaloRefError, match="cannot download.*offline.*copy it to"):
        cifar10.load_cifar10(str(tmp_path / "c"), download=True, url=f"{base}/missing.tar.gz")
    assert os.listdir(tmp_path / "c") == []


def test_cifar_archive_placed_by_hand_is_checked_before_extraction(tmp_path):
    path, md5, _ = make_cifar_archive(str(tmp_path))
    with open(path, "r+b") as f:  # truncate: a download that stopped half-way
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(HaloRefError, match="truncated or not the official archive"):
        cifar10.load_cifar10(str(tmp_path), md5=md5)
    assert not (tmp_path / cifar10.FOLDER).exists()
