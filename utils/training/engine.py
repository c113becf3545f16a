"""The training engine both stages share: setup, one epoch of training, validation, resume.

``setup_training`` puts the network on its device (channels-last), wraps it for the step
(logits out, then DDP, then ``torch.compile`` if asked) and builds Adam, the lr schedule and the
AMP GradScaler. ``train_one_epoch`` runs the step; ``validate`` measures the validation split at
full resolution through the inference core (``utils.inference.core.Matter``), exactly as ``test_stage2.py`` and
``apply.py`` predict. ``resume_training`` restores a run from its ``checkpoint.pth``. ``utils.training.entry.train`` runs
them in order for both training scripts.
"""
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, default_collate

from data_loader import Augment
from model import load_weights
from utils.device import amp_dtype
from utils.distributed import DistInfo, all_reduce_sum, broadcast_buffers
from utils.inference.core import MatteOptions, Matter
from utils.logger import MetricLogger
from utils.metrics import matting_metrics
from .checkpoint import restore_rng_for_rank
from .lr import build_scheduler

LOSS_TERMS = ("total", "fused", "sides", "unknown")
VAL_METRICS = ("loss", "sad", "mse", "mad", "grad", "conn")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and the step."""


class LogitsModel(nn.Module):
    """``net.forward_logits`` as ``forward``, so DDP and torch.compile wrap the logits path."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.forward_logits(x)


@dataclass
class TrainingState:
    """Everything the loop updates. ``net`` is the plain U2NET/U2NETP: save and validate it."""

    net: nn.Module
    model: nn.Module                # what the step calls: LogitsModel(net), maybe DDP, maybe compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype = None   # None: fp32
    dist: DistInfo = field(default_factory=DistInfo)
    channels_last: bool = True
    grad_clip: float = 0.0
    start_epoch: int = 0
    best_mad: float = math.inf
    best_epoch: int = -1            # the epoch of best_mad (model/best.pth)

    @property
    def device(self):
        return self.dist.device

    @property
    def lr(self):
        return self.optimizer.param_groups[0]["lr"]


def augment_from_settings(augment):
    """``settings.augment`` -> ``data_loader.Augment``: flip as the seed; random_scale draws the
    short side in [0.75, 1.25] x image_size; color_jitter uses strength 0.2."""
    return Augment(flip=augment.flip, scale_range=(0.75, 1.25) if augment.random_scale else None,
                   color_jitter=0.2 if augment.color_jitter else 0.0)


def setup_training(net, settings, dist):
    """Device, memory format, wrappers, Adam, lr schedule and GradScaler for ``net``.

    On CUDA also the cuDNN settings (``cuda_backends``): autotuned convolutions for the fixed
    crop size, TF32 convolutions in fp32.
    """
    device = dist.device
    if device.type == "cuda":
        cuda_backends()
    net.to(device)
    if settings.channels_last:
        net.to(memory_format=torch.channels_last)
    model = LogitsModel(net)
    if dist.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if settings.compile:
        model = torch.compile(model)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=settings.weight_decay)
    dtype = amp_dtype(device, settings.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    return TrainingState(net, model, optimizer, build_scheduler(optimizer, settings), scaler, dtype, dist,
                         settings.channels_last, settings.grad_clip)


def cuda_backends():
    """cuDNN for training on a fixed crop size.

    ``benchmark``: every training batch has the same shape (``crop_size``; validation predicts at
    ``image_size`` squares), so timing the convolution algorithms once per shape pays. It makes
    the choice of algorithm, and so the last bits of the results, vary from run to run: a
    resumed run matches an uninterrupted one exactly on the CPU, and on a GPU only as far as
    cuDNN is deterministic. TF32 stays on for convolutions (PyTorch's default, set here so that
    no other default changes it): it only acts on fp32 convolutions (``amp=off``, and the fp32
    validation), which it runs several times faster on Ampere and newer GPUs, with a 10-bit
    mantissa: as many bits as fp16's, more than bf16's, which the default ``amp`` trains in.
    """
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.conv.fp32_precision = "tf32"


def collate_channels_last(samples):
    """``default_collate`` with the images made channels-last in the DataLoader's worker, so the
    pinned host copy and the host-to-GPU copy already have the layout the network runs in."""
    batch = default_collate(samples)
    batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    return batch


def build_train_loader(dataset, settings, dist):
    """DataLoader over a DistributedSampler (one code path for 1 and N processes).

    The sampler's order depends on (seed, epoch) only: call ``loader.sampler.set_epoch(epoch)``
    (and ``dataset.set_epoch(epoch)``) before iterating each epoch.
    """
    sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                 seed=settings.seed)
    workers = settings.dataloader.num_worker
    # Its own generator (worker base seeds): the global torch RNG stream stays the training's.
    generator = torch.Generator().manual_seed(settings.seed + dist.rank)
    return DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler, num_workers=workers,
                      generator=generator, collate_fn=collate_channels_last if settings.channels_last else None,
                      pin_memory=settings.dataloader.pin_memory and dist.device.type == "cuda",
                      persistent_workers=settings.dataloader.persistent_workers and workers > 0,
                      drop_last=False)


