"""The training engine both stages share: ``engine`` (setup, one epoch, validation, resume),
``run_folder`` (what a run writes), ``checkpoint`` (weights, RNG states, checkpoint.pth),
``losses`` and ``lr``."""
