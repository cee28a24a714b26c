"""``cxr import keras``: parity with Keras itself on a real NIH image, refusals that name the layer, and the imported
artifacts through predict, evaluate, export, serve and fine-tuning with Keras unimportable.

The references (:mod:`keras_files`): Keras 3 on its torch backend builds (a) DenseNet169 without the final ReLU + the
original project's head at 300 px with 14 outputs and (b) the same at 224 px with one output, saved as Keras 2.2
full-model files; (c) DenseNet121 without the final ReLU + average pooling + ``Dense(14, sigmoid,
name="predictions")``, saved weights-only as Keras 2.1 did. Random weights, calibrated so probabilities are not
saturated.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import build_once
from cxr.cli import app
from cxr.errors import CxrError
from cxr.imaging.decode import decode_grayscale
from cxr.imaging.preprocessing import Preprocessing
from cxr.labels import ANY_FINDING, CHEXNET_ORDER, FINDINGS

keras_files = pytest.importorskip("keras_files", reason="the dev extra installs keras (parity reference)")

SAMPLE = "00000013_003.png"
runner = CliRunner()


@dataclass(frozen=True)
class Reference:
    """A Keras reference to build: its file name, model, writer, outputs, and the preprocessing the import must record
    (Keras is fed the pixels it makes)."""

    file_name: str
    model: Callable[[], object]
    writer: Callable[[object, Path], Path]
    labels: tuple[str, ...]
    imagenet: bool
    preprocessing: Preprocessing
    seed: int


REFERENCES = {
    # (a) the original project's 300 px multi-label model, under its published name: the multilabel-adam preset's crop
    "a": Reference("300Crop169Adam.hdf5", lambda: keras_files.original_model(300, 14, 0.2),
                   keras_files.write_full_model, FINDINGS, False, Preprocessing(300, 0.75, 300), 1),
    # (b) the original project's 224 px binary model: the binary-fibrosis preset's 300 -> center crop 224
    "b": Reference("fibrosis.hdf5", lambda: keras_files.original_model(224, 1, 0.2), keras_files.write_full_model,
                   ("Fibrosis",), False, Preprocessing(300, 1.0, 224, "center_crop"), 2),
    # (c) CheXNet-Keras' weights-only file
    "c": Reference("brucechou1983_CheXNet_Keras_0.3.0_weights.h5", keras_files.chexnet_keras_model,
                   keras_files.write_weights_only, CHEXNET_ORDER, True, Preprocessing(224, 1.0, 224), 3),
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    """A built reference: the Keras file, its import, the PNG, and Keras' ``model.predict`` on that PNG."""

    reference: Reference
    file: Path
    artifact: Path
    png: Path
    keras: np.ndarray

    @property
    def labels(self) -> list[str]:
        return list(self.reference.labels)


def build_case(reference: Reference, sample_dir: Path, folder: Path) -> None:
    """Build, calibrate and save the Keras model, record its probabilities on the NIH sample resized to its input
    size, and import the file with ``cxr import keras``."""
    folder.mkdir(parents=True)
    keras_files.keras.utils.set_random_seed(reference.seed)
    model = reference.model()
    size = int(model.input.shape[1])
    png = folder / "sample.png"
    Image.open(sample_dir / "images" / SAMPLE).convert("L").resize((size, size), Image.BILINEAR).save(png)
    pixels = reference.preprocessing.model_input(decode_grayscale(png))
    noise = np.random.default_rng(reference.seed).random(pixels.shape, dtype="f")
    images = np.concatenate([keras_files.keras_input(p, reference.imagenet) for p in (pixels, noise)])
    keras_files.calibrate(model, images, reference.seed)
    reference.writer(model, folder / reference.file_name)
    probabilities = model.predict(keras_files.keras_input(pixels, reference.imagenet), verbose=0)[0]
    (folder / "keras.json").write_text(json.dumps([float(p) for p in probabilities]))
    result = runner.invoke(app, ["import", "keras", str(folder / reference.file_name), "--out", str(folder / "m.ckpt")])
    assert result.exit_code == 0, result.output


