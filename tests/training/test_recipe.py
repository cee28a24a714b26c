"""The modern training recipe, one config key at a time (tiny models, 32 px, CPU): AdamW and its decay exemptions,
optimizer kernels, the warm-up + cosine schedule, layer-wise LR decay, EMA of the weights, gradient accumulation,
and the masked BCE / AUROC for labels a dataset does not provide (NaN)."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cxr.config import find_experiment, load_config, to_dict
from cxr.errors import CxrError
from cxr.imaging.preprocessing import Preprocessing
from cxr.models.artifact import load_artifact
from cxr.models.factory import IMAGENET_MEAN, IMAGENET_STD, CxrNet, create_model
from cxr.models.spec import ArchitectureSpec
from cxr.training.checkpointing import LastCheckpoint
from cxr.training.fit import build_trainer
from cxr.training.losses import auc_margin, masked_bce
from cxr.training.module import CxrModule, WeightEMA
from cxr.training.optim import (
    WarmupCosine,
    build_optimizer,
    check_recipe,
    cosine_schedule,
    kernel_options,
    parameter_groups,
)

SIZE = 32
LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation"]  # artifacts accept finding names only
NAN = float("nan")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared
    yield
    torch.set_num_threads(threads)


def _config(*overrides: str):
    base = ["model.name=resnet18", "model.pretrained=none", "model.head=gap", f"data.input_size={SIZE}"]
    return load_config(None, [*base, *overrides])


def _linear_net(outputs: int = len(LABELS)) -> CxrNet:
    """A CxrNet without batch norm or dropout: flatten → linear (exact arithmetic for EMA and accumulation)."""
    architecture = ArchitectureSpec("linear", outputs, mean=IMAGENET_MEAN, std=IMAGENET_STD, cam_layer="0")
    return CxrNet(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, outputs), architecture, SIZE, labels=LABELS)


def _module(config, model: nn.Module | None = None) -> CxrModule:
    module = CxrModule(config, LABELS, Preprocessing(store_size=SIZE, crop=1.0, input_size=SIZE))
    if model is not None:
        module.model = model
    return module


def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose brightness in the left half tells label A, in the right half B; C is noise."""
    generator = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, len(LABELS), generator=generator) > 0.5).float()
    pixels = torch.randint(0, 120, (n, 1, SIZE, SIZE), generator=generator, dtype=torch.uint8)
    pixels[:, :, :, : SIZE // 2] += (target[:, 0] * 100).to(torch.uint8).view(-1, 1, 1, 1)
    pixels[:, :, :, SIZE // 2 :] += (target[:, 1] * 100).to(torch.uint8).view(-1, 1, 1, 1)
    return pixels, target


def _loader(pixels, target, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(pixels, target), batch_size=batch_size, shuffle=False)


def _trainer(epochs: int, callbacks=(), accumulate: int = 1, **options) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, precision="32-true", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=list(callbacks), accumulate_grad_batches=accumulate, **options,
    )  # fmt: skip


# --- 1. AdamW, decay exemptions, kernels ---------------------------------------------------------------------------


def test_adamw_decays_weight_tensors_only_and_decoupled_from_the_gradient():
    config = _config("optim.name=adamw", "optim.lr=0.1", "optim.weight_decay=0.5")
    model = create_model("resnet18", 3, head="gap", input_size=SIZE)
    optimizer = build_optimizer(model, config.optim)
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = dict(model.named_parameters())
    assert id(names["backbone.conv1.weight"]) in decayed and id(names["head.2.weight"]) in decayed
    for name in ("backbone.bn1.weight", "backbone.bn1.bias", "backbone.layer1.0.bn2.weight", "head.2.bias"):
        assert id(names[name]) not in decayed, name
    assert {n for n, p in names.items() if id(p) in decayed} == {n for n, p in names.items() if p.ndim > 1}
    # With zero gradients Adam's step is 0: what moves is the decoupled decay, w ← w · (1 − lr · wd), and only there.
    before = {n: p.detach().clone() for n, p in names.items()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    torch.testing.assert_close(names["backbone.conv1.weight"], before["backbone.conv1.weight"] * (1 - 0.1 * 0.5))
    torch.testing.assert_close(names["backbone.bn1.weight"], before["backbone.bn1.weight"])
    torch.testing.assert_close(names["head.2.bias"], before["head.2.bias"])


def test_adamw_exempts_a_vits_tokens_and_position_embedding():
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0, depth=2)
    groups = parameter_groups(vit, _config("optim.name=adamw", "optim.weight_decay=0.05").optim)
    names = {id(p): n for n, p in vit.named_parameters()}
    exempt = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"cls_token", "pos_embed", "blocks.0.norm1.weight", "blocks.1.attn.qkv.bias"} <= exempt
    assert not {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight"} & exempt


def test_adam_and_sgd_keep_one_group_of_every_parameter():
    model = create_model("resnet18", 3, head="gap", input_size=SIZE)
    for name in ("adam", "sgd"):
        optimizer = build_optimizer(model, _config(f"optim.name={name}", "optim.weight_decay=1e-4").optim)
        [group] = optimizer.param_groups
        assert len(group["params"]) == len(list(model.parameters())) and group["weight_decay"] == 1e-4


def test_fused_auto_is_torchs_default_on_cpu_and_fused_on_cuda():
    assert kernel_options("auto", on_cuda=True) == {"fused": True}
    assert kernel_options("auto", on_cuda=False) == {}
    assert kernel_options("foreach", on_cuda=False) == {"foreach": True}
    assert kernel_options("default", on_cuda=True) == {}
    for choice, fused in (("auto", None), ("fused", True), ("foreach", None)):
        model = _linear_net()
        optimizer = build_optimizer(model, _config("optim.name=adamw", f"optim.fused={choice}").optim)
        assert optimizer.defaults["fused"] == fused, choice
        before = model.head.weight.detach().clone()
        model(torch.rand(4, 1, SIZE, SIZE)).sum().backward()
        optimizer.step()  # a working optimizer on the CPU
        assert not torch.equal(model.head.weight, before)
    with pytest.raises(CxrError, match="optim.fused must be one of"):
        _config("optim.fused=yes")


# --- 2. Cosine schedule with warm-up ------------------------------------------------------------------------------


def _expected_lr(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def test_cosine_schedule_warms_up_then_follows_the_cosine_to_min_lr():
    config = _config("optim.name=adamw", "optim.lr=1e-3", "optim.min_lr=1e-5", "optim.scheduler=cosine",
                     "optim.warmup_epochs=2", "train.epochs=10")  # fmt: skip
    model = _linear_net()
    optimizer = build_optimizer(model, config.optim)
    schedule = cosine_schedule(optimizer, config.optim, total_steps=100, epochs=10)  # 10 steps an epoch
    lrs = []
    for _ in range(101):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(1e-3 / 20)  # warm-up: 20 steps
    assert lrs[19] == pytest.approx(1e-3) and lrs[20] == pytest.approx(1e-3)  # end of warm-up
    assert lrs[60] == pytest.approx((1e-3 + 1e-5) / 2)  # halfway through the cosine
    assert lrs[100] == pytest.approx(1e-5)  # end
    for step in (0, 7, 19, 20, 33, 60, 87, 99, 100):
        assert lrs[step] == pytest.approx(_expected_lr(step, 1e-3, 1e-5, 20, 100)), step
    assert all(a <= b for a, b in zip(lrs[:20], lrs[1:21], strict=True))  # rising, then
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:], strict=False))  # falling


