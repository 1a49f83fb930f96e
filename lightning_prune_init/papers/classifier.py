"""A generic classification LightningModule around any network: cross-entropy, SGD/Adam/AdamW, LR schedules.

>>> model = ImageClassifier("mlp", {"depth": 3, "input_shape": (1, 40)})
>>> model(model.example_input_array).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_prune_init._validation import check_choice, check_int, check_number
from lightning_prune_init.papers.networks.registry import build_network

__all__ = ["ImageClassifier"]


class ImageClassifier(L.LightningModule):
    """Classification with any network: cross-entropy, SGD/Adam/AdamW, optional LR schedule.

    Batches are ``(inputs [N, *input_shape] float32, targets [N] int64)``: images ``[N, C, H, W]`` or
    MNIST-1D's sequences ``[N, 1, 40]``. Logs ``train/loss`` (per
    step), ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc`` (per epoch); accuracy
    is top-1 over all samples (torchmetrics ``MulticlassAccuracy(average="micro")``).

    Args:
        network: a name of :data:`NETWORKS` (default ``"lenet300"``) or a ready ``nn.Module``. A module
            is not stored in the hyperparameters: pass it again to ``load_from_checkpoint``.
        network_kwargs: keyword arguments for :func:`build_network` when ``network`` is a name,
            e.g. ``{"depth": 7, "activation": "tanh"}``.
        num_classes: number of classes. ``None`` (default): the network's ``num_classes`` attribute,
            else 10. When given with a network name it is passed to the constructor.
        lr: learning rate. Default 0.1.
        momentum: SGD momentum (ignored by Adam/AdamW). Default 0.9.
        weight_decay: L2 penalty (decoupled for AdamW) on all parameters. Default 5e-4.
        optimizer: ``"sgd"`` (default), ``"adam"`` or ``"adamw"``.
        scheduler: ``"none"`` (default), ``"step"`` (multiply by ``lr_gamma`` every ``lr_step_size``
            intervals) or ``"cosine"`` (cosine annealing to 0 over the whole run:
            ``trainer.estimated_stepping_batches`` steps or ``trainer.max_epochs`` epochs).
        lr_step_size: period of the step schedule, in ``scheduler_interval`` units. Default 30.
        lr_gamma: factor of the step schedule. Default 0.1.
        scheduler_interval: ``"epoch"`` (default) or ``"step"`` (SNIP decays every 25k/30k steps).

    The loss is ``F.cross_entropy(network(x), y)``, the mean over the batch of ``-log softmax(logits)_y``.

    >>> model = ImageClassifier("lenet300", lr=0.05, momentum=0.9)
    >>> opt = model.configure_optimizers()
    >>> type(opt).__name__, opt.defaults["lr"], model.example_input_array.shape
    ('SGD', 0.05, torch.Size([2, 1, 28, 28]))
    """

    def __init__(
        self,
        network: str | nn.Module = "lenet300",
        network_kwargs: dict[str, Any] | None = None,
        num_classes: int | None = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        optimizer: Literal["sgd", "adam", "adamw"] = "sgd",
        scheduler: Literal["none", "step", "cosine"] = "none",
        lr_step_size: int = 30,
        lr_gamma: float = 0.1,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
    ) -> None:
        super().__init__()
        check_choice("optimizer", optimizer, ("sgd", "adam", "adamw"))
        check_choice("scheduler", scheduler, ("none", "step", "cosine"))
        check_choice("scheduler_interval", scheduler_interval, ("epoch", "step"))
        check_number("lr", lr, minimum=0.0, minimum_inclusive=False)
        check_number("momentum", momentum, minimum=0.0)
        check_number("weight_decay", weight_decay, minimum=0.0)
        check_int("lr_step_size", lr_step_size, minimum=1)

        if isinstance(network, nn.Module):
            if network_kwargs:
                raise ValueError("`network_kwargs` is only used when `network` is a name, not a module")
            self.save_hyperparameters(ignore=["network"])
            self.network = network
        elif isinstance(network, str):
            self.save_hyperparameters()
            kwargs = dict(network_kwargs or {})
            if num_classes is not None:
                if kwargs.get("num_classes", num_classes) != num_classes:
                    raise ValueError(
                        f"`num_classes` ({num_classes}) disagrees with network_kwargs['num_classes'] "
                        f"({kwargs['num_classes']})"
                    )
                kwargs["num_classes"] = num_classes
            self.network = build_network(network, **kwargs)
        else:
            raise TypeError(f"`network` must be a network name or an nn.Module, got {type(network).__name__}")

        net_classes = getattr(self.network, "num_classes", None)
        if num_classes is None:
            num_classes = int(net_classes) if net_classes is not None else 10
        elif net_classes is not None and net_classes != num_classes:
            raise ValueError(f"`num_classes` ({num_classes}) disagrees with the network's ({net_classes})")
        check_int("num_classes", num_classes, minimum=1)
        self.num_classes = num_classes

        input_shape = getattr(self.network, "input_shape", None)
        if input_shape is not None:
            # Two samples, so that batch norm in training mode also accepts it.
            self.example_input_array = torch.zeros(2, *input_shape)

        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs ``[N, *input_shape]`` -> logits ``[N, num_classes]``."""
        return self.network(x)

    def _shared_step(self, batch: Any, stage: str, metric: MulticlassAccuracy) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metric(logits, y)
        # One key per quantity: the training loss per step, everything else per epoch.
        train = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=train, on_epoch=not train, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=not train)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Cross-entropy of one training batch; logs ``train/loss`` (per step) and ``train/acc`` (per epoch)."""
        return self._shared_step(batch, "train", self.train_acc)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Logs ``val/loss`` and ``val/acc`` (per epoch)."""
        self._shared_step(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Logs ``test/loss`` and ``test/acc`` (per epoch)."""
        self._shared_step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> Any:
        """The optimizer over all parameters, with its LR scheduler when ``scheduler`` is not ``"none"``."""
        hp = self.hparams
        params = self.parameters()
        opt: torch.optim.Optimizer
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        sched: torch.optim.lr_scheduler.LRScheduler
        if hp.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.lr_step_size, gamma=hp.lr_gamma)
        else:
            if hp.scheduler_interval == "step":
                total = self.trainer.estimated_stepping_batches
            else:
                total = self.trainer.max_epochs
            if total is None or not math.isfinite(total) or total < 1:
                raise ValueError(
                    f"scheduler='cosine' needs a finite run length; got {total} "
                    f"{'steps' if hp.scheduler_interval == 'step' else 'epochs'} (set max_epochs or max_steps)"
                )
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": hp.scheduler_interval}}
