"""A multilabel dataset factory: scikit-learn's 8x8 digits, each image tagged with four
yes/no labels about its digit (any number of them at once), as a torch Dataset.

    [data]
    dataset = "examples.digits_multilabel:make"

    [task]
    kind = "multilabel"
"""

import numpy as np
import torch
from sklearn.datasets import load_digits

# Each label's name and the digits that have it.
LABELS = {
    "even": {0, 2, 4, 6, 8},
    "at least 5": {5, 6, 7, 8, 9},
    "prime": {2, 3, 5, 7},
    "round shape": {0, 6, 8, 9},  # drawn with a closed loop
}


class DigitLabels(torch.utils.data.Dataset):
    """Items (image, labels): uint8 (1, 8, 8) and float32 0/1 (4,). `classes` names the
    labels; `targets` holds them all, so mpt reads no image to learn them."""

    classes = list(LABELS)

    def __init__(self, images: np.ndarray, digits: np.ndarray):
        self.images = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8): one channel
        rows = [[float(d in have) for have in LABELS.values()] for d in digits]
        self.targets = torch.tensor(rows, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


def make(val_fraction: float = 0.2, seed: int = 0):
    """(train, val) Datasets of the 1,797 digits, val_fraction of them held out."""
    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 grey -> 0..255
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = round(len(images) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    train_set = DigitLabels(images[train], digits.target[train])
    return train_set, DigitLabels(images[val], digits.target[val])
