"""Sparse execution under DDP, 2 processes on CPU (gloo): the wrapper is rebuilt on the compact values, "auto"
decisions come from rank 0, and both ranks end bit-identical."""

import os
import socket
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

LAYERS = ["net.1.weight", "net.3.weight", "net.5.weight"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_train_the_compact_values_and_end_bit_identical(tmp_path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    worker = os.path.join(os.path.dirname(__file__), "sparse_ddp_worker.py")
    result = subprocess.run([sys.executable, worker, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    on, auto = _check_ranks(tmp_path / "on"), _check_ranks(tmp_path / "auto")
    assert auto["report"]["mode"] == "auto"
    assert all(layer["dense_ms"] > 0 for layer in auto["report"]["layers"].values() if layer["sparse"])
    for name, tensor in on["weights"].items():  # the same layers switched: the same training, bit for bit
        assert torch.equal(auto["weights"][name], tensor), name


def _check_ranks(out) -> dict:
    ranks = [torch.load(out / f"trained_rank{r}.pt", weights_only=True) for r in (0, 1)]
    first, second = ranks
    assert first["report"] == second["report"]  # rank 0's decisions (and timings) on both ranks
    assert sorted(first["masks"]) == LAYERS
    for key in ("weights", "values", "momentum", "masks"):
        assert first[key].keys() == second[key].keys(), key
        for name in first[key]:
            assert torch.equal(first[key][name], second[key][name]), (key, name)
    # DDP was built again on the compact parameters, and they trained
    assert first["wrapped"] == "DistributedDataParallel"
    assert [f"module.{n[:-7]}.weight_values" in first["ddp_params"] for n in LAYERS] == [True] * 3
    assert not any(n.endswith(".weight") and n[:-7] in {l[:-7] for l in LAYERS} for n in first["ddp_params"])
    for name, mask in first["masks"].items():
        values = first["values"][f"{name[:-7]}.weight_values"]
        assert first["momentum"][f"{name[:-7]}.weight_values"].shape == values.shape == (int(mask.sum()),)
        assert torch.count_nonzero(first["momentum"][f"{name[:-7]}.weight_values"]) > 0  # the values trained
        assert torch.count_nonzero(first["weights"][name][~mask]) == 0
        assert torch.equal(first["weights"][name][mask], values)
    return first
