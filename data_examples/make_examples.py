"""Generate the tiny example datasets in both layouts, deterministically (fixed seed).

    python data_examples/make_examples.py            # rewrites data_examples/AISegment and
                                                     # data_examples/paixin_comp_mod
    python data_examples/make_examples.py --out DIR --width 800 --height 600

Synthetic "people": a head, neck and shoulders/torso with soft edges and hair strands drawn
at 4x and area-downsampled, so the alpha has fractional, hair-like borders; placed on
textured backgrounds. Not real photos: they make the default settings run out of the box and
exercise every code path, nothing more.

Made here: AISegment layout, 48 photo/matte pairs in 2 groups (JPEG photos, RGBA PNG mattes);
paixin_comp_mod layout, 2 categories x 24 photos (JPEG, one WebP each) with 8-bit masks,
and 16 textured hard backgrounds (``background/``, named so that 2 fall in the val split).
Enough for the default settings to learn mattes that look like people in a few minutes on a
2-core CPU (README, "The main job").
No ``background_easy/``: easy backgrounds are random solid colours, the design's default.
"""
import argparse
import os
import shutil
import sys

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data_loader.splits import in_split  # noqa: E402  (the repository's split rule)

SEED = 20240611
SUPERSAMPLE = 4
SKIN = [(224, 172, 138), (198, 134, 100), (141, 85, 56), (241, 194, 160), (110, 68, 45)]
HAIR = [(30, 22, 18), (70, 45, 30), (120, 80, 45), (200, 170, 110), (90, 90, 95)]


def smooth_noise(rng, h, w, cells, channels=3):
    """Low-frequency noise in [0,1]: a random grid upsampled with cubic interpolation."""
    grid = rng.random((cells, max(2, round(cells * w / h)), channels)).astype(np.float32)
    out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(out.reshape(h, w, channels), 0, 1)


