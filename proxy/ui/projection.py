"""Vector maths for the embeddings page: a 2-D projection (PCA with numpy; UMAP when the optional
`umap-learn` extra is installed) and nearest neighbours by cosine similarity. Pure, no I/O.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["METHODS", "cosine_neighbours", "has_umap", "pca_2d", "project", "unit_rows"]

Matrix = npt.NDArray[np.float32]

METHODS: Final = ("pca", "umap")
#: PCA first reduces to this many dimensions before UMAP (the usual recipe: faster, less noise).
_UMAP_PCA_DIMS: Final = 50
_SEED: Final = 0
_FIT_ROWS: Final = 4000


def has_umap() -> bool:
    return importlib.util.find_spec("umap") is not None


def unit_rows(x: Matrix) -> Matrix:
    """Each row scaled to length 1 (zero rows stay zero): dot products are then cosines."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (x / norms).astype(np.float32, copy=False)


def pca_2d(x: Matrix) -> Matrix:
    """The rows of `x` on their first two principal axes, as an (n, 2) float32 array.

    Deterministic: the axes are fitted on at most `_FIT_ROWS` rows (a seeded sample; plenty
    for two axes) by a seeded randomized SVD, and each axis's sign is fixed so that its largest
    coefficient is positive. Then every row is projected: one matrix product.
    """
    n = x.shape[0]
    out = np.zeros((n, 2), dtype=np.float32)
    if n < 2:
        return out
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    fit = (
        x
        if n <= _FIT_ROWS
        else x[np.sort(np.random.default_rng(_SEED).choice(n, _FIT_ROWS, replace=False))]
    )
    axes = _top_axes((fit - mean).astype(np.float32, copy=False), min(2, x.shape[1], fit.shape[0]))
    out[:, : axes.shape[1]] = x @ axes - mean @ axes
    return out


def _top_axes(c: Matrix, k: int) -> Matrix:
    """The top `k` right singular vectors of `c` (d, k): randomized range finder + power steps."""
    rng = np.random.default_rng(_SEED)
    d = c.shape[1]
    width = min(d, k + 8)
    basis = rng.standard_normal((d, width)).astype(np.float32)
    for _ in range(3):
        basis, _ = np.linalg.qr(c.T @ (c @ basis))
    small = c @ basis  # (n, width)
    _, _, vt = np.linalg.svd(small, full_matrices=False)
    axes = (basis @ vt[:k].T).astype(np.float32)  # (d, k)
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(k)])
    signs[signs == 0] = 1.0
    return (axes * signs).astype(np.float32)


#: UMAP needs more points than its neighbourhood size (15); fewer are projected by PCA.
UMAP_MIN_POINTS: Final = 16


def project(x: Matrix, method: str = "pca") -> tuple[Matrix, str]:
    """(n, 2) coordinates of the rows of `x` and the method used: "pca", or "umap" (which needs
    `umap-learn` and at least `UMAP_MIN_POINTS` points; PCA otherwise)."""
    if method == "umap" and x.shape[0] >= UMAP_MIN_POINTS:
        umap: Any = importlib.import_module("umap")
        reduced = x
        if x.shape[1] > _UMAP_PCA_DIMS and x.shape[0] > _UMAP_PCA_DIMS:
            centred = (x - x.mean(axis=0)).astype(np.float32)
            reduced = centred @ _top_axes(centred, _UMAP_PCA_DIMS)
        reducer = umap.UMAP(n_components=2, metric="cosine", random_state=_SEED)
        return np.asarray(reducer.fit_transform(reduced), dtype=np.float32), "umap"
    return pca_2d(x), "pca"


def cosine_neighbours(unit: Matrix, row: int, k: int) -> list[tuple[int, float]]:
    """The `k` rows most similar to `row` (itself excluded), best first, with their cosines.

    `unit` must have unit rows (`unit_rows`). Ties go to the lower row number.
    """
    n = unit.shape[0]
    if n <= 1 or k <= 0:
        return []
    scores = unit @ unit[row]
    scores[row] = -np.inf
    k = min(k, n - 1)
    top = np.argpartition(-scores, k - 1)[:k]
    order = sorted(top.tolist(), key=lambda j: (-float(scores[j]), j))
    return [(j, float(scores[j])) for j in order]