def test_cosine_is_stepped_per_optimizer_step_in_training(tmp_path):
    """Through Lightning: 4 epochs of 4 batches, accumulation 2 → 8 optimizer steps, 1 epoch (2 steps) of warm-up."""
    config = _config("optim.name=adamw", "optim.lr=0.01", "optim.min_lr=0.001", "optim.scheduler=cosine",
                     "optim.warmup_epochs=1", "train.epochs=4", "train.accumulate=2")  # fmt: skip
    module = _module(config, _linear_net())
    seen = []

    class Record(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(optimizer.param_groups[0]["lr"])

    pixels, target = _data(32)
    _trainer(4, [Record()], accumulate=2).fit(module, _loader(pixels, target, 8), _loader(pixels, target, 8))
    assert seen == pytest.approx([_expected_lr(t, 0.01, 0.001, 2, 8) for t in range(8)])


def test_recipe_combinations_that_cannot_work_are_refused():
    with pytest.raises(CxrError, match="cannot be combined"):
        check_recipe(_config("optim.decay=1e-6", "optim.scheduler=cosine"))
    with pytest.raises(CxrError, match="optim.min_lr"):
        check_recipe(_config("optim.scheduler=cosine", "optim.lr=1e-4", "optim.min_lr=1e-3"))
    with pytest.raises(CxrError, match="optim.warmup_epochs"):
        check_recipe(_config("optim.scheduler=cosine", "optim.warmup_epochs=5", "train.epochs=5"))
    with pytest.raises(CxrError, match="train.ema"):
        check_recipe(_config("train.ema=1.0"))
    with pytest.raises(CxrError, match="train.accumulate"):
        check_recipe(_config("train.accumulate=0"))
    with pytest.raises(CxrError, match="optim.layer_decay"):
        check_recipe(_config("optim.layer_decay=1.5"))
    check_recipe(_config("optim.scheduler=cosine", "optim.warmup_epochs=1", "train.ema=0.999", "train.accumulate=4"))
    assert WarmupCosine(0, 10, 0.0)(0) == 1.0  # no warm-up: the full rate from the first step


# --- 3. Layer-wise learning-rate decay ----------------------------------------------------------------------------


def _vit_net(depth: int = 12) -> CxrNet:
    """timm's ViT-Tiny at 64 px inside a CxrNet (backbone without classifier + a linear head)."""
    timm = pytest.importorskip("timm")
    backbone = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0, depth=depth)
    architecture = ArchitectureSpec("vit_tiny_patch16_224", 3, mean=IMAGENET_MEAN, std=IMAGENET_STD, cam_layer="blocks")
    return CxrNet(backbone, nn.Linear(backbone.num_features, 3), architecture, 64, labels=LABELS)


