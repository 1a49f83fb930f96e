"""The checkpoint format of masks: bit-packed, with a kept count and a checksum per mask, verified on load.

:func:`pack_masks` writes (plain Python values and ``uint8`` tensors only, so it loads with
``torch.load(weights_only=True)``)::

    {"format": "bitpacked-v2",
     "masks": {name: {"shape": (d0, d1, ...), "kept": int, "crc32": int, "bits": uint8 tensor}}}

``bits`` holds the mask's entries in row-major order, 8 per byte, the first entry in the highest bit
(``ceil(numel / 8)`` bytes, the unused low bits of the last byte 0); ``kept`` counts its ``True`` entries and
``crc32`` is ``zlib.crc32`` of the bytes. :func:`unpack_masks` checks all of it and raises a
:class:`MaskStateError` naming the layer, the source (e.g. the checkpoint path) and the way out; nothing is
repaired or guessed. The first release's format (``"bitpacked-v1"``: shape and bits only) is still read, with a
warning that it cannot be verified beyond its lengths and padding.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_prune_init._validation import check_bool_masks

__all__ = ["MaskStateError", "pack_masks", "unpack_masks"]

PACK_FORMAT = "bitpacked-v2"
PACK_FORMAT_V1 = "bitpacked-v1"
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
_WAY_OUT = "Resume from an intact checkpoint, or start a fresh run that prunes again"


class MaskStateError(ValueError):
    """Saved masks that cannot be trusted (damaged, truncated, of an unknown format).

    Attributes:
        layer: the mask's name (``None`` when the whole state is unreadable).
        source: where the state came from, as given to :func:`unpack_masks` (``None`` if not given).

    >>> try:
    ...     unpack_masks({"format": "zip"}, source="last.ckpt")
    ... except MaskStateError as error:
    ...     print(error)  # doctest: +ELLIPSIS
    masks in last.ckpt: unknown format 'zip'; this version reads 'bitpacked-v2' and 'bitpacked-v1'. Resume from ...
    """

    def __init__(self, message: str, *, layer: str | None = None, source: Any = None) -> None:
        super().__init__(message)
        self.layer = layer
        self.source = source


def _crc32(bits: Tensor) -> int:
    data = bits.detach().to("cpu", torch.uint8).contiguous()
    try:
        raw = data.numpy().tobytes()
    except (RuntimeError, TypeError):  # pragma: no cover - torch built without numpy
        raw = bytes(data.clone().untyped_storage())
    return zlib.crc32(raw)


def pack_masks(masks: Mapping[str, Tensor]) -> dict[str, Any]:
    """Bit-pack bool masks (8 entries per byte, on CPU) with their kept counts and checksums, for a checkpoint.

    Inverse of :func:`unpack_masks`; the format is in the module docstring. About ``numel / 8`` bytes per mask.

    >>> packed = pack_masks({"fc.weight": torch.tensor([[True, False, True], [True, True, False]])})
    >>> entry = packed["masks"]["fc.weight"]
    >>> packed["format"], entry["shape"], entry["kept"], entry["bits"].tolist()
    ('bitpacked-v2', (2, 3), 4, [184])
    """
    if masks:
        shapes = {n: tuple(m.shape) if isinstance(m, Tensor) else () for n, m in masks.items()}
        check_bool_masks(masks, shapes, owner="the masks")
    elif not isinstance(masks, Mapping):
        raise TypeError(f"`masks` must be a mapping of parameter name to bool tensor, got {type(masks).__name__}")
    packed = {}
    for name, mask in masks.items():
        flat = mask.detach().reshape(-1).to("cpu", torch.uint8)
        pad = (-flat.numel()) % 8
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        bits = (flat.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)
        packed[name] = {
            "shape": tuple(int(s) for s in mask.shape),
            "kept": int(torch.count_nonzero(mask)),
            "crc32": _crc32(bits),
            "bits": bits,
        }
    return {"format": PACK_FORMAT, "masks": packed}


def unpack_masks(
    packed: Mapping[str, Any], device: torch.device | str | None = None, *, source: Any = None
) -> dict[str, Tensor]:
    """Restore and verify the bool masks written by :func:`pack_masks` (``True`` = kept).

    Checked for every mask: the format, the entry's fields and types, the bit length (``ceil(numel / 8)`` bytes),
    zero padding bits, and (``bitpacked-v2``) the checksum and the kept count. ``bitpacked-v1`` states are read with
    a ``UserWarning`` that they cannot be verified beyond lengths and padding.

    Args:
        packed: what :func:`pack_masks` returned (e.g. read back from a checkpoint).
        device: where to put the masks (default: CPU).
        source: where ``packed`` came from, for messages (e.g. the checkpoint path).

    Raises:
        MaskStateError: any check fails; the message names the layer, ``source`` and the way out.

    >>> masks = {"w": torch.tensor([True, False, True])}
    >>> unpack_masks(pack_masks(masks))["w"].tolist()
    [True, False, True]
    >>> bad = pack_masks(masks); bad["masks"]["w"]["bits"][0] ^= 64  # one bit flipped
    >>> unpack_masks(bad, source="epoch=3.ckpt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_prune_init.masks.checkpoint.MaskStateError: mask 'w' in epoch=3.ckpt: its bits do not match ...
    """
    where = source if source is not None else "the given mask state"
    if not isinstance(packed, Mapping):
        raise MaskStateError(
            f"masks in {where}: expected the mapping pack_masks writes, got {type(packed).__name__}. {_WAY_OUT}.",
            source=source,
        )
    fmt = packed.get("format")
    if fmt not in (PACK_FORMAT, PACK_FORMAT_V1):
        raise MaskStateError(
            f"masks in {where}: unknown format {fmt!r}; this version reads {PACK_FORMAT!r} and {PACK_FORMAT_V1!r}. "
            f"{_WAY_OUT}.",
            source=source,
        )
    entries = packed.get("masks")
    if not isinstance(entries, Mapping):
        raise MaskStateError(f"masks in {where}: no 'masks' mapping in the state. {_WAY_OUT}.", source=source)
    if fmt == PACK_FORMAT_V1:
        warnings.warn(
            f"masks in {where} are in the first release's format {PACK_FORMAT_V1!r}, which has no checksums or kept "
            "counts: they are restored with only their lengths and padding checked. Save a new checkpoint to store "
            f"them as {PACK_FORMAT!r}.",
            UserWarning,
            stacklevel=2,
        )
    return {name: _unpack_one(name, entry, fmt, where, source, device) for name, entry in entries.items()}


def _unpack_one(name: Any, entry: Any, fmt: str, where: Any, source: Any, device: Any) -> Tensor:
    def fail(problem: str) -> MaskStateError:
        return MaskStateError(f"mask {name!r} in {where}: {problem}. {_WAY_OUT}.", layer=name, source=source)

    fields = ("shape", "bits") if fmt == PACK_FORMAT_V1 else ("shape", "kept", "crc32", "bits")
    if not isinstance(entry, Mapping) or any(f not in entry for f in fields):
        raise fail(f"the entry must be a mapping with the fields {', '.join(fields)}, got {_describe(entry)}")
    shape = entry["shape"]
    if not isinstance(shape, (tuple, list)) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise fail(f"its shape must be a tuple of non-negative integers, got {shape!r}")
    bits = entry["bits"]
    if not isinstance(bits, Tensor) or bits.dtype != torch.uint8 or bits.dim() != 1:
        raise fail(f"its bits must be a 1-D torch.uint8 tensor, got {_describe(bits)}")
    numel = math.prod(shape)
    need = (numel + 7) // 8
    if bits.numel() != need:
        kind = "truncated" if bits.numel() < need else "over-long"
        raise fail(f"its bits are {kind}: {bits.numel()} bytes, a mask of shape {tuple(shape)} needs {need}")
    bits = bits.to("cpu")
    unused = (-numel) % 8
    if unused and int(bits[-1]) & ((1 << unused) - 1):
        raise fail(f"the {unused} unused padding bits of its last byte are not 0")
    if fmt == PACK_FORMAT:
        if _crc32(bits) != entry["crc32"]:
            raise fail(f"its bits do not match their checksum (crc32 {_crc32(bits)}, saved {entry['crc32']!r}): the state is damaged")
        kept_saved = entry["kept"]
    flat = (bits.unsqueeze(1) & _BIT_WEIGHTS).ne(0).reshape(-1)[:numel]
    if fmt == PACK_FORMAT:
        kept = int(torch.count_nonzero(flat))
        if kept != kept_saved:
            raise fail(f"it keeps {kept:,} entries, the state records {kept_saved!r}")
    mask = flat.reshape(tuple(shape))
    return mask if device is None else mask.to(device)


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a mapping with keys {sorted(map(str, value))}"
    return type(value).__name__