def case(tmp_path_factory, sample_dir: Path, key: str) -> Case:
    """Reference ``key``, built once per session, also across xdist workers."""
    reference = REFERENCES[key]
    folder = build_once(tmp_path_factory, f"keras-{key}", lambda out: build_case(reference, sample_dir, out))
    keras = np.array(json.loads((folder / "keras.json").read_text()))
    return Case(reference, folder / reference.file_name, folder / "m.ckpt", folder / "sample.png", keras)


@pytest.fixture(scope="module")
def case_a(tmp_path_factory, sample_dir) -> Case:
    return case(tmp_path_factory, sample_dir, "a")


@pytest.fixture(scope="module")
def case_b(tmp_path_factory, sample_dir) -> Case:
    return case(tmp_path_factory, sample_dir, "b")


@pytest.fixture(scope="module")
def case_c(tmp_path_factory, sample_dir) -> Case:
    return case(tmp_path_factory, sample_dir, "c")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keras")


@pytest.fixture
def no_keras(monkeypatch):
    """Keras (and h5py, which only the import reads with) unimportable from here on."""
    for name in [name for name in sys.modules if name.split(".")[0] in ("keras", "h5py")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "keras", None)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError):
        import keras  # noqa: F401


@pytest.mark.slow
@pytest.mark.parametrize("name", ["case_a", "case_b", "case_c"])
def test_cxr_predict_equals_keras_predict_for_every_output_in_order(name, request):
    from cxr.models.artifact import read_checkpoint

    case: Case = request.getfixturevalue(name)
    assert read_checkpoint(case.artifact)[1].preprocessing == case.reference.preprocessing  # what Keras was fed
    result = runner.invoke(app, ["predict", str(case.artifact), str(case.png), "--json"])
    assert result.exit_code == 0, result.output
    ours = json.loads(result.stdout)["probabilities"]
    assert list(ours) == case.labels  # the file's order, cxr's names
    assert np.abs(np.array(list(ours.values())) - case.keras).max() <= 1e-4
    assert case.keras.min() > 1e-3 and case.keras.max() < 1 - 1e-3  # not saturated: numbers that can differ
    if len(case.keras) > 1:
        assert case.keras.std() > 0.02


