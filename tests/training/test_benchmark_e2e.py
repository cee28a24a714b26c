"""benchmarks/gpu_train_e2e.py --smoke: the end-to-end GPU benchmark's code path runs on a CPU and records what the
issue asks for (the GPU numbers themselves come from a run on a GPU: docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # the benchmark trains for a few steps

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_train_e2e.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("gpu_train_e2e", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_end_to_end_benchmark_smoke_run_records_every_measurement(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "e2e.json"
    try:  # two rows: the baseline (CPU augmentation) and the device augmentation lever
        _benchmark().main(["--smoke", "--out", str(out), "--fused", "default", "--workers", "0"])
    finally:
        torch.set_num_threads(threads)
    record = json.loads(out.read_text())
    required = ["device", "model", "image_size", "batch_size", "precision", "loader_img_s", "model_only_img_s"]
    required += ["end_to_end_img_s", "date", "torch", "lightning", "gpu_utilisation_pct", "peak_memory_gib"]
    assert not [key for key in required if key not in record]
    assert record["device"].startswith("cpu") and record["model"] == "resnet18" and record["image_size"] == 32
    assert record["torch"] == torch.__version__ and record["skipped"] == []
    rows = record["rows"]
    assert [(row["changed"], row["augment_on_resolved"]) for row in rows] == [(None, "cpu"), ("augment_on", "device")]
    for row in rows:
        assert "error" not in row, row
        assert row["loader_img_s"] > 0 and row["model_only_img_s"] > 0 and row["end_to_end_img_s"] > 0
        ratio = row["end_to_end_img_s"] / row["model_only_img_s"]
        assert abs(row["end_to_end_over_model_only"] - ratio) < 0.01
        assert row["gpu_utilisation_pct"] is None and row["peak_memory_gib"] is None  # a CPU has neither
    assert record["end_to_end_img_s"] == rows[0]["end_to_end_img_s"]  # the top-level fields are the baseline's


def test_the_lever_plan_varies_one_lever_at_a_time():
    benchmark = _benchmark()
    args = benchmark.parse_args(["--augment-on", "device,cpu", "--compile", "none,default", "--batch-size", "64,256",
                                 "--fused", "fused", "--workers", "8", "--prefetch", "2,4"])  # fmt: skip
    rows = benchmark.plan(args)
    baseline = {"augment_on": "device", "compile": "none", "fused": "fused", "batch_size": 64, "workers": 8,
                "prefetch": 2, "channels_last": False}  # fmt: skip
    assert rows[0] == {**baseline, "changed": None}
    assert rows[1:] == [
        {**baseline, "augment_on": "cpu", "changed": "augment_on"},
        {**baseline, "batch_size": 256, "changed": "batch_size"},
        {**baseline, "prefetch": 4, "changed": "prefetch"},
        {**baseline, "compile": "default", "changed": "compile"},  # last: the slowest rows
    ]
