"""The ``lightning-prune-init`` command: LightningCLI with this package's callbacks, models and data.

``lightning-prune-init fit -c examples/configs/demo.yaml`` trains, then (``--test_after_fit true``, the
default) tests and prints a summary: per-layer density, the isometry repair, signal propagation, test
accuracy and where the TensorBoard logs are. Any LightningModule / LightningDataModule can be named by
``class_path``; the package's callbacks are importable by their short names on the command line
(``--trainer.callbacks+=PruneAtInitCallback --trainer.callbacks.sparsity=0.95``).
"""

from __future__ import annotations

import warnings

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning_prune_init  # noqa: F401  (registers the callbacks' short names for the CLI)
import lightning_prune_init.papers  # noqa: F401  (registers ImageClassifier and the data modules' short names)
from lightning_prune_init.summary import print_fit_summary


class PruneInitCLI(LightningCLI):
    """LightningCLI whose ``fit`` also tests the trained model and prints a pruning summary."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="after `fit`, run the test split (if the data module has one) and print the summary",
        )

    def after_fit(self) -> None:
        if self.trainer.interrupted or not self.config[self.subcommand].get("test_after_fit", True):
            return
        test_metrics = {}
        datamodule = self.datamodule
        if datamodule is not None and _has_test_data(datamodule):
            results = self.trainer.test(self.model, datamodule=datamodule, verbose=False)
            test_metrics = results[0] if results else {}
        if self.trainer.is_global_zero:
            print_fit_summary(self.trainer, self.model, test_metrics)


def _has_test_data(datamodule: LightningDataModule) -> bool:
    return type(datamodule).test_dataloader is not LightningDataModule.test_dataloader


def run_cli(args: list[str] | None = None) -> PruneInitCLI:
    """Parse ``args`` (default ``sys.argv[1:]``), build everything, run the subcommand; returns the CLI object."""
    # Lightning 2.6 itself triggers this deprecation inside its pytree helper on every batch transfer
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)
    return PruneInitCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-prune-init`` console script."""
    run_cli(args)


if __name__ == "__main__":
    main()
