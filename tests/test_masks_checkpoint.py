"""The checkpoint format of masks (issue 12 "Verified restore", format side): bit-exact round trips that load with
``weights_only=True``, and every damaged state refused with a MaskStateError naming the layer and the source."""

import io
import math
import warnings
import zlib

import pytest
import torch

from lightning_prune_init.masks import MaskStateError, apply_masks, masked_nonzeros, pack_masks, unpack_masks


def _masks(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.rand(13, 7, generator=g) > 0.5,  # 91 entries: 5 padding bits
        "b.weight": torch.rand(3, 2, 5, 5, generator=g) > 0.9,  # 150 entries: 2 padding bits
        "c.weight": torch.rand(4, 8, generator=g) > 0.3,  # 32 entries: no padding
    }


def _reference_bits(mask):
    """Hand packing: entries in row-major order, 8 per byte, the first in the highest bit, zero padding."""
    flat = [bool(v) for v in mask.reshape(-1).tolist()]
    flat += [False] * ((-len(flat)) % 8)
    return [sum(int(b) << (7 - i) for i, b in enumerate(flat[k : k + 8])) for k in range(0, len(flat), 8)]


def test_pack_writes_shape_kept_checksum_and_hand_packed_bits():
    masks = _masks()
    packed = pack_masks(masks)
    assert packed["format"] == "bitpacked-v2"
    for name, mask in masks.items():
        entry = packed["masks"][name]
        assert entry["shape"] == tuple(mask.shape)
        assert entry["kept"] == int(mask.sum())
        assert entry["bits"].dtype == torch.uint8 and entry["bits"].numel() == math.ceil(mask.numel() / 8)
        assert entry["bits"].tolist() == _reference_bits(mask)
        assert entry["crc32"] == zlib.crc32(bytes(_reference_bits(mask)))


def test_round_trip_through_torch_save_with_weights_only_is_bit_exact():
    masks = _masks()
    buffer = io.BytesIO()
    torch.save({"prune": pack_masks(masks)}, buffer)
    buffer.seek(0)
    restored = unpack_masks(torch.load(buffer, weights_only=True)["prune"], source="buffer")
    assert list(restored) == list(masks)
    assert all(torch.equal(restored[n], masks[n]) and restored[n].dtype == torch.bool for n in masks)
    assert unpack_masks(pack_masks({})) == {}


def _damaged(change):
    packed = pack_masks(_masks())
    change(packed["masks"]["b.weight"])
    return packed


def _flip(entry, byte=3, bit=0x10):
    entry["bits"][byte] ^= bit


def _swap_bits(entry):  # same length, same kept count: only the checksum can tell
    bits = entry["bits"]
    bits[0], bits[1] = int(bits[1]), int(bits[0])


