"""``cxr zeroshot MODEL STORE --out RUN``: a CLIP's zero-shot classifier written as an ordinary run directory.

Per output label a positive and a negative prompt (defaults: ``cxr/configs/zeroshot/prompts.yaml``; ``--prompts
FILE`` replaces the pairs it names); the probability is the softmax over the pair of image–text similarities scaled
by the CLIP's logit scale, which equals a sigmoid of a linear head ``s·(t+ - t-)`` on the unit-norm image embedding
(:mod:`cxr.models.clip_text`). So no gradient step is taken and nothing new is needed downstream: the run holds what
``cxr train`` writes and ``cxr evaluate RUN`` reads (the smallest honest contract):

- ``config.yaml``: the merged config (``store``, the task, ``model.name``);
- ``split.parquet``: the task's split of the store, drawn exactly as ``cxr train`` draws it;
- ``checkpoints/best.ckpt``: the model artifact (image tower + zero-shot head; ``config.zeroshot`` records the
  prompts, the logit scale and the weights' source), which ``predict``, ``export`` and ``serve`` use as any other;
- ``val_predictions.parquet``: its probabilities on the validation part, where ``cxr evaluate`` chooses thresholds;
- ``zeroshot.json`` (the same record as ``config.zeroshot``) and ``environment.json``.

The validation part is used only to choose operating thresholds, never to fit anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import yaml

from cxr.config import Head, load_config, save_config, to_dict
from cxr.data.store import Store
from cxr.data.tasks import build_split
from cxr.errors import CxrError
from cxr.files import write_json
from cxr.imaging.preprocessing import Preprocessing
from cxr.labels import COMMON_LABELS, canonical_name
from cxr.models.artifact import write_artifact
from cxr.models.factory import create_model
from cxr.provenance import environment
from cxr.training.fit import fit_store, write_val_predictions

CLIP_MODELS = {"biomedclip": 224}
"""CLIP-style ``model.name`` of the foundation registry with a text tower → their native input size."""


@dataclass(frozen=True)
class PromptPair:
    positive: str
    negative: str


@dataclass(frozen=True)
class Prompts:
    """Prompt pairs by label: a file's, or the defaults with a file's pairs replacing theirs."""

    pairs: Mapping[str, PromptPair]

    def __contains__(self, label: str) -> bool:
        return label in self.pairs

    def __getitem__(self, label: str) -> PromptPair:
        return self.pairs[label]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.pairs)

    def replaced_by(self, other: Prompts) -> Prompts:
        return Prompts({**self.pairs, **other.pairs})


@dataclass(frozen=True)
class ZeroShotRecord:
    """How a zero-shot model was made: written to ``zeroshot.json`` and the artifact's ``config.zeroshot``. Names,
    not paths: it travels inside the artifact and its ONNX exports."""

    model: str
    weights: str
    prompts_file: str
    logit_scale_exp: float
    prompts: Mapping[str, PromptPair]
    method: str = (
        "softmax over (positive, negative) image-text similarities x exp(logit_scale) = "
        "sigmoid(exp(logit_scale) * <image, t+ - t->) (CheXzero's pairwise scheme)"
    )

    def to_dict(self) -> dict:
        pairs = {label: {"positive": pair.positive, "negative": pair.negative} for label, pair in self.prompts.items()}
        return {"method": self.method, "logit_scale_exp": self.logit_scale_exp, "prompts": pairs, "model": self.model,
                "weights": self.weights, "prompts_file": self.prompts_file}  # fmt: skip


def default_prompts_path() -> Path:
    return Path(str(resources.files("cxr") / "configs" / "zeroshot" / "prompts.yaml"))


def read_prompts(path: Path) -> Prompts:
    """The pairs of a YAML mapping ``label: {positive: str, negative: str}``; an unknown label, a missing or empty
    prompt is a :class:`CxrError` naming the file and the label."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise CxrError(f"{path}: cannot read the prompts ({type(error).__name__}: {error})") from error
    if not isinstance(document, dict) or not document:
        raise CxrError(f"{path}: expected a mapping label -> {{positive: ..., negative: ...}}")
    pairs = {}
    for name, entry in document.items():
        try:
            label = canonical_name(str(name), COMMON_LABELS)
        except ValueError as error:
            raise CxrError(f"{path}: {error}") from None
        if not isinstance(entry, dict) or set(entry) != {"positive", "negative"}:
            raise CxrError(f"{path}: {name}: expected exactly the keys positive and negative, got {entry!r}")
        if not all(isinstance(entry[key], str) and entry[key].strip() for key in ("positive", "negative")):
            raise CxrError(f"{path}: {name}: positive and negative must be non-empty text")
        pairs[label] = PromptPair(entry["positive"].strip(), entry["negative"].strip())
    return Prompts(pairs)


