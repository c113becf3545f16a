"""What the first run on a CUDA machine would meet, checked on the CPU.

CUDA is mocked where a test needs it (``torch.cuda.is_available``, ``device_count``,
``set_device``, ``is_bf16_supported``); the mocked ``set_device`` refuses an unindexed device
as the real one does. The DDP checks run two gloo processes (``torch.multiprocessing.spawn``)
once for the module: the foreground cache shared by the ranks, identical weights after a
step, and validation that scores rank 0's saved weights on every rank.
"""
import contextlib
import datetime
import os

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
from PIL import Image
from torch.cuda._utils import _get_device_index
from torch.utils.data import DistributedSampler

import train_stage1
from data_loader.foreground_cache import ForegroundCache, build_shared
from data_loader.indexing import Pair
from model import build_model, load_model
from utils import distributed
from utils.distributed import DistInfo, init_distributed_mode
from utils.inference.predict import check_precision
from utils.settings import build_settings
from utils.training import engine
from utils.training.losses import MattingLoss

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["device=cpu", "arch=u2netp", "model_name=u2netp", "image_size=64", "crop_size=48", "batch_size=2",
        "dataloader.num_worker=0", "amp=off", "seed=0"]


# ---------------------------------------------------------------- mocked CUDA
@pytest.fixture
def fake_cuda(monkeypatch):
    """Two mocked GPUs; returns the list of devices ``torch.cuda.set_device`` was given."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(torch.device("cuda", _get_device_index(d))))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return current


@pytest.mark.parametrize("setting, expected", [("auto", "cuda:0"), ("cuda", "cuda:0"), ("cuda:1", "cuda:1")])
def test_a_single_process_gets_an_indexed_cuda_device(fake_cuda, setting, expected):
    info = init_distributed_mode(setting)  # torch.cuda.set_device(torch.device("cuda")) raised here
    assert info.device == torch.device(expected) and info.device.index is not None
    assert fake_cuda == [torch.device(expected)] and not info.distributed


def test_under_torchrun_each_rank_takes_cuda_local_rank_and_cuda_n_is_refused(fake_cuda, monkeypatch):
    joined = []
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: joined.append(kwargs))
    monkeypatch.setenv("WORLD_SIZE", "4")  # two machines of two GPUs: this is the second's rank 1
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    for setting in ("auto", "cuda"):
        info = init_distributed_mode(setting)
        assert (info.rank, info.world_size, info.local_rank, info.device) == (3, 4, 1, torch.device("cuda:1"))
    assert fake_cuda == [torch.device("cuda:1")] * 2
    assert joined[-1] == {"backend": "nccl", "rank": 3, "world_size": 4, "device_id": torch.device("cuda:1")}
    with pytest.raises(ValueError, match="device='cuda:0' under torchrun .* CUDA_VISIBLE_DEVICES"):
        init_distributed_mode("cuda:0")  # every rank on GPU 0
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ValueError, match="LOCAL_RANK 2 has no GPU: this machine shows 2"):
        init_distributed_mode("auto")
    assert len(joined) == 2


@pytest.fixture
def fake_bf16(monkeypatch):
    """set(kind): mock a GPU whose bf16 is ``native``, ``emulated`` or ``absent``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())

    def use(kind):
        answers = {"native": (True, True), "emulated": (True, False), "absent": (False, False)}[kind]
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: answers[0 if including_emulation else 1])
    return use


@pytest.mark.parametrize("kind", ["native", "emulated", "absent"])
def test_inference_bf16_only_on_gpus_with_native_bf16(fake_bf16, kind):
    fake_bf16(kind)
    for precision in ("fp32", "fp16"):
        assert check_precision("cuda:0", precision) is None
    if kind == "native":
        assert check_precision("cuda:0", "bf16") is None
    else:  # apply.py --precision bf16 on a T4 (emulated) or older: refused, saying what to use
        with pytest.raises(ValueError, match="no native bf16 .* use --precision fp16 or fp32"):
            check_precision("cuda:0", "bf16")


