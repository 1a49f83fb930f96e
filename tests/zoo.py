"""Tiny third-party models for the tests: Hugging Face transformers, timm and torchvision, built from configs.

No weights are downloaded: transformers models come from ``*Config`` objects, timm with ``pretrained=False``,
torchvision with ``weights=None``. Configs are tiny so a forward pass takes milliseconds. Imports of
transformers/timm happen inside the builders (transformers takes seconds to import).

Token models come with:

* :func:`token_batch` / :func:`token_loader`: dict batches (``input_ids``, ``attention_mask``, ``labels``) as
  Hugging Face data collators produce them;
* :class:`HFModule`: a LightningModule around a transformers model, trained on such batches by the model's own
  loss (``self(**batch).loss``), its ``forward(**batch)`` returning the model's output object;
* :func:`hf_loss` and :func:`hf_logits`: the ``loss_fn`` / ``logits_fn`` a user would write for it (importable
  as ``tests.zoo.hf_loss`` / ``tests.zoo.hf_logits``);
* :func:`hf_embedding_jacobian_values`: reference end-to-end spectra (logits w.r.t. the word embeddings).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

VOCAB = 64
SEQ = 8

#: timm models named by issue 11, built with ``pretrained=False`` and 10 classes (ViT at 32x32 inputs).
TIMM_MODELS = ("resnet18", "vit_tiny_patch16_224", "mobilenetv3_small_100", "convnext_atto", "efficientnet_b0")
#: torchvision models named by issue 11, built with ``weights=None`` and 10 classes.
TORCHVISION_MODELS = ("resnet18", "mobilenet_v3_small")


def tiny_bert_classifier(num_labels: int = 3, seed: int = 0) -> nn.Module:
    """``BertForSequenceClassification``: 2 layers, hidden 32, 2 heads, vocab :data:`VOCAB` (SDPA attention)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=num_labels, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )
    return BertForSequenceClassification(config)


def tiny_gpt2(seed: int = 0) -> nn.Module:
    """``GPT2LMHeadModel``: 2 layers, width 32, 2 heads, vocab :data:`VOCAB`; ``lm_head.weight`` is tied to
    ``transformer.wte.weight``; attention and MLP weights are transformers ``Conv1D`` (stored ``[in, out]``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def tiny_llama(tied: bool = True, seed: int = 0) -> nn.Module:
    """``LlamaForCausalLM``: 2 layers, hidden 32, 2 heads (1 key/value head), vocab :data:`VOCAB`, SDPA attention;
    ``lm_head`` tied to the embedding when ``tied``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=tied, bos_token_id=0,
        eos_token_id=0, pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def timm_model(name: str, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A timm model with random weights (``pretrained=False``); ViTs are built for 32x32 inputs."""
    import timm

    torch.manual_seed(seed)
    kwargs: dict[str, Any] = {"img_size": 32} if name.startswith("vit") else {}
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def torchvision_model(name: str, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A torchvision classification model with random weights (``weights=None``)."""
    import torchvision

    torch.manual_seed(seed)
    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


def token_batch(
    n: int = 4, seq: int = SEQ, *, labels: str = "lm", num_labels: int = 3, seed: int = 0
) -> dict[str, Tensor]:
    """A dict batch of random token ids: ``input_ids`` ``[n, seq]`` in ``[0, VOCAB)``, ``attention_mask`` (ones,
    the last token of odd rows masked), and ``labels``: the ids themselves (``"lm"``, causal language modelling)
    or ``[n]`` class ids in ``[0, num_labels)`` (``"cls"``)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[1::2, -1] = 0
    target = ids.clone() if labels == "lm" else torch.randint(0, num_labels, (n,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": target}


class _TokenData(Dataset):
    def __init__(self, n: int, seq: int, labels: str, num_labels: int, seed: int) -> None:
        self.batch = token_batch(n, seq, labels=labels, num_labels=num_labels, seed=seed)

    def __len__(self) -> int:
        return self.batch["input_ids"].shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.batch.items()}


def token_loader(
    n: int = 16, seq: int = SEQ, batch_size: int = 4, *, labels: str = "lm", num_labels: int = 3, seed: int = 0
) -> DataLoader:
    """A dataloader of :func:`token_batch`-style dict batches (the default collate stacks the dict entries)."""
    return DataLoader(_TokenData(n, seq, labels, num_labels, seed), batch_size=batch_size)


class HFModule(pl.LightningModule):
    """A LightningModule around a transformers model, as users write it: ``forward(**batch)`` returns the model's
    output object, ``training_step`` minimizes ``self(**batch).loss`` with AdamW."""

    def __init__(self, model: nn.Module, lr: float = 1e-3) -> None:
        super().__init__()
        self.model = model
        self.lr = lr

    def forward(self, **batch: Tensor) -> Any:
        return self.model(**batch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self(**batch).loss
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)


def hf_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """``loss_fn`` for :class:`HFModule`: the model's own loss on a dict batch."""
    return model(**batch).loss


def hf_logits(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """``logits_fn`` for :class:`HFModule`: the logits of a dict batch (``[n, classes]`` or ``[n, seq, vocab]``)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits


def hf_embedding_jacobian_values(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Reference end-to-end spectra of a transformers model: per example, the singular values of
    ``∂ logits / ∂ word embeddings``, through the model's ``inputs_embeds`` argument (no hooks), with attention on the
    math kernel, in eval mode. ``[n, min(m, n)]``, rows sorted descending."""
    from torch.func import jacrev
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model.eval()
    with torch.no_grad():
        embeds = model.get_input_embeddings()(batch["input_ids"])
    rows = []
    for i in range(embeds.shape[0]):
        mask = batch["attention_mask"][i : i + 1]

        def logits(e: Tensor) -> Tensor:
            return model(inputs_embeds=e[None], attention_mask=mask).logits[0]

        with sdpa_kernel([SDPBackend.MATH]):
            jac = jacrev(logits)(embeds[i])
        rows.append(torch.linalg.svdvals(jac.reshape(-1, embeds[i].numel())))
    return torch.stack(rows)
