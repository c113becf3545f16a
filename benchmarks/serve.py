"""Load-test serve.py against ``rembg s`` on the same .onnx: throughput, latency, memory.

    python benchmarks/serve.py                         # U2NETP, random weights: ~8 min on 2 busy cores
    python benchmarks/serve.py --requests 24 --memory-requests 400 --kinds mask
    python benchmarks/serve.py --memory-requests 2000  # the 2,000-request memory check (long)
    python benchmarks/serve.py --no-rembg              # ours only
    python benchmarks/serve.py --kinds mask --ours='--threads 2 --networks 1'   # a variant of ours beside
    python benchmarks/serve.py --kinds mask --pth='--precision bf16'           # PyTorch bf16 (AMX) beside

What it does: makes ``--photos`` synthetic photo-like JPEGs (benchmarks/apply.py's, at
``--photo-size``), saves random weights of ``--arch`` and exports them with export.py; starts
each server on a free loopback port (only 127.0.0.1 is ever contacted), and for each request
kind (``mask``: rembg's ``om=true``, the network and resize only; ``cutout``: rembg's default
request, each server's own cut-out) and each concurrency in ``--concurrency`` sends a fixed
``--requests`` requests (at least two per client; the first run of a cell after a warm-up of
one per client) from that many client threads, ``--repeats`` times per server, interleaved
ours-rembg-rembg-ours-..., so that both see the same share of a busy machine's load:
throughput (the median of the repeats; the ratio to rembg's the median of each repeat's own),
p50/p99 latency, CPU per request of the server and of the clients, failures (503s counted
apart). Only the server being measured runs: the others are stopped (SIGSTOP) meanwhile, so an
idle server's threads cannot take CPU from it (``--no-pause``: left running, and the log says
what they took). The clients send request bodies built once per photo over keep-alive
connections, so that they take little CPU from the servers they measure (the log gives their
CPU per request). Then ``--memory-requests`` mask requests at concurrency 8 to a fresh server:
its RSS after the first 100, at the end, and its peak (VmHWM). rembg 2.0.86 runs from its own
virtual environment, made on first use in ``--rembg-venv`` (``pip install
"rembg[cpu,cli]==2.0.86"``; rembg's server needs its CLI extras), with ``-m u2net_custom`` and
the .onnx passed as rembg's clients pass it (form ``model``, query ``extras={"model_path":
...}``). Our server runs with ``--refine none`` (the same work as rembg's: the network's alpha
resized) and its other defaults; each ``--ours FLAGS`` adds one more of our servers with those
flags to the throughput cells (to the memory run with ``--memory-servers ours`` or ``all``), each
``--pth FLAGS`` one on the same weights as a .pth (PyTorch), e.g. ``--pth='--precision bf16'``.

The machine is shared: the table prints ``uptime``'s load averages beside the figures. Compare
ratios within one run.
"""
import argparse
import atexit
import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from utils.machine import cpu_model, load_averages  # noqa: E402

HOST = "127.0.0.1"  # loopback only: this generator never sends elsewhere
REMBG_VERSION = "2.0.86"
_spec = importlib.util.spec_from_file_location("bench_apply", os.path.join(REPO, "benchmarks", "apply.py"))
bench_apply = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_apply)  # its photo maker, weights, export and memory readers


# ---------------------------------------------------------------- the servers
def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rembg_python(venv):
    """rembg's own virtual environment (made and filled on first use); its python."""
    python = os.path.join(venv, "bin", "python")
    ready = os.path.exists(python) and subprocess.run([python, "-c", "import rembg.commands, onnxruntime"],
                                                      capture_output=True).returncode == 0
    if not ready:
        print(f"installing rembg[cpu,cli]=={REMBG_VERSION} into {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", f"rembg[cpu,cli]=={REMBG_VERSION}"], check=True)
    return python


