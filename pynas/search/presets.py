"""Published search settings by name (``pynas search --preset NAME``).

A preset is what the authors ran: their paper's stated settings, completed (and,
where the text and the public code disagree, replaced) by their public code.
Every value is listed, with the paper section or code file it comes from, in
docs/presets.md; a test checks this module against that document.
Precedence: defaults < preset < ``--config FILE`` < explicit options.
"""
import math

# DARTS' public search settings (quark0/darts cnn/train_search.py), the base of most presets.
DARTS_BASE = dict(space="darts", method="darts", dataset="cifar10", epochs=50, batch_size=64, C=16, layers=8, steps=4,
                  train_fraction=0.5, cutout=0, w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_weight_decay=3e-4,
                  w_nesterov=False, grad_clip=5.0, a_optimizer="adam", a_lr=3e-4, a_betas=(0.5, 0.999),
                  a_weight_decay=1e-3, a_init="normal")

# SNAS' search as its public code (SNAS-Series, SNAS/train_search.py) runs it on one GPU.
SNAS_BASE = dict(DARTS_BASE, method="snas", epochs=150, train_fraction=1.0, a_optimizer="sgd", a_lr=3e-4,
                 a_momentum=0.0, a_weight_decay=0.0, a_grad_clip=10.0, a_init="normal(1,0.01)", tau_start=1.0,
                 tau_end=0.03, tau_schedule="snas", sample_per="forward", cost_estimator="reparameterised")

SINGLE_DARTS_SIGMOID = dict(method="single-level", relaxation="sigmoid", train_fraction=1.0, a_weight_decay=0.0,
                            a_init=-math.log(7))

