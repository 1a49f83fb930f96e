"""The input shape a network is built for: square images ``(C, S, S)`` or any explicit shape (e.g. ``(1, 40)``).

Every network of :mod:`lightning_prune_init.papers.networks` stores it as ``input_shape``: noise batches for
data-free pruning and Lightning's ``example_input_array`` are shaped from it.

>>> input_shape_of(1, 28, None)
(1, 28, 28)
>>> input_shape_of(1, 28, (1, 40))
(1, 40)
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning_prune_init._validation import check_int

__all__ = ["input_shape_of"]


def input_shape_of(in_channels: int, input_size: int, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """``(in_channels, input_size, input_size)``, or ``tuple(input_shape)`` when that is given.

    Args:
        in_channels: channels of a square image, >= 1.
        input_size: side of a square image in pixels, >= 1.
        input_shape: the shape of one input without the batch dimension, every entry >= 1, e.g.
            ``(1, 40)`` for MNIST-1D; ``None`` (default) for a square image.

    Raises:
        TypeError, ValueError: a size that is not a positive int, or an empty ``input_shape``.

    >>> input_shape_of(3, 32, None)
    (3, 32, 32)
    """
    check_int("in_channels", in_channels, minimum=1)
    check_int("input_size", input_size, minimum=1)
    if input_shape is None:
        return (in_channels, input_size, input_size)
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or len(input_shape) == 0:
        raise TypeError(f"`input_shape` must be a non-empty sequence of positive ints such as (1, 40), got {input_shape!r}")
    return tuple(int(check_int("input_shape", s, minimum=1)) for s in input_shape)  # type: ignore[arg-type]