DAMAGED = {
    "one bit flipped": (lambda e: _flip(e), "do not match their checksum"),
    "bytes swapped (same kept count)": (_swap_bits, "do not match their checksum"),
    "kept count altered": (lambda e: e.update(kept=e["kept"] + 1), "the state records"),
    "truncated bits": (lambda e: e.update(bits=e["bits"][:-2]), "truncated: 17 bytes, a mask of shape (3, 2, 5, 5) needs 19"),
    "over-long bits": (lambda e: e.update(bits=torch.cat([e["bits"], e["bits"][:1]])), "over-long: 20 bytes"),
    "padding bit set": (lambda e: _flip(e, byte=-1, bit=0x01), "padding bits of its last byte are not 0"),
    "shape changed": (lambda e: e.update(shape=(3, 2, 5, 4)), "over-long"),
    "shape not integers": (lambda e: e.update(shape=("3", 2)), "tuple of non-negative integers"),
    "bits not uint8": (lambda e: e.update(bits=e["bits"].to(torch.int32)), "1-D torch.uint8 tensor"),
    "bits 2-D": (lambda e: e.update(bits=e["bits"].view(1, -1)), "1-D torch.uint8 tensor"),
    "checksum missing": (lambda e: e.pop("crc32"), "fields shape, kept, crc32, bits"),
    "entry not a mapping": (None, "must be a mapping"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_state_is_refused_naming_layer_source_and_way_out(case):
    change, message = DAMAGED[case]
    if change is None:
        packed = pack_masks(_masks())
        packed["masks"]["b.weight"] = [1, 2, 3]
    else:
        packed = _damaged(change)
    with pytest.raises(MaskStateError) as info:
        unpack_masks(packed, source="runs/last.ckpt")
    text = str(info.value)
    assert message in text
    assert "'b.weight'" in text and "runs/last.ckpt" in text and "fresh run" in text
    assert info.value.layer == "b.weight" and info.value.source == "runs/last.ckpt"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend"])
def test_altered_bits_are_never_restored_silently(damage):
    """Issue 12: a state whose bits were altered (same length) was restored as is; truncated or over-long bits gave a
    bare reshape error. Whatever pack_masks writes, a damaged copy must be refused with a MaskStateError."""
    packed = pack_masks(_masks())
    entry = packed["masks"]["a.weight"]
    if damage == "flip":
        entry["bits"][2] ^= 0x81
    elif damage == "truncate":
        entry["bits"] = entry["bits"][:-1]
    else:
        entry["bits"] = torch.cat([entry["bits"], torch.zeros(3, dtype=torch.uint8)])
    with pytest.raises(MaskStateError, match="'a.weight'"):
        unpack_masks(packed)


@pytest.mark.parametrize(
    "packed, message",
    [
        ("not a mapping", "expected the mapping pack_masks writes"),
        ({"format": "bitpacked-v3", "masks": {}}, "unknown format 'bitpacked-v3'"),
        ({"masks": {}}, "unknown format None"),
        ({"format": "bitpacked-v2"}, "no 'masks' mapping"),
    ],
)
def test_unreadable_state_is_refused_naming_the_source(packed, message):
    with pytest.raises(MaskStateError, match=message) as info:
        unpack_masks(packed, source="epoch=1.ckpt")
    assert "epoch=1.ckpt" in str(info.value) and info.value.layer is None


def _v1(masks):
    """The first release's format, as it wrote it: shape and bits only."""
    packed = pack_masks(masks)
    return {"format": "bitpacked-v1", "masks": {n: {"shape": e["shape"], "bits": e["bits"]} for n, e in packed["masks"].items()}}


def test_first_release_format_is_read_with_a_warning_that_it_is_unverified():
    masks = _masks()
    with pytest.warns(UserWarning, match="bitpacked-v1.*no checksums") as record:
        restored = unpack_masks(_v1(masks), source="old.ckpt")
    assert "old.ckpt" in str(record[0].message)
    assert all(torch.equal(restored[n], masks[n]) for n in masks)
    truncated = _v1(masks)
    truncated["masks"]["a.weight"]["bits"] = truncated["masks"]["a.weight"]["bits"][:5]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MaskStateError, match="'a.weight' in old.ckpt: its bits are truncated"):
            unpack_masks(truncated, source="old.ckpt")


def test_unpack_to_a_device_and_pack_rejects_non_bool():
    masks = _masks()
    restored = unpack_masks(pack_masks(masks), device="meta")
    assert all(m.device.type == "meta" and m.shape == masks[n].shape for n, m in restored.items())
    with pytest.raises(TypeError, match="'a.weight' must be a torch.bool tensor"):
        pack_masks({"a.weight": masks["a.weight"].float()})


def test_masked_nonzeros_counts_weights_that_are_not_zero_where_masks_prune():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    masks = {"0.weight": torch.rand(3, 4) > 0.5, "1.weight": torch.zeros(3, 2, dtype=torch.bool).T.contiguous()}
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[1].weight.copy_(torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]]))
    expected = {"0.weight": int((~masks["0.weight"]).sum()), "1.weight": 2}
    assert masked_nonzeros(net, masks) == expected
    apply_masks(net, masks)
    assert masked_nonzeros(net, masks) == {"0.weight": 0, "1.weight": 0}
    with pytest.raises(ValueError, match="'2.weight' is not a parameter"):
        masked_nonzeros(net, {"2.weight": masks["0.weight"]})
