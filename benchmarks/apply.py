"""Benchmark apply.py against the original U-2-Net test script and rembg, whole process, in one run.

    python benchmarks/apply.py                      # 19 synthetic 1080x1440 JPEGs, random U2NET
    python benchmarks/apply.py --input DIR --repeats 3 --configs fp32,bf16 --batch-sizes 1,4
    python benchmarks/apply.py --model best.pth --count 6 --repeats 1 --threads 2   # trained weights
    python benchmarks/apply.py --device cuda --configs fp32,fp16,bf16 --batch-sizes 1,8  # a GPU
    python benchmarks/apply.py --configs int8 --no-rembg                 # + the int8 .onnx (export.py)
    python benchmarks/apply.py --configs int8 --ort-study --count 6      # onnxruntime settings, one by one

``--device cuda`` runs apply.py and the original script (which moves its network and inputs
to the GPU when there is one, as ``u2net_test.py`` does) on the GPU; bf16 only where the GPU
has it natively (compute capability 8.0+); the ONNX model with onnxruntime-gpu only.

Besides the PyTorch path, the weights are exported once (export.py, not timed) and run by
``apply.py --model x.onnx`` (onnxruntime, no torch imported) and, when rembg is installed, by
rembg itself (``u2net_custom``, only the mask, as ``rembg p -m u2net_custom -om``), on the same
photos. The alphas are compared: ONNX against PyTorch, and rembg against our ONNX alpha (rembg
min-max normalises the network's output and resizes it with LANCZOS; ours is the output
itself, resized bilinear; rembg always runs at 320). Use trained weights (``--model``) for a
meaningful rembg difference: random weights give a nearly flat output, which min-max
normalisation stretches to 0..255; ``--hand-set`` uses U2NETP weights set by hand whose alpha is
a soft threshold of brightness, full range and soft-edged, to compare the pipelines.

Each configuration runs as its own child process (``python apply.py ...``, or this file with
``--run-original``), ``--repeats`` times, interleaved; the table gives medians of the wall
time, images/s and its ratio to the original's, the CPU seconds (user + system, the child and
its workers; less sensitive than wall time to other programs on a shared machine) and peak
memory: the command's own peak RSS (from ``wait4`` in a small launcher process, free to
measure; read directly, a child's ``ru_maxrss`` would carry this process's peak: ``LAUNCHER``;
the launcher adds its start, 10-30 ms, to every configuration's wall time). ``--tree-pss S``
adds the peak proportional set size of the whole process tree (DataLoader workers and the
launcher included), sampled every S seconds; reading it costs ~40 ms of kernel time per
sample on a 1 GB process and slows the measured program (by ~20 % at 0.1 s), so it is off by
default. bf16 alphas are compared with the fp32 ones (mean absolute difference, in 1/255 units).

The original (xuebinqin/U-2-Net ``u2net_test.py``), restated faithfully in ``run_original``:
``SalObjDataset`` + ``RescaleT(320)`` (skimage ``transform.resize`` to 320x320, float64) +
``ToTensorLab(flag=0)`` (/max, ImageNet mean/std in float64) through a ``DataLoader`` (batch 1,
one worker); the literal original network (``tests/reference_u2net.py``); no ``no_grad`` (the
original wraps inputs in ``Variable``, a no-op, so autograd records the forward); ``normPRED``
min-max; the prediction resized back with PIL bilinear after re-reading the photo with skimage,
saved as an RGB PNG. The benchmark runs without downloads, so both use the same random-init
U2NET weights, saved to a temporary file.
"""
import argparse
import atexit
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- the original test script
def run_original(input_dir, model_path, output_dir, size=320, device="cpu"):
    """``u2net_test.py`` of the original repository, with its data pipeline, for one folder;
    ``device`` cuda: network and inputs on the GPU (the original's ``net.cuda()``)."""
    import torch
    from skimage import io, transform
    from torch.utils.data import DataLoader, Dataset
    from PIL import Image
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from reference_u2net import U2NET

    class SalObjDataset(Dataset):
        def __init__(self, img_name_list):
            self.image_name_list = img_name_list

        def __len__(self):
            return len(self.image_name_list)

        def __getitem__(self, idx):
            image = io.imread(self.image_name_list[idx])
            label = np.zeros(image.shape)[:, :, 0]  # no labels at test time, as the original
            image = image[:, :, :3] if image.ndim == 3 else np.stack([image] * 3, axis=2)
            # RescaleT(320)
            img = transform.resize(image, (size, size), mode="constant")
            lbl = transform.resize(label[:, :, None], (size, size), mode="constant", order=0, preserve_range=True)
            # ToTensorLab(flag=0)
            tmp = np.zeros((img.shape[0], img.shape[1], 3))
            img = img / np.max(img)
            tmp[:, :, 0] = (img[:, :, 0] - 0.485) / 0.229
            tmp[:, :, 1] = (img[:, :, 1] - 0.456) / 0.224
            tmp[:, :, 2] = (img[:, :, 2] - 0.406) / 0.225
            return {"imidx": torch.from_numpy(np.array([idx])), "image": torch.from_numpy(tmp.transpose((2, 0, 1))),
                    "label": torch.from_numpy(lbl.transpose((2, 0, 1)))}

    def norm_pred(d):
        ma, mi = torch.max(d), torch.min(d)
        return (d - mi) / (ma - mi)

    def save_output(image_name, pred, d_dir):
        predict_np = pred.squeeze().cpu().data.numpy()
        im = Image.fromarray(predict_np * 255).convert("RGB")
        image = io.imread(image_name)
        imo = im.resize((image.shape[1], image.shape[0]), resample=Image.BILINEAR)
        stem = os.path.splitext(os.path.basename(image_name))[0]
        imo.save(os.path.join(d_dir, stem + ".png"))

    os.makedirs(output_dir, exist_ok=True)
    img_name_list = sorted(glob.glob(os.path.join(input_dir, "*")))
    loader = DataLoader(SalObjDataset(img_name_list), batch_size=1, shuffle=False, num_workers=1)
    net = U2NET(3, 1)
    net.load_state_dict(torch.load(model_path, map_location="cpu"))
    cuda = device.startswith("cuda")
    if cuda:
        net.cuda(device)
    net.eval()
    for i_test, data_test in enumerate(loader):
        inputs_test = data_test["image"].type(torch.FloatTensor)  # Variable(...) is a no-op today
        if cuda:
            inputs_test = inputs_test.cuda(device)
        d1, d2, d3, d4, d5, d6, d7 = net(inputs_test)
        pred = norm_pred(d1[:, 0, :, :])
        save_output(img_name_list[i_test], pred, output_dir)
        del d1, d2, d3, d4, d5, d6, d7