def resume_training(state, ckpt, run_dir):
    """Restore model, optimizer, scheduler, scaler, epoch, best MAD and RNG from ``ckpt``, the
    ``checkpoint.pth`` of ``run_dir`` (``checkpoint.load_checkpoint``)."""
    load_weights(state.net, ckpt["model"], source=f"{run_dir}/checkpoint.pth")
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    state.start_epoch = int(ckpt["epoch"]) + 1
    state.best_mad = float(ckpt["best_mad"])
    state.best_epoch = int(ckpt.get("best_epoch", -1))
    restore_rng_for_rank(ckpt, state.dist.rank, state.dist.world_size)


def _to_device(batch, state):
    """The batch's (images, alpha, unknown) on the device; images channels-last if asked (the
    loader's ``collate_channels_last`` made them so before the copy, which keeps the layout)."""
    images = batch["image"]
    if state.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)  # no copy if already so
    images = images.to(state.device, non_blocking=True)
    return images, batch["alpha"].to(state.device, non_blocking=True), batch["unknown"].to(state.device, non_blocking=True)


def _step(state, criterion, batch, epoch, step):
    """Forward, loss, the finite check (on the loss summed over ranks), backward, update.

    Returns the loss terms times the batch size, the sum of the batch's e2h ratios and the
    batch size, each summed over the ranks: ``[total, fused, sides, unknown, ratio, n]``.
    """
    images, alpha, unknown = _to_device(batch, state)
    with torch.autocast(state.device.type, dtype=state.amp_dtype, enabled=state.amp_dtype is not None):
        logits = state.model(images)
    losses = criterion(logits, alpha, unknown)
    n = images.shape[0]
    extra = torch.tensor([batch["ratio"].double().sum().item(), n], dtype=torch.float64, device=state.device)
    stats = torch.cat([torch.stack([losses[k].detach().double() * n for k in LOSS_TERMS]), extra])
    values = all_reduce_sum(stats).tolist()  # the same numbers on every rank: all stop together
    if not math.isfinite(values[0]):
        raise NonFiniteLossError(
            f"epoch {epoch}, step {step}: the training loss is {values[0] / values[-1]} "
            f"(terms: {dict(zip(LOSS_TERMS, (v / values[-1] for v in values)))}); stopped before "
            f"updating the weights. Nothing of this epoch was saved; checkpoint.pth holds the last good "
            f"epoch. Try a lower lr, grad_clip or amp=off.")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(losses["total"]).backward()
    if state.grad_clip > 0:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.net.parameters(), state.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return values


