"""halo_ref.training.predict: a checkpoint applied to image files the way its training read
images, for every dataset kind; top-k; attention maps on the image's pixels. Every image is
written by the tests; checkpoints are a real short run (digits) or a model saved with the
metadata a run writes (the other kinds: only the metadata differs between them)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import fake_checkpoint, write_png
from numpy.testing import assert_allclose, assert_array_equal

from halo_ref import HaloRefError, backend
from halo_ref.models import halonet
from halo_ref.training.checkpoint import load_checkpoint
from halo_ref.training.data import load_dataset
from halo_ref.training.evaluate import Batcher
from halo_ref.training.predict import (
    attention_maps,
    find_layer,
    load_trained,
    predict,
    top_classes,
)
from halo_ref.viz import halo_layers, query_attention


def numpy_backend():
    return backend.use("numpy")  # a few images: no compiled kernels needed


def expected_logits(ckpt, pixels):
    """The logits of the checkpoint's model on uint8 pixels (H, W, C), prepared as in training."""
    state, _, meta, _ = load_checkpoint(ckpt)
    _, H, W, C = meta["dataset_shape"]
    net = halonet(meta["config"]["model"], num_classes=meta["num_classes"], in_chans=C,
                  dtype=np.float64, rng=1)  # fmt: skip
    net.load_state_dict(state)
    net.eval()
    batch = Batcher(meta["mean"], meta["std"], meta["input_multiple"], np.float64)
    return net.forward(batch(pixels[None]))


