"""A dataset factory: scikit-learn's diabetes data, a regression task.

442 patients, 10 measurements each (age, sex, body mass index, blood pressure and six
blood serum values); the target is a score of how the disease progressed a year later.
A profile names the factory and passes its keyword arguments:

    [data]
    dataset = "examples.diabetes:make"
    options = { val_fraction = 0.2, seed = 0 }

    [task]
    kind = "regression"

mpt calls make(**data.options) and trains on what it returns: (train, val), each an
(x, y) pair of tensors (or a torch Dataset of (x, y) items).
"""

import numpy as np
import torch
from sklearn.datasets import load_diabetes


def make(val_fraction: float = 0.2, seed: int = 0, scale_targets: bool = True):
    """(train, val) as (x, y) pairs: x float32 (N, 10) standardised features, y float32
    (N,) the progression score, standardised unless scale_targets is false."""
    x, y = load_diabetes(return_X_y=True)  # bundled with scikit-learn: no download
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = round(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    # Statistics of the training rows only: the validation rows stay unseen.
    x = (x - x[train].mean(0)) / x[train].std(0)
    if scale_targets:  # targets around 0 with spread 1: an MLP's output starts near there
        y = (y - y[train].mean()) / y[train].std()
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    if n_val == 0:
        return (x, y), None  # no val split of its own: data.val_fraction applies
    return (x[train], y[train]), (x[val], y[val])
