"""Benchmark: which class activation map points at the finding — methods × target layers, scored against boxes.

Issue 22: the demo's Grad-CAM pointing game was poor for some findings (Effusion 0.03–0.34, Pleural_Thickening
0.21). This scores every :class:`cxr.inference.cam.CamMethod` (Grad-CAM, Grad-CAM++, HiResCAM, LayerCAM) on the
model's own Grad-CAM layer and on the stages before and after it, on the same run, split and boxes, with
``cxr localize``'s rules (pointing game with Zhang et al.'s tolerance, thresholded IoU), and prints one row per
(method, layer) and, per finding, the pointing game of each. Everything is measured in one run on one model, so the
rows compare like with like; the machine's speed does not enter (no timings).

    .venv/bin/python benchmarks/cam_methods.py RUN [--split test] [--layers layer2,layer3,layer4] [--json OUT]
    .venv/bin/python benchmarks/cam_methods.py RUN --methods layercam --layers layer1,layer2 --gates none,layer3,layer4

``--gates``: also score each map multiplied by a later stage's Grad-CAM (``cxr.inference.cam.grad_cam_batch``'s
``gate``; the demo's recipe maps layer1 gated by layer3).

RUN is a trained run with boxes in its store (``cxr demo --out D`` leaves ``D/run``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from cxr.evaluation.localize import localize_run
from cxr.inference.cam import CamMethod
from cxr.inference.eager import TorchPredictor


def candidate_layers(run: Path) -> list[str]:
    """The model's own Grad-CAM layer and its neighbours among the backbone's stages (ResNet: ``layer2``-``layer4``;
    DenseNet: the dense blocks and the rectified output)."""
    model = TorchPredictor.from_path(run).model
    own = model.architecture.cam_layer
    stages = [name for name, _ in model.backbone.named_children() if name.startswith(("layer", "denseblock", "relu5"))]
    if own not in stages:
        return [own]
    at = stages.index(own)
    return stages[max(0, at - 1) : at + 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--layers", default="", help="comma-separated backbone modules (default: around its own)")
    parser.add_argument("--methods", default=",".join(CamMethod))
    parser.add_argument("--gates", default="none", help="comma-separated gate modules, or none (no gate)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    layers = [name for name in args.layers.split(",") if name] or candidate_layers(args.run)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for layer in layers:
            for gate in args.gates.split(","):
                for method in args.methods.split(","):
                    document = localize_run(args.run, args.split, examples=0, method=method, layer=layer,
                                            gate=None if gate == "none" else gate,
                                            out=Path(scratch) / f"{method}-{layer}-{gate}")  # fmt: skip
                    findings = {name: item.pointing_game for name, item in document.findings.items()}
                    rows.append({
                        "method": method, "layer": layer, "gate": gate,
                        "pointing_game": document.overall.pointing_game, "mean_iou": document.overall.mean_iou,
                        "findings": findings, "findings_at_least_0.8": sum(value >= 0.8 for value in findings.values()),
                        "worst": min(findings.values()),
                    })  # fmt: skip
                    print(f"{method:>10} {layer:>12} {gate:>8}  pointing {rows[-1]['pointing_game']:.3f}  IoU "
                          f"{rows[-1]['mean_iou']:.3f}  >=0.8: {rows[-1]['findings_at_least_0.8']}/{len(findings)}  "
                          f"worst {rows[-1]['worst']:.3f}", flush=True)  # fmt: skip
    names = sorted(rows[0]["findings"])
    print("\nper finding (pointing game):")
    print(f"{'':>33}" + "".join(f"{name[:9]:>10}" for name in names))
    for row in rows:
        print(f"{row['method']:>10} {row['layer']:>12} {row['gate']:>8} "
              + "".join(f"{row['findings'][n]:>10.2f}" for n in names))  # fmt: skip
    best = max(rows, key=lambda row: (row["findings_at_least_0.8"], row["worst"], row["pointing_game"]))
    print(
        f"\nbest: {best['method']} on {best['layer']}, gate {best['gate']} (most findings >= 0.8, then the worst "
        "finding's score)"
    )
    if args.json:
        args.json.write_text(json.dumps({"run": args.run.name, "split": args.split, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
