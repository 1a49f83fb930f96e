"""DDP with 2 processes on CPU (gloo): identical masks and weights on both ranks, scores reduced over ranks."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from lightning_prune_init import connection_sensitivity, select_masks

from tests.helpers import Classifier

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ddp(out_dir, *extra) -> None:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    worker = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    result = subprocess.run(
        [sys.executable, worker, str(out_dir), *extra], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _load(out_dir, tag):
    return [torch.load(out_dir / f"{tag}_rank{r}.pt", weights_only=False) for r in (0, 1)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_masks_and_weights_identical_across_ranks(tmp_path):
    _run_ddp(tmp_path)
    before, pruned, trained = _load(tmp_path, "before"), _load(tmp_path, "pruned"), _load(tmp_path, "trained")
    masks = pruned[0]["masks"]
    assert sum(int(m.sum()) for m in masks.values()) == round(266_200 * 0.1)
    assert _same(pruned[0]["masks"], pruned[1]["masks"])
    assert _same(pruned[0]["weights"], pruned[1]["weights"])
    assert _same(trained[0]["masks"], trained[1]["masks"])
    assert _same(trained[0]["weights"], trained[1]["weights"])
    assert not _same(trained[0]["weights"], pruned[0]["weights"])  # it did train
    for n, m in masks.items():
        assert torch.count_nonzero(trained[0]["weights"][n][~m]) == 0
        # gradients are masked before DDP's all-reduce writes them back: momentum never fills pruned entries
        assert torch.count_nonzero(trained[0]["momentum"][n][~m]) == 0
        assert torch.count_nonzero(trained[0]["momentum"][n][m]) > 0

    # each rank scored its own shard, and the masks are those of both shards' summed sensitivities
    batch0, batch1 = before[0]["batch"], before[1]["batch"]
    assert not torch.equal(batch0[0], batch1[0])
    model = Classifier()
    model.load_state_dict(before[0]["weights"])
    both = select_masks(connection_sensitivity(model, [tuple(batch0), tuple(batch1)]), 0.9)
    only0 = select_masks(connection_sensitivity(model, [tuple(batch0)]), 0.9)
    differing = sum(int((both[n] != masks[n]).sum()) for n in masks)
    assert differing <= 2  # float summation order may flip an exact tie at the threshold, nothing more
    assert sum(int((only0[n] != masks[n]).sum()) for n in masks) > 100


def test_ddp_reinit_and_repair_are_broadcast_from_rank_0(tmp_path):
    """The ranks' global RNGs differ before the re-initialization; rank 0's weights must win everywhere."""
    _run_ddp(tmp_path, '{"init": "orthogonal", "isometry": {"solver": "cg", "steps": 50}}', "desync_rng")
    pruned, trained = _load(tmp_path, "pruned"), _load(tmp_path, "trained")
    assert _same(pruned[0]["masks"], pruned[1]["masks"])
    assert _same(pruned[0]["weights"], pruned[1]["weights"])
    assert _same(trained[0]["weights"], trained[1]["weights"])
    for n, m in pruned[0]["masks"].items():
        assert torch.count_nonzero(trained[0]["weights"][n][~m]) == 0


def test_every_criterion_gives_identical_masks_on_both_ranks(tmp_path):
    from lightning_prune_init.scoring import CRITERIA

    _run_ddp(tmp_path, "criteria")
    for name in CRITERIA:
        pruned, trained = [_load(tmp_path / name, "pruned"), _load(tmp_path / name, "trained")]
        masks = pruned[0]["masks"]
        assert sum(int(m.sum()) for m in masks.values()) == round(266_200 * 0.1), name
        assert _same(pruned[0]["masks"], pruned[1]["masks"]), name
        assert _same(trained[0]["weights"], trained[1]["weights"]), name
        assert all(torch.count_nonzero(trained[0]["weights"][n][~m]) == 0 for n, m in masks.items()), name