class Server:
    """A server process on a free loopback port; ``pid``, ``url``, ``rss_mb()``, ``peak_mb()``."""

    def __init__(self, label, command, env=None, cwd=None):
        self.label, self.port = label, free_port()
        command = [part.replace("{port}", str(self.port)) for part in command]
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, env={**os.environ, **(env or {})}, cwd=cwd,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.pid, self.url = self.process.pid, f"http://{HOST}:{self.port}"

    def wait_ready(self, path, seconds=300):
        import httpx
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.label} exited:\n{self.log.read().decode()[-3000:]}")
            try:
                httpx.get(self.url + path, timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.3)
        raise RuntimeError(f"{self.label} did not start within {seconds} s")

    def _status_mb(self, key):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def rss_mb(self):
        return self._status_mb("VmRSS")

    def peak_mb(self):
        return self._status_mb("VmHWM")

    def cpu_s(self):
        """CPU seconds (user + system) the process has used so far, all its threads."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def pause(self):
        """SIGSTOP: while another server is measured this one takes no CPU at all (an idle
        onnxruntime or uvicorn still wakes up now and then; its threads may spin after a burst)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)

    def stop(self):
        self.resume()  # a stopped process would not act on SIGTERM
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_ours(onnx_path, workdir, extra=(), label="serve.py"):
    server = Server(label, [sys.executable, os.path.join(REPO, "serve.py"), "--model", onnx_path,
                            "--host", HOST, "--port", "{port}", "--refine", "none", "--log-level", "warning",
                            *extra], cwd=workdir)
    server.wait_ready("/healthz")
    return server


def start_rembg(python, onnx_path, workdir):
    rembg = os.path.join(os.path.dirname(python), "rembg")
    # BROWSER=true: rembg s opens a web browser at start-up; REMBG_HOME: 2.0.86 takes custom models
    # only from inside its home folder
    env = {"BROWSER": "true", "REMBG_HOME": os.path.dirname(onnx_path)}
    help_text = subprocess.run([rembg, "s", "--help"], capture_output=True, text=True, env={**os.environ, **env}).stdout
    extra = ["--no-ui"] if "--no-ui" in help_text else []
    server = Server(f"rembg s {REMBG_VERSION}", [rembg, "s", "--host", HOST, "--port", "{port}",
                                                 "--log_level", "warning", *extra], env=env, cwd=workdir)
    server.wait_ready("/api")
    return server


# ---------------------------------------------------------------- the load
def request_args(server, kind, onnx_path):
    """(params, form fields) of one request of ``kind`` as rembg's clients send it."""
    data = {"om": "true"} if kind == "mask" else {}
    params = {}
    if server.label.startswith("rembg"):
        data["model"] = "u2net_custom"
        params["extras"] = json.dumps({"model_path": onnx_path})
    return params, data


BOUNDARY = "bench-serve-0f3c9a2e"


def multipart(fields: dict, photo: bytes) -> bytes:
    """A multipart/form-data body: the form ``fields`` and the JPEG ``photo`` as ``file``, as
    rembg's clients (``requests``, ``curl -F``) send them. Built once per photo and server, so
    the client threads only write bytes and read the answer: a client that builds each body
    (httpx: 24 ms of CPU a request, measured; these: ~1.3 ms) takes CPU from the servers it measures."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
                 "Content-Type: image/jpeg\r\n\r\n".encode() + photo + b"\r\n")
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts)


def prepared(server, kind, onnx_path, photos):
    """(the request's path and query, its headers, one body per photo) for ``server``."""
    params, data = request_args(server, kind, onnx_path)
    path = "/api/remove" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    return path, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}, [multipart(data, p) for p in photos]


