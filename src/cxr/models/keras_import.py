"""``cxr import keras``: a Keras 2 HDF5 file (the original project's six models, CheXNet-Keras) as a cxr artifact.

The original NIH project published its six trained DenseNet169 models as Keras 2.2.2 full-model ``.hdf5`` files;
CheXNet-Keras (brucechou1983/CheXNet-Keras) its DenseNet121 as a Keras 2.1.4 weights-only file
(``docs/original-models.md``). Both ran only on 2018's Keras and TensorFlow. This module reads such a file with h5py
alone (:mod:`cxr.models.keras_h5`), recognises its architecture (:mod:`cxr.models.keras_layouts`), places every weight
into cxr's ``keras-densenet*`` twin (:mod:`cxr.models.keras_weights`) and writes an ordinary artifact
(:func:`cxr.models.artifact.write_artifact`), which then predicts, evaluates, exports, serves, draws Grad-CAM and
fine-tunes (``model.init_from=``) like any other. What the artifact records:

- labels: the file's outputs in its order, under cxr's names (the original's binary models: ``Fibrosis`` or
  ``Any Finding``, from the file name or ``--labels``);
- preprocessing as the project trained it: the known original files take their cxr preset's (the 75 % crop of the
  300 px models, the fibrosis model's 300 → 224 center crop), any other full-model file a resize to its input size;
  CheXNet-Keras a resize to 224. The original fed pixels / 255 without mean/std (``keras-densenet*-unit``),
  CheXNet-Keras / 255 then ImageNet mean/std; three identical channels, inside the model;
- thresholds 0.5 until ``cxr evaluate`` chooses them on validation;
- its provenance (``source``): file name (no folder), SHA-256, Keras version and backend, layout, the preset it
  reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxr.config import load_config
from cxr.errors import CxrError
from cxr.imaging.preprocessing import Preprocessing
from cxr.labels import check_names
from cxr.models.artifact import write_artifact
from cxr.models.factory import BACKBONES, create_model
from cxr.models.keras_h5 import KerasFile, read_keras_file
from cxr.models.keras_layouts import ORIGINAL_FILES, Recognised, check_layout, recognise
from cxr.models.keras_weights import load_weights


@dataclass(frozen=True)
class KerasSource:
    """Where an imported Keras model came from: the artifact's ``provenance.source`` (no folder of the machine)."""

    layout: str
    file: str  # the file's name
    sha256: str
    keras_version: str
    backend: str
    saved_as: str  # full-model or weights-only
    preset: str | None  # the cxr preset whose preprocessing it was trained with (a known original file)
    outputs: list[str]

    def to_dict(self) -> dict[str, object]:
        return {"source": "keras", "layout": self.layout, "file": self.file, "sha256": self.sha256,
                "keras_version": self.keras_version, "backend": self.backend, "saved_as": self.saved_as,
                "preset": self.preset, "outputs": self.outputs}  # fmt: skip


@dataclass(frozen=True)
class KerasImport:
    """What ``cxr import keras`` wrote: the artifact, the architecture and preprocessing chosen, and the source."""

    out: str
    architecture: str
    input_size: int
    preprocessing: Preprocessing
    source: KerasSource


def architecture_name(recognised: Recognised) -> str:
    """cxr's registry name of the recognised DenseNet: ``keras-densenet169-unit`` for the original project's."""
    name = f"keras-densenet{recognised.depth}" + ("-unit" if recognised.layout.unit else "")
    if name not in BACKBONES:
        supported = ", ".join(sorted(n for n in BACKBONES if n.startswith("keras-")))
        raise CxrError(f"Keras DenseNet{recognised.depth} is not supported yet (supported: {supported})")
    return name


def output_names(file: KerasFile, recognised: Recognised, labels: str | None) -> list[str]:
    """The outputs' cxr names in the file's order: ``--labels`` when given, else the known file's, else the layout's."""
    count = recognised.num_outputs
    if labels is not None:
        names = [name.strip() for name in labels.split(",") if name.strip()]
        source = "--labels"
    elif (known := ORIGINAL_FILES.get(file.path.stem)) and recognised.layout.name == "original":
        names, source = list(known.labels), f"the original project's {file.path.name}"
    else:
        names, source = list(recognised.layout.labels), f"the {recognised.layout.name} layout"
    if len(names) != count:
        raise CxrError(
            f"{file.path}: the model has {count} output(s), {source} names {len(names)}; name them in the file's "
            "order with --labels (e.g. --labels Fibrosis, or --labels 'Any Finding' for any finding vs No Finding)"
        )
    try:
        return check_names(names)
    except ValueError as error:
        raise CxrError(f"--labels: {error}") from error


def preprocessing_of(file: KerasFile, recognised: Recognised) -> tuple[Preprocessing, str | None]:
    """(preprocessing, cxr preset): a known original file's preset, else a resize of the whole square."""
    known = ORIGINAL_FILES.get(file.path.stem) if recognised.layout.name == "original" else None
    if known is not None:
        preprocessing = Preprocessing.from_config(load_config(known.experiment).data)
        if preprocessing.input_size == recognised.input_size:
            return preprocessing, known.experiment
    size = recognised.input_size
    return Preprocessing(size, 1.0, size), None


def import_keras(path: str | Path, out: str | Path, layout: str = "auto", labels: str | None = None) -> KerasImport:
    """Write the Keras 2 model of ``path`` as a cxr model artifact at ``out``; return what was imported."""
    check_layout(layout)  # before reading a file of hundreds of MB
    file = read_keras_file(path)
    recognised = recognise(file, layout)
    names = output_names(file, recognised, labels)
    preprocessing, preset = preprocessing_of(file, recognised)
    name = architecture_name(recognised)
    head = recognised.layout.head
    model = create_model(name, len(names), head, recognised.dropout, "none", recognised.input_size, names)
    load_weights(model, file, recognised)
    source = KerasSource(recognised.layout.name, file.path.name, file.sha256, file.keras_version, file.backend,
                         file.kind.value, preset, names)  # fmt: skip
    config = {
        "experiment": f"keras {recognised.layout.name} {file.path.name}",
        "model": {"name": name, "head": head, "dropout": recognised.dropout},
    }
    write_artifact(out, model.eval(), names, preprocessing, None, config, source=source.to_dict())
    return KerasImport(str(out), name, recognised.input_size, preprocessing, source)
