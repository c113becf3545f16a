"""Background removal over HTTP: rembg's API, our matting API and a web page, on one model.

    python serve.py                                     # newest trained best.pth, http://127.0.0.1:7000/
    python serve.py --model u2net_mine.onnx --port 7000 # onnxruntime (export.py); PyTorch not imported
    python serve.py --model best.pth --host 0.0.0.0 --api-key "$KEY" --workers 2
    CUDA_VISIBLE_DEVICES=1 python serve.py --model best.pth --port 7001   # one process per GPU

    curl -s -F file=@photo.jpg http://127.0.0.1:7000/api/remove -o cutout.png          # as rembg's
    curl -s -F file=@photo.jpg -F outputs=alpha -F refine=matting http://127.0.0.1:7000/api/matte -o alpha.png

Endpoints: ``POST /api/remove`` (rembg 2.0.86's request: multipart ``file``; form ``a`` (alpha
matting: ``--refine matting``), ``af``, ``ab``, ``ae``, ``om`` (the mask only), ``ppm``, ``model``
(ignored: one model is served); query ``bgc`` (r,g,b,a), ``extras`` (ignored)); ``POST /api/matte``
(``outputs`` alpha | cutout | composite, ``refine``, ``background``, ``format`` png | webp: the
PNG apply.py writes for the same photo and flags, byte for byte); ``GET /healthz``; ``GET
/api/info``; ``GET /docs`` (OpenAPI); ``/`` the web page. URLs are never fetched.

The model, its size, device, precision and default refinement are chosen as apply.py chooses
them (same flags, same defaults). Concurrent requests share network calls (``--max-batch``,
``--max-wait-ms``); decoding, refinement and encoding run in ``--pool`` threads. Every limit is
a flag and a JSON error: upload size 413, pixel count (from the header, before decoding) 413,
not an image 415, ``--max-queue`` requests in the server 503 with Retry-After, ``--timeout``
504. SIGTERM (or Ctrl-C) finishes the requests in flight, then exits. The server keeps no
state between requests: run one process per GPU behind any HTTP load balancer.
"""
import argparse
import ipaddress
import logging
import os
import sys
from dataclasses import replace

REPO = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, REPO)

from utils.constants import PRECISIONS, REFINE_METHODS, RESIZE_POLICIES  # noqa: E402
from utils.inference.core import MatteOptions, refine_options  # noqa: E402
from utils.serving.app import CONFIG_ENV, ServeConfig, resolve_model  # noqa: E402
from utils.serving.limits import MB, Limits  # noqa: E402
from utils.settings import positive_int  # noqa: E402

DEFAULT_REFINE = "guided"  # apply.py's default


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7000, help="port (default: 7000, as rembg s)")
    p.add_argument("--model", metavar="FILE",
                   help="weights or an .onnx from export.py (default: newest results_stage2/1 best.pth)")
    p.add_argument("--size", type=positive_int, default=None,
                   help="network input size (default: the weights' training size, else an .onnx's export size, else 320)")
    p.add_argument("--resize", choices=RESIZE_POLICIES, default="square", help="as apply.py (default: square)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="as apply.py (default: fp32)")
    p.add_argument("--refine", choices=REFINE_METHODS, default=DEFAULT_REFINE,
                   help=f"default refinement of /api/matte and /api/remove (default: {DEFAULT_REFINE})")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads of each network call (default: an .onnx on a CPU cores / --networks, "
                        "else the core count)")
    p.add_argument("--networks", type=positive_int, default=None,
                   help="network calls at once (default: an .onnx on a CPU one per core up to 4, or cores / "
                        "--threads; else 1)")
    p.add_argument("--static-shapes", type=int, default=None,
                   help="an .onnx on a CPU: input shapes given fixed-shape sessions for /api/remove (faster; alphas "
                        "within 3e-8 of the dynamic graph's; 0: off; default: 4 on a CPU, else 0)")
    p.add_argument("--openvino", action="store_true",
                   help="an .onnx on a CPU: /api/remove's calls run on OpenVINO (the same .onnx): at fp32 while other "
                        "requests are in the server (~1.2x onnxruntime's speed), with --precision bf16 all of them in "
                        "bf16 (~6x on AMX Xeons); /api/matte stays on onnxruntime at fp32; default: onnxruntime")
    p.add_argument("--max-batch", type=int, default=None,
                   help="photos per network call at most (default: as apply.py's --batch-size, 1 on a CPU, 8 on CUDA)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a photo waits for others to share its network call (default: 5)")
    p.add_argument("--pool", type=int, default=min(4, os.cpu_count() or 1),
                   help="threads for decoding, refinement and encoding (default: min(4, cores))")
    p.add_argument("--workers", type=positive_int, default=1, help="server processes, each with its own model (default: 1)")
    p.add_argument("--max-upload-mb", type=float, default=Limits.max_upload_bytes / MB,
                   help="largest request body, 413 above (default: %(default)g)")
    p.add_argument("--max-pixels", type=positive_int, default=Limits.max_pixels,
                   help="largest photo in pixels, read from its header, 413 above (default: %(default)d)")
    p.add_argument("--max-queue", type=int, default=Limits.max_queue,
                   help="requests in the server at once, 503 with Retry-After above (default: %(default)d)")
    p.add_argument("--timeout", type=float, default=Limits.timeout_s,
                   help="seconds a request may take, 504 after (default: %(default)g)")
    p.add_argument("--api-key", default=os.environ.get("SERVE_API_KEY"),
                   help="required in the X-API-Key header of the upload routes (default: $SERVE_API_KEY, else none)")
    p.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages of ORIGIN (repeatable; default: no CORS)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return p.parse_args(argv)


def is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv=None):
    args = parse_args(argv)
    try:
        limits = Limits(max_upload_bytes=int(args.max_upload_mb * MB), max_pixels=args.max_pixels,
                        max_queue=args.max_queue, timeout_s=args.timeout)
        config = ServeConfig(model=args.model, size=args.size, resize=args.resize, device=args.device,
                             precision=args.precision, refine=args.refine, threads=args.threads,
                             networks=args.networks, static_shapes=args.static_shapes,
                             max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, pool=args.pool,
                             limits=limits, api_key=args.api_key or None, cors=tuple(args.cors),
                             openvino=args.openvino)
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        # the core's own checks of size, batch and refinement, before any process starts
        MatteOptions(size=args.size or 320, resize=args.resize, precision=args.precision,
                     batch_size=args.max_batch or 1, refine=refine_options(args.refine))
        config = replace(config, model=resolve_model(config))  # the same file in every worker process
    except ValueError as err:
        print(f"serve.py: error: {err}", file=sys.stderr)
        return 2
    if not is_loopback(args.host) and not config.api_key:
        print(f"serve.py: warning: listening on {args.host} without --api-key: anyone who reaches it can use it",
              file=sys.stderr)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    os.environ[CONFIG_ENV] = config.to_json()  # each worker process builds its app from it
    import uvicorn

    print(f"serve.py: {config.model} on http://{args.host}:{args.port}/ (API docs: /docs)", file=sys.stderr)
    uvicorn.run("utils.serving.app:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, timeout_graceful_shutdown=args.timeout + 5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