def load(server, photos, kind, onnx_path, concurrency, count, warmup=True, idle=()):
    """``count`` POST /api/remove from ``concurrency`` client threads (photos in turn, each client
    on one keep-alive connection) after one warm-up request per client when ``warmup``: the
    seconds they took, each one's latency (s) and status, the CPU seconds the server used
    (``server_cpu``), this process (the clients, ``client_cpu``) and the ``idle`` servers beside
    (``idle_cpu``) while the timed requests ran, and the share of the machine's CPU time stolen
    by the hypervisor meanwhile (``steal``)."""
    path, headers, bodies = prepared(server, kind, onnx_path, photos)
    latencies, statuses, lock, taken = [], [], threading.Lock(), [0]

    def client(warm):
        connection = http.client.HTTPConnection(HOST, server.port, timeout=600)
        try:
            while True:
                with lock:
                    if taken[0] >= (concurrency if warm else count):
                        return
                    index = taken[0]
                    taken[0] += 1
                start = time.perf_counter()
                try:
                    connection.request("POST", path, body=bodies[index % len(bodies)], headers=headers)
                    response = connection.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException):
                    status = 0
                    connection.close()  # the next request reconnects
                with lock:
                    if not warm:
                        latencies.append(time.perf_counter() - start)
                        statuses.append(status)
        finally:
            connection.close()

    def run(warm):
        taken[0] = 0
        threads = [threading.Thread(target=client, args=(warm,)) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if warmup:
        run(True)
    cpu = [server.cpu_s(), time.process_time(), sum(other.cpu_s() for other in idle)]
    ticks = cpu_ticks()
    start = time.perf_counter()
    run(False)
    seconds = time.perf_counter() - start
    total, stolen = (after - before for after, before in zip(cpu_ticks(), ticks))
    return {"seconds": seconds, "latencies": latencies, "statuses": statuses, "steal": stolen / max(total, 1),
            "server_cpu": server.cpu_s() - cpu[0], "client_cpu": time.process_time() - cpu[1],
            "idle_cpu": sum(other.cpu_s() for other in idle) - cpu[2]}


def summary(parts):
    """One figure from several ``load`` runs of a server: requests/s over their total time, the
    median of the runs' own requests/s (``median_per_s``), p50/p99 latency (ms) over all their
    requests, server and client CPU ms per request, failures, 503s."""
    seconds = sum(p["seconds"] for p in parts)
    latencies = np.concatenate([p["latencies"] for p in parts]) * 1000
    statuses = [s for p in parts for s in p["statuses"]]
    return {"per_s": len(statuses) / seconds,
            "median_per_s": float(np.median([len(p["statuses"]) / p["seconds"] for p in parts])),
            "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99)),
            "server_ms": 1000 * sum(p.get("server_cpu", 0.0) for p in parts) / len(statuses),
            "client_ms": 1000 * sum(p.get("client_cpu", 0.0) for p in parts) / len(statuses),
            "failed": sum(s not in (200, 503) for s in statuses), "busy": statuses.count(503)}


def memory_run(start, photos, onnx_path, count, concurrency=8):
    """A fresh server (``start()``) given ``count`` mask requests at ``concurrency``: its RSS (MB)
    after the first 100 and after all, and its peak (VmHWM); failures."""
    server = start()
    try:
        first = min(100, count)
        parts = [load(server, photos, "mask", onnx_path, concurrency, first, warmup=False)]
        after_100 = server.rss_mb()
        if count > first:
            parts.append(load(server, photos, "mask", onnx_path, concurrency, count - first, warmup=False))
        failed = summary(parts)["failed"]
        return {"after_100": after_100, "final": server.rss_mb(), "peak": server.peak_mb(), "failed": failed}
    finally:
        server.stop()


def cpu_ticks():
    """(all, stolen) CPU ticks of the machine so far (/proc/stat): the steal column counts the time
    the hypervisor ran other machines on our virtual CPUs, which no lock here can prevent."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values[:8]), values[7]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="u2netp", choices=("u2netp", "u2net"), help="random weights of (default: u2netp)")
    p.add_argument("--model", help="an .onnx to serve instead of random weights")
    p.add_argument("--photos", type=int, default=8, help="distinct photos sent in turn (default: 8)")
    p.add_argument("--photo-size", default="720x960", help="WxH of the synthetic photos (default: 720x960)")
    p.add_argument("--concurrency", default="1,4,16", help="client threads, comma-separated (default: 1,4,16)")
    p.add_argument("--requests", type=int, default=16,
                   help="timed requests per concurrency and kind, at least 2 per client (default: 16)")
    p.add_argument("--kinds", default="mask,cutout", help="request kinds: mask (om=true), cutout (default: both)")
    p.add_argument("--memory-requests", type=int, default=200,
                   help="mask requests of the memory run, on a fresh server, concurrency 8 (default: 200; the "
                        "steady-memory check: 2000)")
    p.add_argument("--memory-servers", choices=("default", "ours", "all"), default="default",
                   help="servers of the memory run: default (our default one and rembg's), ours (each --ours one "
                        "only: rembg's 2,000 requests take ~12 min here), all but the --pth ones (default: default)")
    p.add_argument("--rembg-venv", default=os.path.join(tempfile.gettempdir(), "rembg-venv"),
                   help="rembg's own virtual environment, made on first use (default: %(default)s)")
    p.add_argument("--no-rembg", action="store_true", help="ours only")
    p.add_argument("--ours", action="append", default=[], metavar="FLAGS",
                   help="serve.py flags of one more of our servers, measured beside the default one (repeatable), "
                        "e.g. --ours='--threads 2 --networks 1 --static-shapes 0'")
    p.add_argument("--pth", action="append", default=[], metavar="FLAGS",
                   help="one more of our servers on the same weights as a .pth (PyTorch) with these serve.py flags "
                        "(repeatable), e.g. --pth='--precision bf16'; needs the random weights or --model-pth")
    p.add_argument("--model-pth", help="the .pth of --model, for --pth rows")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs of each server per cell, interleaved (ours, rembg, rembg, ours, ...): the table "
                        "gives their medians (default: 3)")
    p.add_argument("--no-pause", action="store_true",
                   help="leave the servers not being measured running (idle) instead of stopped (SIGSTOP); the "
                        "log then says how much CPU they took meanwhile")
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be >= 1")

    work = tempfile.mkdtemp(prefix="bench_serve_")
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # photos, weights, logs: ~10 MB a run
    width, height = (int(v) for v in args.photo_size.split("x"))
    photo_dir = os.path.join(work, "photos")
    make_photos(photo_dir, args.photos, width, height)
    photos = [open(os.path.join(photo_dir, n), "rb").read() for n in sorted(os.listdir(photo_dir))]
    onnx_path, weights = args.model, args.model_pth
    if args.pth and args.model and not weights:
        p.error("--pth with --model needs --model-pth (the same weights as a .pth)")
    if onnx_path is None:
        weights = os.path.join(work, f"{args.arch}_random.pth")
        bench_apply.save_random_weights(weights, args.arch)
        onnx_path = os.path.join(work, "model.onnx")
        print(bench_apply.export_onnx(weights, onnx_path, 320), flush=True)
    onnx_path = os.path.abspath(onnx_path)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    starters = [("serve.py", lambda: start_ours(onnx_path, work))]
    for flags in args.ours:
        starters.append((f"serve.py {flags}", lambda flags=flags: start_ours(onnx_path, work, flags.split(),
                                                                              f"serve.py {flags}")))
    for flags in args.pth:
        starters.append((f"serve.py .pth {flags}", lambda flags=flags: start_ours(
            os.path.abspath(weights), work, ["--device", "cpu", *flags.split()], f"serve.py .pth {flags}")))
    if not args.no_rembg:
        python = rembg_python(args.rembg_venv)
        starters.append((f"rembg s {REMBG_VERSION}", lambda: start_rembg(python, onnx_path, work)))

    print(f"{cpu_model()}, {os.cpu_count()} cores; {args.arch if not args.model else args.model}; "
          f"{len(photos)} photos {width}x{height}; load average at start {load_averages()}", flush=True)
    rows, runs, memory = {}, {}, {}
    servers = []
    try:
        for label, start in starters:
            servers.append(start())
            if not args.no_pause:
                servers[-1].pause()  # only the server being measured runs: an idle one takes no CPU
        for kind in kinds:
            for c in concurrencies:
                count = max(args.requests, 2 * c)  # every client busy: at least two requests each
                parts = {server.label: [] for server in servers}
                for repeat in range(args.repeats):
                    # ours, rembg, rembg, ours, ...: both see the same share of a busy machine's load
                    for server in (servers if repeat % 2 == 0 else servers[::-1]):
                        others = [other for other in servers if other is not server]
                        server.resume()
                        # the first run of a cell warms up (one request per client: arenas for c calls, numba)
                        part = load(server, photos, kind, onnx_path, c, count, warmup=repeat == 0, idle=others)
                        if not args.no_pause:
                            server.pause()
                        parts[server.label].append(part)
                        one = summary([part])
                        print(f"{server.label:24s} {kind:6s} c={c:<3d} run {repeat + 1} {one['per_s']:6.2f} req/s  "
                              f"p50 {one['p50']:6.0f} ms  p99 {one['p99']:6.0f} ms  CPU/req server "
                              f"{one['server_ms']:4.0f} ms client {one['client_ms']:3.0f} ms  idle servers' CPU "
                              f"{part['idle_cpu']:5.2f} s  steal {part['steal']:4.0%}  failed {one['failed']}  503 {one['busy']}  "
                              f"load {load_averages()}", flush=True)
                for server in servers:
                    r = rows[(server.label, kind, c)] = summary(parts[server.label])
                    r["rss"] = server.rss_mb()
                    runs[(server.label, kind, c)] = [len(q["statuses"]) / q["seconds"] for q in parts[server.label]]
                    print(f"{server.label:24s} {kind:6s} c={c:<3d} median {r['median_per_s']:6.2f} req/s  "
                          f"RSS {r['rss']:6.0f} MB  load {load_averages()}", flush=True)
    finally:
        for server in servers:
            server.stop()
    for label, start in starters:
        ours, default = label.startswith("serve.py --"), " --" not in label and ".pth" not in label
        if args.memory_requests and {"default": default, "ours": ours, "all": ".pth" not in label}[args.memory_servers]:
            m = memory[label] = memory_run(start, photos, onnx_path, args.memory_requests)
            print(f"{label:16s} memory (fresh server, 8 clients): RSS after 100 {m['after_100']:.0f} MB, after "
                  f"{args.memory_requests} {m['final']:.0f} MB ({m['final'] / m['after_100'] - 1:+.1%}), peak "
                  f"{m['peak']:.0f} MB, failed {m['failed']}  load {load_averages()}", flush=True)
    print_table(rows, runs, memory, kinds, concurrencies, args.memory_requests)


def make_photos(folder, count, width, height):
    """benchmarks/apply.py's synthetic photos, resized to width x height (portraits)."""
    from PIL import Image
    bench_apply.make_photos(folder, count)
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        with Image.open(path) as im:
            small = im.resize((width, height) if im.height >= im.width else (height, width), Image.LANCZOS)
        small.save(path, quality=92)


def ratios(runs, label, base, kind, c):
    """Each repeat's requests/s of ``label`` over ``base``'s in the same repeat (run next to it)."""
    return [a / b for a, b in zip(runs[(label, kind, c)], runs[(base, kind, c)])]


def print_table(rows, runs, memory, kinds, concurrencies, memory_requests):
    """The markdown tables of documents/serving.md: per cell the median of the repeats' requests/s,
    the median (and range) of the repeats' ratios to rembg's, latency over all the repeats'
    requests, CPU per request, RSS after the cell."""
    labels = sorted({label for label, _, _ in rows}, key=lambda label: not label.startswith("serve"))
    base = next((label for label in labels if label.startswith("rembg")), None)
    print("\n| server | request | clients | req/s (median) | x rembg (median, range) | p50 ms | p99 ms "
          "| server CPU ms/req | client CPU ms/req | RSS MB | failed | 503 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind in kinds:
        for c in concurrencies:
            for label in labels:
                r = rows.get((label, kind, c))
                if r is None:
                    continue
                ratio = ""
                if base and label != base and (base, kind, c) in rows:
                    each = ratios(runs, label, base, kind, c)
                    ratio = f"{np.median(each):.2f} ({min(each):.2f}-{max(each):.2f})"
                print(f"| {label} | {kind} | {c} | {r['median_per_s']:.2f} | {ratio} | {r['p50']:.0f} | "
                      f"{r['p99']:.0f} | {r['server_ms']:.0f} | {r['client_ms']:.0f} | {r['rss']:.0f} | "
                      f"{r['failed']} | {r['busy']} |")
    if memory:
        print(f"\n| server | RSS after 100 MB | RSS after {memory_requests} MB | change | peak MB | failed |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, m in memory.items():
            print(f"| {label} | {m['after_100']:.0f} | {m['final']:.0f} | {m['final'] / m['after_100'] - 1:+.1%} | "
                  f"{m['peak']:.0f} | {m['failed']} |")


if __name__ == "__main__":
    main()
