"""Values several parts of the project share, each declared once: the allowed names of every
choice (``utils/settings.py`` checks settings against them; the code that acts on a name checks
it too) and the input normalisation the networks are trained with.

This module imports nothing of the project, so every layer can take from it.
"""
import numpy as np

ARCHITECTURES = ("u2net", "u2netp")              # model.build_model
PRECISIONS = ("fp32", "bf16", "fp16")            # inference (apply.py, test_stage2.py)
AMP_MODES = ("auto", "off", "bf16", "fp16")      # training autocast
RESIZE_POLICIES = ("square", "short_side")       # how a photo becomes the network input
REFINE_METHODS = ("none", "guided", "matting")   # full-resolution alpha (utils/inference/refine.py)
E2H_SCHEDULES = ("step", "linear", "none")       # easy-to-hard ratio over the epochs
LR_SCHEDULES = ("constant", "seed", "cosine")    # learning rate over the epochs
LOSSES = ("l1", "bce")                           # training loss of the seven outputs

# ImageNet mean and std of RGB in [0, 1]: the normalisation of training and of every inference path.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
