"""``cxr export --quantize int8 --calibrate STORE``: an int8 ONNX model, accepted only if it costs no AUROC.

Static quantization with onnxruntime (Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018): weights int8 per output channel, activations uint8 with ranges
calibrated (MinMax) on radiographs of a store, in the QDQ format — the u8s8 path that x86 CPUs with VNNI or AMX run
fastest (``docs/benchmarks.md``, ``benchmarks/cpu_backends.py``). The fp32 graph is first folded by onnxruntime's
basic optimisations (constants, Conv+BatchNorm), which also turns the exporter's computed zero biases into
initializers. The store's ``train_val`` images are split by patient into a calibration part and a validation part;
the macro AUROC of the int8 model on the validation part is compared with the fp32 model's, and a drop beyond
``max_drop`` is refused unless forced. The file's ``cxr`` metadata records the scheme, the calibration and the
AUROC of both (``quantization``); Grad-CAM needs the fp32 file or the checkpoint (int8 weights cannot give back a
torch twin).
"""

from __future__ import annotations

import json
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cxr.data.store import Store
from cxr.errors import CxrError
from cxr.imaging.preprocessing import to_unit
from cxr.inference.onnx import METADATA_KEY, OnnxPredictor

SCHEME = "int8 static, QDQ, per-channel int8 weights, uint8 activations, MinMax calibration"
MAX_AUROC_DROP = 0.005
VALIDATION_SHARE = 5  # one patient in five validates, the others calibrate


@dataclass(frozen=True)
class StoreParts:
    """Store rows that calibrate, rows that validate (other patients), their targets for the ``labels`` present."""

    calibration: np.ndarray
    validation: np.ndarray
    targets: np.ndarray
    labels: list[str]


@dataclass(frozen=True)
class Quantization:
    """What the int8 file's metadata records under ``quantization``."""

    scheme: str
    calibration: dict[str, str | int]
    validation: dict[str, int]
    macro_auroc: dict[str, float]
    auroc_drop: float
    forced: bool

    def to_dict(self) -> dict:
        return asdict(self)


def store_parts(store: Store, labels: list[str], calibration: int, validation: int) -> StoreParts:
    """Model inputs for calibration and validation from the store's ``train_val`` rows, disjoint by patient
    (a patient validates when the CRC-32 of its id is a multiple of :data:`VALIDATION_SHARE`), and the validation
    targets for the model's labels that the store has."""
    index = store.index[store.index["split"] == "train_val"]
    if index.empty:
        raise CxrError(f"{store.path}: no train_val images to calibrate on")
    validates = index["patient_id"].astype(str).map(lambda p: zlib.crc32(p.encode()) % VALIDATION_SHARE == 0)
    present = [label for label in labels if label in index.columns]
    if not present:
        raise CxrError(f"{store.path}: the store has none of the model's labels; cannot measure the AUROC")
    calibrate, validate = index[~validates].head(calibration), index[validates].head(validation)
    if calibrate.empty or validate.empty:
        raise CxrError(f"{store.path}: too few patients to calibrate and validate on different ones")
    return StoreParts(
        calibrate["row"].to_numpy(), validate["row"].to_numpy(), validate[present].to_numpy(dtype=np.float64), present
    )


def model_inputs(store: Store, rows: np.ndarray, view: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return to_unit(np.stack([view(store.image(int(row))) for row in rows]))[:, None]


def fold(onnx_path: Path, out: Path) -> Path:
    """The graph after onnxruntime's basic optimisations, saved (constant folding, Conv+BatchNorm fusion)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    return out


def quantize_int8(onnx_path: Path, out: Path, calibration: np.ndarray, batch: int = 8) -> Path:
    """Write the int8 (QDQ, per-channel) version of ``onnx_path`` to ``out``, calibrated on ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.items = iter({"image": calibration[k : k + batch]} for k in range(0, len(calibration), batch))

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        folded = fold(onnx_path, Path(tmp) / "folded.onnx")
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(folded), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
    return out


def write_metadata(source: Path, out: Path, quantization: Quantization | None) -> None:
    """Copy the metadata of ``source`` into ``out``, adding ``quantization`` (``None``: the scheme alone)."""
    import onnx

    props = {prop.key: prop.value for prop in onnx.load(str(source), load_external_data=False).metadata_props}
    record = json.loads(props[METADATA_KEY])
    record["quantization"] = quantization.to_dict() if quantization is not None else {"scheme": SCHEME}
    props[METADATA_KEY] = json.dumps(record)
    model = onnx.load(str(out))
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(out))


def quantize_checked(
    fp32_path: Path,
    out: Path,
    store_path: str | Path,
    macro_auroc: Callable[[np.ndarray, np.ndarray], float],
    *,
    calibration_images: int = 256,
    validation_images: int = 1000,
    max_drop: float = MAX_AUROC_DROP,
    force: bool = False,
) -> Quantization:
    """Quantize ``fp32_path`` (a ``cxr export``) to ``out``; return what the metadata records. Raises
    :class:`CxrError` (and removes ``out``) when the AUROC drops by more than ``max_drop`` and not ``force``."""
    fp32 = OnnxPredictor(fp32_path)
    store = Store(store_path)
    fp32.preprocessing.check_store(store)
    parts = store_parts(store, fp32.labels, calibration_images, validation_images)
    quantize_int8(fp32_path, out, model_inputs(store, parts.calibration, fp32.preprocessing.view))
    write_metadata(fp32_path, out, None)  # readable by OnnxPredictor; the full record follows
    validation = model_inputs(store, parts.validation, fp32.preprocessing.view)
    columns = [fp32.labels.index(label) for label in parts.labels]
    scores = {}
    for name, predictor in (("fp32", fp32), ("int8", OnnxPredictor(out))):
        probs = np.concatenate([predictor.probabilities(validation[k : k + 32]) for k in range(0, len(validation), 32)])
        scores[name] = float(macro_auroc(parts.targets, probs[:, columns]))
    drop = scores["fp32"] - scores["int8"]
    record = Quantization(
        scheme=SCHEME,
        calibration={"store": Path(store_path).name, "images": len(parts.calibration)},
        validation={"images": len(parts.validation), "labels": len(columns)},
        macro_auroc=scores,
        auroc_drop=drop,
        forced=bool(force and drop > max_drop),
    )
    if drop > max_drop and not force:
        out.unlink(missing_ok=True)
        raise CxrError(
            f"int8 loses {drop:.4f} macro AUROC on {len(parts.validation)} validation images of {store_path} "
            f"({scores['fp32']:.4f} → {scores['int8']:.4f}), more than {max_drop}; nothing written (--force keeps it)"
        )
    write_metadata(fp32_path, out, record)
    return record