def load_prompts(path: str | Path | None = None) -> Prompts:
    """The default prompts, with the pairs of ``path`` (if given) replacing those of the labels it names."""
    defaults = read_prompts(default_prompts_path())
    return defaults.replaced_by(read_prompts(Path(path))) if path is not None else defaults


def resolve_clip(model: str) -> tuple[str, str]:
    """``(model.name, model.pretrained)`` for ``MODEL``: a CLIP name of the registry (its published weights) or a
    folder in open_clip's hub layout (``open_clip_config.json`` + weights + tokenizer files)."""
    if model in CLIP_MODELS:
        return model, "imagenet"
    folder = Path(model)
    if folder.is_dir() and (folder / "open_clip_config.json").is_file():
        return "biomedclip", str(folder.resolve())
    raise CxrError(f"{model}: not a CLIP model: name one of {', '.join(CLIP_MODELS)} or a folder holding "
                   "open_clip_config.json, its weights and tokenizer files")  # fmt: skip


def zero_shot_model(name: str, pretrained: str, labels: Sequence[str], prompts: Prompts, size: int):
    """The image tower with the zero-shot head for ``labels`` (eval mode) and the CLIP's ``exp(logit_scale)``."""
    from cxr.models.clip_text import load_clip_text, zero_shot_head

    missing = [label for label in labels if label not in prompts]
    if missing:
        raise CxrError(f"no zero-shot prompts for {', '.join(missing)}: add them to a --prompts file")
    text = load_clip_text(pretrained)
    positive, negative = [prompts[x].positive for x in labels], [prompts[x].negative for x in labels]
    weight, scale = zero_shot_head(text, positive, negative)
    model = create_model(name, len(labels), head="gap", dropout=0.0, pretrained=pretrained, input_size=size,
                         labels=list(labels))  # fmt: skip
    linear = model.head[-1]
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.zero_()
    return model.eval(), scale


def zeroshot_run(
    model: str,
    store_path: str | Path,
    run_dir: str | Path,
    prompts_file: str | Path | None = None,
    experiment: str | None = None,
    overrides: Sequence[str] = (),
    image_size: int | None = None,
) -> Path:
    """Write the zero-shot run of ``model`` on a store (see the module doc); returns the run directory."""
    run_dir, store = Path(run_dir), Store(store_path)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise CxrError(f"{run_dir} exists and is not empty: choose a new --out")
    name, pretrained = resolve_clip(model)
    config = load_config(experiment, overrides)
    config.model.name, config.model.pretrained = name, pretrained
    config.model.head, config.model.dropout = Head.GAP, 0.0
    if experiment is None:
        config.experiment = f"zeroshot-{name}"
    config = fit_store(config, store, image_size or CLIP_MODELS[name])
    split = build_split(store.index, config.task)
    if not len(split.rows("val")):
        raise CxrError("the validation part is empty for this store and task: thresholds are chosen there")
    prompts = load_prompts(prompts_file)
    net, scale = zero_shot_model(name, pretrained, split.outputs, prompts, config.data.input_size)
    record = ZeroShotRecord(
        model=name,
        weights="published (Hugging Face hub)" if pretrained == "imagenet" else f"folder {Path(pretrained).name}",
        prompts_file=Path(prompts_file).name if prompts_file else "default",
        logit_scale_exp=scale,
        prompts={label: prompts[label] for label in split.outputs},
    ).to_dict()
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    split.split_table().to_parquet(run_dir / "split.parquet", index=False)
    write_json(run_dir / "environment.json", [environment().to_dict()])
    write_json(run_dir / "zeroshot.json", record)
    preprocessing = Preprocessing.from_config(config.data)
    write_artifact(run_dir / "checkpoints" / "best.ckpt", net, split.outputs, preprocessing,
                   config=to_dict(config) | {"zeroshot": record})  # fmt: skip
    write_val_predictions(run_dir, store, split)
    return run_dir