@pytest.mark.slow
def test_artifacts_record_architecture_preprocessing_thresholds_and_source(case_a, case_c):
    from cxr.models.artifact import load_artifact, read_checkpoint

    meta = read_checkpoint(case_a.artifact)[0]["cxr"]
    architecture = {"name": "keras-densenet169-unit", "head": "original", "dropout": 0.2, "in_chans": 1}
    architecture["num_outputs"] = 14
    assert {key: meta["architecture"][key] for key in architecture} == architecture
    assert meta["architecture"]["mean"] == [0.0] * 3 and meta["architecture"]["std"] == [1.0] * 3  # pixels / 255 only
    # 300Crop169Adam: the multilabel-adam preset's 75 % center crop at 300 px
    assert meta["preprocessing"] == {"store_size": 300, "crop": 0.75, "input_size": 300, "eval_transform": "resize"}
    assert meta["thresholds"] == dict.fromkeys(FINDINGS, 0.5) and meta["labels"] == list(FINDINGS)
    record = meta["source"]
    assert record["file"] == "300Crop169Adam.hdf5" and record["keras_version"] == "2.2.2"
    assert record["sha256"] == hashlib.sha256(case_a.file.read_bytes()).hexdigest()
    assert record["preset"] == "multilabel-adam" and record["saved_as"] == "full-model"

    artifact = load_artifact(case_c.artifact)
    architecture = artifact.spec.architecture
    assert architecture.name == "keras-densenet121" and architecture.head == "gap" and architecture.cam_layer == "norm5"
    assert architecture.mean == pytest.approx([0.485, 0.456, 0.406])  # CheXNet-Keras: / 255, then ImageNet mean/std
    assert artifact.preprocessing.to_dict() == {"store_size": 224, "crop": 1.0, "input_size": 224,
                                                "eval_transform": "resize"}  # fmt: skip
    assert artifact.spec.provenance.source["saved_as"] == "weights-only" and artifact.labels == list(CHEXNET_ORDER)
    bn = [m for m in artifact.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(m.eps == pytest.approx(1.001e-5) for m in bn)


@pytest.mark.slow
def test_binary_models_are_named_by_file_or_by_labels(case_b, folder):
    from cxr.models.artifact import read_checkpoint

    assert read_checkpoint(case_b.artifact)[1].labels == ("Fibrosis",)
    balanced = shutil.copy(case_b.file, folder / "binary_balanced.hdf5")
    out = folder / "binary_balanced.ckpt"
    result = runner.invoke(app, ["import", "keras", str(balanced), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read_checkpoint(out)[1].labels == (ANY_FINDING,)
    assert "preset binary-finding" in result.output
    unknown = shutil.copy(case_b.file, folder / "my_model.hdf5")
    with pytest.raises(CxrError, match=r"1 output\(s\), the original layout names 14.*--labels"):
        runner.invoke(app, ["import", "keras", str(unknown), "--out", str(folder / "x.ckpt")], catch_exceptions=False)
    assert not (folder / "x.ckpt").exists()


def edited_copy(case: Case, folder: Path, edit) -> Path:
    """A copy of the weights-only file of ``case`` changed by ``edit(h5py.File)``."""
    path = folder / f"edited-{edit.__name__}.h5"
    shutil.copy(case.file, path)
    with h5py.File(path, "r+") as handle:
        edit(handle)
    return path


def missing(handle) -> None:
    names = [n for n in handle.attrs["layer_names"] if n != b"conv5_block16_2_conv"]
    handle.attrs["layer_names"] = np.array(names)
    del handle["conv5_block16_2_conv"]


def extra(handle) -> None:
    handle.attrs["layer_names"] = np.array([*handle.attrs["layer_names"], b"dense_9"])
    group = handle.create_group("dense_9")
    group.attrs["weight_names"] = np.array([b"dense_9/kernel:0"])
    group.create_dataset("dense_9/kernel:0", data=np.zeros((1024, 3), "f"))


def misshapen(handle) -> None:
    del handle["conv1/conv/conv1/conv/kernel:0"]
    handle["conv1/conv"].create_dataset("conv1/conv/kernel:0", data=np.zeros((7, 7, 3, 32), "f"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (missing, "missing layer conv5_block16_2_conv"),
        (extra, "extra layer dense_9"),
        (misshapen, "layer conv1/conv weight conv1/conv/kernel:0: expected shape (7, 7, 3, 64), found (7, 7, 3, 32)"),
    ],
)
def test_a_missing_extra_or_misshapen_layer_is_refused_in_one_line_naming_it(case_c, folder, edit, message):
    path = edited_copy(case_c, folder, edit)
    out = folder / "refused.ckpt"
    with pytest.raises(CxrError) as error:
        runner.invoke(app, ["import", "keras", str(path), "--out", str(out)], catch_exceptions=False)
    text = str(error.value)
    assert message in text and "\n" not in text and text.startswith(f"{path}: does not fit keras-densenet121")
    assert not out.exists()


@pytest.mark.slow
def test_layout_and_labels_that_do_not_fit_the_file_are_refused_before_anything_is_built(case_c, folder):
    out = folder / "refused.ckpt"
    wrong = {
        ("--layout", "original"): r"a weights-only file \(save_weights\) has no architecture",
        ("--labels", "Fibrosis"): r"the model has 14 output\(s\), --labels names 1",
        ("--labels", ",".join([*CHEXNET_ORDER[:13], "Foo"])): "--labels: unknown finding 'Foo'",
    }
    for options, message in wrong.items():
        with pytest.raises(CxrError, match=message):
            args = ["import", "keras", str(case_c.file), "--out", str(out), *options]
            runner.invoke(app, args, catch_exceptions=False)
    assert not out.exists()


def test_keras3_files_and_other_files_get_a_clear_message(tmp_path):
    keras = keras_files.keras
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    model.save_weights(tmp_path / "m.weights.h5")
    model.save(tmp_path / "m.keras")
    (tmp_path / "notes.h5").write_text("not a Keras file")
    expected = {"m.weights.h5": "Keras 3 '.weights.h5' file; not supported yet",
                "m.keras": "Keras 3 '.keras' archive; not supported yet", "notes.h5": "not an HDF5 file"}  # fmt: skip
    for name, message in expected.items():
        with pytest.raises(CxrError, match=message):
            runner.invoke(app, ["import", "keras", str(tmp_path / name), "--out", str(tmp_path / "x.ckpt")],
                          catch_exceptions=False)  # fmt: skip
    with pytest.raises(CxrError, match="unknown Keras layout 'tf'"):
        runner.invoke(app, ["import", "keras", str(tmp_path / "m.weights.h5"), "--layout", "tf", "--out", "x.ckpt"],
                      catch_exceptions=False)  # fmt: skip


def test_keras_densenets_of_the_registry_have_keras_epsilon_and_no_final_relu():
    from cxr.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("keras-densenet121", 2, head="gap", input_size=224).eval()
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and {m.eps for m in norms} == {1.001e-5}
    assert not isinstance(model.backbone[-1], torch.nn.ReLU) and model.feature_layer is model.backbone.norm5
    with torch.no_grad():
        assert (model.backbone(torch.rand(1, 3, 224, 224)) < 0).any()  # the map the head sees is not rectified
    unit = create_model("keras-densenet169-unit", 1, input_size=64)
    assert unit.architecture.mean == (0.0, 0.0, 0.0) and unit.architecture.std == (1.0, 1.0, 1.0)
    assert {m.eps for m in unit.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1.001e-5}


def decode_data_url(url: str) -> Image.Image:
    import base64
    import io

    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))


@pytest.mark.slow
def test_predict_evaluate_export_serve_and_grad_cam_without_keras(case_b, tmp_path, no_keras):
    """The binary (Fibrosis) artifact of the original layout, scored against NIH-format labels as the binary presets
    are, exported to ONNX (refused beyond 1e-4 of torch) and served."""
    artifact_b = case_b.artifact
    import pandas as pd
    from fastapi.testclient import TestClient

    from cxr.inference.serve import create_app
    from cxr.synth import generate

    data = generate(tmp_path / "synth", images=8, size=96, seed=3, prevalence="flat", workers=1)
    predictions = tmp_path / "predictions.csv"
    result = runner.invoke(app, ["predict", str(artifact_b), str(data), "--csv", str(predictions)])
    assert result.exit_code == 0, result.output
    metrics_json = tmp_path / "metrics.json"
    labels = next(Path(data).glob("Data_Entry*.csv"))
    options = ["--preset", "binary-fibrosis", "--resamples", "20", "--json", str(metrics_json)]
    result = runner.invoke(app, ["evaluate", "--predictions", str(predictions), "--labels", str(labels), *options])
    assert result.exit_code == 0, result.output
    metrics = json.loads(metrics_json.read_text())
    assert metrics["n_images"] == 8 and list(metrics["labels"]) == ["Fibrosis"]

    onnx_path = tmp_path / "fibrosis.onnx"
    result = runner.invoke(app, ["export", str(artifact_b), "--out", str(onnx_path)])
    assert result.exit_code == 0, result.output
    image = sorted(Path(data).rglob("*.png"))[0]
    with TestClient(create_app(onnx_path)) as client:
        answer = client.post("/api/predict?cam=Fibrosis", files={"file": ("x.png", image.read_bytes(), "image/png")})
    assert answer.status_code == 200, answer.text
    served = answer.json()
    row = pd.read_csv(predictions).set_index("Image Index").loc[image.name]
    assert abs(served["probabilities"]["Fibrosis"] - row["prob_Fibrosis"]) <= 1e-4
    assert np.asarray(decode_data_url(served["heatmaps"]["Fibrosis"])).std() > 0  # Grad-CAM on the un-rectified bn


@pytest.mark.slow
def test_fine_tuning_starts_from_the_imported_weights(case_a, no_keras):
    """``model.name=keras-densenet169-unit model.init_from=MODEL.ckpt``: the imported backbone, then optimizer steps
    that lower the loss on a batch (at 32 px; the original head's Flatten differs there, so it starts afresh)."""
    from cxr.config import load_config
    from cxr.models.artifact import read_checkpoint
    from cxr.training.module import CxrModule

    artifact_a = case_a.artifact
    overrides = ["model.name=keras-densenet169-unit", f"model.init_from={artifact_a}", "model.head=original",
                 "model.dropout=0", "model.pretrained=none", "data.input_size=32", "data.store_size=32",
                 "optim.lr=1e-3"]  # fmt: skip
    module = CxrModule(load_config(None, overrides), ["Effusion", "Mass"], Preprocessing(32, 1.0, 32))
    source = {k.removeprefix("model."): v for k, v in read_checkpoint(artifact_a)[0]["state_dict"].items()}
    tuned = module.model.state_dict()
    backbone = [key for key in tuned if key.startswith("backbone.")]
    assert backbone and all(torch.equal(tuned[key], source[key]) for key in backbone)

    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8, generator=generator)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    optimizer = module.configure_optimizers()[0][0]
    module.train()
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = module._loss(module.model(module._images(pixels)), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(module.model.backbone.conv0.weight.detach(), source["backbone.conv0.weight"])


@pytest.mark.slow
def test_predict_in_a_process_where_keras_and_h5py_cannot_be_imported(case_c, tmp_path):
    """`cxr predict` on the PNG in a fresh process without Keras or h5py gives Keras' numbers."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["keras"] = sys.modules["h5py"] = sys.modules["tensorflow"] = None
        from cxr.cli import main
        sys.argv = ["cxr", "predict", {str(case_c.artifact)!r}, {str(case_c.png)!r}, "--json"]
        main()
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    probabilities = json.loads(result.stdout)["probabilities"]
    assert list(probabilities) == list(CHEXNET_ORDER)
    assert np.abs(np.array(list(probabilities.values())) - case_c.keras).max() <= 1e-4


def test_a_list_attribute_keras_2_split_into_chunks_is_read_whole(tmp_path):
    """Keras 2 splits a list attribute over HDF5's 64 KB header limit into ``layer_names0``, ``layer_names1``, ..."""
    from cxr.models.keras_h5 import SaveKind, read_keras_file

    path = tmp_path / "chunked.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names0"], handle.attrs["layer_names1"] = np.array([b"input_1", b"d"]), np.array([b"out"])
        for name, shape in (("d", (4, 3)), ("out", (3, 1))):
            handle.create_group(name).attrs["weight_names0"] = np.array([f"{name}/kernel:0".encode()])
            handle[name].create_dataset(f"{name}/kernel:0", data=np.ones(shape, "f"))
        handle.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
    file = read_keras_file(path)
    assert file.kind is SaveKind.WEIGHTS_ONLY and file.layer_names == ("input_1", "d", "out")
    assert {name: [(w.kind, w.value.shape) for w in weights] for name, weights in file.layers.items()} == {
        "d": [("kernel", (4, 3))], "out": [("kernel", (3, 1))]}  # fmt: skip
