"""serve.py and utils/serving: every endpoint, rembg's requests as its clients send them, apply.py's
bytes, every limit and bad input, batching of concurrent requests, the API key, CORS, SIGTERM.

Random U2NETP weights at a 64 px network input (conftest's ``weights``); photos of a few
thousand pixels; FastAPI's TestClient runs the app in this process (the model loads when the
client is entered); one test starts the real command and stops it with SIGTERM.
"""
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import apply
import serve
from utils.serving.app import ServeConfig, create_app, matting_thresholds
from utils.serving.limits import MB, Limits

pytestmark = [pytest.mark.usefixtures("one_thread"),  # conftest.py: one PyTorch thread for tiny networks
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64
LIMITS = Limits(max_upload_bytes=MB, max_pixels=250_000, max_queue=16, timeout_s=30)


def photo(h, w, seed=0):
    """uint8 RGB (h,w,3): a gradient with noise, different for each seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), np.full((h, w), 40.0 * (seed % 6))], axis=2)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def encoded(array, fmt="PNG", mode=None, **options):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, fmt, **options)
    return buffer.getvalue()


def decoded(data):
    return np.array(Image.open(io.BytesIO(data)))


def upload(data, name="photo.jpg", kind="image/jpeg"):
    return {"file": (name, data, kind)}


@contextmanager
def serving(weights, **overrides):
    """A TestClient of an app on ``weights`` at SIZE with refine none and LIMITS, unless overridden."""
    config = ServeConfig(**{"model": weights, "size": SIZE, "device": "cpu", "refine": "none", "pool": 2,
                            "limits": LIMITS, **overrides})
    with TestClient(create_app(config)) as client:
        yield client


@pytest.fixture(scope="module")
def client(weights):
    with serving(weights) as c:
        yield c


@pytest.fixture(scope="module")
def jpeg():
    return encoded(photo(48, 40), "JPEG", quality=95)


def assert_still_answers(client, jpeg):
    assert client.get("/healthz").json()["status"] == "ready"
    assert client.post("/api/remove", files=upload(jpeg)).status_code == 200


# ---------------------------------------------------------------- endpoints
def test_health_info_docs_and_the_page(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ready" and health["queue"] == 0 and health["max_queue"] == LIMITS.max_queue
    info = client.get("/api/info").json()
    assert (info["arch"], info["size"], info["device"], info["precision"], info["refine"]) == \
        ("u2netp", SIZE, "cpu", "fp32", "none")
    assert info["limits"]["max_pixels"] == LIMITS.max_pixels and info["runtime"] == "pytorch"
    assert info["max_batch"] == 1  # apply.py's batch size on a CPU
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/remove", "/api/matte", "/healthz", "/api/info"} <= set(paths)
    assert {"file", "model", "a", "af", "ab", "ae", "om", "ppm"} <= set(
        paths["/api/remove"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"].get("properties", {})
        or client.get("/openapi.json").json()["components"]["schemas"][
            paths["/api/remove"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
            .split("/")[-1]]["properties"])
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text and "/static/style.css" in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"] and len(response.text) > 100
    for bad in ("/static/index.html.bak", "/static/..%2Fapp.py", "/static/%2E%2E%2F%2E%2E%2Fserve.py"):
        response = client.get(bad)
        assert response.status_code == 404 and "error" in response.json()


def test_remove_is_an_rgba_png_at_the_photos_size(client):
    for h, w in ((48, 40), (30, 71)):
        response = client.post("/api/remove", files=upload(encoded(photo(h, w), "JPEG")))
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(response.content))
        assert image.mode == "RGBA" and image.size == (w, h)


def test_remove_takes_rembgs_requests_as_its_clients_send_them(client, jpeg):
    """rembg's README (curl -F file=@...), its form fields with rembg's own values (model u2net,
    a, af, ab, ae, om, ppm), bgc and extras in the query, and the fields in the query string (a
    PHP client's way, which rembg ignores but we take)."""
    cutout = client.post("/api/remove", files=upload(jpeg))
    everything = client.post("/api/remove?extras=%7B%22x%22%3A%201%7D", files=upload(jpeg),
                             data={"model": "u2net", "a": "false", "af": "240", "ab": "10", "ae": "10",
                                   "om": "false", "ppm": "false"})
    assert everything.status_code == 200 and everything.content == cutout.content  # model, extras, a=false: no change

    mask = client.post("/api/remove", files=upload(jpeg), data={"om": "true"})
    alpha = client.post("/api/matte", files=upload(jpeg), data={"outputs": "alpha"})
    assert Image.open(io.BytesIO(mask.content)).mode == "L" and mask.content == alpha.content
    assert client.post("/api/remove?om=true", files=upload(jpeg)).content == mask.content

    red = decoded(client.post("/api/remove?bgc=255,0,0,255", files=upload(jpeg)).content)
    composite = decoded(client.post("/api/matte", files=upload(jpeg),
                                    data={"outputs": "composite", "background": "255,0,0"}).content)
    assert red.shape == (48, 40, 4) and (red[..., 3] == 255).all() and np.array_equal(red[..., :3], composite)
    half = decoded(client.post("/api/remove?bgc=0,0,255,128", files=upload(jpeg)).content)
    own = decoded(cutout.content)[..., 3].astype(float) / 255
    assert np.abs(half[..., 3] / 255 - (own + (1 - own) * 128 / 255)).max() <= 1.5 / 255

    binary = decoded(client.post("/api/remove", files=upload(jpeg), data={"ppm": "true", "om": "true"}).content)
    assert set(np.unique(binary)) <= {0, 255}


def test_the_benchmarks_prebuilt_request_bodies_are_rembgs_requests(client, jpeg):
    """benchmarks/serve.py sends multipart bodies it builds once: the server reads them as the
    form requests rembg's clients send (the same mask, the same cut-out), query and all."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_serve", os.path.join(ROOT, "benchmarks", "serve.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    headers = {"Content-Type": f"multipart/form-data; boundary={bench.BOUNDARY}"}
    mask = client.post("/api/remove", content=bench.multipart({"om": "true"}, jpeg), headers=headers)
    assert mask.status_code == 200
    assert mask.content == client.post("/api/remove", files=upload(jpeg), data={"om": "true"}).content
    cutout = client.post("/api/remove?extras=%7B%7D", content=bench.multipart({"model": "u2net_custom"}, jpeg),
                         headers=headers)
    assert cutout.content == client.post("/api/remove", files=upload(jpeg)).content
    assert Image.open(io.BytesIO(cutout.content)).mode == "RGBA"


def test_rembgs_alpha_matting_is_our_matting_refinement(client, jpeg):
    matting = client.post("/api/remove", files=upload(jpeg), data={"a": "true"})
    ours = client.post("/api/matte", files=upload(jpeg), data={"outputs": "cutout", "refine": "matting"})
    assert matting.status_code == 200 and matting.content == ours.content
    plain = client.post("/api/remove", files=upload(jpeg))
    assert plain.content != matting.content
    assert client.post("/api/remove", files=upload(jpeg), data={"a": "true", "af": "200", "ab": "60"}).status_code == 200
    # rembg's af/ab (8-bit mask thresholds of its trimap) become our matting's, when sent
    assert matting_thresholds({"af": 200, "ab": 60}) == {"high": 200 / 255, "low": 60 / 255}
    assert matting_thresholds({"af": None, "ab": None}) == {}


def test_matte_is_byte_for_byte_what_apply_py_writes(tmp_path, weights, jpeg):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "p.jpg").write_bytes(jpeg)
    assert apply.main(["--model", weights, "--quiet", "--size", str(SIZE), "--refine", "guided",
                       "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                       "--outputs", "alpha,cutout,composite", "--background", "#00ff00"]) == 0
    with serving(weights, refine="guided") as client:
        for kind in ("alpha", "cutout", "composite"):
            response = client.post("/api/matte", files=upload(jpeg),
                                   data={"outputs": kind, "background": "#00ff00"})
            assert response.status_code == 200 and response.headers["x-refine"] == "guided"
            assert response.content == (tmp_path / "out" / kind / "p.png").read_bytes(), kind
        webp = client.post("/api/matte", files=upload(jpeg), data={"outputs": "cutout", "format": "webp"})
        assert webp.headers["content-type"] == "image/webp"
        assert np.array_equal(decoded(webp.content), np.array(Image.open(tmp_path / "out" / "cutout" / "p.png")))
        none = client.post("/api/matte", files=upload(jpeg), data={"outputs": "alpha", "refine": "none"})
        assert none.headers["x-refine"] == "none" and none.content != (tmp_path / "out" / "alpha" / "p.png").read_bytes()


def test_a_composite_over_an_uploaded_background(client, jpeg):
    green = np.zeros((10, 10, 3), np.uint8)
    green[..., 1] = 255
    over_image = client.post("/api/matte", files={**upload(jpeg), "background_file": ("bg.png", encoded(green))},
                             data={"outputs": "composite"})
    over_colour = client.post("/api/matte", files=upload(jpeg), data={"outputs": "composite", "background": "lime"})
    assert over_image.status_code == 200 and np.array_equal(decoded(over_image.content), decoded(over_colour.content))


def test_urls_are_refused_never_fetched(client):
    for response in (client.get("/api/remove", params={"url": "http://169.254.169.254/latest/meta-data"}),
                     client.post("/api/remove", data={"url": "http://127.0.0.1:22/"})):
        assert response.status_code == 400 and "does not fetch URLs" in response.json()["error"]


def test_bad_parameters_are_422_naming_the_field(client, jpeg):
    for data, params, field in (({"outputs": "mask"}, {}, "outputs"), ({"refine": "magic"}, {}, "refine"),
                                ({"format": "gif"}, {}, "format"), ({"outputs": "composite", "background": "/etc/passwd"},
                                                                    {}, "background")):
        response = client.post("/api/matte", files=upload(jpeg), data=data, params=params)
        assert response.status_code == 422 and field in response.json()["error"], (data, response.json())
    for data, params, field in (({"af": "256"}, {}, "af"), ({"a": "maybe"}, {}, "a"), ({}, {"bgc": "1,2"}, "bgc"),
                                ({}, {"om": "perhaps"}, "om"), ({"a": "true", "af": "10", "ab": "20"}, {}, "ab")):
        response = client.post("/api/remove", files=upload(jpeg), data=data, params=params)
        assert response.status_code == 422 and field in response.json()["error"], (data, params, response.json())
    missing = client.post("/api/remove", data={"a": "true"})
    assert missing.status_code == 422 and "file" in missing.json()["error"]


# ---------------------------------------------------------------- limits and bad input
def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width=30000, height=30000):
    """A ~100-byte PNG whose header declares width x height gray pixels (one row of data)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1)))
            + _chunk(b"IEND", b""))


