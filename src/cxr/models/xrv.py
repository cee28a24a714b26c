"""``cxr import torchxrayvision``: one of torchxrayvision's classifiers as a cxr model artifact.

torchxrayvision (Cohen et al., 2022, arXiv:2111.00595; Apache-2.0) publishes DenseNet-121s trained at 224 px on
NIH, CheXpert, MIMIC-CXR, PadChest, RSNA and all of them together, and a ResNet-50 trained at 512 px. Its own entry
per model (``torchxrayvision.models.model_urls``) gives the weights' URL, the 18 output names (empty where a model
has no such output), the operating points ``op_threshs`` and the input resolution. Its nets take one channel scaled
to ``[-1024, 1024]`` (``xrv.utils.normalize``) of a center-cropped, resized square.

What this module writes is an ordinary artifact (``cxr.models.artifact``) of the architectures ``xrv-densenet121``
and ``xrv-resnet50`` of :data:`cxr.models.factory.BACKBONES`, so everything after the import — predict, evaluate,
export, serve, Grad-CAM, ``model.init_from`` — runs without torchxrayvision:

- outputs: every non-empty one of its 18, under the common vocabulary's names (:data:`cxr.labels.COMMON_FINDINGS`:
  NIH's 14, which torchxrayvision spells as NIH does, and ``Lung Lesion``, ``Fracture``, ``Lung Opacity``,
  ``Enlarged Cardiomediastinum``, spelled as CheXpert does), in its order; empty names are skipped with their rows
  of the last layer, and a name outside the vocabulary would be dropped and recorded in the artifact's config;
- probabilities: ``sigmoid(logits)``, its forward without ``op_norm``;
- thresholds: its ``op_threshs`` (probabilities), since ``op_norm(p) >= 0.5`` exactly when ``p >= op_thresh``; 0.5
  where it has none (listed);
- preprocessing: the centered square of the whole shorter side, resized to its input resolution.

torchxrayvision is imported only by :func:`import_torchxrayvision`. A weights file missing from its cache folder is
downloaded there on first use by :func:`cxr.models.weights.url_file` (progress bar, ``.part`` file resumed, atomic
rename; torchxrayvision publishes no checksum, so the artifact records the file's SHA-256 instead); ``CXR_OFFLINE=1``
turns that into an error naming the file, its URL and the folder. ``CXR_XRV_BASE_URL`` replaces the release URL's
folder (``https://github.com/mlmed/torchxrayvision/releases/download/v1``) with a mirror's (tests: a loopback server).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cxr.errors import CxrError
from cxr.files import file_sha256
from cxr.imaging.preprocessing import Preprocessing
from cxr.labels import COMMON_FINDINGS, canonical_name
from cxr.models import weights
from cxr.models.artifact import write_artifact
from cxr.models.factory import CxrNet, create_model

ARCHITECTURE = {"densenet": "xrv-densenet121", "resnet50": "xrv-resnet50"}
"""cxr's architecture for each family of torchxrayvision's weight names (``densenet121-res224-*``, ``resnet50-*``)."""

DEFAULT_CACHE = Path("~/.torchxrayvision/models_data")
"""Where torchxrayvision keeps downloaded weights (``xrv.utils.get_cache_dir()``)."""

BASE_URL_ENV = "CXR_XRV_BASE_URL"
"""Environment variable: a mirror of torchxrayvision's release folder, used instead of the URL's own folder."""


@dataclass(frozen=True)
class XrvModel:
    """One entry of torchxrayvision's ``model_urls``, as this module needs it."""

    name: str
    architecture: str
    url: str
    labels: tuple[str, ...]  # 18 names, "" where the model has no such output
    op_threshs: tuple[float, ...]  # NaN where it has none
    input_size: int
    description: str

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def xrv_models() -> dict[str, XrvModel]:
    """The classifiers of the installed torchxrayvision this module can import, by its weight name."""
    import torchxrayvision as xrv

    entries = xrv.models.model_urls
    families = {}
    for name, entry in entries.items():
        family = next((family for family in ARCHITECTURE if name.startswith(family)), None)
        if family is not None:
            families[id(entry)] = family
    models = {}
    for name, entry in entries.items():
        family = families.get(id(entry))  # short aliases ("nih", "all") are the same dict as the full name's
        if family is None:
            continue
        labels = tuple(entry["labels"])
        models[name] = XrvModel(
            name=name,
            architecture=ARCHITECTURE[family],
            url=entry["weights_url"],
            labels=labels,
            op_threshs=tuple(float(t) for t in entry.get("op_threshs", [math.nan] * len(labels))),
            input_size=int(entry.get("input_resolution", 224)),
            description=str(entry.get("description", "")),
        )
    return models


def kept_outputs(labels: tuple[str, ...]) -> tuple[list[int], list[str], list[str]]:
    """(rows of the last layer kept, their cxr names, names dropped): the common vocabulary's findings kept, empty
    names skipped."""
    rows, names, dropped = [], [], []
    for row, label in enumerate(labels):
        if not label:
            continue
        try:
            name = canonical_name(label, COMMON_FINDINGS)
        except ValueError:
            dropped.append(label)
            continue
        if name in COMMON_FINDINGS and name not in names:
            rows.append(row)
            names.append(name)
        else:
            dropped.append(label)
    return rows, names, dropped


def weights_url(model: XrvModel) -> str:
    """Its release URL, or the same file under ``CXR_XRV_BASE_URL`` where that is set."""
    base = os.environ.get(BASE_URL_ENV, "").strip()
    return f"{base.rstrip('/')}/{model.file_name}" if base else model.url