def test_layer_decay_scales_each_vit_block_by_its_depth():
    model = _vit_net()
    spec = _config("optim.name=adamw", "optim.lr=1e-3", "optim.weight_decay=0.05", "optim.layer_decay=0.7").optim
    groups = parameter_groups(model, spec)
    scale = {name: g["lr_scale"] for g in groups for p in g["params"] for name, q in model.named_parameters() if p is q}
    lr = {name: g["lr"] for g in groups for p in g["params"] for name, q in model.named_parameters() if p is q}
    for name in ("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.weight"):
        assert scale[name] == pytest.approx(0.7**13), name
    for block in range(12):
        assert scale[f"backbone.blocks.{block}.attn.qkv.weight"] == pytest.approx(0.7 ** (12 - block))
        assert scale[f"backbone.blocks.{block}.norm1.bias"] == pytest.approx(0.7 ** (12 - block))
    for name in ("backbone.norm.weight", "head.weight", "head.bias"):
        assert scale[name] == 1.0, name  # after the blocks: the full rate, as BEiT's and MAE's fine-tuning
    assert all(lr[name] == pytest.approx(1e-3 * scale[name]) for name in scale)
    assert len(scale) == len(list(model.parameters()))
    # timm's own grouping of a timm ViT with its head agrees, except for the final norm (timm: with the last block).
    import timm
    from timm.optim import param_groups_layer_decay

    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=3)
    ours = {id(p): g["lr_scale"] for g in parameter_groups(vit, spec) for p in g["params"]}
    names = {id(p): n for n, p in vit.named_parameters()}
    for group in param_groups_layer_decay(vit, weight_decay=0.05, layer_decay=0.7):
        for p in group["params"]:
            expected = 1.0 if names[id(p)].startswith("norm.") else group["lr_scale"]
            assert ours[id(p)] == pytest.approx(expected), names[id(p)]