def bad_inputs():
    png = encoded(photo(60, 50, 3))
    gray16 = (np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 50)
    rgba = np.dstack([photo(40, 30, 4), np.full((40, 30), 128, np.uint8)])
    noise = np.random.default_rng(1).integers(0, 256, (620, 620, 3), dtype=np.uint8)  # > 1 MB as PNG
    jpeg = encoded(photo(64, 64, 5), "JPEG")
    return [
        ("truncated png", png[:len(png) // 2], 415, "not a readable image"),
        ("truncated jpeg", jpeg[:len(jpeg) // 2] + b"\xff\xd9", 415, "truncated"),
        ("empty", b"", 415, "empty"),
        ("text", b"name,value\n" * 20, 415, "not an image"),
        ("bomb header", png_bomb(12000, 9000), 413, "12000x9000 (108.0 MP)"),
        ("pillow bomb", png_bomb(30000, 30000), 413, "--max-pixels"),
        ("huge photo", encoded(photo(600, 500, 6), "JPEG"), 413, "--max-pixels"),
        ("huge upload", encoded(noise), 413, "--max-upload-mb"),
        ("16-bit gray", encoded(gray16), 200, None),
        ("rgba", encoded(rgba), 200, None),
    ]


@pytest.mark.parametrize("name,data,status,message", bad_inputs(), ids=[case[0] for case in bad_inputs()])
def test_bad_input_gets_its_status_and_the_server_goes_on(client, jpeg, name, data, status, message):
    for route in ("/api/remove", "/api/matte"):
        response = client.post(route, files=upload(data, "x.png", "image/png"))
        assert response.status_code == status, (name, route, response.content[:200])
        if message is None:
            assert Image.open(io.BytesIO(response.content)).size == Image.open(io.BytesIO(data)).size
        else:
            assert message in response.json()["error"] and response.json()["status"] == status
    assert_still_answers(client, jpeg)


def test_a_chunked_upload_over_the_limit_is_cut_off(client, jpeg):
    """No Content-Length (a chunked body): counted while read, refused once past the limit."""
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(20):
            yield b"\0" * (128 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()
    response = client.post("/api/remove", content=body(),
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413 and "--max-upload-mb" in response.json()["error"]
    assert_still_answers(client, jpeg)


def test_queue_full_is_503_with_retry_after_then_the_time_limit_is_504(weights, jpeg):
    """One request held in the batcher (it waits 1.5 s for company) fills a queue of 1: the
    next is refused at once; with a 0.5 s time limit the held one is a 504; then all is free."""
    limits = Limits(max_upload_bytes=MB, max_pixels=250_000, max_queue=1, timeout_s=0.5)
    with serving(weights, limits=limits, max_batch=4, max_wait_ms=1500) as client:
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(client.post, "/api/remove", files=upload(jpeg))
            deadline = time.monotonic() + 5
            while client.get("/healthz").json()["queue"] == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            refused = client.post("/api/matte", files=upload(jpeg))
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "--max-queue" in refused.json()["error"]
            late = held.result()
        assert late.status_code == 504 and "--timeout" in late.json()["error"]
        assert client.get("/healthz").json()["queue"] == 0
        time.sleep(1.2)  # the 504's photo leaves the batcher
        assert client.get("/healthz").json()["status"] == "ready"


# ---------------------------------------------------------------- batching
def test_concurrent_requests_share_network_calls_and_get_their_own_answers(weights):
    photos = [encoded(photo(40 + 4 * i, 30 + 6 * i, seed=i), "PNG") for i in range(6)]
    with serving(weights, max_batch=4, max_wait_ms=400) as client:
        alone = [client.post("/api/matte", files=upload(p, "p.png"), data={"outputs": "alpha"}).content
                 for p in photos]
        before = client.get("/healthz").json()["network"]
        assert before["largest"] == 1
        with ThreadPoolExecutor(len(photos)) as pool:
            together = list(pool.map(lambda p: client.post("/api/matte", files=upload(p, "p.png"),
                                                           data={"outputs": "alpha"}).content, photos))
        network = client.get("/healthz").json()["network"]
    assert network["largest"] > 1 and network["batches"] - before["batches"] < len(photos)
    for i, (a, b) in enumerate(zip(alone, together)):
        a, b = decoded(a), decoded(b)
        assert a.shape == b.shape == (40 + 4 * i, 30 + 6 * i)  # each answer is its own photo's size
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # batched or not, the same matte
    mattes = [decoded(a).astype(float).mean() for a in alone]
    assert len(set(np.round(mattes, 3))) == len(photos)  # different photos, different mattes


def test_pytorch_lanes_run_calls_at_once_with_the_same_mattes(weights):
    """--networks 2 with a .pth on a CPU: two single-threaded PyTorch calls at once (the lanes of
    the bf16 row in documents/serving.md), each request its own photo's matte, the same as one
    call at a time on one thread gives."""
    photos = [encoded(photo(40 + 4 * i, 30 + 6 * i, seed=i), "PNG") for i in range(12)]
    with serving(weights) as client:
        alone = [client.post("/api/remove", files=upload(p, "p.png"), data={"om": "true"}).content for p in photos]
    with serving(weights, networks=2, max_wait_ms=0) as client:
        assert client.get("/api/info").json()["networks"] == 2
        with ThreadPoolExecutor(len(photos)) as pool:
            together = list(pool.map(lambda p: client.post("/api/remove", files=upload(p, "p.png"),
                                                           data={"om": "true"}).content, photos))
        network = client.get("/healthz").json()["network"]
    assert network["most_at_once"] == 2 and network["images"] == len(photos)
    assert together == alone  # one thread per call either way: the same floats, the same bytes


# ---------------------------------------------------------------- security
def test_the_api_key_guards_the_upload_routes(weights, jpeg):
    with serving(weights, api_key="s3cret") as client:
        for headers in ({}, {"X-API-Key": "wrong"}):
            response = client.post("/api/remove", files=upload(jpeg), headers=headers)
            assert response.status_code == 401 and "X-API-Key" in response.json()["error"]
        assert client.post("/api/remove", files=upload(jpeg), headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/healthz").status_code == 200  # for load balancers
        assert client.get("/api/info").json()["api_key_required"] is True


def test_cors_is_off_unless_an_origin_is_given(client, weights, jpeg):
    origin = {"Origin": "https://example.org"}
    assert "access-control-allow-origin" not in client.post("/api/remove", files=upload(jpeg), headers=origin).headers
    with serving(weights, cors=("https://example.org",)) as open_client:
        allowed = open_client.post("/api/remove", files=upload(jpeg), headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "https://example.org"
        other = open_client.post("/api/remove", files=upload(jpeg), headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# ---------------------------------------------------------------- the command
def test_bad_flags_and_a_missing_model_exit_2(capsys, tmp_path):
    assert serve.main(["--model", str(tmp_path / "none.pth")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert serve.main(["--model", str(tmp_path / "none.pth"), "--max-queue", "0"]) == 2
    assert "--max-queue" in capsys.readouterr().err
    assert serve.main(["--model", str(tmp_path / "none.pth"), "--size", "8"]) == 2
    assert "size must be an integer in [32, 4096]" in capsys.readouterr().err


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_finishes_the_requests_in_flight_then_exits(weights, jpeg, tmp_path):
    import httpx

    port = free_port()
    command = [sys.executable, os.path.join(ROOT, "serve.py"), "--model", weights, "--size", str(SIZE),
               "--device", "cpu", "--refine", "none", "--threads", "1", "--port", str(port),
               "--max-batch", "4", "--max-wait-ms", "1500"]
    server = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode()
            time.sleep(0.2)
        result = {}
        sender = threading.Thread(target=lambda: result.update(
            response=httpx.post(f"{base}/api/remove", files=upload(jpeg), timeout=30)))
        sender.start()
        deadline = time.monotonic() + 10
        while httpx.get(f"{base}/healthz", timeout=1).json()["queue"] == 0:  # the request is in the server
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.send_signal(signal.SIGTERM)  # while the request waits 1.5 s in the batcher
        sender.join(30)
        assert result["response"].status_code == 200
        assert Image.open(io.BytesIO(result["response"].content)).size == (40, 48)
        # uvicorn re-raises the signal once shut down, so the status says SIGTERM ended it
        assert server.wait(30) in (0, -signal.SIGTERM)
        log = server.stdout.read().decode()
        assert "Application shutdown complete" in log and "Traceback" not in log, log
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/healthz", timeout=1)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


# ---------------------------------------------------------------- an .onnx on a CPU: concurrent calls, fixed shapes
@pytest.fixture(scope="module")
def onnx_weights(weights, tmp_path_factory):
    import export

    path = str(tmp_path_factory.mktemp("onnx") / "u2netp.onnx")
    assert export.main(["--model", weights, "--output", path, "--size", str(SIZE)]) == 0
    return path


def test_fixed_shape_sessions_match_the_dynamic_graph_and_are_bounded(onnx_weights):
    from utils.inference.onnx_model import OnnxModel

    model = OnnxModel(onnx_weights, threads=1)
    view = model.static_view(1)
    rng = np.random.default_rng(0)
    one, two = (rng.normal(size=(n, 3, SIZE, SIZE)).astype(np.float32) for n in (1, 2))
    assert np.abs(view(one) - model(one)).max() < 1e-5
    assert view.fixed_shapes == [(1, SIZE, SIZE)] and view.session_for((1, SIZE, SIZE)) is not model.session
    # a second shape is past the limit of 1: it runs on the shared dynamic session, still right
    assert np.abs(view(two) - model(two)).max() < 1e-5 and view.session_for((2, SIZE, SIZE)) is model.session
    assert view.fixed_shapes == [(1, SIZE, SIZE)]
    assert model.static_shapes == 0 and model.fixed_shapes == []  # apply.py's model: the dynamic graph only
    with pytest.raises(ValueError, match="static_shapes"):
        model.static_view(-1)


def test_network_threads_defaults():
    from utils.serving.app import network_threads

    config = ServeConfig()
    assert network_threads(config, onnx=True, on_cpu=True, cores=2) == (1, 2)      # one 1-thread call per core
    assert network_threads(config, onnx=True, on_cpu=True, cores=16) == (4, 4)     # at most 4 calls at once
    assert network_threads(ServeConfig(threads=2), onnx=True, on_cpu=True, cores=2) == (2, 1)
    assert network_threads(ServeConfig(networks=1), onnx=True, on_cpu=True, cores=4) == (4, 1)
    assert network_threads(config, onnx=False, on_cpu=True, cores=2) == (None, 1)  # PyTorch: as apply.py
    assert network_threads(ServeConfig(networks=2), onnx=False, on_cpu=True, cores=2) == (1, 2)  # lanes
    assert network_threads(ServeConfig(networks=2), onnx=False, on_cpu=True, cores=8) == (4, 2)
    assert network_threads(ServeConfig(networks=2), onnx=False, on_cpu=False, cores=8) == (None, 2)  # a GPU
    assert network_threads(config, onnx=True, on_cpu=False, cores=2) == (None, 1)  # a GPU
    with pytest.raises(ValueError, match="--networks"):
        ServeConfig(networks=0)
    with pytest.raises(ValueError, match="--static-shapes"):
        ServeConfig(static_shapes=-1)


def test_an_onnx_server_runs_concurrent_calls_keeps_apply_pys_bytes_and_rembgs_route_is_fast(
        tmp_path, onnx_weights):
    photos = [encoded(photo(48 + 4 * i, 40 + 2 * i, seed=i), "JPEG", quality=95) for i in range(6)]
    (tmp_path / "in").mkdir()
    for i, data in enumerate(photos):
        (tmp_path / "in" / f"p{i}.jpg").write_bytes(data)
    assert apply.main(["--model", onnx_weights, "--quiet", "--size", str(SIZE), "--refine", "none",
                       "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--outputs", "alpha"]) == 0
    with serving(onnx_weights, size=None, threads=1, networks=2) as client:
        info = client.get("/api/info").json()
        assert info["networks"] == 2 and info["fixed_shapes"] == [[1, SIZE, SIZE]]  # opened at start-up
        with ThreadPoolExecutor(6) as pool:
            mattes = list(pool.map(lambda d: client.post("/api/matte", files=upload(d),
                                                         data={"outputs": "alpha"}).content, photos))
            masks = list(pool.map(lambda d: client.post("/api/remove", files=upload(d), data={"om": "true"}).content,
                                  photos))
        assert client.get("/healthz").json()["network"]["images"] == 12
    for i, (matte, mask) in enumerate(zip(mattes, masks)):
        # /api/matte, on the dynamic graph one thread per call: apply.py's file, byte for byte
        assert matte == (tmp_path / "out" / "alpha" / f"p{i}.png").read_bytes(), i
        # /api/remove, on the fixed-shape session: the same mask within the rounding of 3e-8
        a, b = decoded(matte).astype(int), decoded(mask).astype(int)
        assert a.shape == b.shape == (48 + 4 * i, 40 + 2 * i) and np.abs(a - b).max() <= 1
    assert len({decoded(m).astype(float).mean().round(3) for m in mattes}) == len(photos)


def test_the_batcher_gives_a_photo_alone_all_the_cores_and_a_crowd_the_narrow_calls():
    from types import SimpleNamespace

    from utils.serving.batcher import Batcher

    class Recorder:
        """A Matter's options and coarse(): the alphas say which Matter ran them."""
        def __init__(self, value):
            self.value, self.options = value, SimpleNamespace(batch_size=1, size=SIZE, resize="square")

        def coarse(self, images):
            return [np.full((2, 2), self.value, np.float32) for _ in images]

    crowd = [False]
    exact, fast, narrow = Recorder(0.0), Recorder(0.5), Recorder(1.0)
    batcher = Batcher(exact, max_batch=1, max_wait_ms=0, workers=1, networks=2, fast=fast, narrow=narrow,
                      crowded=lambda: crowd[0])
    image = np.zeros((8, 8, 3), np.uint8)
    try:
        assert batcher.networks == 2
        assert batcher.coarse_future(image).result(10)[0, 0] == 0.0               # apply.py's bytes: always exact
        assert batcher.coarse_future(image, exact=False).result(10)[0, 0] == 0.5  # alone: all the cores
        crowd[0] = True
        assert batcher.coarse_future(image, exact=False).result(10)[0, 0] == 1.0  # others in the server: narrow
    finally:
        batcher.close()


def test_a_default_onnx_server_opens_its_fixed_shape_sessions_at_start(onnx_weights, jpeg):
    with serving(onnx_weights, size=None, networks=2) as client:
        info = client.get("/api/info").json()
        assert info["networks"] == 2 and info["fixed_shapes"] == [[1, SIZE, SIZE]]
        assert client.post("/api/remove", files=upload(jpeg), data={"om": "true"}).status_code == 200


# ---------------------------------------------------------------- --openvino: rembg's route on OpenVINO
def test_the_openvino_view_runs_the_same_onnx_within_rounding(onnx_weights):
    from utils.inference.onnx_model import OnnxModel
    from utils.serving.openvino_model import openvino_view

    model = OnnxModel(onnx_weights, threads=1)
    view = openvino_view(model, SIZE, streams=2)
    rng = np.random.default_rng(0)
    one = rng.normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    ours = view(one)
    assert ours.shape == (1, SIZE, SIZE) and ours.dtype == np.float32
    assert np.abs(ours - model(one)).max() < 1e-5 and ours.std() > 0  # fp32, other kernels: within rounding
    other = rng.normal(size=(2, 3, SIZE, SIZE // 2)).astype(np.float32)  # not its shape: onnxruntime's session
    assert np.array_equal(view(other), model(other))
    batches = [rng.normal(size=(1, 3, SIZE, SIZE)).astype(np.float32) for _ in range(6)]
    with ThreadPoolExecutor(2) as pool:  # two streams at once, each thread its own infer request
        together = list(pool.map(view, batches))
    for batch, alpha in zip(batches, together):
        assert np.array_equal(alpha, view(batch))
    with pytest.raises(ValueError, match="streams"):
        openvino_view(model, SIZE, streams=0)
    with pytest.raises(ValueError, match="fp32 or bf16, not --precision fp16"):
        openvino_view(model, SIZE, streams=2, precision="fp16")


FIRST_CALLS_AT_ONCE = """
import sys
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from utils.inference.onnx_model import OnnxModel
from utils.serving.openvino_model import openvino_view
view = openvino_view(OnnxModel(sys.argv[1], threads=1), int(sys.argv[2]), streams=2)
batch = np.zeros((1, 3, int(sys.argv[2]), int(sys.argv[2])), np.float32)
with ThreadPoolExecutor(2) as pool:
    print(len(list(pool.map(view, [batch, batch]))))
"""


def test_a_fresh_openvino_view_takes_its_first_calls_from_two_threads_at_once(onnx_weights):
    # A server's warm-up calls the view from every network thread at once: OpenVINO's first infer
    # in a process, made by two threads together, once deadlocked in its numpy bindings' set-up.
    done = subprocess.run([sys.executable, "-c", FIRST_CALLS_AT_ONCE, onnx_weights, str(SIZE)], timeout=120,
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr[-2000:]


def test_the_openvino_bf16_view_differs_from_fp32_by_bf16_rounding_only(onnx_weights, monkeypatch):
    from utils.inference.onnx_model import OnnxModel
    from utils.serving import openvino_model

    model = OnnxModel(onnx_weights, threads=1)
    one = np.random.default_rng(1).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    exact = model(one)
    if not openvino_model.native_bf16(__import__("openvino").Core()):
        pytest.skip("this CPU has no native bf16")
    view = openvino_model.openvino_view(model, SIZE, streams=2, precision="bf16")
    assert view.precision == "bf16" and "bf16" in repr(view)
    view.check_precision("bf16")  # what the server's Matter asks of it; the file itself refuses bf16
    with pytest.raises(ValueError, match="exported with"):
        model.check_precision("bf16")
    difference = np.abs(view(one) - exact)
    assert 0 < difference.max() < 0.05 and difference.mean() < 0.01  # it ran bf16, and only rounding differs
    monkeypatch.setattr(openvino_model, "native_bf16", lambda core: False)
    with pytest.raises(ValueError, match="no native bf16"):
        openvino_model.openvino_view(model, SIZE, streams=2, precision="bf16")


def test_an_openvino_server_answers_rembgs_route_and_refuses_what_it_cannot_run(onnx_weights, weights, jpeg,
                                                                               monkeypatch):
    from utils.serving import app as app_module

    photos = [encoded(photo(48 + 4 * i, 40 + 2 * i, seed=i), "JPEG", quality=95) for i in range(6)]
    with serving(onnx_weights, size=None, networks=2, openvino=True) as client:
        assert client.get("/api/info").json()["crowd_runtime"] == "openvino"
        with ThreadPoolExecutor(6) as pool:
            masks = list(pool.map(lambda d: client.post("/api/remove", files=upload(d), data={"om": "true"}).content,
                                  photos))
        mattes = [client.post("/api/matte", files=upload(d), data={"outputs": "alpha"}).content for d in photos]
    for i, (mask, matte) in enumerate(zip(masks, mattes)):
        a, b = decoded(mask).astype(int), decoded(matte).astype(int)
        assert a.shape == b.shape == (48 + 4 * i, 40 + 2 * i) and np.abs(a - b).max() <= 1
    for bad in ({"threads": 1}, {"static_shapes": 0}):
        with pytest.raises(ValueError, match="--openvino"):
            ServeConfig(model=onnx_weights, openvino=True, **bad)
    with pytest.raises(ValueError, match="--openvino: .* not an .onnx"):
        app_module.load_matter(ServeConfig(model=weights, device="cpu", size=SIZE, openvino=True))
    for bad, message in (({"precision": "fp16"}, "fp32 or bf16, not --precision fp16"),
                         ({"precision": "bf16", "resize": "short_side"}, "leave out --resize short_side")):
        with pytest.raises(ValueError, match=message):
            ServeConfig(model=onnx_weights, openvino=True, **bad)
    monkeypatch.setattr(app_module, "openvino_available", lambda: False)
    with pytest.raises(ValueError, match="pip install openvino"):
        ServeConfig(model=onnx_weights, openvino=True)


def test_an_openvino_bf16_server_runs_all_of_rembgs_route_in_bf16_and_keeps_apply_pys_bytes(onnx_weights):
    from utils.serving.openvino_model import native_bf16

    if not native_bf16(__import__("openvino").Core()):
        pytest.skip("this CPU has no native bf16")
    photos = [encoded(photo(48 + 4 * i, 40 + 2 * i, seed=i), "JPEG", quality=95) for i in range(6)]
    with serving(onnx_weights, size=None, networks=2, openvino=True, precision="bf16") as client:
        info = client.get("/api/info").json()
        assert (info["remove_precision"], info["precision"], info["crowd_runtime"]) == ("bf16", "fp32", "openvino")
        alone = [client.post("/api/remove", files=upload(d), data={"om": "true"}).content for d in photos]
        with ThreadPoolExecutor(6) as pool:
            crowded = list(pool.map(lambda d: client.post("/api/remove", files=upload(d), data={"om": "true"}).content,
                                    photos))
        mattes = [client.post("/api/matte", files=upload(d), data={"outputs": "alpha"}).content for d in photos]
    with serving(onnx_weights, size=None, networks=2) as client:  # onnxruntime at fp32: apply.py's mattes
        fp32 = [client.post("/api/matte", files=upload(d), data={"outputs": "alpha"}).content for d in photos]
    assert crowded == alone  # one precision and one runtime for the route: the load does not change a mask
    assert mattes == fp32  # /api/matte stays apply.py's fp32 graph, byte for byte
    for mask, matte in zip(alone, mattes):
        assert np.abs(decoded(mask).astype(int) - decoded(matte).astype(int)).max() <= 3  # bf16 rounding
