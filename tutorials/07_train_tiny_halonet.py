"""
7. Train a tiny HaloNet
=======================

Everything so far was one layer. Here a whole HaloNet (:func:`halo_ref.models.halonet`, the
``"micro"`` configuration: a convolutional stem and three halo-attention bottleneck blocks,
about 20 thousand parameters) learns to read the bundled 8 x 8 handwritten digits, on a CPU,
with no deep-learning framework: each step is a forward pass, the cross-entropy loss, the
hand-written backward passes and an Adam update written out below in a few lines. Then we look
at where the trained attention looks.

The command line does the same with checkpoints, augmentation and a learning-rate schedule::

    halo-ref train --dataset digits              # the bundled digits, under a minute
    halo-ref train --dataset cifar10 --download  # CIFAR-10 with the "tiny" model, hours on 2 cores

(``halo-ref train --help`` lists every option.)

*Prerequisites:* tutorials 1-4 (the layer and its backward passes). Next:
:doc:`08_trained_attention` looks inside a model trained on CIFAR-10 photographs.
"""

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from halo_ref.models import count_params, halonet
from halo_ref.nn.functional import cross_entropy_backward, cross_entropy_forward
from halo_ref.training.data import load_digits
from halo_ref.viz import plot_training_curves, show_figures, use_figure_style

use_figure_style()

# No quick setting here: the whole run takes seconds (so the docs and the test suite both
# train fully).

# %%
# The data
# --------
# 1,438 training and 359 test images of 8 x 8 pixels with values 0 to 16 (the UCI optical
# digits, bundled with halo_ref). We scale them to mean 0 and standard deviation 1 with the
# training set's statistics and add the channel axis: ``(N, 1, 8, 8)``.
data = load_digits()
mean, std = data.x_train.mean(), data.x_train.std()


def prepare(images):
    scaled = (images.astype(np.float32) - mean) / std
    return scaled.astype(np.float32).transpose(0, 3, 1, 2)  # N, 1, H, W


x_train, y_train = prepare(data.x_train), data.y_train
x_test, y_test = prepare(data.x_test), data.y_test
print(f"train {x_train.shape}, test {x_test.shape}")

# the first 12 training digits side by side (a one-pixel gap between them), labels below
n_show = 12
tiles = np.pad(data.x_train[:n_show, :, :, 0], ((0, 0), (1, 1), (1, 1)), constant_values=0)
montage = tiles.transpose(1, 0, 2).reshape(10, 10 * n_show)  # 10, 10 * n_show
fig, ax = plt.subplots(figsize=(7, 1.5), layout="constrained")
ax.imshow(montage, cmap="gray_r", vmin=0, vmax=16)
ax.set_xticks(10 * np.arange(n_show) + 4.5, [str(v) for v in data.y_train[:n_show]])
ax.set_yticks([])
ax.tick_params(length=0)
ax.set_title("The first 12 training digits (8 x 8 pixels) and their labels")

# %%
# The model and one training step
# -------------------------------
# ``model.forward`` maps ``(B, 1, 8, 8)`` to logits ``(B, 10)``; ``model.backward(dlogits)``
# runs every hand-written backward in reverse and leaves the gradients in ``model.grads``, keyed
# like ``model.params``. Adam keeps two running averages per parameter array.
model = halonet("micro", num_classes=10, in_chans=1, rng=0)
print(model, f"- {count_params(model):,} parameters")


class Adam:
    """Adam (Kingma and Ba 2015) with decoupled weight decay, updating arrays in place."""

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        self.params, self.lr, self.betas, self.eps, self.wd = params, lr, betas, eps, weight_decay
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads, lr):
        self.t += 1
        b1, b2 = self.betas
        for k, p in self.params.items():
            g = grads[k]
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            m_hat = self.m[k] / (1 - b1**self.t)
            v_hat = self.v[k] / (1 - b2**self.t)
            p -= lr * (m_hat / (np.sqrt(v_hat) + self.eps) + self.wd * p)


def evaluate(x, y, batch=256):
    """Mean loss and accuracy in evaluation mode (batch-norm uses its running statistics)."""
    model.eval()
    losses, correct = [], 0
    for i in range(0, len(x), batch):
        logits = model.forward(x[i : i + batch])
        loss, _ = cross_entropy_forward(logits, y[i : i + batch])
        losses.append(loss * len(logits))
        correct += int((logits.argmax(axis=1) == y[i : i + batch]).sum())
    model.train()
    return sum(losses) / len(x), correct / len(x)


# %%
# Training
# --------
# Mini-batches of 32 in a fresh random order each epoch; the learning rate follows a cosine
# from ``2e-3`` down to zero. The loss must fall, and the test accuracy rise well above the 10%
# of guessing.
epochs = 12
batch_size = 32
opt = Adam(model.params)
rng = np.random.default_rng(0)
steps_per_epoch = -(-len(x_train) // batch_size)
history = {"epoch": [], "train_loss": [], "train_acc": [], "test_loss": [], "test_acc": []}
step, t0 = 0, time.perf_counter()
for epoch in range(1, epochs + 1):
    order = rng.permutation(len(x_train))
    total_loss, correct = 0.0, 0
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        logits = model.forward(x_train[idx])
        loss, cache = cross_entropy_forward(logits, y_train[idx])
        model.backward(cross_entropy_backward(cache))
        lr = 2e-3 * 0.5 * (1 + np.cos(np.pi * step / (epochs * steps_per_epoch)))
        opt.step(model.grads, lr)
        step += 1
        total_loss += loss * len(idx)
        correct += int((logits.argmax(axis=1) == y_train[idx]).sum())
    test_loss, test_acc = evaluate(x_test, y_test)
    for key, value in zip(
        history,
        (epoch, total_loss / len(x_train), correct / len(x_train), test_loss, test_acc),
        strict=True,
    ):
        history[key].append(value)
    print(
        f"epoch {epoch:2d}: train loss {history['train_loss'][-1]:.3f} "
        f"acc {history['train_acc'][-1]:.1%} | test loss {test_loss:.3f} acc {test_acc:.1%} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
assert np.isfinite(history["train_loss"]).all()
# 12 epochs reach about 97% here; 80% leaves room for other seeds and thread counts
assert history["test_acc"][-1] > 0.8, history["test_acc"]

axes = plot_training_curves(history, title="micro HaloNet on the 8x8 digits")

# %%
# Where does the trained attention look? The first halo layer of this model works on the
# ``8 x 8`` digits with ``4 x 4`` blocks and a halo of 1, so a third of every window lies on the
# zero padding: digits are too small to show much. :doc:`08_trained_attention` opens a
# HaloNet trained on CIFAR-10 photographs instead, and draws whole windows, padding included.

# %%
show_figures()

# sphinx_gallery_thumbnail_number = 2
