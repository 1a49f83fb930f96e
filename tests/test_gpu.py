"""The CUDA path: scoring, mask enforcement after moving the module, a fit with init, repair and monitor.

Skipped without a CUDA device (CI has none); run them where one exists: `pytest -m gpu`.
"""

import copy

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from lightning_prune_init import (
    PruneAtInitCallback,
    SignalPropagationMonitor,
    apply_masks,
    connection_sensitivity,
    get_masks,
    select_masks,
)

from tests.helpers import Classifier, lenet300, trainer_kwargs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_scoring_agrees_with_cpu():
    torch.manual_seed(0)
    net = lenet300()
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    cpu = select_masks(connection_sensitivity(net, [(x, y)]), 0.9)
    gpu = select_masks(connection_sensitivity(copy.deepcopy(net).cuda(), [(x.cuda(), y.cuda())]), 0.9)
    total = sum(m.numel() for m in cpu.values())
    assert sum(int(m.sum()) for m in gpu.values()) == round(total * 0.1)
    differing = sum(int((cpu[n] != gpu[n].cpu()).sum()) for n in cpu)
    assert differing <= 0.001 * total  # only entries whose scores tie the threshold within float error


def test_masks_follow_the_module_to_cuda_and_hold_through_steps():
    torch.manual_seed(0)
    net = lenet300()
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    masks = select_masks(connection_sensitivity(net, [(x, y)]), 0.9)
    apply_masks(net, masks)
    net.cuda()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    from lightning_prune_init.masks import attach_optimizers

    attach_optimizers(net, [optimizer])
    for _ in range(10):
        optimizer.zero_grad()
        F.cross_entropy(net(x.cuda()), y.cuda()).backward()
        optimizer.step()
    for n, m in masks.items():
        p = net.get_parameter(n)
        assert p.is_cuda and torch.count_nonzero(p[~m.cuda()]) == 0
        assert torch.count_nonzero(optimizer.state[p]["exp_avg"][~m.cuda()]) == 0
    assert all(m.is_cuda for m in get_masks(net).values())


def test_fit_on_gpu_with_init_repair_and_monitor(tmp_path):
    pl.seed_everything(0)
    model = Classifier()
    callbacks = [
        PruneAtInitCallback(0.9, init="orthogonal", isometry={"solver": "cg", "steps": 100}, verbose=False),
        SignalPropagationMonitor(every_n_steps=2, num_examples=4),
    ]
    trainer = pl.Trainer(**{**trainer_kwargs(tmp_path, max_steps=4), "accelerator": "gpu"}, callbacks=callbacks)
    trainer.fit(model)
    masks = get_masks(model)
    assert sum(int(m.sum()) for m in masks.values()) == round(266_200 * 0.1)
    assert all(torch.count_nonzero(model.get_parameter(n)[~m]) == 0 for n, m in masks.items())
    report = callbacks[0].isometry_report
    assert report.error_after < report.error_before
