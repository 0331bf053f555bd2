"""Training a HaloNet: the stack above the models.

Modules, in reading order: `config` (what defines a run: recipes, resume rules, threads),
`data` (datasets and augmentation), `optim` (optimisers, schedule, clipping), `state` (where a
run is), `checkpoint` (its files), `evaluate` (loss and accuracy), `loop` (`train`).
"""
