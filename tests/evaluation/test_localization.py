"""``localize.json`` and the localization report, generated from the typed result (no model needed here)."""

from __future__ import annotations

import json

from cxr.evaluation.localization import CamMapping, LocalizationRates, LocalizationResult
from cxr.evaluation.localize import _report


def test_localize_json_keeps_its_layout_and_the_report_reads_the_result():
    mass = LocalizationRates(4, 0.75, 0.5, 0.31, 0.25, 0.12)
    result = LocalizationResult(
        run="runs/a", split="test", store="stores/s", rule={"pointing_game": "within 15 px"}, tolerance_px=4.3,
        overall=mass, findings={"Mass": mass}, method=CamMapping("gradcam", "layer4", "the map of the box's finding"),
    )  # fmt: skip
    document = json.loads(json.dumps(result.to_dict()))
    assert list(document) == ["run", "split", "store", "rule", "tolerance_px", "overall", "findings", "method"]
    rates = ["cases", "pointing_game", "pointing_game_strict", "mean_iou", "center_baseline", "random_baseline"]
    assert list(document["overall"]) == rates
    assert document["findings"]["Mass"] == dict(zip(rates, [4, 0.75, 0.5, 0.31, 0.25, 0.12], strict=True))
    assert document["method"] == {
        "name": "gradcam", "layer": "layer4", "what": "the map of the box's finding", "gate": None,
    }  # fmt: skip
    report = _report(result, ["a_Mass.png"])
    assert "| Mass | 4 | 0.750 | 0.500 | 0.310 | 0.250 | 0.120 |" in report and "| **all** | 4 |" in report
    assert "gradcam on the model's `layer4`" in report and "- Pointing game: within 15 px." in report
