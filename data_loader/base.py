"""What both stages share: epoch, per-sample RNG, bad-file substitution, the sample dict."""
import os
import warnings

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .e2h import SharedEpoch
from .image_io import ImageReadError
from .indexing import DatasetError
from .splits import check_split
from .transforms import Augment, eval_preset, normalize, train_preset
from .trimap import EVAL_KERNEL, unknown_band

MAX_SUBSTITUTES = 8


def single_threaded_opencv():
    """Turn OpenCV's own threading off (``cv2.setNumThreads(0)``).

    OpenCV's thread pool does not survive ``fork``: a forked DataLoader worker that touches
    an inherited pool can hang for ever (seen: ``cv2.setNumThreads`` in a worker blocked in
    ``pthread_cond_destroy``). So it is done where it is safe: in the process that builds a
    dataset, before any worker forks, and in every process that unpickles one (spawn and
    forkserver workers). The DataLoader workers are the parallelism.
    """
    cv2.setNumThreads(0)


def resolve_augment(augment, split):
    """None -> ``Augment()`` for the train split, else no augmentation (eval preset);
    True -> ``Augment()``; False -> None; an ``Augment`` passes through."""
    if augment is None:
        augment = split == "train"
    if augment is True:
        return Augment()
    if augment is False:
        return None
    if not isinstance(augment, Augment):
        raise TypeError(f"augment must be None, a bool or an Augment, got {type(augment).__name__}")
    return augment


class MattingDataset(Dataset):
    """Map-style base. Subclasses set ``names`` and implement ``load_full(i)`` and
    ``_train_sample(i)``.

    Training mode (``augment`` given): random crops etc. drawn from
    ``numpy.random.default_rng([seed, epoch, index])``, so ``ds[i]`` at a given epoch is the
    same in any process. Eval mode: ``load_full(i)`` through the eval preset, r = 1,
    deterministic. A file that fails at draw time is replaced by another index (drawn
    deterministically), with one warning per file per process; when the sample and ``MAX_SUBSTITUTES``
    substitutes in a row fail, a ``RuntimeError`` lists them.
    """

    def __init__(self, root, split, image_size, crop_size, seed, augment):
        single_threaded_opencv()
        self.root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise DatasetError(f"dataset folder not found: {self.root}")
        self.split = check_split(split)
        if not 1 <= crop_size <= image_size:
            raise ValueError(f"need 1 <= crop_size <= image_size, got crop_size={crop_size}, image_size={image_size}")
        self.image_size, self.crop_size, self.seed = int(image_size), int(crop_size), int(seed)
        self.augment = resolve_augment(augment, split)
        self.training = self.augment is not None
        self.transform = (train_preset(image_size, crop_size, self.augment) if self.training
                          else eval_preset(image_size, crop_size))
        self.names = []
        self._epoch = SharedEpoch()
        self._bad = set()

    def __setstate__(self, state):
        self.__dict__.update(state)
        single_threaded_opencv()

    # ---- epoch -----------------------------------------------------------------------------
    def set_epoch(self, epoch):
        """Call before ``iter(loader)`` each epoch; seen by DataLoader workers, persistent or not."""
        self._epoch.set(epoch)

    @property
    def epoch(self):
        return self._epoch.get()

    def rng(self, index):
        """The generator of sample ``index`` at the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    # ---- samples ---------------------------------------------------------------------------
    def __len__(self):
        return len(self.names)

    def __getitem__(self, index):
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index = int(index) % n
        failures, candidate = [], index
        for attempt in range(MAX_SUBSTITUTES + 1):
            if candidate not in self._bad:
                try:
                    return self._train_sample(candidate) if self.training else self._eval_sample(candidate)
                except ImageReadError as err:
                    self._bad.add(candidate)
                    failures.append(str(err))
                    warnings.warn(f"{err}; skipping {self.names[candidate]} and drawing another sample "
                                  "in its place for the rest of this run", stacklevel=2)
            candidate = int(np.random.default_rng([self.seed, index, attempt]).integers(n))
        raise RuntimeError(f"{len(failures)} files failed to load in a row while drawing sample {index} of "
                           f"{self.root}:\n" + "\n".join(failures))

    def _eval_sample(self, index):
        image, alpha, _ = self.load_full(index)
        image, alpha = self.transform(image, alpha, None)
        return self._pack(image, alpha, 1.0, index, EVAL_KERNEL)

    def _pack(self, image, alpha, ratio, index, kernel_size):
        """The sample dict: image float32 (3,c,c) ImageNet-normalised; alpha float32 (1,c,c)
        in [0,1]; unknown float32 (1,c,c) in {0,1}; ratio float32 scalar; index int."""
        alpha = np.ascontiguousarray(alpha, dtype=np.float32)
        return {
            "image": normalize(image),
            "alpha": torch.from_numpy(alpha[None]),
            "unknown": torch.from_numpy(unknown_band(alpha, kernel_size)[None]),
            "ratio": torch.tensor(ratio, dtype=torch.float32),
            "index": index,
        }

    def load_full(self, index):
        raise NotImplementedError

    def _train_sample(self, index):
        raise NotImplementedError
