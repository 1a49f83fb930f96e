"""Optimizer state after a restore (issue 12): Lightning loads optimizer state after the masks were attached, so
momentum / Adam moments can be non-zero at pruned entries; ``zero_optimizer_state_`` makes them 0 again, and from
then on every step keeps pruned weights and state at exactly 0."""

import copy

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from lightning_prune_init.masks import apply_masks, masked_nonzeros, zero_optimizer_state_

from tests.helpers import Classifier, conv_bn_net, trainer_kwargs

OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01),
}


def _batches(n, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 12, 12, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def _masks(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) > 0.8 for n, p in net.named_parameters() if p.dim() > 1}


def _dirty_state(net, make_optimizer):
    """The state a dense run leaves (what a checkpoint of an unpruned or damaged run holds): non-zero everywhere."""
    dense = copy.deepcopy(net)
    optimizer = make_optimizer(dense.parameters())
    for x, y in _batches(3, seed=9):
        optimizer.zero_grad()
        F.cross_entropy(dense(x), y).backward()
        optimizer.step()
    return optimizer.state_dict()


def _state_nonzeros(optimizer, net, masks):
    count = 0
    for name, mask in masks.items():
        p = net.get_parameter(name)
        for value in optimizer.state[p].values():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                count += int(torch.count_nonzero(value[~mask]))
    return count


def _train(net, optimizer, masks, steps=20):
    """Real steps; returns the non-zero pruned entries (weights, state) after each one."""
    seen = []
    for x, y in _batches(steps):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        seen.append((sum(masked_nonzeros(net, masks).values()), _state_nonzeros(optimizer, net, masks)))
    return seen


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
def test_state_restored_after_attaching_is_zeroed_and_stays_zero_for_20_steps(optimizer_name):
    make = OPTIMIZERS[optimizer_name]
    torch.manual_seed(0)
    net = conv_bn_net()
    masks = _masks(net)
    dirty = _dirty_state(net, make)
    runs = {}
    for zero in (False, True):
        model = copy.deepcopy(net)
        optimizer = make(model.parameters())
        apply_masks(model, masks, optimizers=[optimizer])  # on_fit_start: masks attached, state zeroed ...
        optimizer.load_state_dict(dirty)  # ... then Lightning restores the checkpoint's optimizer state
        assert _state_nonzeros(optimizer, model, masks) > 0
        if zero:
            assert zero_optimizer_state_(optimizer, model) is optimizer  # on_train_start
            assert _state_nonzeros(optimizer, model, masks) == 0
        runs[zero] = _train(model, optimizer, masks)
    assert runs[True] == [(0, 0)] * 20
    # without it (the silent error of issue 12): pruned weights come back from the first step on
    assert runs[False][0][0] > 0 and all(w > 0 for w, _ in runs[False])


def test_only_state_tensors_shaped_like_the_parameter_are_touched():
    torch.manual_seed(0)
    net = conv_bn_net()
    masks = _masks(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    apply_masks(net, masks)
    for x, y in _batches(2):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    p = net.get_parameter("0.weight")
    optimizer.state[p]["exp_avg"].fill_(1.0)
    optimizer.state[p]["extra"] = torch.ones(3)
    unmasked = net.get_parameter("1.weight")  # BatchNorm gain: not masked
    before = {k: v.clone() for k, v in optimizer.state[unmasked].items()}
    step = optimizer.state[p]["step"].clone()
    zero_optimizer_state_(optimizer, net)
    assert torch.equal(optimizer.state[p]["exp_avg"], masks["0.weight"].float())
    assert torch.equal(optimizer.state[p]["extra"], torch.ones(3)) and torch.equal(optimizer.state[p]["step"], step)
    assert all(torch.equal(before[k], v) for k, v in optimizer.state[unmasked].items())
    with pytest.raises(TypeError, match="`optimizer` must be a torch.optim.Optimizer"):
        zero_optimizer_state_(net, net)


class _Resume(pl.Callback):
    """The calls PruneAtInitCallback makes on resume: masks attached in on_fit_start, optimizer state zeroed in
    on_train_start (Lightning restores it in between); records the non-zero pruned entries after every step."""

    def __init__(self, masks, zero_on_train_start):
        self.masks, self.zero, self.seen = masks, zero_on_train_start, []

    def on_fit_start(self, trainer, pl_module):
        apply_masks(pl_module, self.masks, optimizers=trainer.optimizers)

    def on_train_start(self, trainer, pl_module):
        if self.zero:
            for optimizer in trainer.optimizers:
                zero_optimizer_state_(optimizer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args):
        optimizer = trainer.optimizers[0]
        self.seen.append((sum(masked_nonzeros(pl_module, self.masks).values()), _state_nonzeros(optimizer, pl_module, self.masks)))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_from_a_checkpoint_with_state_at_pruned_entries(tmp_path, optimizer):
    """Issue 12: Lightning restores optimizer state after on_fit_start; zeroing it in on_train_start is enough."""
    pl.seed_everything(0)
    dense = Classifier(net=conv_bn_net(), shape=(1, 12, 12), optimizer=optimizer, n=64, batch_size=16)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=3))
    trainer.fit(dense)  # a dense run: its optimizer state is non-zero everywhere
    trainer.save_checkpoint(tmp_path / "dense.ckpt")
    masks = {f"net.{n}": m for n, m in _masks(dense.net).items()}
    seen = {}
    for zero in (True, False):
        model = Classifier(net=conv_bn_net(), shape=(1, 12, 12), optimizer=optimizer, n=64, batch_size=16)
        callback = _Resume(masks, zero)
        pl.Trainer(**trainer_kwargs(tmp_path, max_steps=3 + 20), callbacks=[callback]).fit(
            model, ckpt_path=tmp_path / "dense.ckpt"
        )
        seen[zero] = callback.seen
    assert seen[True] == [(0, 0)] * 20
    assert all(w > 0 for w, _ in seen[False])  # without the zeroing: pruned weights move on every step
