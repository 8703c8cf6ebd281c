"""Which grid points fast segment-everything decodes: a regular grid, refined where the answers change.

The n x n grid of ``points_per_side`` is decoded coarse to fine, on nested sub-lattices: every ``s``-th
row and column (plus the last one) for s = s0, s0/2, ..., 1, so the coarsest level has about 9 x 9
points. A point of a finer level lies inside a cell of the coarser one, with 2 or 4 *corners* already
answered. It is skipped only when its corners agree -- every one of their three multimask outputs is the
same mask (IoU >= ``agree_iou`` at 1/4 resolution) with the same filter decision -- and it lies inside
(one low-resolution cell away from the edge of) every corner's smallest output mask: then the model has
shown it returns the same answer all around the point, and the point's own answer is taken to be theirs
(it stands as a corner for the next level). Anywhere the answers change between neighbouring points
(object edges, textures, nested parts, small objects between the points) every point is decoded.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .amg import build_point_grid, erode_masks

# The coarsest level has at least this many points per side.
COARSE_SIDE = 4


def lattice_side(points: np.ndarray) -> int | None:
    """n when (N, 2) normalised ``points`` are ``build_point_grid(n)`` (in its order), else None."""
    n = int(round(np.sqrt(len(points))))
    if n * n != len(points) or not np.allclose(points, build_point_grid(n), atol=1e-9):
        return None
    return n


def _axis(n: int, step: int) -> np.ndarray:
    """Indices of the sub-lattice of ``step`` along one axis: multiples of ``step`` and the last index."""
    return np.union1d(np.arange(0, n, step), [n - 1])


class GridRefinement:
    """Coarse-to-fine levels of an n x n grid (row-major indices, as ``build_point_grid``) and each
    point's corners on the level above it."""

    def __init__(self, n: int, coarse_side: int = COARSE_SIDE) -> None:
        self.n = n
        top = 1
        while n // (2 * top) >= coarse_side:
            top *= 2
        self.steps = [top >> k for k in range(top.bit_length())]  # e.g. [4, 2, 1] for n = 32
        # Finest step at which each row/column index is on the sub-lattice (the level of an index).
        level = np.full(n, len(self.steps) - 1)
        for li in range(len(self.steps) - 1, -1, -1):
            level[_axis(n, self.steps[li])] = li
        self.axis_level = level

    def levels(self) -> list[list[int]]:
        """Grid indices of each level, coarsest first (every index exactly once)."""
        lv = np.maximum.outer(self.axis_level, self.axis_level).ravel()
        return [np.nonzero(lv == li)[0].tolist() for li in range(len(self.steps))]

    def corners(self, index: int) -> list[int]:
        """The 2 or 4 points of the coarser levels that bracket ``index`` (empty on the coarsest level)."""
        r, c = divmod(index, self.n)
        li = max(self.axis_level[r], self.axis_level[c])
        if li == 0:
            return []
        coarse = _axis(self.n, self.steps[li - 1])

        def bracket(k: int) -> list[int]:
            if self.axis_level[k] < li:
                return [k]
            j = np.searchsorted(coarse, k)
            return [int(coarse[j - 1]), int(coarse[j])]

        return [rr * self.n + cc for rr in bracket(r) for cc in bracket(c)]


class Answers:
    """What each grid point returned (or was taken to return), for the agreement test.

    Per decoded point (a row of the tensors below): ``small`` (3, cells) bool, its three output masks at
    1/4 low resolution; ``passed`` (3,) bool, whether each passed the filters; ``inside`` (N,) bool,
    which grid points lie in its smallest output mask eroded by ``erode`` low-resolution cells.
    ``source[i]``: the decoded point whose answer grid point i carries (itself when decoded, -1 while
    unknown). Memory: about N + 1.5 kB per decoded point at 1024 px (a 64 x 64 grid: 6 kB)."""

    def __init__(self, n_points: int, agree_iou: float, erode: int, accepted_only: bool = False) -> None:
        self.n_points = n_points
        self.accepted_only = accepted_only
        self.agree_iou = agree_iou
        self.erode = erode
        self.source = np.full(n_points, -1)
        self.row = np.full(n_points, -1)  # decoded point -> its row
        self.n_rows = 0
        self.small: torch.Tensor | None = None
        self.passed: torch.Tensor | None = None
        self.inside: torch.Tensor | None = None

    def record(self, idx: list[int], masks: torch.Tensor, passed: torch.Tensor, cells: np.ndarray) -> None:
        """Answers of decoded points ``idx``: ``masks`` (B, 3, h, w) bool low-resolution masks over the
        image, ``passed`` (B, 3) bool, ``cells`` (N, 2) the (row, col) low-resolution cell of every grid
        point."""
        b, m, h, w = masks.shape
        small = F.avg_pool2d(masks.flatten(0, 1)[:, None].float(), 4, ceil_mode=True).flatten(1) > 0.5
        areas = masks.flatten(2).sum(-1)
        if self.accepted_only:  # the smallest accepted mask; none accepted: an empty one
            areas = torch.where(passed, areas, areas.new_tensor(torch.iinfo(areas.dtype).max))
        finest = masks[torch.arange(b), areas.argmin(1)]
        if self.accepted_only:
            finest = finest & passed.any(1)[:, None, None]
        finest = erode_masks(finest, self.erode)  # (B, h, w)
        rows = torch.as_tensor(cells[:, 0], device=masks.device)
        cols = torch.as_tensor(cells[:, 1], device=masks.device)
        inside = finest[:, rows, cols]  # (B, N)
        if self.small is None:
            cap = max(64, b)
            self.small = small.new_zeros(cap, m, small.shape[-1])
            self.passed = passed.new_zeros(cap, m)
            self.inside = inside.new_zeros(cap, self.n_points)
        while self.n_rows + b > len(self.small):  # grow by doubling
            self.small = torch.cat([self.small, torch.zeros_like(self.small)])
            self.passed = torch.cat([self.passed, torch.zeros_like(self.passed)])
            self.inside = torch.cat([self.inside, torch.zeros_like(self.inside)])
        new = slice(self.n_rows, self.n_rows + b)
        self.small[new] = small.view(b, m, -1)
        self.passed[new] = passed
        self.inside[new] = inside
        self.row[idx] = np.arange(self.n_rows, self.n_rows + b)
        self.n_rows += b
        self.source[idx] = idx

    def agreed(self, index: int, corners: list[int]) -> int | None:
        """The decoded point whose answer ``index`` can take from its ``corners``, or None: all corners
        answered, their outputs the same masks with the same filter decisions, and ``index`` inside each
        corner's smallest mask."""
        if not corners or self.small is None:
            return None
        src = self.source[corners]
        if (src < 0).any():
            return None
        r = torch.as_tensor(self.row[np.unique(src)], device=self.small.device)
        if not bool(self.inside[r, index].all()):
            return None
        if len(r) > 1:
            if not bool((self.passed[r] == self.passed[r[:1]]).all()):
                return None
            a = self.small[r[:1]].float()  # (1, 3, cells)
            rest = self.small[r[1:]].float()  # (K, 3, cells)
            inter = (a * rest).sum(-1)
            union = a.sum(-1) + rest.sum(-1) - inter
            iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
            same = iou >= self.agree_iou
            if self.accepted_only:
                same |= ~self.passed[r[:1]]
            if not bool(same.all()):
                return None
        return int(src[0])