def texture(rng, h, w):
    """A cluttered background: colour noise, stripes, shapes, fine grain. uint8 (h,w,3)."""
    base = rng.integers(40, 220, 3).astype(np.float32)
    img = base + (smooth_noise(rng, h, w, rng.integers(3, 7)) - 0.5) * 160
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 30)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    img += stripes[..., None] * rng.uniform(5, 35)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(6, 16))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.integers(h // 20, h // 4))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + size, y + int(size * rng.uniform(0.3, 2))), colour, -1)
        else:
            cv2.circle(img, (x, y), size // 2, colour, -1)
    img = cv2.GaussianBlur(img, (0, 0), 1.2)
    grain = rng.normal(0, 4, img.shape)
    return np.clip(img + grain, 0, 255).astype(np.uint8)


def _hair_strands(rng, canvas, centre, axes, count, length):
    """Thin curly strands from the upper half of the head outline, drawn on ``canvas``."""
    cx, cy = centre
    for _ in range(count):
        t = rng.uniform(np.pi * 0.95, np.pi * 2.05)  # upper half (image y grows downwards)
        x, y = cx + axes[0] * np.cos(t), cy + axes[1] * np.sin(t)
        direction = t + rng.normal(0, 0.5)
        points = [(x, y)]
        for _ in range(int(rng.integers(4, 10))):
            direction += rng.normal(0, 0.35)
            step = length * rng.uniform(0.1, 0.25)
            x, y = x + step * np.cos(direction), y + step * np.sin(direction)
            points.append((x, y))
        pts = np.round(np.array(points)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [pts], False, int(rng.integers(120, 256)), thickness=int(rng.integers(1, 3)))


def person(rng, h, w):
    """A synthetic person -> (colours uint8 (h,w,3), alpha float32 (h,w) in [0,1])."""
    s = SUPERSAMPLE
    H, W = h * s, w * s
    cx = W / 2 + rng.uniform(-0.12, 0.12) * W
    head_c = (cx, H * rng.uniform(0.3, 0.38))
    head_ax = (W * rng.uniform(0.11, 0.15), H * rng.uniform(0.13, 0.17))
    body, head, hair = (np.zeros((H, W), np.uint8) for _ in range(3))
    cv2.ellipse(body, (int(cx), int(H * rng.uniform(0.88, 0.95))),
                (int(W * rng.uniform(0.3, 0.42)), int(H * rng.uniform(0.28, 0.36))), 0, 0, 360, 255, -1)
    neck_w = head_ax[0] * 0.45
    cv2.rectangle(body, (int(cx - neck_w), int(head_c[1])), (int(cx + neck_w), int(H * 0.7)), 255, -1)
    cv2.ellipse(head, tuple(int(v) for v in head_c), tuple(int(v) for v in head_ax),
                rng.uniform(-8, 8), 0, 360, 255, -1)
    hair_ax = (head_ax[0] * 1.12, head_ax[1] * 1.08)
    cv2.ellipse(hair, (int(head_c[0]), int(head_c[1] - head_ax[1] * 0.08)), tuple(int(v) for v in hair_ax),
                0, 180, 360, 255, -1)
    strands = np.zeros((H, W), np.uint8)
    _hair_strands(rng, strands, head_c, hair_ax, int(rng.integers(120, 220)), head_ax[1] * 0.55)
    solid = cv2.GaussianBlur(np.maximum(np.maximum(body, head), hair), (0, 0), s * 0.6)
    alpha_big = np.maximum(solid, strands).astype(np.float32) / 255.0
    alpha = cv2.resize(alpha_big, (w, h), interpolation=cv2.INTER_AREA)

    def down(mask):
        return cv2.resize(mask.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_AREA)[..., None]

    clothes = np.array(rng.integers(20, 236, 3), np.float32)
    clothes_img = clothes + (smooth_noise(rng, h, w, 4) - 0.5) * 50
    skin = np.array(SKIN[rng.integers(len(SKIN))], np.float32)
    hair_colour = np.array(HAIR[rng.integers(len(HAIR))], np.float32)
    head_w = down(head)
    hair_w = np.clip(down(cv2.dilate(np.maximum(hair, strands), np.ones((2 * s + 1, 2 * s + 1), np.uint8))) * 2, 0, 1)
    colours = clothes_img * (1 - head_w) + skin * head_w
    colours = colours * (1 - hair_w) + hair_colour * hair_w
    return np.clip(colours, 0, 255).astype(np.uint8), np.clip(alpha, 0, 1)


def photo_of(rng, h, w):
    """A person on a textured background -> (photo uint8 (h,w,3), alpha float32 (h,w),
    the person's colours uint8 (h,w,3))."""
    fg, alpha = person(rng, h, w)
    bg = texture(rng, h, w)
    a = alpha[..., None]
    photo = a * fg.astype(np.float32) + (1 - a) * bg.astype(np.float32)
    return np.clip(photo + 0.5, 0, 255).astype(np.uint8), alpha, fg


def _alpha8(alpha):
    return np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)


def write_aisegment(out, rng, count, h, w, quality=80):
    """``out/clip_img/<group>/clip_<n>/<id>.jpg`` + ``out/matting/<group>/matting_<n>/<id>.png``
    (RGBA: the person's colours, 4-bit, where alpha > 0; alpha in the 4th channel)."""
    for i in range(count):
        group, clip = ("1803151818", "00000000") if i < count // 2 else ("1803201916", "00000001")
        stem = f"{group}-{i:08d}"
        photo, alpha, fg = photo_of(rng, h, w)
        photo_dir = os.path.join(out, "clip_img", group, f"clip_{clip}")
        matte_dir = os.path.join(out, "matting", group, f"matting_{clip}")
        os.makedirs(photo_dir, exist_ok=True)
        os.makedirs(matte_dir, exist_ok=True)
        Image.fromarray(photo).save(os.path.join(photo_dir, stem + ".jpg"), quality=quality)
        a8 = _alpha8(alpha)
        rgba = np.dstack([(fg & 0xF0) * (a8[..., None] > 0), a8])  # 4-bit colours: small files
        Image.fromarray(rgba, "RGBA").save(os.path.join(matte_dir, stem + ".png"), optimize=True)


def write_paixin(out, rng, per_category, backgrounds, h, w, quality=80):
    """``out/<category>/raw_image/*.jpg`` + ``mask_image/*.png`` and ``out/background/*.jpg``."""
    for category in ("portrait", "half_body"):
        for i in range(per_category):
            photo, alpha, _ = photo_of(rng, h, w)
            raw_dir = os.path.join(out, category, "raw_image")
            mask_dir = os.path.join(out, category, "mask_image")
            os.makedirs(raw_dir, exist_ok=True)
            os.makedirs(mask_dir, exist_ok=True)
            stem = f"{category}_{i:03d}"
            if i == 0:  # one WebP photo per category: any common image type is accepted
                Image.fromarray(photo).save(os.path.join(raw_dir, stem + ".webp"), quality=80)
            else:
                Image.fromarray(photo).save(os.path.join(raw_dir, stem + ".jpg"), quality=quality)
            Image.fromarray(_alpha8(alpha), "L").save(os.path.join(mask_dir, stem + ".png"), optimize=True)
    bg_dir = os.path.join(out, "background")
    os.makedirs(bg_dir, exist_ok=True)
    for name in _background_names(backgrounds):
        Image.fromarray(texture(rng, w, h)).save(os.path.join(bg_dir, name), quality=quality)


def _background_names(count, val_count=2):
    """``bg_<i>.jpg`` names picked so that ``val_count`` of them fall in the val split."""
    names = (f"bg_{i:03d}.jpg" for i in range(1000))
    val, train = [], []
    for name in names:
        (val if in_split(f"background/{name}", "val") else train).append(name)
        if len(val) >= val_count and len(train) >= count - val_count:
            break
    return sorted(val[:val_count] + train[:count - val_count])


def make_all(out, width=300, height=400, photos=48, per_category=24, backgrounds=16, seed=SEED):
    """(Re)write ``out/AISegment`` and ``out/paixin_comp_mod``; photos are width x height."""
    rng = np.random.default_rng(seed)
    for name in ("AISegment", "paixin_comp_mod"):
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    write_aisegment(os.path.join(out, "AISegment"), rng, photos, height, width)
    write_paixin(os.path.join(out, "paixin_comp_mod"), rng, per_category, backgrounds, height, width)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=here, help="folder to write AISegment/ and paixin_comp_mod/ into")
    parser.add_argument("--width", type=int, default=300)
    parser.add_argument("--height", type=int, default=400)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    make_all(args.out, args.width, args.height, seed=args.seed)
    total = sum(os.path.getsize(os.path.join(d, f)) for name in ("AISegment", "paixin_comp_mod")
                for d, _, files in os.walk(os.path.join(args.out, name)) for f in files)
    print(f"wrote {args.out}/AISegment and {args.out}/paixin_comp_mod ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
