"""Probe presets: ``configs/probes/<name>.yaml`` inside the package (``importlib.resources``, so a wheel has them).

A preset names an encoder and how to embed and probe with it; command-line options win over it::

    embed:   {model: rad-dino, pretrained: imagenet, image_size: 518, batch_size: 32}
    probe:   {fractions: [0.01, 0.1, 1.0], c_grid: [1.0e-4, ..., 100.0]}
    published: [...]   # figures of the encoder's paper, for the reader (marked published; not used by the code)

Unknown keys are errors, as in the experiment presets (:mod:`cxr.config`). The model names come from the model
registry (:func:`cxr.models.factory.create_model`); a preset whose model is not registered in this install fails
when it is embedded, with the registry's error.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from cxr.errors import CxrError
from cxr.probe.linear import C_GRID

EMBED_DEFAULTS = {"model": None, "pretrained": "imagenet", "image_size": None, "batch_size": 64}
PROBE_DEFAULTS = {"fractions": [1.0], "c_grid": list(C_GRID)}
SECTIONS = {"embed": EMBED_DEFAULTS, "probe": PROBE_DEFAULTS, "published": None}


def presets_dir() -> Path:
    return Path(str(resources.files("cxr") / "configs" / "probes"))


def available_presets() -> list[str]:
    return sorted(path.stem for path in presets_dir().glob("*.yaml"))


def load_preset(name: str) -> dict:
    """A preset's sections, checked: ``{"embed": {...}, "probe": {...}, "published": [...]}``."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else presets_dir() / f"{name}.yaml"
    if not path.is_file():
        raise CxrError(f"unknown probe preset {name!r}; presets: {', '.join(available_presets())} (or a YAML path)")
    try:
        mapping = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise CxrError(f"{path}: not valid YAML: {error}") from error
    unknown = sorted(set(mapping) - set(SECTIONS))
    for section, defaults in SECTIONS.items():
        if defaults is not None:
            unknown += [f"{section}.{key}" for key in (mapping.get(section) or {}) if key not in defaults]
    if unknown:
        raise CxrError(f"{path}: unknown keys {unknown} (known: embed.{{{', '.join(EMBED_DEFAULTS)}}}, "
                       f"probe.{{{', '.join(PROBE_DEFAULTS)}}}, published)")  # fmt: skip
    return {"name": path.stem, **mapping}


def _merge(defaults: dict, preset: dict, given: dict) -> dict:
    return {
        key: given[key] if given.get(key) is not None else preset.get(key, value) for key, value in defaults.items()
    }


def embed_settings(model: str, **given) -> dict:
    """``cxr embed``'s model, pretrained, image_size and batch_size. ``model`` may name a preset: then the command
    line's options, else the preset's, else the defaults."""
    preset = (load_preset(model).get("embed") or {}) if model in available_presets() else {"model": model}
    settings = _merge(EMBED_DEFAULTS, preset, given)
    if not settings["model"]:
        raise CxrError(f"probe preset {model!r} names no embed.model")
    return settings


def probe_settings(preset: str | None, **given) -> dict:
    """``cxr probe``'s fractions and C grid (and the preset's name, recorded as the run's experiment)."""
    loaded = load_preset(preset) if preset else {}
    settings = _merge(PROBE_DEFAULTS, loaded.get("probe") or {}, given)
    return settings | {"experiment": loaded.get("name")}
