"""Configs: code defaults, preset YAMLs that list only what differs, typed key=value overrides."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from cxr.config import (
    Config,
    EvalView,
    Scheduler,
    available_experiments,
    config_from_dict,
    experiments_dirs,
    find_experiment,
    load_config,
    save_config,
)
from cxr.errors import CxrError
from cxr.labels import ANY_FINDING

PRESETS = available_experiments()  # tests/data/test_tasks.py pins the list itself
SEED_SGD = {"name": "sgd", "lr": 1e-4, "momentum": 0.9, "nesterov": True, "decay": 1e-6}


def _leaves(mapping: dict, prefix: str = ""):
    for key, value in mapping.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_list_only_what_differs_from_the_defaults(preset):
    mapping = yaml.safe_load(find_experiment(preset).read_text()) or {}
    for key, value in _leaves(mapping):
        section, name = key.split(".")
        alone = config_from_dict({section: {name: value}})
        assert getattr(getattr(alone, section), name) != getattr(getattr(Config(), section), name), key
    assert load_config(preset).experiment == preset


def _optim(config: Config) -> dict:
    return {key: getattr(config.optim, key) for key in SEED_SGD}


def test_presets_carry_the_seed_and_chexnet_settings():
    # docs/experiments.md, the table and "Shared by all six".
    adam = load_config("multilabel-adam")
    assert (adam.model.name, adam.model.head, adam.model.dropout) == ("densenet169", "original", 0.2)
    assert (adam.optim.name, adam.optim.lr, adam.optim.betas, adam.optim.decay) == ("adam", 1e-4, (0.9, 0.999), 0.0)
    assert (adam.data.store_size, adam.data.crop, adam.data.input_size) == (300, 0.75, 300)
    assert (adam.data.rotation, adam.data.shift, adam.data.hflip) == (15.0, 0.15, True)
    assert (adam.train.batch_size, adam.train.early_stopping_patience) == (16, 4)
    assert adam.task.drop_blacklisted and adam.task.split == "official"

    sgd = load_config("multilabel-sgd")
    assert _optim(sgd) == SEED_SGD and sgd.model.dropout == 0.1

    balanced = load_config("multilabel-balanced")
    assert (
        balanced.task.sampling == "original_balanced"
        and balanced.optim.name == "adam"
        and balanced.model.dropout == 0.1
    )

    disease = load_config("disease-only")
    assert disease.task.drop_no_finding and not disease.task.drop_blacklisted and disease.task.split == "ratio"
    assert disease.task.ratios == (0.7, 0.1, 0.2) and _optim(disease) == SEED_SGD
    assert (disease.data.store_size, disease.data.crop, disease.data.input_size) == (224, 1.0, 224)
    assert (disease.data.rotation, disease.data.shift) == (10.0, 0.1)

    fibrosis = load_config("binary-fibrosis")
    assert (fibrosis.task.target, fibrosis.task.sampling) == ("Fibrosis", "balanced")
    assert (fibrosis.data.store_size, fibrosis.data.input_size, fibrosis.data.eval_transform) == (
        300,
        224,
        "center_crop",
    )
    assert fibrosis.task.drop_blacklisted and _optim(fibrosis) == SEED_SGD

    finding = load_config("binary-finding")
    assert (finding.task.target, finding.task.sampling, finding.data.input_size) == (ANY_FINDING, "balanced", 224)

    chexnet = load_config("chexnet")
    assert (chexnet.model.name, chexnet.model.head, chexnet.model.dropout) == ("densenet121", "gap", 0.0)
    assert (chexnet.data.store_size, chexnet.data.input_size, chexnet.data.random_crop) == (256, 224, True)
    assert (chexnet.data.rotation, chexnet.data.shift, chexnet.data.hflip) == (0.0, 0.0, True)
    assert (chexnet.optim.name, chexnet.optim.lr, chexnet.optim.scheduler) == ("adam", 1e-3, "plateau")
    assert (chexnet.optim.plateau_factor, chexnet.train.batch_size) == (0.1, 16)


def test_overrides_are_typed():
    config = load_config(
        "chexnet",
        [
            "optim.lr=1e-3",
            "train.epochs=3",
            "optim.betas=[0.8, 0.99]",
            "data.hflip=false",
            "model.init_from=runs/a/checkpoints/best.ckpt",
            "task.target=Any Finding",
            "model.pretrained=none",
        ],
    )
    assert config.optim.lr == 1e-3 and isinstance(config.optim.lr, float)
    assert config.train.epochs == 3 and config.optim.betas == (0.8, 0.99) and config.data.hflip is False
    assert config.model.init_from == "runs/a/checkpoints/best.ckpt" and config.task.target == "Any Finding"
    assert config.model.pretrained == "none"
    assert load_config(None, ["model.init_from=none"]).model.init_from is None
    assert load_config(None, ["optim.lr=2"]).optim.lr == 2.0  # an int is a fine float


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr'"),
        ("optimizer.lr=1", "unknown config key 'optimizer'"),
        ("train.epochs=abc", "train.epochs must be an integer"),
        ("train.epochs=2.5", "train.epochs must be an integer"),
        ("optim.lr=fast", "optim.lr must be a number"),
        ("data.hflip=maybe", "data.hflip must be true or false"),
        ("model.head=mlp", "model.head must be one of gap, original"),
        ("optim.scheduler=step", "optim.scheduler must be one of none, plateau, cosine"),
        ("optim.betas=[0.9]", "optim.betas must be a list of 2"),
        ("optim=1", "'optim' is a section"),
        ("train.epochs.max=1", "train.epochs is a value"),
        ("lr", "must be key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(CxrError, match=message.replace("[", r"\[")):
        load_config("multilabel-adam", [override])


def test_yaml_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("optim:\n  name: sgd\n  momentun: 0.9\n")
    with pytest.raises(CxrError, match=r"mine\.yaml: unknown config key 'optim.momentun'"):
        load_config(path)
    path.write_text("train:\n  batch_size: sixteen\n")
    with pytest.raises(CxrError, match=r"mine\.yaml: train\.batch_size must be an integer"):
        load_config(path)
    path.write_text("optim: adam\n")
    with pytest.raises(CxrError, match="'optim' is a section"):
        load_config(path)
    path.write_text("optim:\n  lr: 3.0e-4\n")
    assert load_config(path).optim.lr == 3e-4 and load_config(path).experiment == "mine"
    with pytest.raises(CxrError, match="unknown experiment 'chexnet2'.*chexnet, demo, disease-only"):
        load_config("chexnet2")


def test_user_presets_come_first_and_the_shipped_ones_stay(tmp_path, monkeypatch):
    shipped = experiments_dirs()[-1]
    assert (shipped / "chexnet.yaml").is_file() and shipped.parent.parent.name == "cxr"  # inside the package
    (tmp_path / "tiny.yaml").write_text("train:\n  epochs: 2\n")
    (tmp_path / "chexnet.yaml").write_text("train:\n  epochs: 3\n")
    monkeypatch.setenv("CXR_EXPERIMENTS_DIR", str(tmp_path))
    assert load_config("tiny").train.epochs == 2
    assert load_config("chexnet").train.epochs == 3  # a user's preset shadows the shipped one of that name
    assert load_config("demo").experiment == "demo"  # the shipped presets are still found
    assert "tiny" in available_experiments() and "multilabel-adam" in available_experiments()


def test_values_renamed_from_seed_are_still_read():
    """Until 2026-12 "seed" named the original project in two values; old configs and checkpoints still say so."""
    old = load_config(None, ["model.head=seed", "task.sampling=seed_balanced"])
    assert (old.model.head, old.task.sampling) == ("original", "original_balanced")


def test_merged_config_round_trips_through_yaml(tmp_path):
    config = load_config("binary-fibrosis", ["optim.lr=3e-4", "model.init_from=x.ckpt"])
    save_config(config, tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == config and dataclasses.asdict(again) == dataclasses.asdict(config)


def test_settings_vocabularies_are_enums_and_yaml_stays_plain(tmp_path):
    config = load_config("chexnet", ["data.eval_transform=resize"])
    assert config.data.eval_transform is EvalView.RESIZE and config.optim.scheduler is Scheduler.PLATEAU
    save_config(config, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "eval_transform: resize" in text and "scheduler: plateau" in text and "!!" not in text
    assert config_from_dict(yaml.safe_load(text)) == config
