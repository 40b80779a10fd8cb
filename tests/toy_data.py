"""Three classes = three colours with noise: a data bundle a tiny LISA-CNN learns in a couple of epochs."""

import numpy as np

from train.data.datasets import DataBundle, Split


def toy_data(n: int = 240, n_eval: int = 60, classes: int = 3, seed: int = 0) -> DataBundle:
    rng = np.random.default_rng(seed)

    def split(m):
        y = rng.integers(0, classes, m)
        x = rng.uniform(0, 0.3, (m, 3, 32, 32)).astype(np.float32)
        for i, c in enumerate(y):
            x[i, c] += 0.6
        return Split(x.clip(0, 1), y.astype(np.int64))

    return DataBundle(split(n), split(n_eval), split(n_eval), ["r", "g", "b"][:classes], "toyhash")
