"""Small networks, data and a LightningModule shared by the tests (kept tiny so the suite stays fast)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def lenet300(num_classes: int = 10) -> nn.Sequential:
    """LeNet-300-100 on 28×28 inputs: 784-300-100-10, ReLU (266,200 weights)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def conv_bn_net(num_classes: int = 10) -> nn.Sequential:
    """A small conv net with batch norm and dropout, on 1×12×12 inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(64, num_classes),
    )


def random_data(n: int, shape: tuple[int, ...], num_classes: int = 10, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return TensorDataset(x, y)


class Classifier(pl.LightningModule):
    """A LightningModule wrapping ``net``; SGD with momentum and weight decay unless told otherwise."""

    def __init__(
        self,
        net: nn.Module | None = None,
        optimizer: str = "sgd",
        lr: float = 0.05,
        n: int = 64,
        shape: tuple[int, ...] = (1, 28, 28),
        batch_size: int = 16,
    ) -> None:
        super().__init__()
        self.net = net if net is not None else lenet300()
        self.optimizer_name = optimizer
        self.lr = lr
        self.n = n
        self.shape = shape
        self.batch_size = batch_size
        self.example_input_array = torch.zeros(2, *shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)

    def train_dataloader(self):
        return DataLoader(random_data(self.n, self.shape), batch_size=self.batch_size, shuffle=True)


def trainer_kwargs(tmp_path, **overrides) -> dict:
    kwargs = dict(
        accelerator="cpu",
        devices=1,
        default_root_dir=str(tmp_path),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=3,
    )
    kwargs.update(overrides)
    return kwargs


def dict_batch_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """A custom scoring loss for dict batches (used by name, as YAML would: ``helpers.dict_batch_loss``)."""
    return model(batch["image"]).logsumexp(dim=1).mean()


def reference_keep(scores: dict, k: int, eligible: dict | None = None, lowest: bool = False) -> dict:
    """Reference selection by sorting: keep the ``k`` highest (``lowest``: lowest) scores among eligible entries,
    ties broken by (mapping order, flat index), earlier kept. Slow and obviously right; for small tests only."""
    flat = torch.cat([s.reshape(-1).double() for s in scores.values()])
    ok = torch.cat([e.reshape(-1) for e in eligible.values()]) if eligible else torch.ones(flat.numel(), dtype=torch.bool)
    sign = 1.0 if lowest else -1.0
    order = sorted((i for i in range(flat.numel()) if ok[i]), key=lambda i: (sign * float(flat[i]), i))
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = keep[start : start + s.numel()].view_as(s)
        start += s.numel()
    return out


class OnceTanh(torch.autograd.Function):
    """tanh with a @once_differentiable backward: PyTorch differentiates it twice without an error, wrongly."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class OnceNet(nn.Module):
    """``fc2(OnceTanh(fc1(x)))``, 6 → 5 → 3: a network whose second derivatives PyTorch gets wrong silently."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(OnceTanh.apply(self.fc1(x)))
