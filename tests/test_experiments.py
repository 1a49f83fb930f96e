"""The reproduction experiments (``experiments/``) in ``--quick`` mode: each writes its files, and the
robust findings of SPP/SNIP that ``docs/results.md`` claims hold in the direction the paper says.

Bounds are set from the quick-mode numbers measured on the bundled digits (see docs/results.md), with
margin; findings that did not reproduce, or were within seed noise, are deliberately not asserted.
"""

import os
import statistics

import pytest

pytestmark = pytest.mark.slow


def _files(out, names):
    for n in names:
        path = os.path.join(out, n)
        assert os.path.isfile(path) and os.path.getsize(path) > 0, n


def test_init_study(tmp_path):
    from experiments import init_study

    res = init_study.main(["--quick", "--out", str(tmp_path)])
    _files(tmp_path, ["init_study.csv", "init_study_jsv.csv", "init_study.md",
                      *(f"init_study_density_K{k}.png" for k in (3, 5, 7))])
    s = {(r["K"], r["activation"], r["init"]): r for r in res["summary"]}
    # Orthogonal init, linear MLP-7: near-uniform density over the hidden layers (measured 1.03-1.12).
    assert statistics.fmean(s[(7, "linear", "orthogonal")]["ratio"]) < 1.25
    assert max(s[(7, "linear", "orthogonal")]["ratio"]) < 1.3
    # VS-H, tanh MLP-7: the last hidden layer is pruned more than the first, in every seed (0.75-0.81).
    assert all(v < 1.0 for v in s[(7, "tanh", "VS-H")]["late"])
    assert statistics.fmean(s[(7, "tanh", "VS-H")]["late"]) < 0.95
    # Orthogonal init is exactly isometric before pruning on a linear MLP; pruning breaks it.
    for r in res["jsv"]:
        if r["activation"] == "linear" and r["init"] == "orthogonal":
            assert abs(r["layerwise_mean_before"] - 1) < 1e-3
            assert r["layerwise_mean_after"] < 0.8


def test_signal_propagation(tmp_path):
    from experiments import signal_propagation

    res = signal_propagation.main(["--quick", "--out", str(tmp_path)])
    _files(tmp_path, ["signal_propagation.csv", "signal_propagation.md", "signal_propagation.png"])
    s = res["summary"]
    for act in ("linear", "tanh"):
        for crit in ("SNIP", "random"):
            # The repair brings the layer Jacobians' singular values back toward 1, in every seed.
            for pruned, repaired in zip(s[(act, crit)]["dist"], s[(act, f"{crit} + repair")]["dist"]):
                assert repaired < 0.6 * pruned
        # Random pruning degrades signal propagation more than SNIP.
        assert statistics.fmean(s[(act, "random")]["dist"]) > statistics.fmean(s[(act, "SNIP")]["dist"])
    # Linear MLP: after the repair the layerwise spectra are close to 1 (measured mean 0.98, dist 0.11).
    assert abs(statistics.fmean(s[("linear", "SNIP + repair")]["lw_mean"]) - 1) < 0.1
    assert statistics.fmean(s[("linear", "SNIP + repair")]["dist"]) < 0.3


def test_trainability(tmp_path):
    from experiments import trainability

    res = trainability.main(["--quick", "--out", str(tmp_path)])
    _files(tmp_path, ["trainability.csv", "trainability_curves.csv", "trainability.md", "trainability_curves.png"])
    r = res["results"]
    for key, runs in r.items():
        assert all(x.final_error < 20 for x in runs), key  # everything trains on the digits
    # The repair speeds up training of the orthogonally initialized, SNIP-pruned tanh MLP-7
    # (final training loss measured 0.066 vs 0.135 after 500 plain-SGD steps).
    rep = [x.final_train_loss for x in r[("MLP-7 tanh", 0.9, "orthogonal + repair")]]
    plain = [x.final_train_loss for x in r[("MLP-7 tanh", 0.9, "orthogonal")]]
    assert statistics.fmean(rep) < 0.75 * statistics.fmean(plain)


def test_supervision(tmp_path):
    from experiments import supervision

    res = supervision.main(["--quick", "--out", str(tmp_path)])
    _files(tmp_path, ["supervision.csv", "supervision.md", "supervision.png"])
    r = res["results"]
    assert all(statistics.fmean(v) < 25 for v in r.values())
    # Label-free scoring chooses almost the same per-layer densities as supervised scoring (measured
    # differences below 0.012). The error gap itself (0.9-2.4 points) is not asserted: it moved by
    # about a point between scoring batches.
    rows = res["rows"]
    for sp in (0.9, 0.95, 0.98):
        for layer in ("fc1", "fc2", "fc3"):
            sup = statistics.fmean(x[f"density_{layer}"] for x in rows if x["sparsity"] == sp and x["supervision"] == "true labels")
            free = statistics.fmean(x[f"density_{layer}"] for x in rows if x["sparsity"] == sp and x["supervision"] == "label-free")
            assert abs(sup - free) < 0.03, (sp, layer)


def test_sculpting(tmp_path):
    from experiments import sculpting

    res = sculpting.main(["--quick", "--out", str(tmp_path)])
    _files(tmp_path, ["sculpting.csv", "sculpting.md", "sculpting.png"])
    # Every network has exactly LeNet-300-100's weight budget.
    assert len({row["weights"] for row in res["rows"]}) == 1
    assert all(statistics.fmean(v) < 10 for v in res["results"].values())
