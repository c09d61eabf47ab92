"""The throughput harness's pure logic (bench/reps.py): shapes, the alternating order, medians, the ratio.
No timing is asserted."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_reps", Path(__file__).resolve().parents[1] / "bench/reps.py")
assert _spec and _spec.loader
reps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reps)


def test_parse_shape_reads_layers_width_heads():
    assert reps.parse_shape("12x384x6") == {"n_layer": 12, "n_embd": 384, "n_head": 6}
    assert reps.parse_shape("2X64X2") == {"n_layer": 2, "n_embd": 64, "n_head": 2}
    assert reps.shape_name(reps.parse_shape("6x512x8")) == "6x512x8"


@pytest.mark.parametrize("bad", ["12x384", "12x384x5", "0x64x2", "axbxc", "12x384x6x1", ""])
def test_parse_shape_rejects_what_gpt2_cannot_be(bad):
    with pytest.raises(ValueError):
        reps.parse_shape(bad)


def test_alternating_runs_every_system_once_per_rep_in_order():
    assert reps.alternating(["lmpref", "trl"], 3) == [
        (1, "lmpref"),
        (1, "trl"),
        (2, "lmpref"),
        (2, "trl"),
        (3, "lmpref"),
        (3, "trl"),
    ]
    with pytest.raises(ValueError):
        reps.alternating(["lmpref"], 0)


def test_summarise_takes_medians_per_system_and_the_ratio_to_trl():
    runs = [
        {"system": "lmpref", "episodes_per_s": 3.0, "generation": 1.0, "logprobs": 0.1, "reward": 0.2, "train": 5.0},
        {"system": "trl", "episodes_per_s": 1.0, "generation": 2.0, "logprobs": 1.0, "reward": 0.5, "train": 9.0},
        {"system": "lmpref", "episodes_per_s": 9.0, "generation": 3.0, "logprobs": 0.3, "reward": 0.4, "train": 1.0},
        {"system": "trl", "episodes_per_s": 2.0, "generation": 4.0, "logprobs": 2.0, "reward": 0.7, "train": 7.0},
        {"system": "lmpref", "episodes_per_s": 4.0, "generation": 2.0, "logprobs": 0.2, "reward": 0.3, "train": 3.0},
        {"system": "trl", "episodes_per_s": 1.5, "generation": 3.0, "logprobs": 1.5, "reward": 0.6, "train": 8.0},
    ]
    rows = reps.summarise(runs)
    ours, theirs = rows["lmpref"], rows["trl"]
    assert ours["reps"] == theirs["reps"] == 3
    assert ours["episodes_per_s"] == 4.0 and (ours["eps_min"], ours["eps_max"]) == (3.0, 9.0)
    assert (ours["generation"], ours["logprobs"], ours["reward"], ours["train"]) == (2.0, 0.2, 0.3, 3.0)
    assert theirs["episodes_per_s"] == 1.5 and theirs["train"] == 8.0
    assert ours["ratio"] == pytest.approx(4.0 / 1.5) and theirs["ratio"] == 1.0
    # the median of an even count is the mean of the middle two
    assert reps.median_row([{"episodes_per_s": 1.0}, {"episodes_per_s": 3.0}])["episodes_per_s"] == 2.0


def test_summarise_without_trl_has_no_ratio_and_a_phase_missing_in_a_run_is_left_out():
    rows = reps.summarise(
        [{"system": "lmpref", "episodes_per_s": 2.0, "train": 1.0}, {"system": "lmpref", "episodes_per_s": 4.0}]
    )
    assert "ratio" not in rows["lmpref"] and "train" not in rows["lmpref"]
    assert rows["lmpref"]["episodes_per_s"] == 3.0


def test_table_has_a_row_per_system_with_device_and_comparison():
    row = {
        "label": "lmpref",
        "device": "CPU",
        "comparison": "like-for-like (every layer trained)",
        "shape": "12x384x6",
        "batch": 32,
        "micro": 16,
        **reps.summarise([{"system": "x", "episodes_per_s": 2.0, "train": 1.0}])["x"],
    }
    out = reps.table([row, {**row, "label": "TRL 1.9.2", "ratio": 1.0}]).splitlines()
    assert len(out) == 4 and out[0].count("|") == out[1].count("|") == out[2].count("|") == 13
    assert out[2].startswith("| lmpref | CPU | like-for-like") and "| 32 / 16 |" in out[2]
    assert out[2].endswith("| - |") and out[3].endswith("| 1.00 |")