def test_cuda_backends_autotune_and_keep_tf32_convolutions(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    before = torch.backends.cudnn.conv.fp32_precision
    try:
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        engine.cuda_backends()
        assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    finally:
        torch.backends.cudnn.conv.fp32_precision = before


class ToyTrainSet(torch.utils.data.Dataset):
    """Training samples of the engine's format, the image's first pixel = the index."""

    def __init__(self, n=6, size=8):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image = torch.zeros(3, self.size, self.size)
        image[:, 0, 0] = i
        alpha = torch.zeros(1, self.size, self.size)
        return {"image": image, "alpha": alpha, "unknown": alpha, "ratio": torch.tensor(0.0), "index": i}


def test_batches_are_channels_last_before_the_copy_to_the_device():
    settings = build_settings("train_stage1", overrides=TINY)
    loader = engine.build_train_loader(ToyTrainSet(), settings, DistInfo())
    batch = next(iter(loader))
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert batch["image"][:, 0, 0, 0].tolist() == batch["index"].tolist()  # values kept
    state = engine.TrainingState(None, None, None, None, None, dist=DistInfo())
    images, alpha, unknown = engine._to_device(batch, state)
    assert images.data_ptr() == batch["image"].data_ptr()  # no second copy on the host
    assert images.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- the sampler's order
def test_the_training_order_changes_every_epoch_as_a_fresh_sampler_gives_it(make_aisegment, tmp_path, monkeypatch):
    """train_stage1.main over two epochs: each epoch's order is that of a fresh sampler set to
    the epoch (so a resumed run draws the same), and the two differ (without set_epoch, every
    epoch would repeat epoch 0's order)."""
    drawn = []
    real_iter = DistributedSampler.__iter__

    def spy(self):
        order = list(real_iter(self))
        drawn.append((self.epoch, order, self))
        return iter(order)

    monkeypatch.setattr(DistributedSampler, "__iter__", spy)
    train_stage1.main([a for s in TINY + ["epoch_num=2", "image_num=8", "val_image_num=1", "crop_size=32",
                                          "image_size=40", f"dataset_path={make_aisegment(count=10, val=1)}",
                                          f"results_dir={tmp_path / 'results'}"] for a in ("--set", s)])
    assert [epoch for epoch, _, _ in drawn] == [0, 1]
    for epoch, order, sampler in drawn:
        fresh = DistributedSampler(sampler.dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
        fresh.set_epoch(epoch)
        assert order == list(real_iter(fresh))
    assert drawn[0][1] != drawn[1][1]


# ---------------------------------------------------------------- two gloo processes
class ToyValSet:
    """``load_full(i)`` -> (uint8 RGB, float32 alpha in [0,1], name), as the datasets give."""

    def __len__(self):
        return 3

    def load_full(self, i):
        rng = np.random.default_rng(i)
        h, w = 40 + 4 * i, 32
        yy, xx = np.mgrid[0:h, 0:w]
        alpha = np.clip((10 - np.hypot(yy - h / 2, xx - w / 2)) / 3 + 0.5, 0, 1).astype(np.float32)
        rgb = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        return rgb, alpha, f"toy{i}"


def _write_pairs(root, count=7):
    """``count`` photo/mask pairs under ``root``; the last one's mask has the wrong size."""
    pairs = []
    rng = np.random.default_rng(0)
    for i in range(count):
        photo, mask = os.path.join(root, f"p{i}.png"), os.path.join(root, f"p{i}_mask.png")
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(photo)
        size = (10, 12) if i < count - 1 else (9, 12)
        Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8), "L").save(mask)
        pairs.append(Pair(photo, mask, f"p{i}.png"))
    return pairs


def _ddp_worker(rank, folder):
    """One of two gloo ranks: the shared foreground cache, one training step, validation."""
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2,
                                  timeout=datetime.timedelta(seconds=120))
    try:
        out = {}
        # each rank estimates its part of the cache, then both wait; the failures agree
        estimated = []
        cache = ForegroundCache(os.path.join(folder, "cache"),
                                estimator=lambda rgb, alpha: estimated.append(rgb.sum()) or rgb)
        pairs = _write_pairs(folder) if rank == 0 else None
        objects = [pairs]
        torch_dist.broadcast_object_list(objects, src=0)
        pairs = objects[0]
        out["failures"] = sorted(build_shared(cache, pairs, progress=False))
        out["estimated"] = len(estimated)
        out["fresh"] = [cache.is_fresh(p) for p in pairs]

        # one DDP step on each rank's own batch, then validation
        settings = build_settings("train_stage1", overrides=TINY)
        torch.manual_seed(0)
        info = DistInfo(rank, 2, rank, torch.device("cpu"))
        state = engine.setup_training(build_model("u2netp"), settings, info)
        g = torch.Generator().manual_seed(100 + rank)
        alpha = torch.rand(2, 1, 48, 48, generator=g)
        batch = {"image": torch.randn(2, 3, 48, 48, generator=g), "alpha": alpha,
                 "unknown": (alpha > 0.3).float(), "ratio": torch.zeros(2)}
        engine.train_one_epoch(state, MattingLoss(settings.loss, settings.unknown_loss_weight), [batch], 0, 1)
        out["trained"] = {k: v.clone() for k, v in state.net.state_dict().items()}
        out["metrics"], _ = engine.validate(state.net, ToyValSet(), 64, info, batch_size=2)
        out["validated"] = state.net.state_dict()
        torch.save(out, os.path.join(folder, f"rank{rank}.pth"))
    finally:
        torch_dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    if not torch_dist.is_available() or not torch_dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is needed")
    folder = str(tmp_path_factory.mktemp("ddp"))
    torch.multiprocessing.spawn(_ddp_worker, args=(folder,), nprocs=2, join=True)
    return [torch.load(os.path.join(folder, f"rank{r}.pth"), weights_only=False) for r in range(2)]