def run_rembg(input_dir, model_path, output_dir, threads=None):
    """What ``rembg p -m u2net_custom -x '{"model_path": MODEL}' -om INPUT OUTPUT`` does, through
    rembg's own API (its command line needs rembg[cli]'s extra packages): one mask per photo.
    rembg 2.0.86 takes custom models only from inside its home folder: REMBG_HOME is set to
    the model's."""
    os.environ["REMBG_HOME"] = os.path.dirname(os.path.abspath(model_path))
    import onnxruntime as ort
    from PIL import Image
    from rembg import new_session, remove
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = options.inter_op_num_threads = threads  # as rembg does for OMP_NUM_THREADS
    session = new_session("u2net_custom", model_path=model_path, sess_opts=options, providers=["CPUExecutionProvider"])
    os.makedirs(output_dir, exist_ok=True)
    for path in sorted(glob.glob(os.path.join(input_dir, "*"))):
        mask = remove(Image.open(path), session=session, only_mask=True)
        mask.save(os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png"))


def rembg_installed():
    import importlib.util
    return importlib.util.find_spec("rembg") is not None


# ---------------------------------------------------------------- inputs
def make_photos(folder, count=19, seed=0):
    """``count`` synthetic photo-like JPEGs (textured background, a lit figure, sensor noise):
    mostly 1080x1440 portraits, some 1440x1080 landscapes, quality 92 (~0.4 MB each)."""
    import cv2
    from PIL import Image
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        w, h = (1440, 1080) if i % 5 == 4 else (1080, 1440)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(40, 220, size=3).astype(np.float32)
        img = base + 40 * np.sin(xx[..., None] / rng.uniform(60, 200) + rng.uniform(0, 6, 3))
        img += 30 * np.cos(yy[..., None] / rng.uniform(80, 300))
        blobs = cv2.GaussianBlur(rng.normal(0, 60, (h // 8, w // 8, 3)).astype(np.float32), (0, 0), 3)
        img += cv2.resize(blobs, (w, h), interpolation=cv2.INTER_CUBIC)
        cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.35, 0.45)
        person = (((xx - cx) / (0.18 * w)) ** 2 + ((yy - cy) / (0.12 * h)) ** 2 < 1) | (
            (np.abs(xx - cx) < 0.3 * w) & (yy > cy + 0.1 * h))
        img[person] = rng.uniform(60, 200, size=3) + 0.3 * img[person]
        img += rng.normal(0, 6, img.shape)
        path = os.path.join(folder, f"photo_{i:02d}.jpg")
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=92)


def save_hand_set_weights(path, threshold=0.5, gain=20.0):
    """U2NETP weights set by hand, all zero but a path that makes the fused alpha
    ``sigmoid(gain * (box3x3(luma) - threshold))``: a full-range, soft-edged output, so that
    pipelines can be compared (rembg's min-max and LANCZOS against ours) without trained weights.
    stage1's input conv gives ReLU(luma - t) and ReLU(t - luma) (the zero U-block adds nothing),
    stage1d's input conv passes them on, side1 takes their 3x3 mean difference, outconv keeps it."""
    import torch
    sys.path.insert(0, REPO)
    from model import build_model
    from utils.constants import IMAGENET_MEAN, IMAGENET_STD
    net = build_model("u2netp")
    state = {k: torch.zeros_like(v) if k.endswith(("weight", "bias", "running_mean")) and "bn_s1" not in k
             else v for k, v in net.state_dict().items()}
    state.update({k: torch.ones_like(v) for k, v in state.items() if k.endswith("bn_s1.weight")})
    state.update({k: torch.zeros_like(v) for k, v in state.items() if k.endswith("bn_s1.bias")})
    luma = torch.tensor([0.299, 0.587, 0.114])
    weight, bias = luma * torch.from_numpy(IMAGENET_STD), float((luma * torch.from_numpy(IMAGENET_MEAN)).sum())
    conv = state["stage1.rebnconvin.conv_s1.weight"]
    conv[0, :, 1, 1], conv[1, :, 1, 1] = weight, -weight
    state["stage1.rebnconvin.conv_s1.bias"][:2] = torch.tensor([bias - threshold, threshold - bias])
    passing = state["stage1d.rebnconvin.conv_s1.weight"]  # input channels 64.. are stage1's
    passing[0, 64, 1, 1] = passing[1, 65, 1, 1] = 1.0
    state["side1.weight"][0, 0], state["side1.weight"][0, 1] = gain / 9, -gain / 9
    state["outconv.weight"][0, 0] = 1.0
    net.load_state_dict(state)
    torch.save(net.state_dict(), path)


def save_random_weights(path, arch="u2net", seed=0):
    import torch
    sys.path.insert(0, REPO)
    from model import build_model
    torch.manual_seed(seed)
    torch.save(build_model(arch).state_dict(), path)


# ---------------------------------------------------------------- measuring a child process
def _tree_pss_kb(pid):
    """Proportional set size (kB) of ``pid`` and all its descendants, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


# The launcher between this process and the measured command: ``ru_maxrss`` of a child this
# (large) process starts directly is at least this process's own peak (Linux carries the
# pre-exec address space's peak across exec, and subprocess starts children with vfork, whose
# pre-exec address space is ours), so a small Python process starts the command and reports its
# peak, CPU and exit status from its own wait4.
LAUNCHER = """import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"status": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss,
               "cpu_s": usage.ru_utime + usage.ru_stime}, f)