KINDS = {  # dataset kind -> checkpoint arguments
    "npz": dict(dataset="npz:x.npz", model="tiny28", shape=(28, 28, 1),
                class_names=("boot", "coat", "shirt", "sock")),
    "folder": dict(dataset="folder:photos", model="tiny64", shape=(64, 64, 3),
                   class_names=("cat", "dog", "fox", "yak")),
    "cifar10": dict(dataset="cifar10", model="tiny", shape=(32, 32, 3),
                    class_names=("airplane", "automobile", "bird", "cat")),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_image_of_the_training_size_gives_the_logits_of_training_preparation(tmp_path, kind):
    spec = KINDS[kind]
    ckpt = fake_checkpoint(tmp_path / "best.npz", **spec)
    H, W, C = spec["shape"]
    pixels = np.random.default_rng(3).integers(0, 256, (H, W, C), dtype=np.uint8)
    image = write_png(tmp_path / "x.png", pixels[..., 0] if C == 1 else pixels)
    clf = load_trained(ckpt)
    assert clf.class_names == list(spec["class_names"])
    assert_array_equal(clf.picture(image), pixels)
    with numpy_backend():
        (guesses,) = predict(clf, [image], k=3)
    probs = np.exp(expected_logits(ckpt, pixels)[0])
    probs /= probs.sum()
    best = np.argsort(-probs)[:3]
    assert [g.index for g in guesses] == list(best)
    assert [g.name for g in guesses] == [spec["class_names"][i] for i in best]
    # float64 model on both sides, same operations: equal up to summation order (1e-12)
    assert_allclose([g.probability for g in guesses], probs[best], rtol=0, atol=1e-12)


def test_digits_images_are_brought_to_the_pen_stroke_scale(tmp_path):
    """The UCI digits store 0..16; a PNG (0..255) of a training digit must give that digit's
    stored values back, not values 16 times too large."""
    data = load_dataset("digits")
    ckpt = fake_checkpoint(tmp_path / "d.npz", dataset="digits", model="micro",
                           shape=(8, 8, 1), pixel_max=16)  # fmt: skip
    stored = data.x_train[5]  # 8, 8, 1 in 0..16
    image = write_png(tmp_path / "five.png", np.rint(stored[..., 0] * (255 / 16)))
    clf = load_trained(ckpt)
    assert clf.class_names == ["0", "1", "2", "3"]  # no stored names: the class numbers
    with numpy_backend():
        got = clf.model.forward(clf.preprocess(image))
    # same float64 operations on the same input
    assert_allclose(got, expected_logits(ckpt, stored), rtol=0, atol=1e-12)


def test_a_real_digits_run_predicts_its_own_training_images(tmp_path):
    """A checkpoint from `train` (not hand-made): predict's answer is evaluate's answer."""
    from halo_ref.training.config import TrainConfig
    from halo_ref.training.loop import train

    train(TrainConfig(dataset="digits", epochs=1, out=str(tmp_path / "run")),
          log=lambda *a: None, progress=False)  # fmt: skip
    ckpt = str(tmp_path / "run" / "best.npz")
    data = load_dataset("digits")
    images = [write_png(tmp_path / f"{i}.png", np.rint(data.x_test[i, ..., 0] * (255 / 16)))
              for i in range(6)]  # fmt: skip
    clf = load_trained(ckpt)
    with numpy_backend():
        results = predict(clf, images, k=10)
        want = clf.model.forward(Batcher(*_stats(ckpt))(data.x_test[:6])).argmax(axis=1)
    # the PNG holds v * 255 / 16 rounded; read back and rounded to 0..16 it is v again
    assert [r[0].index for r in results] == list(want)
    assert all(len(r) == 10 and abs(sum(g.probability for g in r) - 1) < 1e-6 for r in results)


def _stats(ckpt):
    _, _, meta, _ = load_checkpoint(ckpt)
    return meta["mean"], meta["std"], meta["input_multiple"], meta["config"]["dtype"]


def test_other_sizes_and_channels_are_read_by_the_training_rule(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "c.npz", **KINDS["npz"])  # 28x28 grey
    clf = load_trained(ckpt)
    rgba = np.zeros((56, 84, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255  # opaque red
    rgba[:, :28, 3] = 0  # transparent: black whatever its colour
    grey = clf.picture(write_png(tmp_path / "wide.png", rgba))
    assert grey.shape == (28, 28, 1)  # covered to 28x42, the centre 28 columns kept
    red = round(0.299 * 200)  # Pillow's ITU-R 601-2 luma of (200, 0, 0)
    assert (grey[:, :6] == 0).all() and (grey[:, 8:] == red).all()
    rgb_ckpt = fake_checkpoint(tmp_path / "f.npz", **KINDS["folder"])
    rgb = load_trained(rgb_ckpt).picture(write_png(tmp_path / "g.png", np.full((10, 10), 77)))
    assert rgb.shape == (64, 64, 3) and (rgb == 77).all()


def test_top_classes_sorts_names_and_clamps_k():
    logits = np.array([[0.0, 2.0, 1.0], [5.0, 5.0, -1.0]])
    first, second = top_classes(logits, 9, ["a", "b", "c"])
    assert [(g.index, g.name) for g in first] == [(1, "b"), (2, "c"), (0, "a")]
    assert [g.index for g in second] == [0, 1, 2]  # a tie keeps the lower index first
    assert_allclose(sum(g.probability for g in first), 1.0, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "write, message",
    [(None, "image {p} does not exist"),
     (b"not a picture", "{p} is not an image Pillow can read"),
     ("half", "{p} is corrupt or truncated")],
)  # fmt: skip
def test_unreadable_images_are_one_line_errors_naming_the_file(tmp_path, write, message):
    clf = load_trained(fake_checkpoint(tmp_path / "c.npz", **KINDS["npz"]))
    path = tmp_path / "x.png"
    if write == "half":  # a real PNG cut in the middle of its pixels
        write_png(path, np.random.default_rng(0).integers(0, 256, (40, 40)))
        write = path.read_bytes()[:300]
    if write is not None:
        path.write_bytes(write)
    with pytest.raises(HaloRefError, match=message.format(p=path)) as err:
        clf.preprocess(str(path))
    assert "\n" not in str(err.value)


def test_a_model_of_other_channel_counts_is_refused_in_one_line(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "c.npz", dataset="npz:x.npz", model="micro",
                           shape=(8, 8, 4))  # fmt: skip
    with pytest.raises(HaloRefError, match="takes 4-channel images; image files are read as"):
        load_trained(ckpt)


def test_attention_maps_are_the_layers_weights_on_the_image_pixels(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "c.npz", **KINDS["folder"])  # tiny64: a stride-2 stem
    clf = load_trained(ckpt)
    image = write_png(tmp_path / "x.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3)))
    names = [name for name, _ in halo_layers(clf.model)]
    assert find_layer(clf.model, 0)[0] == names[0] == find_layer(clf.model, names[0])[0]
    with numpy_backend():
        (m,) = attention_maps(clf, image, 0, [(21, 37)])
        layer = find_layer(clf.model, 0)[1]
        seen = {}
        forward = layer.forward
        layer.forward = lambda x: seen.setdefault("x", x) is None or forward(x)
        clf.model.forward(clf.preprocess(image))
        del layer.forward
    feat = seen["x"]
    s = 64 // feat.shape[2]  # image pixels per pixel of the layer's map
    assert s > 1 and m.shape == (64, 64)
    want = query_attention(
        layer, feat, (21 // s // layer.query_stride, 37 // s // layer.query_stride)
    )
    assert_array_equal(m[::s, ::s], want)  # each key's weight over its s x s pixels
    assert_array_equal(m, np.kron(want, np.ones((s, s))))
    assert 0 < m.sum() / s**2 <= 1 + 1e-9  # a window's weights, the padding ring left out


def test_bad_layer_and_query_are_one_line_errors(tmp_path):
    clf = load_trained(fake_checkpoint(tmp_path / "c.npz", **KINDS["cifar10"]))
    image = write_png(tmp_path / "x.png", np.zeros((32, 32, 3)))
    with pytest.raises(HaloRefError, match=r"layer=99 is not a halo-attention layer of this "
                                           r"model; choose one of 0 \(stages"):  # fmt: skip
        find_layer(clf.model, 99)
    with (
        numpy_backend(),
        pytest.raises(HaloRefError, match="query='32,0' lies outside the 32x32 image"),
    ):
        attention_maps(clf, image, 0, [(32, 0)])