def test_ranks_share_the_foreground_estimation_and_agree_on_failures(two_ranks):
    # 7 pairs, the last broken: rank 0 estimates p0, p2, p4 (p6 fails), rank 1 p1, p3, p5
    assert [r["estimated"] for r in two_ranks] == [3, 3]  # no photo estimated twice
    assert [r["failures"] for r in two_ranks] == [["p6.png"], ["p6.png"]]
    assert two_ranks[0]["fresh"] == two_ranks[1]["fresh"] == [True] * 6 + [False]


def test_both_ranks_hold_identical_weights_after_a_step(two_ranks):
    names = dict(build_model("u2netp").named_parameters())
    a, b = (r["trained"] for r in two_ranks)
    for name in names:
        assert torch.equal(a[name], b[name]), name
    # the BatchNorm statistics differ after the step (each rank's own batch) ...
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("running_mean"))
    # ... until validation copies rank 0's to every rank
    for key, value in two_ranks[0]["validated"].items():
        assert torch.equal(value, two_ranks[1]["validated"][key]), key
        assert torch.equal(value, a[key]), key  # rank 0's own are what it saves


def test_ddp_validation_scores_rank_0s_saved_weights(two_ranks, tmp_path):
    metrics = two_ranks[0]["metrics"]
    assert metrics == {**two_ranks[1]["metrics"], "seconds": metrics["seconds"]}
    torch.save(two_ranks[0]["validated"], tmp_path / "saved.pth")  # what rank 0 writes
    alone, _ = engine.validate(load_model(str(tmp_path / "saved.pth")), ToyValSet(), 64, DistInfo(), batch_size=2)
    for key in engine.VAL_METRICS:
        assert metrics[key] == pytest.approx(alone[key], rel=1e-9, abs=1e-12), key


def _two_machines_worker(rank, folder):
    """Two gloo ranks standing for two machines of one process each (LOCAL_WORLD_SIZE=1): first
    each with a cache folder of its own (node-local), then both with one shared folder."""
    import data_loader.foreground_cache as fc
    os.environ.update(LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2,
                                  timeout=datetime.timedelta(seconds=120))
    try:
        objects = [_write_pairs(folder) if rank == 0 else None]  # one dataset (a copy per machine alike)
        torch_dist.broadcast_object_list(objects, src=0)
        pairs = objects[0]
        estimated, at_waits, real_wait = [], [], fc.wait_for_all

        def wait_for_all(timeout, what=""):
            at_waits.append(len(estimated))
            real_wait(timeout, what)
        fc.wait_for_all = wait_for_all
        out = {}
        for kind, cache_dir in (("node-local", f"cache{rank}"), ("shared", "cache")):
            estimated.clear()
            at_waits.clear()
            cache = ForegroundCache(os.path.join(folder, cache_dir),
                                    estimator=lambda rgb, alpha: estimated.append(rgb.sum()) or rgb)
            out[kind] = {"failures": sorted(build_shared(cache, pairs, progress=False)),
                         "before_barrier": at_waits[-1], "estimated": len(estimated)}
        torch.save(out, os.path.join(folder, f"machine{rank}.pth"))
    finally:
        torch_dist.destroy_process_group()


def test_a_node_local_cache_is_estimated_by_each_machines_own_processes(tmp_path):
    """Each machine's processes estimate every photo into its own folder before the barrier,
    instead of a share of it followed, after the wait, by the rest on every rank one by one;
    with one shared folder the job's processes split the photos, as before."""
    if not torch_dist.is_available() or not torch_dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is needed")
    torch.multiprocessing.spawn(_two_machines_worker, args=(str(tmp_path),), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"machine{r}.pth", weights_only=False) for r in range(2)]
    for out in ranks:  # 7 pairs, the last one broken
        assert out["node-local"] == {"failures": ["p6.png"], "before_barrier": 6, "estimated": 6}
    assert [r["shared"]["before_barrier"] for r in ranks] == [3, 3]
    assert [r["shared"]["failures"] for r in ranks] == [["p6.png"], ["p6.png"]]
