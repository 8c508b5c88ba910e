"""The quality benchmark's teacher recipes beyond the common one (``benchmarks.teachers.RECIPE``).

Each is a change to the common recipe (a new hash, so a new cache folder); ``{"key": ...}``
names another teacher of the mode (``init``: start from its weights; ``kd``: learn from its
outputs), resolved by ``benchmarks.quality.recipe_for``. The comments keep the history:
what each schedule reached, and why the next one was tried.
"""
from __future__ import annotations

# A DeiT-Tiny-shaped ViT's recipe (AdamW, longer warm-up, more epochs: a ViT from scratch
# learns slower than a CNN); the rest (batch, schedule shape, smoothing, crops, flips) is RECIPE's.
VIT_RECIPE = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 5, "epochs": 40}
# After it the ViT was under the 92 % bar (2026-12-06): a second, short schedule from its weights
# with the converged ResNet-18-D's soft targets mixed in (DeiT's way: a CNN teaches the ViT).
# ``{"key": ...}`` names another teacher of the mode (resolved by ``recipe_for``); "init" with
# its own "recipe", "kd" with the teacher's.
VIT_KD_RECIPE = {**VIT_RECIPE, "lr": 2.5e-4, "warmup_epochs": 1, "epochs": 10, "init": {"key": "vit", "recipe": VIT_RECIPE},
                 "kd": {"key": "resnet", "alpha": 0.5, "temperature": 2.0}}
# It reached 91.82 % validation, 91.63 % test (its best epoch, 9 of 10): soft targets gained little, as
# DeiT found (its Table 3: soft distillation +0.0, hard +1.2 points). A third schedule from its
# weights with DeiT's hard distillation (ResNet-18-D's top class as a second label), twice the
# learning rate (the ViT still underfits: its training loss fell every epoch) and an EMA of the weights.
VIT_HARD_RECIPE = {**VIT_RECIPE, "lr": 5e-4, "warmup_epochs": 1, "epochs": 12, "ema": 0.999,
                   "init": {"key": "vit", "recipe": VIT_KD_RECIPE}, "kd": {"key": "resnet", "alpha": 0.5, "hard": True}}
# It ended at 91.92 % validation, 91.97 % test, still rising (91.80, 91.88, 91.92 % over its last
# three epochs; training loss still falling). 8 more epochs from its weights at half its learning
# rate (VIT_HARD2_RECIPE, 2026-12-06) stayed at 91.78-91.90 % validation (best 91.90 %, 91.92 % test):
# the ViT has converged for this recipe family, and the third schedule, best on validation, is the teacher.
VIT_HARD2_RECIPE = {**VIT_HARD_RECIPE, "lr": 2.5e-4, "epochs": 8, "init": {"key": "vit", "recipe": VIT_HARD_RECIPE}}
# That chain (91.92 % validation, 91.97 % test) sat under the bar, and the machine that held it
# lost its files. DeiT's own recipe instead (2026-12-06): the first schedule with DeiT's hard
# distillation from ResNet-18-D and the EMA from the first step, one 40-epoch schedule from
# scratch: the chain learnt from ResNet-18-D only after its first cosine schedule had decayed
# (soft targets, then hard labels: +0.46 validation points even so; DeiT's Table 3: hard
# distillation +1.2 on ImageNet), and it costs 40 epochs where the chain costs 62.
VIT_DEIT_RECIPE = {**VIT_RECIPE, "ema": 0.999, "kd": {"key": "resnet", "alpha": 0.5, "hard": True}}
# It ended at 92.00 % validation, 91.82 % test (2026-12-06, epoch 40 of 40), still rising: over its
# last eight epochs validation 91.52 -> 92.00 %, test 91.53 -> 91.82 %, training loss falling. A second
# schedule from its weights, as EfficientNet-B0's second schedule passed the bar: 12 epochs at a
# quarter of the learning rate, one warm-up epoch, the same hard distillation and EMA (2026-12-07).
VIT_DEIT2_RECIPE = {**VIT_DEIT_RECIPE, "lr": 2.5e-4, "warmup_epochs": 1, "epochs": 12,
                    "init": {"key": "vit", "recipe": VIT_DEIT_RECIPE}}
# It chose epoch 10 on validation (2026-12-07): 92.34 % validation, 91.98 % test, 0.02 under the bar
# (epochs 9, 11 and 12 read 92.02-92.07 % test at 92.16-92.28 % validation; 119 min on one core).
# The machine that held it lost its files (2026-12-07), so the ViT trains again anyway, and the
# same recipe on another CPU lands a few tenths either side (EfficientNet-B0's 40 epochs: 92.56 %
# test on one machine, 91.39 % on the next). The first schedule was still rising at epoch 40, as
# DeiT's ViTs do for hundreds of epochs: 60 epochs, then the same second schedule.
VIT_DEIT60_RECIPE = {**VIT_DEIT_RECIPE, "epochs": 60}
VIT_DEIT60_2_RECIPE = {**VIT_DEIT2_RECIPE, "init": {"key": "vit", "recipe": VIT_DEIT60_RECIPE}}

# EfficientNet-B0's 40 epochs on this machine (2026-12-06) chose epoch 35: 91.92 % validation,
# 91.39 % test, under the bar (the same recipe gave 92.47 / 92.56 % on the machine before;
# validation over the last six epochs 91.54-91.92 %). A second schedule from those weights, as
# the ViT's was: 15 epochs at a fifth of the learning rate, half of the loss Hinton's
# distillation from the converged ResNet-18-D, an EMA of the weights.
EFFICIENTNET_KD_RECIPE = {"epochs": 15, "lr": 0.02, "warmup_epochs": 1, "ema": 0.999,
                          "init": {"key": "efficientnet", "recipe": {"epochs": 40}},
                          "kd": {"key": "resnet", "alpha": 0.5, "temperature": 2.0}}
