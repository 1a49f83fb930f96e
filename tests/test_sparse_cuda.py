"""Sparse execution on CUDA: the CSR path (cuSPARSE) for training, the 2:4 semi-structured path for inference.

Skipped without a CUDA device (no GPU was lent to the session that wrote them); run them where one exists:
`pytest -m gpu tests/test_sparse_cuda.py`.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init import apply_masks, select_masks
from lightning_prune_init.selection import is_n_m
from lightning_prune_init.sparse import (
    SemiStructuredLinear,
    SparseLinear,
    disable_sparse_execution,
    enable_sparse_execution,
)

NO_CUDA = not torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(NO_CUDA, reason="needs a CUDA device")]
pytestmark.append(pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state"))


def _close(actual, expected, rtol):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.detach().abs().max()))


@pytest.fixture(autouse=True)
def _no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the dense reference in full float32
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def test_csr_training_on_cuda_equals_masked_dense():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10)).cuda()
    masks = {n: torch.rand(p.shape, device="cuda") < 0.05 for n, p in dense.named_parameters() if p.dim() == 2}
    sparse = copy.deepcopy(dense)
    opt_dense = torch.optim.SGD(dense.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    apply_masks(dense, masks, optimizers=[opt_dense])
    report = enable_sparse_execution(sparse, "on", masks=masks)
    assert report.switched == list(masks) and all(isinstance(sparse[i], SparseLinear) for i in (0, 2))
    opt_sparse = torch.optim.SGD(sparse.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(64, 256, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    _close(sparse(x), dense(x), 1e-5)
    for model, opt in ((dense, opt_dense), (sparse, opt_sparse)):
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    for name, value in dense.state_dict().items():
        _close(sparse.state_dict()[name], value, 1e-5)
    for name, mask in masks.items():
        assert torch.count_nonzero(sparse.state_dict()[name][~mask]) == 0
    moved = copy.deepcopy(sparse).cpu()  # the structure follows the values
    _close(moved(x.cpu()), sparse(x).cpu(), 1e-5)


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0), reason="needs compute capability >= 8.0"
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_2_4_masks_run_on_semi_structured_kernels_for_inference(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64)).cuda().to(dtype).eval()
    scores = {n: p.detach().abs().float() for n, p in model.named_parameters() if p.dim() == 2}
    masks = select_masks(scores, pattern="2:4")
    assert all(is_n_m(m, "2:4") for m in masks.values())
    apply_masks(model, masks)
    reference = copy.deepcopy(model)
    x = torch.randn(32, 256, device="cuda", dtype=dtype)
    report = enable_sparse_execution(model, "on", workload="inference")
    assert [report.layers[n].kernel for n in masks] == ["2:4", "2:4"]
    assert isinstance(model[0], SemiStructuredLinear) and isinstance(model[0], nn.Linear)
    with torch.no_grad():
        _close(model(x).float(), reference(x).float(), 2e-2)
    state = model.state_dict()
    assert list(state) == list(reference.state_dict())
    for name, mask in masks.items():
        assert torch.count_nonzero(state[name][~mask]) == 0
        assert torch.equal(state[name], reference.state_dict()[name])
    plain = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64)).cuda().to(dtype)
    plain.load_state_dict(state, strict=True)
    assert torch.equal(model[0].pruning_masks()["weight"], masks["0.weight"])
    disable_sparse_execution(model)
    assert type(model[0]) is nn.Linear and torch.equal(model.state_dict()["0.weight"], state["0.weight"])
    # training stays on CSR: a float16 layer is left dense with the reason
    train_report = enable_sparse_execution(copy.deepcopy(reference), "on", masks=masks)
    assert not train_report.switched and "workload='inference'" in train_report.layers["0.weight"].reason