def train_one_epoch(state, criterion, loader, epoch, epoch_num):
    """Train over ``loader`` once; returns the epoch's means over all ranks.

    Returns dict: ``loss`` (= total) and each loss term, ``mix_ratio`` (mean e2h ratio of the
    samples trained on, from the batches' ``ratio``), ``images`` (all ranks), ``seconds``,
    ``images_per_s``. Raises NonFiniteLossError naming epoch and step on a NaN/inf loss.
    """
    state.model.train()
    log = MetricLogger()
    start = time.perf_counter()
    bar = log.progress(loader, desc=f"epoch {epoch} ({epoch + 1}/{epoch_num})", enabled=state.dist.is_main)
    for step, batch in enumerate(bar):
        *terms, ratio, n = _step(state, criterion, batch, epoch, step)
        log.update(n=n, **{k: v / n for k, v in zip(LOSS_TERMS, terms)}, mix_ratio=ratio / n)
        log.update(n=1, images=n)
        rate = log.meters["images"].total / (time.perf_counter() - start)
        log.postfix(bar, ratio=f"{log.meters['mix_ratio'].global_avg:.3f}", img_s=f"{rate:.1f}")
    seconds = time.perf_counter() - start
    stats = log.averages()
    stats["loss"] = stats.pop("total")
    stats["images"] = log.meters["images"].total
    stats.update(seconds=seconds, images_per_s=stats["images"] / seconds)
    return stats


@torch.no_grad()
def validate(net, dataset, size, dist, batch_size=4, max_images=None, num_previews=4):
    """Validation at full resolution: SAD, MSE, MAD, Grad, Conn and ``loss`` (mean |p - g|).

    Each rank predicts the images ``rank, rank + world, ...`` of ``dataset.load_full`` with
    ``Matter(net, MatteOptions(size=size))`` (fp32), and the sums are reduced over the ranks.
    Rank 0's BatchNorm statistics are first copied to every rank (each rank's last training
    step updated its own), so all ranks score the weights rank 0 saves.
    ``loss`` is the L1 of the fused output at full resolution, the same number as MAD, kept
    as its own column to set beside ``train_fused`` (the fused output's L1 on training crops).

    Returns ``(metrics, previews)``: means over the images (NaN when there are none) plus
    ``seconds``, and on rank 0 ``[(rgb, gt, pred), ...]`` for the first ``num_previews`` images.
    """
    started = time.perf_counter()
    if dist.distributed:
        broadcast_buffers(net, src=0)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    was_training = net.training
    net.eval()
    sums = torch.zeros(len(VAL_METRICS) + 1, dtype=torch.float64)
    previews = {}
    # the epoch's weights, prepared afresh (a copy: training goes on with ``net``), fp32 as saved
    matter = Matter(net, MatteOptions(size=size, device=str(dist.device), batch_size=batch_size))
    mine = list(range(dist.rank, n, dist.world_size))
    if dist.is_main:  # rank 0 also draws the grid's images it does not own
        mine += [i for i in range(min(num_previews, n)) if i % dist.world_size != 0]
    for start in range(0, len(mine), batch_size):
        chunk = mine[start:start + batch_size]
        samples = [dataset.load_full(i) for i in chunk]
        preds = matter.predict([rgb for rgb, _, _ in samples])
        for i, (rgb, gt, _), pred in zip(chunk, samples, preds):
            if i < num_previews:
                previews[i] = (rgb, gt, pred)
            if i % dist.world_size == dist.rank:
                m = matting_metrics(pred, gt)
                sums += torch.tensor([float(abs(pred - gt).mean())] + [m[k] for k in VAL_METRICS[1:]] + [1.0],
                                     dtype=torch.float64)
    sums = all_reduce_sum(sums.to(dist.device)).cpu()
    net.train(was_training)
    count = sums[-1].item()
    metrics = {k: (sums[j].item() / count if count else math.nan) for j, k in enumerate(VAL_METRICS)}
    metrics["seconds"] = time.perf_counter() - started
    return metrics, [previews[i] for i in sorted(previews)] if dist.is_main else []
