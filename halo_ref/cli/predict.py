"""`halo-ref predict`: the top classes of image files under a trained model, and optionally one
attention layer's weights for chosen queries drawn over the images.

The model comes from one function, `load_classifier(args)`: a checkpoint of `halo-ref train`
(`--checkpoint`, `halo_ref.training.predict.load_trained`), or timm's weights for one of its
HaloNets (`--model NAME --weights FILE`, `halo_ref.models.pretrained.load_pretrained`, with
timm's own preprocessing and the ImageNet class names); both give a `Classifier`.
"""

from __future__ import annotations

import os

import numpy as np

from .. import backend
from .._checks import COUNT, HaloRefError
from ..imagenet import PRETRAINED_CFG
from ..models.pretrained import load_pretrained
from ..models.timm_byobnet import TIMM_NAMES
from ..training.predict import Classifier, attention_maps, find_layer, load_trained, predict
from ..viz import draw_attention, save_figure


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files with a trained checkpoint or timm's weights (top-k classes, "
        "attention maps)",
        description="Reads each image (PNG, JPEG, anything Pillow reads, any size) the way the "
        "checkpoint's training read its images (brought to its size by covering it and "
        "cutting out the centre, to grey or RGB, normalised with the training statistics), "
        "or, for timm's weights, by timm's own evaluation transform, and prints its K most "
        "probable classes with their names and probabilities.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to classify")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a best.npz or checkpoint.npz of halo-ref train")
    source.add_argument(
        "--model",
        "--timm-model",
        dest="model",
        choices=TIMM_NAMES,
        metavar="NAME",
        help=f"one of timm's HaloNets ({', '.join(TIMM_NAMES)}), with --weights",
    )
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="with --model: timm's state dict as .safetensors (or .pth/.pt/.bin with PyTorch)",
    )
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="with --model: class names, one a line (default: timm's ImageNet names, if timm "
        "is installed, else class numbers)",
    )
    p.add_argument("--top-k", type=COUNT, default=5, help="classes shown per image (default 5)")
    p.add_argument(
        "--attention",
        metavar="OUT.png",
        help="draw one layer's attention for the --query pixels over each image into this new "
        "PNG (one row per image, one column per query)",
    )
    p.add_argument(
        "--layer",
        default="0",
        help="with --attention: the halo-attention layer, by position (0: the first) or name "
        "(e.g. stages.2.0.attn); default 0",
    )
    p.add_argument(
        "--query",
        action="append",
        metavar="ROW,COL",
        help="with --attention: a query pixel of the image as the model sees it (after "
        "resizing); repeat for more (default: the centre)",
    )
    p.add_argument(
        "--backend",
        choices=("numpy", "numba"),
        default="numpy",
        help="numpy (default: a few images need no compiled kernels) or numba (many images)",
    )
    p.set_defaults(func=run)


def load_classifier(args) -> Classifier:
    """The model the flags name. The one place a new kind of weights plugs in."""
    if args.checkpoint is not None:
        for flag in ("weights", "labels"):
            if getattr(args, flag) is not None:
                raise HaloRefError(f"--{flag} goes with --model; a --checkpoint holds its own")
        return load_trained(args.checkpoint)
    if args.weights is None:
        raise HaloRefError(f"--model {args.model} needs --weights FILE (timm's state dict)")
    model, prep, names = load_pretrained(args.model, args.weights, labels=args.labels)
    names = names or [str(i) for i in range(model.num_classes)]
    cfg = PRETRAINED_CFG[args.model]
    mean, std = np.asarray(cfg["mean"]), np.asarray(cfg["std"])

    def picture(image: str) -> np.ndarray:  # what the model sees, back to uint8 RGB
        rgb = prep(image)[0].transpose(1, 2, 0) * std + mean  # H, W, 3 in [0, 1]
        return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)

    return Classifier(model, prep, names, picture)


def _queries(texts) -> list[tuple[int, int]] | None:
    """--query ROW,COL values as (row, col) pairs; None when none was given."""
    if not texts:
        return None
    queries = []
    for text in texts:
        try:
            row, col = (int(v) for v in text.split(","))
        except ValueError:
            raise HaloRefError(
                f"--query {text} is not ROW,COL; give two whole numbers, e.g. --query 12,20"
            ) from None
        queries.append((row, col))
    return queries


def _check_out(path: str) -> None:
    if not path.lower().endswith(".png"):
        raise HaloRefError(f"--attention {path} must name a .png file")
    if os.path.exists(path):
        raise HaloRefError(f"--attention {path} already exists; choose a new file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise HaloRefError(f"--attention {path}: folder {folder} does not exist; create it first")


def run(args) -> int:
    queries = _queries(args.query)
    if args.attention is None and (args.query or args.layer != "0"):
        raise HaloRefError("--layer and --query draw attention; add --attention OUT.png")
    if args.attention is not None:
        _check_out(args.attention)
    classifier = load_classifier(args)
    if args.attention is not None:
        find_layer(classifier.model, args.layer)  # a bad --layer is refused before any work
    with backend.use(args.backend):
        results = predict(classifier, args.images, args.top_k)
        for image, guesses in zip(args.images, results, strict=True):
            print(image)
            for g in guesses:
                print(f"  {100 * g.probability:6.2f}%  {g.name} (class {g.index})")
        if args.attention is not None:
            _draw(classifier, args, queries, results)
            print(f"attention of layer {args.layer} drawn in {args.attention}")
    return 0


def _draw(classifier: Classifier, args, queries, results) -> None:
    import matplotlib.pyplot as plt  # only when drawing: `halo-ref predict` alone needs none

    name, _ = find_layer(classifier.model, args.layer)
    pictures = [classifier.picture(image) for image in args.images]
    if queries is None:
        H, W = pictures[0].shape[:2]
        queries = [(H // 2, W // 2)]
    rows, cols = len(args.images), len(queries)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False, layout="constrained"
    )
    for r, (image, picture, guesses) in enumerate(zip(args.images, pictures, results, strict=True)):
        maps = attention_maps(classifier, image, args.layer, queries)
        for c, (query, weights) in enumerate(zip(queries, maps, strict=True)):
            title = f"{os.path.basename(image)}: {guesses[0].name}\nquery {query[0]},{query[1]}"
            draw_attention(picture, weights, query, ax=axes[r, c], title=title, colorbar=False)
    fig.suptitle(f"attention of {name} (mean of heads)")
    save_figure(fig, args.attention)
    plt.close(fig)
