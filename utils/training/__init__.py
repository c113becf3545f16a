"""The training engine both stages share: ``entry`` (``train``: settings, the cheap checks, data,
model, loop; what train_stage1.py and train_stage2.py call), ``engine`` (setup, one epoch,
validation, resume), ``run_folder`` (what a run writes), ``checkpoint`` (weights, RNG states,
checkpoint.pth), ``losses`` and ``lr``."""