def test_layer_decay_groups_the_registrys_timm_vit():
    """``model.name=vit_tiny_patch16_224`` as ``cxr train`` builds it (timm through the model registry)."""
    model = create_model("vit_tiny_patch16_224", 3, head="gap", pretrained="none", input_size=64)
    groups = parameter_groups(model, _config("optim.name=adamw", "optim.layer_decay=0.75").optim)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    blocks = 1 + max(int(n.split(".")[2]) for n in named if n.startswith("backbone.blocks."))
    assert scale[id(named["backbone.cls_token"])] == pytest.approx(0.75 ** (blocks + 1))
    assert scale[id(named["backbone.blocks.0.attn.qkv.weight"])] == pytest.approx(0.75**blocks)
    assert [scale[id(p)] for n, p in named.items() if n.startswith("head.")] == [1.0] * 2


def test_layer_decay_refuses_models_without_one_block_sequence():
    spec = _config("optim.layer_decay=0.75").optim
    with pytest.raises(CxrError, match=r"layer_decay needs .*no 'blocks.<i>.' parameters.*layer_decay=1.0"):
        parameter_groups(create_model("resnet18", 3, head="gap", input_size=SIZE), spec)
    timm = pytest.importorskip("timm")
    convnext = timm.create_model("convnext_atto", num_classes=3)
    with pytest.raises(CxrError, match=r"4 block sequences \(stages.0, stages.1"):
        parameter_groups(convnext, spec)


def test_cxr_train_refuses_layer_decay_for_a_cnn_before_making_the_run(synth_store, tmp_path):
    from conftest import train_cli

    out = tmp_path / "run"
    with pytest.raises(CxrError, match="optim.layer_decay needs"):
        train_cli("--experiment", "demo", "--store", str(synth_store), "--out", str(out), "--image-size", "32",
                  "--model", "resnet18", "data.num_workers=0", "optim.layer_decay=0.7")  # fmt: skip
    assert not out.exists()


def test_a_vit_with_layer_decay_trains():
    config = _config("optim.name=adamw", "optim.lr=1e-3", "optim.layer_decay=0.75", "data.input_size=64")
    module = _module(config, _vit_net(depth=2))
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    pixels = torch.randint(0, 255, (8, 1, 64, 64), dtype=torch.uint8)
    _trainer(1, limit_val_batches=0).fit(module, _loader(pixels, torch.ones(8, 3), 4))
    moved = [n for n, p in module.model.named_parameters() if not torch.equal(p, before[n])]
    assert "backbone.blocks.0.attn.qkv.weight" in moved and "head.weight" in moved


# --- 4. EMA of the weights ----------------------------------------------------------------------------------------


class Trajectory(L.Callback):
    """The raw weights after every optimizer step."""

    def __init__(self):
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append({n: p.detach().clone() for n, p in pl_module.model.named_parameters()})


def _ema_of(trajectory: list[dict], decay: float) -> dict:
    ema = dict(trajectory[0])  # the first update copies the weights
    for weights in trajectory[1:]:
        ema = {n: decay * ema[n] + (1 - decay) * weights[n] for n in ema}
    return ema


def test_ema_weights_follow_the_formula_and_validation_and_checkpoints_use_them(tmp_path):
    config = _config("optim.name=sgd", "optim.lr=0.5", "optim.momentum=0", "optim.nesterov=false", "train.ema=0.6")
    torch.manual_seed(0)
    module, trajectory = _module(config, _linear_net()), Trajectory()
    pixels, target = _data(48)
    val_pixels, val_target = _data(24, seed=1)
    trainer = _trainer(1, [trajectory, WeightEMA(config.train.ema)])
    trainer.fit(module, _loader(pixels, target, 8), _loader(val_pixels, val_target, 24))
    assert len(trajectory.weights) == 6
    expected = _ema_of(trajectory.weights, 0.6)
    raw = trajectory.weights[-1]
    assert not torch.allclose(expected["head.weight"], raw["head.weight"], atol=1e-4)  # the test can tell them apart
    for name, param in module.model.named_parameters():  # after training the model holds the EMA
        torch.testing.assert_close(param, expected[name], rtol=1e-5, atol=1e-6)
    # Validation ran on the EMA weights, not on the raw ones.
    with torch.no_grad():
        logits = torch.func.functional_call(module.model, expected, (val_pixels.float() / 255,))
        raw_logits = torch.func.functional_call(module.model, raw, (val_pixels.float() / 255,))
    assert float(trainer.callback_metrics["val_loss"]) == pytest.approx(float(masked_bce(logits, val_target)), 1e-5)
    assert float(masked_bce(raw_logits, val_target)) != pytest.approx(float(masked_bce(logits, val_target)), 1e-3)
    # The checkpoint's weights (what the artifact loads) are the EMA (raw ones beside them: the resume test below).
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=False)
    torch.testing.assert_close(checkpoint["state_dict"]["model.head.weight"], expected["head.weight"])


