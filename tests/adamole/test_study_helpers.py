"""The statistics of benchmarks/bench_adamole_study.py: paired t, routing windows, best LoRA."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _study():
    spec = importlib.util.spec_from_file_location(
        "bench_adamole_study", ROOT / "benchmarks" / "bench_adamole_study.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study = _study()


def test_paired_t_matches_scipy():
    from scipy import stats

    a, b = [0.80, 0.71, 0.93], [0.70, 0.70, 0.80]
    mean, sd, t, d = study.paired(a, b)
    assert sd == pytest.approx(0.06244998, rel=1e-6)
    assert d == pytest.approx([0.10, 0.01, 0.13])
    assert mean == pytest.approx(0.08)
    assert t == pytest.approx(stats.ttest_rel(a, b).statistic)


def test_windows_undo_the_cumulative_accumulators():
    """Snapshots are cumulative within an epoch: (0.7 * 30 - 0.5 * 10) / 20 = 0.8 for the second
    window; a new epoch restarts the accumulators."""
    trace = [
        {"epoch": 1, "modules": {"m": {"tokens": 10, "tau_over_max": 0.5}}},
        {"epoch": 1, "modules": {"m": {"tokens": 30, "tau_over_max": 0.7}}},
        {"epoch": 2, "modules": {"m": {"tokens": 5, "tau_over_max": 0.9}}},
    ]
    assert study._windows(trace, "tau_over_max") == pytest.approx([0.5, 0.8, 0.9])


def _part(seed, accs):
    arms = {
        name: {
            "accuracy": acc,
            "n_trainable_params": 1,
            "fit_seconds": 1.0,
            "train_loss": [0.5],
            "epochs": [],
            "trace": [],
            "device": "cpu",
        }
        for name, acc in accs.items()
    }
    return {"task": "t", "budget": "b", "seed": seed, "settings": {}, "arms": arms}


def test_summary_pairs_every_arm_with_the_best_lora():
    parts = [
        _part(0, {"lora_a64": 0.70, "lora_a128": 0.75, "adamole": 0.77}),
        _part(1, {"lora_a64": 0.72, "lora_a128": 0.74, "adamole": 0.74}),
        _part(2, {"lora_a64": 0.71, "lora_a128": 0.76, "adamole": 0.79}),
    ]
    s = study.summarise(parts)["t/b"]
    assert s["best_lora"] == "lora_a128"
    rows = {r["arm"]: r for r in s["rows"]}
    assert "diff" not in rows["lora_a128"]
    assert rows["adamole"]["diffs"] == pytest.approx([0.02, 0.0, 0.03])
    assert rows["lora_a64"]["diff"] == pytest.approx(-0.04)


def test_tagged_parts_of_one_seed_are_joined():
    """Two processes ran different arms of seed 0 (two files); the report sees one seed."""
    parts = [
        _part(0, {"lora_a128": 0.75}),
        _part(0, {"adamole": 0.70, "lora_a128": 0.10}),
        _part(1, {"lora_a128": 0.74, "adamole": 0.72}),
    ]
    merged = study.merge_parts(parts)
    assert sorted(p["seed"] for p in merged) == [0, 1]
    seed0 = next(p for p in merged if p["seed"] == 0)
    assert seed0["arms"]["lora_a128"]["accuracy"] == 0.75  # the first part wins
    assert seed0["arms"]["adamole"]["accuracy"] == 0.70
    s = study.summarise(merged)["t/b"]
    assert s["seeds"] == [0, 1]
    assert [r["arm"] for r in s["rows"]] == ["lora_a128", "adamole"]


def test_convergence_columns_average_over_the_seeds_still_training():
    """Seed 1 stopped after 2 epochs: epoch 3 is seed 0's alone; the routing reported is the one
    of the epoch early stopping kept."""
    assert study._per_epoch([[0.6, 0.5, 0.4], [0.8, 0.7]]) == pytest.approx([0.7, 0.6, 0.4])
    assert study._per_epoch([[None, None]]) is None
    arm = {"best_epoch": 2, "epochs": [{"m": 1}, {"m": 2}, {"m": 3}]}
    assert study._kept_epoch(arm) == {"m": 2}
    assert study._kept_epoch(dict(arm, best_epoch=None)) == {"m": 3}


def test_an_arm_missing_a_seed_is_paired_on_the_seeds_it_has():
    parts = [
        _part(0, {"lora_a128": 0.75, "adamole": 0.70}),
        _part(1, {"lora_a128": 0.74, "adamole": 0.73}),
        _part(2, {"lora_a128": 0.76}),
    ]
    settings = {"n_train": 8, "n_test": 8, "max_length": 8, "num_epochs": 1, "lr": 1e-3}
    for part in parts:
        part["settings"] = settings
    rows = {r["arm"]: r for r in study.summarise(parts)["t/b"]["rows"]}
    assert rows["adamole"]["accuracy"] == [0.70, 0.73, None]
    assert rows["adamole"]["mean"] == pytest.approx(0.715)
    assert rows["adamole"]["diffs"] == pytest.approx([-0.05, -0.01])
    assert "| adamole | 0.700 / 0.730 / – |" in study.markdown(study.summarise(parts))
