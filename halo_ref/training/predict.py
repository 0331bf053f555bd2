"""A trained model applied to image files: what `halo-ref predict` runs.

`load_trained(checkpoint)` turns a checkpoint written by `halo-ref train` into a `Classifier`:
the model in evaluation mode, a `preprocess` that reads an image file the way the run read its
training images, and the class names kept in the checkpoint. Any dataset kind works (digits,
npz, folder, cifar10): an image of any size is brought to the training size by the folder
loader's rule (`halo_ref.training.data.images`: cover, then centre crop), to the model's
channels (grey or RGB), to the source's pixel scale (0..16 for the UCI digits, which count pen
strokes on black), and normalised with the training set's statistics like a training batch.

`Classifier` has the fields of issue 16's `Pretrained` (model, preprocess, class_names), so a
loader of other weights (timm's pretrained HaloNets) plugs into the same command; `picture` is
extra, the pixels the model sees, for drawing attention over them.

`attention_maps` draws on `halo_ref.viz.query_attention`: one halo-attention layer's weights for
chosen queries, averaged over heads, brought back to the image's pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .._checks import HaloRefError, arg
from ..attention.layer import HaloAttention
from ..imagenet import top_k
from ..models import halonet
from ..viz import halo_layers, query_attention
from .checkpoint import load_checkpoint
from .data.images import read_image
from .evaluate import Batcher


class Classifier(NamedTuple):
    """A model ready to classify image files.

    model: an image classifier in evaluation mode, (1, C, H, W) -> (1, num_classes) logits;
    preprocess: image path -> (1, C, H', W') model input; class_names: one per output;
    picture: image path -> uint8 (H, W, C), the pixels the model sees before normalising
    (None where a loader cannot say).
    """

    model: object
    preprocess: Callable[[str], np.ndarray]
    class_names: list[str]
    picture: Callable[[str], np.ndarray] | None = None


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise HaloRefError(f"image {path} does not exist") from None
    except IsADirectoryError:
        raise HaloRefError(f"image {path} is a folder; pass image files") from None
    except OSError as exc:
        raise HaloRefError(f"image {path} cannot be read ({exc.strerror})") from None


def load_trained(path: str, *, dtype=None) -> Classifier:
    """The model saved in checkpoint `path` (checkpoint.npz or best.npz of `halo-ref train`),
    with the reading of image files its training used. dtype: None keeps the training dtype."""
    state, _, meta, _ = load_checkpoint(path)
    cfg = meta["config"]
    _, H, W, C = meta["dataset_shape"]
    if C not in (1, 3):
        raise HaloRefError(
            f"the model in {path} takes {C}-channel images; image files are read as grey (1 "
            "channel) or RGB (3), so predict with it from Python on arrays instead"
        )
    dtype = np.dtype(dtype or cfg["dtype"])
    num_classes = meta["num_classes"]
    model = halonet(cfg["model"], num_classes=num_classes, in_chans=C, dtype=dtype, rng=0)
    model.load_state_dict(state)
    model.eval()
    names = [str(n) for n in meta.get("class_names") or []]
    names += [str(i) for i in range(len(names), num_classes)]  # outputs without a stored name
    # the UCI digits store 0..16; checkpoints older than pixel_max were digits or 0..255
    pixel_max = meta.get("pixel_max", 16 if cfg["dataset"] == "digits" else 255)
    batcher = Batcher(meta["mean"], meta["std"], meta["input_multiple"], dtype)

    def picture(image: str) -> np.ndarray:
        return read_image(_read_file(image), image, channels=C, size=(H, W))  # H, W, C

    def preprocess(image: str) -> np.ndarray:
        pixels = picture(image)
        if pixel_max != 255:  # to the source's scale, rounded like its stored images
            pixels = np.rint(pixels * (pixel_max / 255.0)).astype(np.uint8)
        return batcher(pixels[None])  # 1, C, H', W'

    return Classifier(model, preprocess, names, picture)


class Guess(NamedTuple):
    """One of an image's top classes."""

    index: int
    probability: float
    name: str


def top_classes(logits: np.ndarray, k: int, names) -> list[list[Guess]]:
    """The k most probable classes of each row of logits (B, num_classes), most probable
    first (ties: the lower index first), by `halo_ref.imagenet.top_k` (softmax in float64)."""
    return [[Guess(*g) for g in top_k(row, k, names)] for row in np.asarray(logits)]


def predict(classifier: Classifier, images, k: int = 5) -> list[list[Guess]]:
    """The top k classes of each image file in `images`, one forward pass per image (images
    are read and checked first, so a bad file stops the command before any model work)."""
    inputs = [classifier.preprocess(image) for image in images]
    return [top_classes(classifier.model.forward(x), k, classifier.class_names)[0]
            for x in inputs]  # fmt: skip


# -- attention -----------------------------------------------------------------------------------
def find_layer(model, layer) -> tuple[str, HaloAttention]:
    """The halo-attention layer named `layer`, or the layer-th of them (an int or its text)."""
    layers = halo_layers(model)
    if not layers:
        raise HaloRefError("this model has no halo-attention layer to draw")
    for name, found in layers:
        if str(layer) == name:
            return name, found
    try:
        return layers[int(layer)]
    except (ValueError, IndexError):
        choices = ", ".join(f"{i} ({name})" for i, (name, _) in enumerate(layers))
        raise HaloRefError(
            f"{arg('layer', layer)} is not a halo-attention layer of this model; choose one of "
            f"{choices}"
        ) from None


def _layer_input(model, layer: HaloAttention, x: np.ndarray) -> np.ndarray:
    """The input (1, dim, h, w) that `layer` receives when the model runs on x."""
    recorded, forward = {}, layer.forward

    def recording(inp):
        recorded["x"] = inp
        return forward(inp)

    layer.forward = recording  # an instance attribute, removed again below
    try:
        model.forward(x)
    finally:
        del layer.forward
    return recorded["x"]


def attention_maps(classifier: Classifier, image: str, layer, queries) -> list[np.ndarray]:
    """One layer's attention weights (mean of its heads) for each query, on the image's pixels.

    queries: (row, column) pixels of the image as the model sees it (`picture`, H x W); each
    map is (H, W): the weights of the layer's query over the pixels its keys stand for (a key
    of a map s times coarser than the input covers s x s pixels, each given the key's weight).
    """
    _, found = find_layer(classifier.model, layer)
    x = classifier.preprocess(image)  # 1, C, Hp, Wp (padded to the model's input multiple)
    H, W = classifier.picture(image).shape[:2]
    feat = _layer_input(classifier.model, found, x)  # 1, dim, h, w
    scale = x.shape[2] // feat.shape[2]  # input pixels per pixel of the layer's map
    maps = []
    for row, col in queries:
        if not (0 <= row < H and 0 <= col < W):
            raise HaloRefError(
                f"{arg('query', f'{row},{col}')} lies outside the {H}x{W} image the model sees; "
                f"give row,column with 0 <= row < {H} and 0 <= column < {W}"
            )
        q = (row // scale // found.query_stride, col // scale // found.query_stride)
        weights = query_attention(found, feat, q)  # h, w
        pixels = np.repeat(np.repeat(weights, scale, axis=0), scale, axis=1)  # Hp, Wp
        maps.append(pixels[:H, :W])
    return maps