PRESETS = {
    "darts-cifar10": DARTS_BASE,
    "darts-2nd-cifar10": dict(DARTS_BASE, method="darts-2nd"),
    "snas-cifar10": dict(SNAS_BASE, constraint="log", constraint_weight=1.5e-3),
    "snas-cifar10-mild": dict(SNAS_BASE, constraint="mild"),
    "snas-cifar10-moderate": dict(SNAS_BASE, constraint="moderate"),
    "snas-cifar10-aggressive": dict(SNAS_BASE, constraint="aggressive"),
    "dsnas-cifar10": dict(SNAS_BASE, method="dsnas", tau_start=None, tau_end=None, tau_schedule=None),
    "gdas-cifar10": dict(DARTS_BASE, method="gdas", epochs=250, batch_size=256, layers=6, w_weight_decay=5e-4,
                         w_nesterov=True, tau_start=10.0, tau_end=0.1, tau_schedule="linear-epoch"),
    "single-darts-nb201": dict(DARTS_BASE, **SINGLE_DARTS_SIGMOID, space="nb201", layers=15, w_lr=0.005),
    "single-darts-darts": dict(DARTS_BASE, **SINGLE_DARTS_SIGMOID),
    "sdarts-rs-cifar10": dict(DARTS_BASE, method="sdarts-rs", space="darts-no-none", epsilon_alpha=0.3),
    "sdarts-adv-cifar10": dict(DARTS_BASE, method="sdarts-adv", space="darts-no-none", epsilon_alpha=0.3,
                               attack_steps=7),
    "sdarts-rs-nb201": dict(DARTS_BASE, method="sdarts-rs", space="nb201", layers=15, epochs=100, epsilon_alpha=0.3),
    "sdarts-adv-nb201": dict(DARTS_BASE, method="sdarts-adv", space="nb201", layers=15, epochs=100,
                             epsilon_alpha=0.3, attack_steps=7),
    # FairDARTS as xiaomi-automl/FairDARTS fairdarts/train_search.py and its README's search command run it.
    "fairdarts-cifar10": dict(DARTS_BASE, method="fairdarts", space="darts-no-none", batch_size=128, w_lr=0.005,
                              a_lr=3e-3, a_betas=(0.9, 0.999), a_init="zeros", regularizers=["zero-one=10"],
                              derivation="threshold", threshold=0.85),
    # β-DARTS as Sunshine-Ye/Beta-DARTS nasbench201/train_search.py runs it (its only runnable search).
    "beta-darts-nb201": dict(DARTS_BASE, method="beta-darts", space="nb201", layers=15, epochs=100,
                             regularizers=["beta-decay=0.5"]),
    # DARTS- as Meituan-AutoML/DARTS- scripts/run_darts_minus.sh runs it (in the DARTS space, and its S3 run).
    "darts-minus-cifar10": dict(DARTS_BASE, method="darts-minus", aux_skip=True, aux_beta=1.0, aux_decay="linear",
                                aux_t_max=50),
    "darts-minus-s3": dict(DARTS_BASE, method="darts-minus", space="s3", aux_skip=True, aux_beta=1.0,
                           aux_decay="linear", aux_t_max=50),
    # DrNAS as xiangning-chen/DrNAS DARTS-space/train_search.py and 201-space/train_search[_progressive].py run it.
    "drnas-cifar10": dict(DARTS_BASE, method="drnas", space="darts-no-none", C=36, layers=20, w_lr=0.1, w_lr_min=0.0,
                          a_lr=6e-4, drnas_channels=[6, 4], drnas_keep=[7, 4], drnas_frozen=0.4),
    "drnas-nb201": dict(DARTS_BASE, method="drnas", space="nb201", layers=15, epochs=100, drnas_channels=[1],
                        drnas_keep=[5], drnas_frozen=0.0),
    "drnas-nb201-progressive": dict(DARTS_BASE, method="drnas", space="nb201", layers=15, epochs=100,
                                    drnas_channels=[4, 2], drnas_keep=[5, 3], drnas_frozen=0.2),
    # Λ-DARTS as dr-faustus/Lambda-DARTS run_search.sh runs its DARTS-family search (S4 on SVHN).
    "lambda-darts-s4-svhn": dict(DARTS_BASE, method="lambda-darts", space="s4", dataset="svhn", batch_size=96,
                                 lambda_reg=0.25, lambda_epsilon=1e-3),
    "sgas-cifar10": dict(DARTS_BASE, method="sgas", warmup_epochs=0, first_decision=10, decision_freq=5,
                         batch_increase=8),
    "wiring-dsnas-minimal": dict(DARTS_BASE, method="dsnas", space="minimal", steps=2, epochs=150, batch_size=96,
                                 train_fraction=1.0),
    "wiring-darts-minimal": dict(DARTS_BASE, space="minimal", steps=2, batch_size=96),
    # PC-DARTS' CIFAR-10 search as yuhuixu1993/PC-DARTS train_search.py and model_search.py run it.
    "pc-darts-cifar10": dict(DARTS_BASE, partial_channels=4, batch_size=256, w_lr=0.1, w_lr_min=0.0, a_lr=6e-4,
                             warmup_epochs=15),
}
# DARTS-PT's supernets on S1-S4 (001 Sec. 5.1, 6, App. A.2): DARTS' settings in each space, and with α fixed.
for _space in ("s1", "s2", "s3", "s4"):
    PRESETS[f"darts-pt-{_space}"] = dict(DARTS_BASE, space=_space)
    PRESETS[f"darts-pt-{_space}-fixed-alpha"] = dict(DARTS_BASE, space=_space, method="fixed")
del _space
# DARTS-PT's NAS-Bench-201 supernets (001 Sec. 5.2, 6.3, Table 4; ruocwang/darts-pt nasbench201/train_search.py,
# exp_scripts/darts-201.sh, blank-201.sh): DARTS' settings, 100 epochs, N = 5 cells per stage; α trained or fixed.
PRESETS["darts-pt-nb201"] = dict(DARTS_BASE, space="nb201", layers=15, epochs=100)
PRESETS["darts-pt-nb201-fixed-alpha"] = dict(DARTS_BASE, space="nb201", layers=15, epochs=100, method="fixed")
