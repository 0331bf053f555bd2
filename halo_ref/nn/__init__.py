"""The network's building blocks, below the models.

The modules: `functional` (the layers as forward/backward pairs in NumPy, CS231n's pattern; no
dispatch), `kernels` (the same contracts as Numba kernels, tested against `functional`),
`module` (`Module`: parameters, gradients, state dicts), `layers` (the pairs as modules with
weights: `Conv2d`, `BatchNorm2d`, `Sequential`, ...) and `init` (timm's initialisation and
channel rounding). `halo_ref.backend` chooses between `functional` and `kernels`.
"""