"""


def measure_process(cmd, env=None, pss_interval=0.0, outputs=None):
    """Run ``cmd`` (through ``LAUNCHER``); return (wall s, peak RSS of the command MB, peak tree
    PSS MB sampled every ``pss_interval`` s (0: not sampled, NaN), CPU s of the command and its
    reaped descendants); its stdout and stderr are appended to ``outputs`` when given."""
    import json
    with tempfile.TemporaryDirectory() as scratch:
        report = os.path.join(scratch, "usage.json")
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, report] + list(cmd), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peak = [0]
        done = threading.Event()

        def sample():
            while not done.wait(pss_interval):
                peak[0] = max(peak[0], _tree_pss_kb(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        if pss_interval > 0:
            sampler.start()
        output = proc.stdout.read()
        if outputs is not None:
            outputs.append(output)
        proc.wait()
        wall = time.perf_counter() - start
        done.set()
        if pss_interval > 0:
            sampler.join()
        try:
            with open(report) as f:
                usage = json.load(f)
        except (OSError, ValueError):
            usage = {"status": proc.returncode or 1}
    if usage["status"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({usage['status']}):\n{output}")
    pss = peak[0] / 1024 if pss_interval > 0 else float("nan")
    return wall, usage["maxrss_kb"] / 1024, pss, usage["cpu_s"]


def has_native_bf16(device):
    """Whether ``device`` ("cpu", "cuda:N") computes bf16 natively (utils.device's rule)."""
    import torch
    sys.path.insert(0, REPO)
    from utils.device import cpu_bf16_native, cuda_bf16_native
    device = torch.device(device)
    return cuda_bf16_native(device) if device.type == "cuda" else cpu_bf16_native()


def onnxruntime_has_cuda():
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def alpha_diff(dir_a, dir_b):
    """(mean |a - b|, largest |a - b|) over all PNGs of the same name, in 1/255 units."""
    import cv2
    means, peak = [], 0.0
    for path in sorted(glob.glob(os.path.join(dir_a, "*.png"))):
        a = cv2.imread(path, cv2.IMREAD_GRAYSCALE).astype(np.float32)
        b = cv2.imread(os.path.join(dir_b, os.path.basename(path)), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        means.append(np.abs(a - b).mean())
        peak = max(peak, float(np.abs(a - b).max()))
    if not means:
        raise RuntimeError(f"no alpha PNGs in {dir_a}")
    return float(np.mean(means)), peak


def rembg_steps(input_dir, onnx_path, rembg_dir, count=6):
    """Where rembg's alpha departs from ours, one step of its pipeline at a time, in process, on
    the first ``count`` photos: mean |x - ours| (1/255) after taking rembg's input (LANCZOS to
    320, divided by the photo's maximum instead of 255), then its min-max normalisation, then its
    uint8 truncation and LANCZOS enlarging (= rembg); and the largest |rembg - that emulation|."""
    from PIL import Image
    sys.path.insert(0, REPO)
    from utils.constants import IMAGENET_MEAN, IMAGENET_STD
    from utils.inference.onnx_model import OnnxModel
    from utils.inference.preprocess import alpha_to_size, preprocess
    net, rows = OnnxModel(onnx_path), []
    for path in sorted(glob.glob(os.path.join(input_dir, "*")))[:count]:
        image = Image.open(path).convert("RGB")
        photo = np.asarray(image)
        height, width = photo.shape[:2]
        ours = np.round(alpha_to_size(net(preprocess(photo)[None])[0], height, width) * 255)
        small = np.asarray(image.resize((320, 320), Image.Resampling.LANCZOS), np.float64)
        small = (small / max(small.max(), 1e-6) - IMAGENET_MEAN) / IMAGENET_STD
        out = net(small.transpose(2, 0, 1)[None].astype(np.float32))[0]
        stretched = (out - out.min()) / (out.max() - out.min())
        mask = Image.fromarray((stretched * 255).astype(np.uint8), mode="L")
        emulated = np.asarray(mask.resize((width, height), Image.Resampling.LANCZOS), np.float64)
        rembg = np.asarray(Image.open(os.path.join(rembg_dir, os.path.splitext(os.path.basename(path))[0] + ".png")))
        steps = [np.round(alpha_to_size(out, height, width) * 255), np.round(alpha_to_size(stretched, height, width) * 255),
                 emulated]
        rows.append((os.path.basename(path), int(photo.max()), float(out.min()), float(out.max()),
                     *[float(np.abs(x - ours).mean()) for x in steps], float(np.abs(rembg - emulated).max())))
    return rows


def export_onnx(model_path, output, size):
    """export.py in a child process (not timed); returns its parity line."""
    done = subprocess.run([sys.executable, os.path.join(REPO, "export.py"), "--model", model_path, "--output", output,
                           "--size", str(size)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"export.py failed:\n{done.stdout}{done.stderr}")
    return [line for line in done.stdout.splitlines() if line.startswith("wrote")][0]


def export_int8(model_path, output, size, calibrate=None):
    """export.py --precision int8 in a child process (not timed); returns its parity lines."""
    cmd = [sys.executable, os.path.join(REPO, "export.py"), "--model", model_path, "--output", output,
           "--size", str(size), "--precision", "int8"] + (["--calibrate", calibrate] if calibrate else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"export.py --precision int8 failed:\n{done.stdout}{done.stderr}")
    return "\n".join(line for line in done.stdout.splitlines() if line.startswith(("wrote", "parity int8")))


# onnxruntime settings, one change at a time from OnnxModel's defaults (SESSION_DEFAULTS).
ORT_VARIANTS = {
    "defaults (level all, no mem pattern, arena)": {},
    "graph level extended": {"session": {"graph_optimization_level": "extended"}},
    "graph level disable": {"session": {"graph_optimization_level": "disable"}},
    "graph level basic": {"session": {"graph_optimization_level": "basic"}},
    "graph level layout": {"session": {"graph_optimization_level": "layout"}},
    "mem pattern on": {"session": {"enable_mem_pattern": True}},
    "cpu mem arena off": {"session": {"enable_cpu_mem_arena": False}},
    "parallel, 2 inter-op": {"session": {"execution_mode": "parallel", "inter_op_threads": 2}},
    "intra-op threads 1": {"threads": 1},
    "intra-op threads 2": {"threads": 2},
    "I/O binding": {"io_binding": True},
}


def run_ort(onnx_path, input_dir, variant, size, count):
    """Child of ``ort_study``: ``count`` photos through ``OnnxModel`` with the ``variant``'s
    settings (after one untimed call); prints the median seconds a photo and the CPU seconds."""
    import json

    from data_loader.image_io import read_rgb
    from utils.inference.onnx_model import OnnxModel
    from utils.inference.preprocess import preprocess
    settings = ORT_VARIANTS[variant]
    net = OnnxModel(onnx_path, threads=settings.get("threads"), session=settings.get("session"),
                    io_binding=settings.get("io_binding", False))
    inputs = [preprocess(read_rgb(p), size)[None] for p in sorted(glob.glob(os.path.join(input_dir, "*")))[:count]]
    net(inputs[0])
    times, cpu = [], time.process_time()
    for x in inputs:
        start = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - start)
    with open("/proc/self/status") as status:  # this process's own peak, whatever its parent held
        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    print(json.dumps({"median_s": statistics.median(times), "cpu_s": (time.process_time() - cpu) / len(inputs),
                      "peak_mb": hwm}))


def ort_study(onnx_path, input_dir, size, count, repeats):
    """Each ORT_VARIANTS entry in its own process, ``repeats`` times interleaved: median s a
    photo, CPU s a photo, peak RSS MB (medians over the repeats)."""
    import json
    rows = {name: [] for name in ORT_VARIANTS}
    env = dict(os.environ, PYTHONPATH=REPO)
    for _ in range(repeats):
        for name in ORT_VARIANTS:
            cmd = [sys.executable, os.path.abspath(__file__), "--size", str(size), "--count", str(count),
                   "--run-ort", onnx_path, input_dir, name]
            outputs = []
            measure_process(cmd, env, outputs=outputs)
            result = json.loads(outputs[0].strip().splitlines()[-1])
            rss = result["peak_mb"]
            rows[name].append((result["median_s"], result["cpu_s"], rss))
            print(f"  {name}: {result['median_s']:.3f} s/photo, CPU {result['cpu_s']:.3f} s, peak RSS {rss:.0f} MB, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"\nonnxruntime settings, {os.path.basename(onnx_path)}, {count} photos at {size}, medians of {repeats}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'setting':<44}{'s/photo':>9}{'x default':>11}{'CPU s':>8}{'peak RSS MB':>13}")
    base = statistics.median(r[0] for r in rows[next(iter(ORT_VARIANTS))])
    for name, runs in rows.items():
        wall, cpu, rss = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"{name:<44}{wall:>9.3f}{base / wall:>11.2f}{cpu:>8.3f}{rss:>13.0f}")


def bf16_accuracy(input_dir, model_path, size, count):
    """Mean |alpha_bf16 - alpha_fp32| (1/255 units, 8-bit alphas) on ``count`` photos, in
    process; where bf16 is not native it is emulated (slow), but the numbers are the same."""
    sys.path.insert(0, REPO)
    from data_loader.image_io import read_rgb
    from model import load_model
    from utils.inference.cutout import alpha_to_uint8
    from utils.inference.core import predict_alphas
    images = [read_rgb(p) for p in sorted(glob.glob(os.path.join(input_dir, "*")))[:count]]
    model = load_model(model_path)
    fp32 = predict_alphas(model, images, size=size, batch_size=1)
    bf16 = predict_alphas(model, images, size=size, precision="bf16", batch_size=1)
    del model
    return float(np.mean([np.abs(alpha_to_uint8(a).astype(np.float32) - alpha_to_uint8(b)).mean()
                          for a, b in zip(fp32, bf16)]))


def stage_times(input_dir, model_path, size, count=4):
    """Where the time of one photo goes (seconds, medians), in process, one thing at a time."""
    import torch
    sys.path.insert(0, REPO)
    from data_loader.image_io import read_rgb
    from model import load_model
    from utils.inference.cutout import alpha_to_uint8
    from utils.inference.files import write_png
    from utils.inference.predict import alpha_to_size, prepare_model, preprocess, run_network
    t0 = time.perf_counter()
    model = prepare_model(load_model(model_path))
    times = {"load + prepare model": [time.perf_counter() - t0]}
    out = tempfile.mkdtemp(prefix="bench_stage_")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    for i, path in enumerate(sorted(glob.glob(os.path.join(input_dir, "*")))[:count]):
        marks = [time.perf_counter()]
        image = read_rgb(path)
        marks.append(time.perf_counter())
        x = torch.from_numpy(preprocess(image, size))[None]
        marks.append(time.perf_counter())
        small = run_network(model, x)[0].numpy()
        marks.append(time.perf_counter())
        alpha = alpha_to_uint8(alpha_to_size(small, *image.shape[:2]))
        marks.append(time.perf_counter())
        write_png(os.path.join(out, f"{i}.png"), alpha)
        marks.append(time.perf_counter())
        for name, a, b in zip(("decode", "resize + normalise", "network", "alpha to full size", "write PNG"),
                              marks, marks[1:]):
            times.setdefault(name, []).append(b - a)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", help="folder of photos (default: --count synthetic 1080x1440 JPEGs)")
    parser.add_argument("--count", type=int, default=19, help="synthetic photos to make (default: 19)")
    parser.add_argument("--model", help="weights (default: random-init U2NET saved to a temp file)")
    parser.add_argument("--hand-set", action="store_true",
                        help="U2NETP weights set by hand (alpha = a soft threshold of brightness) instead of random")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--device", default="cpu", help="cpu (default) | cuda | cuda:N: where apply.py and the "
                                                          "original run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default="fp32,bf16", help="precisions to run apply.py with")
    parser.add_argument("--batch-sizes", default="1", help="comma-separated, e.g. 1,4")
    parser.add_argument("--workers", type=int, default=None, help="apply.py --workers")
    parser.add_argument("--no-original", action="store_true", help="skip the original script")
    parser.add_argument("--no-onnx", action="store_true", help="skip the exported model (apply.py .onnx, rembg)")
    parser.add_argument("--no-rembg", action="store_true", help="skip rembg even when it is installed")
    parser.add_argument("--threads", type=int, default=None, help="apply.py --threads")
    parser.add_argument("--refine", default="none",
                        help="apply.py --refine (default: none, the same work as the original script and rembg)")
    parser.add_argument("--tree-pss", type=float, default=0.0, metavar="S",
                        help="also sample the process tree's PSS every S seconds (slows the runs; default off)")
    parser.add_argument("--stages", action="store_true", help="also time each step of one photo, in process")
    parser.add_argument("--bf16-check", type=int, default=2, metavar="N",
                        help="where bf16 is not native, compare bf16 with fp32 alphas on N photos in process")
    parser.add_argument("--ort-study", action="store_true",
                        help="only the onnxruntime settings table (ORT_VARIANTS) on the exported .onnx (and int8)")
    parser.add_argument("--calibrate", metavar="DIR", help="int8 configs: export.py --calibrate (default: its own)")
    parser.add_argument("--keep", action="store_true", help="keep the photos, weights and outputs (default: removed)")
    parser.add_argument("--save-weights", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--run-ort", nargs=3, metavar=("ONNX", "INPUT", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--run-original", nargs=3, metavar=("INPUT", "MODEL", "OUTPUT"), help=argparse.SUPPRESS)
    parser.add_argument("--run-rembg", nargs=3, metavar=("INPUT", "MODEL", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_original:
        return run_original(*args.run_original, size=args.size, device=args.device)
    if args.run_rembg:
        return run_rembg(*args.run_rembg, threads=args.threads)
    if args.run_ort:
        return run_ort(*args.run_ort, size=args.size, count=args.count)
    if args.save_weights:
        kind, path = args.save_weights
        return (save_hand_set_weights if kind == "hand_set" else save_random_weights)(path)

    tmp = tempfile.mkdtemp(prefix="bench_apply_")
    if not args.keep:
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # photos, weights, outputs: ~400 MB a run
    input_dir = args.input or os.path.join(tmp, "photos")
    if not args.input:
        make_photos(input_dir, args.count)
    model_path = args.model or os.path.join(tmp, "u2netp_hand_set.pth" if args.hand_set else "u2net_random.pth")
    if not args.model:
        # In a child: a child's peak RSS (wait4) starts from its parent's at the fork, so the
        # parent must not hold torch and U2NET (that put ~950 MB under every row).
        subprocess.run([sys.executable, os.path.abspath(__file__), "--save-weights",
                        "hand_set" if args.hand_set else "random", model_path], check=True)
    n_images = len([p for p in os.listdir(input_dir) if not p.startswith(".")])

    precisions = [p for p in args.configs.split(",") if p]
    cuda = args.device.startswith("cuda")
    emulated_bf16 = "bf16" in precisions and not has_native_bf16(args.device)
    if emulated_bf16:
        precisions.remove("bf16")
        why = "compute capability < 8.0" if cuda else "avx512_bf16 / amx"
        print(f"note: this {'GPU' if cuda else 'CPU'} has no native bf16 ({why}): apply.py refuses bf16 here, "
              "so bf16 is timed only where native; its accuracy is checked in process")
    if "fp16" in precisions and not cuda:
        precisions.remove("fp16")
        print("note: fp16 is for CUDA devices (--device cuda); skipped")
    if cuda and not args.no_onnx and not onnxruntime_has_cuda():
        args.no_onnx = True
        print("note: onnxruntime has no CUDA provider (onnxruntime-gpu): the ONNX model and rembg are skipped")
    runs = []  # (label, command, folder of its alpha PNGs)
    if not args.no_original:
        out = os.path.join(tmp, "out_original")
        runs.append(("original u2net_test.py", [sys.executable, os.path.abspath(__file__), "--size", str(args.size),
                                                 "--device", args.device, "--run-original", input_dir, model_path, out],
                     out))
    onnx_path = None if args.no_onnx else os.path.join(tmp, "model.onnx")
    if onnx_path:
        print(export_onnx(model_path, onnx_path, args.size))
    int8_path = None
    if "int8" in precisions:
        precisions.remove("int8")
        int8_path = os.path.join(tmp, "model_int8.onnx")
        print(export_int8(model_path, int8_path, args.size, args.calibrate))
    if args.ort_study:
        for path in (onnx_path, int8_path):
            if path:
                ort_study(path, input_dir, args.size, min(args.count, n_images), args.repeats)
        return 0
    for precision in precisions + (["onnx"] if onnx_path else []) + (["int8"] if int8_path else []):
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            out = os.path.join(tmp, f"out_{precision}_bs{bs}")
            model = {"onnx": onnx_path, "int8": int8_path}.get(precision, model_path)
            cmd = [sys.executable, os.path.join(REPO, "apply.py"), "--input", input_dir, "--output", out,
                   "--model", model, "--outputs", "alpha", "--size", str(args.size), "--device", args.device,
                   "--precision", "fp32" if precision in ("onnx", "int8") else precision, "--batch-size", str(bs),
                   "--overwrite", "--quiet", "--refine", args.refine]
            if args.workers is not None:
                cmd += ["--workers", str(args.workers)]
            if args.threads is not None:
                cmd += ["--threads", str(args.threads)]
            runs.append((f"apply.py {precision} batch {bs}", cmd, os.path.join(out, "alpha")))
    if onnx_path and not args.no_rembg and rembg_installed():
        out = os.path.join(tmp, "out_rembg")
        cmd = [sys.executable, os.path.abspath(__file__), "--run-rembg", input_dir, onnx_path, out]
        runs.append(("rembg u2net_custom", cmd + (["--threads", str(args.threads)] if args.threads else []), out))

    results = {label: [] for label, _, _ in runs}
    env = dict(os.environ, PYTHONPATH=REPO)
    for repeat in range(args.repeats):
        for label, cmd, _ in runs:
            wall, rss, pss, cpu = measure_process(cmd, env, args.tree_pss)
            results[label].append((wall, rss, pss, cpu))
            print(f"  run {repeat + 1}/{args.repeats} {label}: {wall:.2f} s, CPU {cpu:.1f} s, peak RSS {rss:.0f} MB, "
                  + (f"tree PSS {pss:.0f} MB, " if args.tree_pss else "") + f"load {os.getloadavg()[0]:.2f}", flush=True)

    print(f"\n{n_images} images, {args.size}x{args.size}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
          f"medians of {args.repeats} runs")
    print(f"{'configuration':<26}{'wall s':>8}{'images/s':>10}{'x orig':>8}{'CPU s':>8}{'x orig':>8}"
          f"{'peak RSS MB':>13}{'tree PSS MB':>13}")
    base = None
    for label, _, _ in runs:
        wall, rss, pss, cpu = (statistics.median(r[i] for r in results[label]) for i in range(4))
        ips = n_images / wall
        base = base or ((ips, cpu) if label.startswith("original") else None)
        ratio = f"{ips / base[0]:.2f}" if base else "-"
        cpu_ratio = f"{base[1] / cpu:.2f}" if base else "-"
        print(f"{label:<26}{wall:>8.2f}{ips:>10.3f}{ratio:>8}{cpu:>8.1f}{cpu_ratio:>8}{rss:>13.0f}{pss:>13.0f}")
    fp32 = [out for label, _, out in runs if "fp32" in label]
    onnx = [out for label, _, out in runs if "apply.py onnx" in label]
    for label, _, out in runs:
        if "int8" in label and onnx:
            mean, peak = alpha_diff(out, onnx[0])
            print(f"|alpha({label}) - alpha(apply.py onnx fp32)|: mean {mean:.3f} / 255, largest {peak:.0f} / 255")
        elif label.startswith("rembg") and onnx:
            mean, peak = alpha_diff(out, onnx[0])
            print(f"|alpha(rembg) - alpha(apply.py onnx)|: mean {mean:.2f} / 255, largest {peak:.0f} / 255 "
                  "(rembg min-max normalises and resizes with LANCZOS)")
        elif fp32 and "fp32" not in label and not label.startswith(("original", "rembg")):
            mean, peak = alpha_diff(out, fp32[0])
            print(f"|alpha({label}) - alpha(fp32)|: mean {mean:.3f} / 255, largest {peak:.0f} / 255")
    rembg_runs = [out for label, _, out in runs if label.startswith("rembg")]
    if rembg_runs:
        print("rembg against ours, step by step (mean |x - ours| / 255): photo max, network output range, "
              "rembg's input, + min-max, + uint8 and LANCZOS (= rembg); largest |rembg - emulation|")
        for name, top, low, high, *steps, check in rembg_steps(input_dir, onnx_path, rembg_runs[0]):
            print(f"  {name:<16}{top:>5}  {low:.3f}..{high:.3f}" + "".join(f"{d:>8.2f}" for d in steps) + f"{check:>6.0f}")
    if emulated_bf16 and args.bf16_check:
        diff = bf16_accuracy(input_dir, model_path, args.size, args.bf16_check)
        print(f"mean |alpha(bf16, emulated) - alpha(fp32)| on {args.bf16_check} photos = {diff:.3f} / 255")
    if args.stages:
        print("one photo, in process (medians):")
        for name, seconds in stage_times(input_dir, model_path, args.size).items():
            print(f"  {name:<24}{seconds * 1000:9.1f} ms")
    if args.keep:
        print(f"files kept in {tmp}")


if __name__ == "__main__":
    sys.exit(main())
