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

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml

from cxr.errors import CxrError
from cxr.probe.linear import C_GRID


@dataclass(frozen=True)
class EmbedSettings:
    """``cxr embed``'s model and how to run it: a preset's ``embed`` section over these defaults."""

    model: str | None = None  # the model registry's name, a checkpoint or a folder; a preset must name one
    pretrained: str = "imagenet"
    image_size: int | None = None  # None: the model's own input size
    batch_size: int = 64


@dataclass(frozen=True)
class ProbeSettings:
    """``cxr probe``'s fractions of the training patients and C grid, and the preset's name (the run's experiment)."""

    # lists, or the command line's text ("0.01,0.1,1"), which cxr.probe.run.probe_run parses
    fractions: list[float] | str = field(default_factory=lambda: [1.0])
    c_grid: list[float] | str = field(default_factory=lambda: list(C_GRID))
    experiment: str | None = None


@dataclass(frozen=True)
class ProbePreset:
    """A checked preset file: its sections over the defaults, and the published figures it cites (for the reader)."""

    name: str
    embed: EmbedSettings
    probe: ProbeSettings
    published: list[dict[str, str | None]] = field(default_factory=list)


Settings = TypeVar("Settings", EmbedSettings, ProbeSettings)
SECTIONS = ("embed", "probe", "published")
KNOWN = {"embed": ("model", "pretrained", "image_size", "batch_size"), "probe": ("fractions", "c_grid")}


def presets_dir() -> Path:
    return Path(str(resources.files("cxr") / "configs" / "probes"))


def available_presets() -> list[str]:
    return sorted(path.stem for path in presets_dir().glob("*.yaml"))


def load_preset(name: str) -> ProbePreset:
    """A preset file, checked: unknown sections or keys are errors naming them."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else presets_dir() / f"{name}.yaml"
    if not path.is_file():
        raise CxrError(f"unknown probe preset {name!r}; presets: {', '.join(available_presets())} (or a YAML path)")
    try:
        mapping = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise CxrError(f"{path}: not valid YAML: {error}") from error
    unknown = sorted(set(mapping) - set(SECTIONS))
    for section, keys in KNOWN.items():
        unknown += [f"{section}.{key}" for key in (mapping.get(section) or {}) if key not in keys]
    if unknown:
        raise CxrError(f"{path}: unknown keys {unknown} (known: embed.{{{', '.join(KNOWN['embed'])}}}, "
                       f"probe.{{{', '.join(KNOWN['probe'])}}}, published)")  # fmt: skip
    embed, probe = mapping.get("embed") or {}, mapping.get("probe") or {}
    return ProbePreset(path.stem, EmbedSettings(**embed), ProbeSettings(**probe), mapping.get("published") or [])


def _given(settings: Settings, given: dict[str, object]) -> Settings:
    """The command line's options (those given, not None) over ``settings``."""
    return dataclasses.replace(settings, **{key: value for key, value in given.items() if value is not None})


def embed_settings(model: str, **given) -> EmbedSettings:
    """``cxr embed``'s model, pretrained, image_size and batch_size. ``model`` may name a preset: then the command
    line's options, else the preset's, else the defaults."""
    preset = load_preset(model).embed if model in available_presets() else EmbedSettings(model=model)
    settings = _given(preset, given)
    if not settings.model:
        raise CxrError(f"probe preset {model!r} names no embed.model")
    return settings


def probe_settings(preset: str | None, **given) -> ProbeSettings:
    """``cxr probe``'s fractions and C grid (and the preset's name, recorded as the run's experiment)."""
    if not preset:
        return _given(ProbeSettings(), given)
    loaded = load_preset(preset)
    return _given(dataclasses.replace(loaded.probe, experiment=loaded.name), given)