def test_ema_survives_a_resume_and_checkpoints_hold_it(tmp_path):
    """Killed at the start of epoch 2 and resumed from last.ckpt: the same EMA and raw weights as without the stop
    (the cosine schedule's position comes back too: the weights would differ otherwise)."""
    config = _config("optim.name=sgd", "optim.lr=0.2", "optim.momentum=0.9", "train.ema=0.7", "train.epochs=3",
                     "optim.scheduler=cosine", "optim.warmup_epochs=1")  # fmt: skip
    pixels, target = _data(32)

    def run(callbacks, ckpt=None, module=None) -> CxrModule:
        torch.manual_seed(0)
        module = module or _module(config, _linear_net())
        trainer = _trainer(3, [*callbacks, WeightEMA(config.train.ema)])
        trainer.fit(module, _loader(pixels, target, 8), _loader(pixels, target, 16), ckpt_path=ckpt)
        return module

    whole = run([])

    class Stop(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise KeyboardInterrupt  # Lightning's own "stop now"

    last, trajectory = tmp_path / "last.ckpt", Trajectory()
    with pytest.raises(SystemExit):  # Lightning ends the process on an interrupt: the stopped job
        run([LastCheckpoint(last), Stop(), trajectory])
    checkpoint = torch.load(last, weights_only=False)
    assert len(trajectory.weights) == 8  # two epochs of 4 steps, then stopped
    # state_dict: the EMA (what a model artifact loads); current_model_state: the raw weights, for --resume.
    torch.testing.assert_close(checkpoint["state_dict"]["model.head.weight"],
                               _ema_of(trajectory.weights, 0.7)["head.weight"])  # fmt: skip
    torch.testing.assert_close(checkpoint["current_model_state"]["model.head.weight"],
                               trajectory.weights[-1]["head.weight"])  # fmt: skip
    assert int(checkpoint["averaging_state"]["n_averaged"]) == 8
    resumed = run([LastCheckpoint(last)], ckpt=last)
    for (name, a), b in zip(whole.model.named_parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_build_trainer_wires_ema_and_accumulation(tmp_path):
    trainer = build_trainer(_config("train.ema=0.999", "train.accumulate=4"), tmp_path, LABELS, False, progress=False)
    [ema] = [c for c in trainer.callbacks if isinstance(c, WeightEMA)]
    assert ema.decay == 0.999 and trainer.accumulate_grad_batches == 4
    plain = build_trainer(_config(), tmp_path / "b", LABELS, False, progress=False)
    assert not any(isinstance(c, WeightEMA) for c in plain.callbacks) and plain.accumulate_grad_batches == 1


# --- 5. Gradient accumulation -------------------------------------------------------------------------------------


def test_two_accumulated_batches_of_16_make_the_update_of_one_batch_of_32():
    """Exact for a model without batch norm; with BN each half has its own batch statistics (README: caveat)."""
    config = _config("optim.name=sgd", "optim.lr=1.0", "optim.momentum=0", "optim.nesterov=false")
    pixels, target = _data(32)

    def one_step(batch_size: int, accumulate: int) -> dict:
        torch.manual_seed(0)
        module = _module(config, _linear_net())
        _trainer(1, accumulate=accumulate, limit_val_batches=0).fit(module, _loader(pixels, target, batch_size))
        return {n: p.detach() for n, p in module.model.named_parameters()}

    whole, accumulated, half = one_step(32, 1), one_step(16, 2), one_step(16, 1)
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(half["head.weight"], whole["head.weight"], atol=1e-4)  # two plain steps differ


# --- 6. Missing labels: masked BCE and AUROC ----------------------------------------------------------------------


def test_masked_bce_is_the_bce_of_the_provided_entries_and_ignores_the_rest():
    torch.manual_seed(0)
    logits = torch.randn(6, 3, requires_grad=True)
    target = (torch.rand(6, 3) > 0.5).float()
    target[:, 2] = NAN  # a label this dataset does not give
    target[4, :] = NAN  # an image with no label at all
    target[1, 0] = NAN
    pos_weight = torch.tensor([2.0, 0.5, 7.0])
    loss = masked_bce(logits, target, pos_weight)
    kept = ~torch.isnan(target)
    rows, cols = kept.nonzero(as_tuple=True)
    expected = F.binary_cross_entropy_with_logits(
        logits[rows, cols], target[rows, cols], pos_weight=pos_weight[cols], reduction="mean"
    )
    torch.testing.assert_close(loss, expected)
    assert kept.sum() == 9 and torch.isfinite(loss)
    loss.backward()
    assert torch.all(logits.grad[~kept] == 0) and torch.all(logits.grad[kept] != 0)
    full = (torch.rand(6, 3) > 0.5).float()  # nothing missing: plain BCE
    torch.testing.assert_close(masked_bce(logits, full, pos_weight), F.binary_cross_entropy_with_logits(
        logits, full, pos_weight=pos_weight))  # fmt: skip
    empty = masked_bce(logits, torch.full((6, 3), NAN))
    assert empty.item() == 0.0


def test_validation_auroc_uses_only_rows_that_provide_the_label():
    config = _config()
    torch.manual_seed(0)
    module = _module(config, _linear_net())
    pixels, target = _data(60, seed=3)
    target[:25, 0] = NAN  # A: provided for 35 rows
    target[:, 2] = NAN  # C: provided for none
    [metrics] = _trainer(1).validate(module, _loader(pixels, target, 20), verbose=False)
    with torch.no_grad():
        probabilities = torch.sigmoid(module.model(pixels.float() / 255)).numpy()
    auroc_a = roc_auc_score(target[25:, 0].numpy(), probabilities[25:, 0])
    auroc_b = roc_auc_score(target[:, 1].numpy(), probabilities[:, 1])
    assert metrics["val_auroc_Atelectasis"] == pytest.approx(auroc_a, abs=1e-6)
    assert metrics["val_auroc_Cardiomegaly"] == pytest.approx(auroc_b, abs=1e-6)
    assert math.isnan(metrics["val_auroc_Consolidation"])
    assert metrics["val_macro_auroc"] == pytest.approx((auroc_a + auroc_b) / 2, abs=1e-6)  # C left out
    kept = ~torch.isnan(target)
    logits = module.model(pixels.float() / 255).detach()
    plain = F.binary_cross_entropy_with_logits(logits[kept], target[kept])
    assert metrics["val_loss"] == pytest.approx(float(plain), rel=1e-5)


def test_training_with_a_missing_label_learns_the_provided_ones():
    config = _config("optim.name=adamw", "optim.lr=3e-3")
    torch.manual_seed(0)
    module = _module(config, _linear_net())
    pixels, target = _data(256)
    target[: len(target) // 2, 0] = NAN  # A missing for half the images, C given
    val_pixels, val_target = _data(128, seed=9)
    trainer = _trainer(3)
    trainer.fit(module, _loader(pixels, target, 32), _loader(val_pixels, val_target, 128))
    assert float(trainer.callback_metrics["val_auroc_Atelectasis"]) > 0.9
    assert float(trainer.callback_metrics["val_auroc_Cardiomegaly"]) > 0.9


def test_pos_weight_counts_only_the_rows_that_provide_the_label():
    from cxr.data.tasks import TaskSplit
    from cxr.training.fit import _pos_weight

    table = pd.DataFrame({"A": [1.0, 0.0, 0.0, NAN, NAN], "B": [1.0, 1.0, 0.0, 0.0, 0.0]})
    split = TaskSplit(outputs=["A", "B"], table=table, train=table.index.to_numpy())
    assert _pos_weight(split) == pytest.approx([2.0, 1.5])
    assert not np.isnan(_pos_weight(split)).any()


# --- 7. AUC-margin loss -------------------------------------------------------------------------------------------


def test_auc_margin_is_the_papers_objective_per_output_over_provided_entries():
    logits = torch.tensor([[2.0, 0.0], [1.0, -1.0], [-1.0, 3.0], [0.0, 0.5], [0.3, 1.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, NAN], [NAN, 0.0]])
    loss = auc_margin(logits, target, margin=0.8)
    expected = []
    for k in range(2):
        kept = ~torch.isnan(target[:, k])
        h, y = torch.sigmoid(logits[kept, k]), target[kept, k]
        pos, neg = h[y == 1], h[y == 0]
        hinge = max(0.0, 0.8 - pos.mean().item() + neg.mean().item()) ** 2
        expected.append(pos.var(unbiased=False).item() + neg.var(unbiased=False).item() + hinge)
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    loss.backward()
    assert logits.grad[3, 1] == 0 and logits.grad[4, 0] == 0 and logits.grad[0, 0] != 0
    # Perfectly separated scores a margin apart and equal within each class: zero loss.
    separated = torch.tensor([[10.0], [10.0], [-10.0], [-10.0]])
    assert auc_margin(separated, torch.tensor([[1.0], [1.0], [0.0], [0.0]]), margin=0.9).item() < 1e-6
    assert auc_margin(separated, torch.tensor([[0.0], [0.0], [1.0], [1.0]]), margin=0.9).item() > 3.0  # reversed


def test_auc_margin_loss_learns_to_rank():
    config = _config("optim.name=adam", "optim.lr=3e-3", "train.loss=auc_margin")
    torch.manual_seed(0)
    module = _module(config, _linear_net())
    pixels, target = _data(256)
    val_pixels, val_target = _data(128, seed=9)
    trainer = _trainer(3)
    trainer.fit(module, _loader(pixels, target, 32), _loader(val_pixels, val_target, 128))
    assert float(trainer.callback_metrics["val_auroc_Atelectasis"]) > 0.9
    assert float(trainer.callback_metrics["val_auroc_Cardiomegaly"]) > 0.9
    with pytest.raises(CxrError, match="pos_weight"):
        check_recipe(_config("train.loss=auc_margin", "train.pos_weight=true"))


# --- 8. The modern presets ----------------------------------------------------------------------------------------

MODERN = {"modern-224": 224, "modern-512": 512}


@pytest.mark.parametrize("preset", list(MODERN))
def test_modern_presets_load_with_the_recipe_they_document(preset):
    config = load_config(preset)
    written = yaml.safe_load(find_experiment(preset).read_text())
    merged = to_dict(config)
    for section, values in written.items():
        for key, value in values.items():
            assert merged[section][key] == value, f"{section}.{key}"
    size = MODERN[preset]
    assert (config.data.store_size, config.data.input_size, config.data.crop) == (size, size, 1.0)
    assert (config.model.name, config.optim.name, config.optim.scheduler) == ("convnext_small", "adamw", "cosine")
    assert config.optim.warmup_epochs > 0 and 0 < config.train.ema < 1 and config.train.precision == "auto"
    assert config.train.batch_size * config.train.accumulate == 64  # the same effective batch at both sizes
    check_recipe(config)


@pytest.mark.parametrize("preset", list(MODERN))
def test_modern_presets_train_a_few_steps(preset, synth_store, tmp_path):
    """The preset's AdamW, cosine + warm-up, EMA and accumulation on the synthetic store, with a small CNN at 32 px
    (the preset's ConvNeXt needs timm's model registry and ImageNet weights)."""
    from conftest import train_cli

    out = tmp_path / "run"
    train_cli(
        "--experiment", preset, "--store", str(synth_store), "--out", str(out), "--image-size", "32", "--epochs", "1",
        "--no-progress", "model.name=resnet18", "model.pretrained=none", "data.num_workers=0",
        "optim.warmup_epochs=0.5", "train.batch_size=16",
    )  # fmt: skip
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["epoch"].tolist() == [0] and metrics["val_loss"].notna().all()
    best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)
    assert "current_model_state" not in best and "optimizer_states" not in best  # the artifact: EMA weights only
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert "current_model_state" in last  # the raw weights, for --resume
    [schedule] = last["lr_schedulers"]
    assert schedule["lr_lambdas"][0]["warmup_steps"] > 0
    assert load_artifact(out / "checkpoints" / "best.ckpt").labels
