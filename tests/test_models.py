"""The networks of METHOD.md §6 (exact parameter counts, shapes, structure) and ImageClassifier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_prune_init.papers import (
    MLP,
    NETWORKS,
    VGG,
    CifarResNet,
    ImageClassifier,
    LeNet5,
    LeNet300,
    ZeroPadShortcut,
    build_network,
    count_weights,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("depth", [3, 5, 7])
def test_mlp_k_counts(depth: int) -> None:
    net = MLP(depth=depth, activation="linear")
    weights = 784 * 100 + (depth - 2) * 100 * 100 + 100 * 10
    biases = (depth - 1) * 100 + 10
    assert count_weights(net) == weights
    assert n_params(net) == weights + biases
    assert {3: 89_400, 5: 109_400, 7: 129_400}[depth] == weights
    assert [n for n, _ in net.named_parameters()][:2] == ["fc1.weight", "fc1.bias"]
    assert net.fc1.weight.shape == (100, 784) and getattr(net, f"fc{depth}").weight.shape == (10, 100)


def test_mlp_depth_one_and_no_bias() -> None:
    assert count_weights(MLP(depth=1)) == 784 * 10
    net = MLP(depth=3, bias=False)
    assert n_params(net) == count_weights(net) == 89_400


def test_lenet300_counts() -> None:
    net = LeNet300()
    assert count_weights(net) == 784 * 300 + 300 * 100 + 100 * 10 == 266_200
    assert n_params(net) == 266_200 + 300 + 100 + 10


def test_lenet5_caffe_counts() -> None:
    net = LeNet5()
    weights = 1 * 20 * 5 * 5 + 20 * 50 * 5 * 5 + (50 * 4 * 4) * 500 + 500 * 10
    assert count_weights(net) == weights == 430_500
    assert n_params(net) == weights + 20 + 50 + 500 + 10
    cifar = LeNet5(in_channels=3, input_size=32)
    assert count_weights(cifar) == 3 * 20 * 25 + 20 * 50 * 25 + (50 * 5 * 5) * 500 + 500 * 10


def _vgg_conv_weights(kernels: list[tuple[int, int, int]]) -> int:
    return sum(k * k * cin * cout for k, cin, cout in kernels)


def test_vgg_c_counts() -> None:
    convs = [
        (3, 3, 64), (3, 64, 64),
        (3, 64, 128), (3, 128, 128),
        (3, 128, 256), (3, 256, 256), (1, 256, 256),
        (3, 256, 512), (3, 512, 512), (1, 512, 512),
        (3, 512, 512), (3, 512, 512), (1, 512, 512),
    ]
    classifier = 512 * 512 + 512 * 512 + 512 * 10
    net = VGG("C")
    assert count_weights(net) == _vgg_conv_weights(convs) + classifier == 10_521_280
    assert round(count_weights(net) / 1e6, 1) == 10.5  # SNIP, Table 2
    bn_channels = 2 * 64 + 2 * 128 + 3 * 256 + 6 * 512 + 2 * 512
    assert n_params(net) == 10_521_280 + 2 * bn_channels + 10
    conv7 = net.features.conv3_3
    assert conv7.kernel_size == (1, 1) and conv7.bias is None
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 13
    assert sum(isinstance(m, nn.Linear) for m in net.modules()) == 3
    assert sum(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in net.modules()) == 15


def test_vgg_d_and_like_counts() -> None:
    convs = [(3, 3, 64), (3, 64, 64), (3, 64, 128), (3, 128, 128), (3, 128, 256), (3, 256, 256), (3, 256, 256),
             (3, 256, 512)] + [(3, 512, 512)] * 5
    assert count_weights(VGG("D")) == _vgg_conv_weights(convs) + 512 * 512 * 2 + 512 * 10 == 15_239_872
    assert count_weights(VGG("like")) == _vgg_conv_weights(convs) + 512 * 512 + 512 * 10 == 14_977_728


def _resnet_weights(n: int, projection: bool = False) -> int:
    w = 3 * 16 * 9 + 2 * n * 16 * 16 * 9
    w += 16 * 32 * 9 + (2 * n - 1) * 32 * 32 * 9
    w += 32 * 64 * 9 + (2 * n - 1) * 64 * 64 * 9
    w += 64 * 10
    if projection:
        w += 16 * 32 + 32 * 64
    return w


def test_resnet32_option_a_counts() -> None:
    net = CifarResNet(depth=32)
    assert count_weights(net) == _resnet_weights(5) == 461_872
    bn = 2 * (16 + 5 * 2 * 16 + 5 * 2 * 32 + 5 * 2 * 64)
    assert n_params(net) == 461_872 + bn + 10 == 464_154  # "0.46M" (He et al. 2016)
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 31
    assert sum(isinstance(m, ZeroPadShortcut) for m in net.modules()) == 2


@pytest.mark.parametrize(("depth", "total"), [(20, 269_722), (56, 853_018), (110, 1_727_962)])
def test_resnet_other_depths(depth: int, total: int) -> None:
    net = build_network(f"resnet{depth}")
    n = (depth - 2) // 6
    assert count_weights(net) == _resnet_weights(n)
    assert n_params(net) == total


def test_resnet32_projection_counts() -> None:
    net = build_network("resnet32_projection")
    assert count_weights(net) == _resnet_weights(5, projection=True) == 464_432
    assert n_params(net) == 464_154 + 16 * 32 + 32 * 64 + 2 * (32 + 64)
    shortcuts = [name for name, m in net.named_modules() if name.endswith("shortcut.conv")]
    assert shortcuts == ["layer2.0.shortcut.conv", "layer3.0.shortcut.conv"]
    assert net.layer2[0].shortcut.conv.weight.shape == (32, 16, 1, 1)


# ----------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("mlp", {}, (1, 28, 28)),
        ("lenet300", {}, (1, 28, 28)),
        ("lenet5", {}, (1, 28, 28)),
        ("lenet5", {"in_channels": 3, "input_size": 32}, (3, 32, 32)),
        ("lenet300", {"in_channels": 3, "input_size": 32}, (3, 32, 32)),
        ("vgg_c", {}, (3, 32, 32)),
        ("vgg_c", {"in_channels": 1, "input_size": 64}, (1, 64, 64)),
        ("resnet32", {}, (3, 32, 32)),
        ("resnet20", {"in_channels": 1, "input_size": 28}, (1, 28, 28)),
    ],
)
def test_forward_shapes_and_input_shape(name: str, kwargs: dict, shape: tuple[int, int, int]) -> None:
    net = build_network(name, num_classes=7, **kwargs)
    assert net.input_shape == shape and net.num_classes == 7
    out = net(torch.randn(3, *shape))
    assert out.shape == (3, 7) and out.dtype == torch.float32


def test_mlp_activations() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)
    linear = MLP(depth=5, activation="linear", bias=False)
    torch.testing.assert_close(linear(2 * x - 3 * y), 2 * linear(x) - 3 * linear(y), rtol=1e-4, atol=1e-5)
    assert isinstance(MLP(activation="tanh").act, nn.Tanh) and isinstance(MLP(activation="relu").act, nn.ReLU)
    # The activation follows every layer but the last.
    tanh = MLP(depth=3, activation="tanh")
    h = torch.tanh(tanh.fc2(torch.tanh(tanh.fc1(x.flatten(1)))))
    torch.testing.assert_close(tanh(x), tanh.fc3(h))


def test_lenet5_has_no_activation_after_convs() -> None:
    net = LeNet5()
    x = torch.randn(2, 1, 28, 28)
    h = nn.functional.max_pool2d(net.conv2(nn.functional.max_pool2d(net.conv1(x), 2)), 2)
    torch.testing.assert_close(net(x), net.fc2(torch.relu(net.fc1(h.flatten(1)))))


def test_zero_pad_shortcut() -> None:
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float32).reshape(2, 16, 4, 4)
    out = ZeroPadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 2, 2)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, :8]) == 0 and torch.count_nonzero(out[:, 24:]) == 0
    assert n_params(ZeroPadShortcut(16, 32, 2)) == 0


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda: MLP(activation="gelu"), ValueError, "activation"),
        (lambda: MLP(depth=0), ValueError, "depth"),
        (lambda: MLP(width=2.5), TypeError, "width"),
        (lambda: VGG("E"), ValueError, "version"),
        (lambda: VGG(input_size=28), ValueError, "input_size"),
        (lambda: LeNet5(input_size=12), ValueError, "input_size"),
        (lambda: CifarResNet(depth=33), ValueError, "6n\\+2"),
        (lambda: CifarResNet(shortcut="B"), ValueError, "shortcut"),
        (lambda: build_network("alexnet"), ValueError, "lenet300"),
        (lambda: build_network("lenet300", depth=3), TypeError, "lenet300"),
    ],
)
def test_bad_arguments(factory, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        factory()


def test_registry_names_and_aliases() -> None:
    assert {"mlp", "lenet300", "lenet5", "vgg_c", "resnet32", "resnet32_projection"} <= set(NETWORKS)
    assert count_weights(build_network("VGG-C")) == 10_521_280
    net = build_network("mlp", depth=7, activation="linear")
    assert isinstance(net, MLP) and net.depth == 7 and net.activation == "linear"


# ----------------------------------------------------------------------------- ImageClassifier


def test_classifier_builds_network_and_saves_hparams() -> None:
    model = ImageClassifier("mlp", {"depth": 5, "activation": "tanh"}, num_classes=10, lr=0.05)
    assert isinstance(model.network, MLP) and model.network.depth == 5
    assert model.hparams.network == "mlp" and model.hparams.network_kwargs == {"depth": 5, "activation": "tanh"}
    assert model.hparams.lr == 0.05 and model.hparams.optimizer == "sgd"
    assert model.example_input_array.shape == (2, 1, 28, 28)
    assert model(model.example_input_array).shape == (2, 10)
    assert [n for n, _ in model.named_parameters()][0] == "network.fc1.weight"


def test_classifier_accepts_module_and_checks_classes() -> None:
    model = ImageClassifier(network=CifarResNet(depth=20, num_classes=5))
    assert model.num_classes == 5 and "network" not in model.hparams
    assert model.example_input_array.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="num_classes"):
        ImageClassifier(network=LeNet300(num_classes=5), num_classes=10)
    with pytest.raises(ValueError, match="optimizer"):
        ImageClassifier(optimizer="rmsprop")
    with pytest.raises(ValueError, match="scheduler"):
        ImageClassifier(scheduler="linear")
    with pytest.raises(TypeError, match="network"):
        ImageClassifier(network=3)


def test_configure_optimizers() -> None:
    sgd = ImageClassifier("lenet300", lr=0.1, momentum=0.9, weight_decay=5e-4).configure_optimizers()
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["lr"] == 0.1 and sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 5e-4
    conf = ImageClassifier("lenet300", optimizer="adamw", lr=1e-3, scheduler="step", lr_step_size=25_000,
                           lr_gamma=0.1, scheduler_interval="step").configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.AdamW) and conf["optimizer"].defaults["lr"] == 1e-3
    sched = conf["lr_scheduler"]
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.StepLR) and sched["interval"] == "step"
    assert sched["scheduler"].step_size == 25_000 and sched["scheduler"].gamma == 0.1


def test_fit_on_digits_logs_metrics_and_reloads(tmp_path) -> None:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from lightning_prune_init.papers import DigitsDataModule

    L.seed_everything(0, workers=True)
    model = ImageClassifier("lenet300", lr=0.05, scheduler="cosine")
    dm = DigitsDataModule(batch_size=64)
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=logger, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        log_every_n_steps=5)
    trainer.fit(model, datamodule=dm)
    logger.save()
    header = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert set(header) == {"epoch", "step", "train/loss", "train/acc", "val/loss", "val/acc"}
    assert trainer.callback_metrics["val/acc"] > 0.8
    assert trainer.lr_scheduler_configs[0].scheduler.T_max == 3
    results = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert results["test/acc"] > 0.8 and "test/loss" in results
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    restored = ImageClassifier.load_from_checkpoint(ckpt)
    model.eval(), restored.eval()
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(restored(x), model(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_lightning_cli_builds_classifier_from_config(tmp_path, monkeypatch) -> None:
    from lightning.pytorch.cli import LightningCLI

    from lightning_prune_init.papers import DigitsDataModule

    monkeypatch.setattr("sys.argv", ["lightning-prune-init"])
    trainer = {"logger": False, "default_root_dir": str(tmp_path), "enable_progress_bar": False}
    cli = LightningCLI(
        ImageClassifier,
        DigitsDataModule,
        run=False,
        args={
            "model": {"network": "mlp", "network_kwargs": {"depth": 7, "activation": "linear"},
                      "optimizer": "adam", "lr": 0.001},
            "data": {"resize_to": 28},
            "trainer": trainer,
            "seed_everything": 0,
        },
    )
    assert isinstance(cli.model.network, MLP) and cli.model.network.depth == 7
    assert cli.model.hparams.optimizer == "adam" and cli.datamodule.resize_to == 28
    # A network given as a class path is built by the CLI and passed as a module.
    resnet = {"class_path": "lightning_prune_init.papers.CifarResNet",
              "init_args": {"depth": 20, "in_channels": 1, "input_size": 28}}
    cli = LightningCLI(ImageClassifier, DigitsDataModule, run=False,
                       args={"model": {"network": resnet}, "trainer": trainer, "seed_everything": 0})
    assert isinstance(cli.model.network, CifarResNet) and cli.model.network.depth == 20
    assert cli.model.example_input_array.shape == (2, 1, 28, 28)
