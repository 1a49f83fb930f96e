"""Block-orthogonal convolution kernels (Xiao et al. 2018, Algorithm 1), one per convolution group.

A paraunitary polynomial ``M(z) = Σ_a M_a z^a`` (``n x n`` taps ``M_a``, ``z = (z_1, ..., z_D)``) is orthogonal at
every ``|z_d| = 1``: ``M(z) M(z)ᴴ = I``. Its constant (zero-lag) coefficient gives ``Σ_a M_a M_aᵀ = I`` and,
as ``M(z)`` is square, ``Σ_a M_aᵀ M_a = I``. A kernel built from its taps therefore makes circular convolution
norm preserving (``c_in <= c_out``: taps ``M_a V``, ``V`` with orthonormal columns), or gives the reshaped
kernel ``[c_out, c_in · prod(kernel)]`` orthonormal rows (``c_in > c_out``: taps ``U M_a``, ``U`` with
orthonormal rows, so ``Σ_a U M_a M_aᵀ Uᵀ = U Uᵀ = I``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_prune_init.init._haar import haar_orthonormal

__all__: list[str] = []


def _per_group(stack: Tensor, spatial: int) -> Tensor:
    """``[G, a, b]`` ready to multiply ``[G, *kernel, ., a]`` group by group (``spatial`` kernel dimensions).

    A single group is returned as one ``[a, b]`` matrix, so the product is the one ``mm`` earlier versions
    computed (the same bits: the reproduction tables do not move).
    """
    if stack.shape[0] == 1:
        return stack[0]
    return stack.reshape(stack.shape[0], *(1,) * spatial, *stack.shape[1:])


def _projections(basis: Tensor, keep: Tensor) -> Tensor:
    """``[G, n, n]``: the orthogonal projection onto the kept columns of each ``basis[g]`` (``keep``: ``[G, n]``)."""
    if basis.shape[0] == 1:  # the arithmetic of earlier versions, for the same bits
        half = basis[0][:, keep[0]]
        return (half @ half.T).unsqueeze(0)
    return (basis * keep.unsqueeze(-2).to(basis.dtype)) @ basis.transpose(-2, -1)


def paraunitary_taps(
    groups: int,
    channels: int,
    kernel: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Taps ``[groups, *kernel, channels, channels]`` of ``groups`` independent random paraunitary polynomials.

    Each is a product of first-order factors ``P + (I - P) z_d`` with ``P`` the orthogonal projection onto a
    random subspace (a Haar basis times a random half of its vectors). Each factor is orthogonal at every
    ``|z_d| = 1``, so the product is too. Factors alternate over the spatial dimensions (``z_1, z_2, z_1, ...``
    for a square 2-D kernel, the authors' order) until dimension ``d`` has ``kernel[d]`` taps. With one channel
    the only paraunitary polynomials are signed monomials ``±z^a``: a single ``±1`` tap whose position is the
    number of factors that drew ``P = 0``, binomially spread around the centre.
    """
    spatial = len(kernel)
    eye = torch.eye(channels, device=device, dtype=dtype)
    taps = eye.expand((groups,) + (1,) * spatial + (channels, channels))
    remaining = [k - 1 for k in kernel]
    while any(remaining):
        for d, left in enumerate(remaining):
            if not left:
                continue
            basis = haar_orthonormal(groups, channels, channels, generator, device, dtype)
            keep = torch.rand(groups, channels, generator=generator, device=device) < 0.5
            projection = _projections(basis, keep)
            # taps of M(z) (P + (I - P) z_d): new tap a = M_a P + M_{a-1} (I - P) along dimension d.
            # F.pad pads from the last dimension backwards; the two matrix dimensions come last, so skip them.
            after = [0, 0] * (spatial - d - 1) + [0, 1]
            before = [0, 0] * (spatial - d - 1) + [1, 0]
            taps = F.pad(taps, [0, 0, 0, 0] + after) @ _per_group(projection, spatial) + F.pad(
                taps, [0, 0, 0, 0] + before
            ) @ _per_group(eye - projection, spatial)
            remaining[d] -= 1
    return taps.expand((groups,) + tuple(kernel) + (channels, channels))


def block_orthogonal_kernel(
    groups: int,
    c_out: int,
    c_in: int,
    kernel: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """A conv weight ``[groups · c_out, c_in, *kernel]`` (``c_out``, ``c_in``: channels per group), block-orthogonal
    in each group.

    * ``c_in <= c_out``: taps ``M_a V`` with ``M`` a random ``c_out x c_out`` paraunitary polynomial and ``V``
      Haar ``c_out x c_in`` with orthonormal columns (drawn after ``M``): circular convolution is an isometry.
    * ``c_in > c_out``: taps ``U M_a`` with ``M`` of size ``c_in`` and ``U`` Haar ``c_out x c_in`` with
      orthonormal rows (the first ``c_out`` rows of a random rotation of ``M``): the reshaped kernel has
      ``W Wᵀ = Σ_a U M_a M_aᵀ Uᵀ = I``, and circular convolution is a co-isometry (every singular value 1).
    """
    spatial = len(kernel)
    if c_in <= c_out:
        taps = paraunitary_taps(groups, c_out, kernel, generator, device, dtype)
        columns = haar_orthonormal(groups, c_out, c_in, generator, device, dtype)
        weight = taps @ _per_group(columns, spatial)
    else:
        taps = paraunitary_taps(groups, c_in, kernel, generator, device, dtype)
        rows = haar_orthonormal(groups, c_out, c_in, generator, device, dtype)
        weight = _per_group(rows, spatial) @ taps
    # [G, *kernel, c_out, c_in] -> [G, c_out, c_in, *kernel] -> [G · c_out, c_in, *kernel]
    return weight.movedim((-2, -1), (1, 2)).reshape(groups * c_out, c_in, *kernel)