def weights_file(model: XrvModel, cache_dir: str | Path | None) -> Path:
    """The weights file torchxrayvision would read, downloaded into its cache folder on first use."""
    folder = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE).expanduser()
    command = f"cxr import torchxrayvision {model.name}"
    try:
        return weights.url_file(weights_url(model), folder, sha256=None, command=command)
    except weights.WeightsUnavailableError as error:
        raise weights.WeightsUnavailableError(f"{error} (--cache-dir names another folder)") from error


def _load_xrv(model: XrvModel, cache_dir: Path) -> torch.nn.Module:
    """torchxrayvision's own module with the weights of ``cache_dir`` (its loader, so its file format is read as it
    reads it); the file exists, so it does not try to download."""
    import torchxrayvision as xrv

    try:
        net = xrv.models.get_model(model.name, cache_dir=str(cache_dir))
    except Exception as error:  # torchxrayvision raises whatever torch.load or load_state_dict raised
        path = cache_dir / model.file_name
        raise CxrError(
            f"{path}: torchxrayvision could not load it as {model.name} ({type(error).__name__}: {error}); a partial "
            f"download? fetch {model.url} again"
        ) from error
    return net.eval()


def _parts(net: torch.nn.Module, architecture: str) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """(feature extractor laid out as cxr's backbone, last linear layer) of a torchxrayvision classifier."""
    if architecture == "xrv-densenet121":
        return net.features, net.classifier
    resnet = net.model  # torchvision's resnet50 inside torchxrayvision's ResNet
    return resnet, resnet.fc


def convert(net: torch.nn.Module, model: XrvModel, rows: list[int], labels: list[str]) -> CxrNet:
    """cxr's network with the weights of torchxrayvision's ``net``, keeping the last layer's ``rows``."""
    cxr_net = create_model(model.architecture, len(rows), head="gap", input_size=model.input_size, labels=labels)
    features, classifier = _parts(net, model.architecture)
    state = {k: v for k, v in features.state_dict().items() if not k.startswith("fc.")}
    try:
        cxr_net.backbone.load_state_dict(state)
    except RuntimeError as error:
        raise CxrError(f"{model.name}: weights do not fit {model.architecture}: {error}") from error
    linear = cxr_net.head[-1]
    with torch.no_grad():
        linear.weight.copy_(classifier.weight[rows])
        linear.bias.copy_(classifier.bias[rows])
    return cxr_net.eval()


def thresholds(model: XrvModel, rows: list[int], labels: list[str]) -> tuple[dict[str, float], list[str]]:
    """Its operating points as the artifact's thresholds, and the labels without one (0.5)."""
    chosen = {label: model.op_threshs[row] for row, label in zip(rows, labels, strict=True)}
    missing = [label for label, value in chosen.items() if not math.isfinite(value)]
    return {label: 0.5 if label in missing else value for label, value in chosen.items()}, missing


@dataclass(frozen=True)
class XrvSource:
    """Which torchxrayvision weights were imported, recorded in the artifact's config as ``imported``."""

    torchxrayvision_version: str
    weights: str  # its name, e.g. densenet121-res224-all
    url: str
    file: str
    sha256: str
    description: str
    dropped_outputs: list[str]  # its outputs outside cxr's vocabulary
    without_op_thresh: list[str]  # labels left at 0.5: torchxrayvision gives no operating point for them

    def to_dict(self) -> dict[str, object]:
        return {"source": "torchxrayvision", "torchxrayvision_version": self.torchxrayvision_version,
                "weights": self.weights, "url": self.url, "file": self.file, "sha256": self.sha256,
                "description": self.description, "dropped_outputs": self.dropped_outputs,
                "thresholds": "op_threshs", "without_op_thresh": self.without_op_thresh}  # fmt: skip


@dataclass(frozen=True)
class XrvImport:
    """What ``cxr import torchxrayvision`` wrote: the artifact, its architecture, labels and thresholds, the source."""

    out: str
    architecture: str
    labels: list[str]
    thresholds: dict[str, float]
    source: XrvSource


def import_torchxrayvision(name: str, out: str | Path, cache_dir: str | Path | None = None) -> XrvImport:
    """Write torchxrayvision's classifier ``name`` as a cxr model artifact at ``out``; return what was imported."""
    try:
        import torchxrayvision as xrv
    except ModuleNotFoundError as error:
        raise CxrError("`cxr import torchxrayvision` needs torchxrayvision: pip install 'cxr[xrv]'") from error
    models = xrv_models()
    if name not in models:
        raise CxrError(f"unknown torchxrayvision classifier {name!r}; choose one of: {', '.join(models)}")
    model = models[name]
    path = weights_file(model, cache_dir)
    rows, labels, dropped = kept_outputs(model.labels)
    if not rows:
        raise CxrError(f"{name} predicts none of cxr's findings (its outputs: {[x for x in model.labels if x]})")
    net = convert(_load_xrv(model, path.parent), model, rows, labels)
    chosen, without = thresholds(model, rows, labels)
    source = XrvSource(str(xrv.__version__), name, model.url, str(path), file_sha256(path), model.description,
                       dropped, without)  # fmt: skip
    config = {"experiment": f"torchxrayvision {name}", "model": {"name": model.architecture, "head": "gap"}}
    preprocessing = Preprocessing(model.input_size, 1.0, model.input_size)
    write_artifact(out, net, labels, preprocessing, chosen, config | {"imported": source.to_dict()})
    return XrvImport(str(out), model.architecture, labels, chosen, source)
