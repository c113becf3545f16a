"""The e2h ratio follows ds.set_epoch inside DataLoader workers, persistent or not, and on resume."""
import pytest
import torch
from torch.utils.data import DataLoader

from data_loader import E2HSchedule, ForegroundDataset


def make_dataset(root):
    return ForegroundDataset(root, "train", schedule=E2HSchedule("step", update_ratio_epoch=10),
                             image_size=32, crop_size=24, cache_dir=root + "_cache", progress=False)


@pytest.mark.parametrize("persistent", [True, False])
def test_ratio_per_sample_follows_the_epoch_in_workers(make_paixin, persistent):
    ds = make_dataset(make_paixin())
    loader = DataLoader(ds, batch_size=3, num_workers=2, persistent_workers=persistent)
    for epoch in (0, 10, 20):
        ds.set_epoch(epoch)
        batches = list(loader)
        ratios = torch.cat([b["ratio"] for b in batches])
        assert ratios.shape == (len(ds),)
        assert torch.allclose(ratios, torch.full_like(ratios, epoch / 100))
        # the very same samples as drawn in this process at that epoch
        images = torch.cat([b["image"] for b in batches])
        assert all(torch.equal(images[i], ds[i]["image"]) for i in (0, len(ds) - 1))


def test_ratio_after_resume(make_paixin):
    ds = make_dataset(make_paixin())
    ds.set_epoch(20)  # a resumed run starts at epoch 20
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    ratios = torch.cat([b["ratio"] for b in loader])
    assert torch.allclose(ratios, torch.full_like(ratios, 0.2))


def test_ratio_with_spawned_persistent_workers(make_paixin):
    """macOS and Windows start workers with spawn: the shared epoch travels by handle."""
    ds = make_dataset(make_paixin(per_category=2, val=1))
    loader = DataLoader(ds, batch_size=2, num_workers=1, persistent_workers=True, multiprocessing_context="spawn")
    for epoch in (0, 30):
        ds.set_epoch(epoch)
        ratios = torch.cat([b["ratio"] for b in loader])
        assert torch.allclose(ratios, torch.full_like(ratios, epoch / 100))
