"""The HTTP server's app: one model loaded once, rembg's ``/api/remove``, our ``/api/matte``, a
health check, the model's description and a web page.

    app = create_app(ServeConfig(model="best.pth", size=320))   # what serve.py runs on uvicorn
    with TestClient(app) as client:                              # the model loads on entering
        png = client.post("/api/remove", files={"file": open("photo.jpg", "rb")}).content

Each route parses its request, makes one pass through the inference core (decoding and the
rest in the batcher's thread pool, the network in its batches) and builds the response; every
refusal is an ``ApiError`` that ``error_response`` turns into ``{"error": ..., "status": ...}``
in one place. Nothing of a request is kept after it is answered, and no route reads a file or
a URL a client names: the server is stateless, so several processes can stand behind any load
balancer (one per GPU).
"""
import asyncio
import json
import logging
import os
import secrets
import sys
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from utils.constants import PRECISIONS, REFINE_METHODS, RESIZE_POLICIES
from utils.inference.core import (MatteOptions, Matter, ModelOutputError, default_batch_size, load_model_file,
                                  refine_options)
from utils.inference.files import OUTPUT_KINDS
from utils.inference.onnx_model import is_onnx_path, load_any_model
from utils.runs import find_weights, network_size

from .batcher import Batcher
from .limits import ApiError, Limits, Occupancy, UploadGate, decode_upload, parse_colour
from .openvino_model import NOT_INSTALLED, check_openvino_precision, openvino_available, openvino_view
from .render import FORMATS, encode, full_alpha, rembg_output, render

log = logging.getLogger("serve")
MAX_NETWORKS = 4  # default concurrent network calls of an .onnx on a CPU (network_threads)
CONFIG_ENV = "U2NET_SERVE_CONFIG"  # how uvicorn's worker processes get the settings (--workers)
UPLOAD_ROUTES = ("/api/remove", "/api/matte")
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
NO_MODEL = ("no model found: pass --model FILE (U2NET/U2NETP weights, e.g. a results_stage*/<run>/model/best.pth, "
            "or an .onnx from export.py), or train one (python train_stage1.py, python train_stage2.py)")
URL_REFUSED = ("this server does not fetch URLs (a server that fetches what clients name can be made to reach "
               "private addresses); send the image itself: POST /api/remove with the multipart field 'file'")


@dataclass(frozen=True)
class ServeConfig:
    """Everything a server process needs, as plain values (it travels to uvicorn's worker
    processes as JSON). model: a .pth or .onnx file, None for apply.py's choice (the newest
    trained best.pth); size None: the weights' training size (``utils.runs.network_size``);
    refine: the default refinement; threads: each network call's CPU threads and networks: the
    network calls at once (None: ``network_threads``'s defaults: an .onnx on a CPU runs one
    single-threaded call per core, up to 4, anything else one call on all cores); static_shapes: fixed-
    shape onnxruntime sessions for rembg's route (None: 4 for an .onnx on a CPU, else 0; see
    ``OnnxModel``); max_batch/max_wait_ms: batching (max_batch None: apply.py's batch size, 1 on
    a CPU, 8 on CUDA); pool: threads for decoding, refinement and encoding;
    api_key: required in the X-API-Key header of the upload routes when set; cors: allowed
    origins (none: no CORS headers); openvino: rembg's route on OpenVINO (the same .onnx): at fp32
    while other requests are in the server, at bf16 (precision) for all of that route's calls, while
    /api/matte stays on onnxruntime at fp32, apply.py's bytes (``utils.serving.openvino_model``)."""
    model: str | None = None
    size: int | None = None
    resize: str = "square"
    device: str = "auto"
    precision: str = "fp32"
    refine: str = "guided"
    threads: int | None = None
    networks: int | None = None
    static_shapes: int | None = None
    max_batch: int | None = None
    max_wait_ms: float = 5.0
    pool: int = 2
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    cors: tuple = ()
    openvino: bool = False

    def __post_init__(self):
        for name, allowed in (("resize", RESIZE_POLICIES), ("precision", PRECISIONS), ("refine", REFINE_METHODS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("max_batch", "pool", "networks"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.static_shapes is not None and self.static_shapes < 0:
            raise ValueError(f"--static-shapes must be >= 0, got {self.static_shapes}")
        if self.openvino:
            if self.threads is not None or self.static_shapes == 0:
                raise ValueError("--openvino runs rembg's route beside the all-cores onnxruntime session: leave out "
                                 "--threads and --static-shapes 0")
            check_openvino_precision(self.precision)
            if self.precision == "bf16" and self.resize != "square":
                raise ValueError("--openvino --precision bf16 compiles one input shape, the network's square: "
                                 f"leave out --resize {self.resize}")
            if not openvino_available():
                raise ValueError(NOT_INSTALLED)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        values = json.loads(text)
        return cls(**{**values, "limits": Limits(**values["limits"]), "cors": tuple(values["cors"])})


# ---------------------------------------------------------------- the model
def resolve_model(config: ServeConfig) -> str:
    """The weight file to serve: ``config.model``, else the newest trained best.pth (apply.py's
    rule, ``utils.runs.find_weights``). Raises ValueError when there is none or it is missing."""
    path = find_weights("serve", config.model)
    if path is None:
        raise ValueError(NO_MODEL)
    if not os.path.isfile(path):
        raise ValueError(f"--model {path}: no such file")
    return path


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def network_threads(config: ServeConfig, onnx: bool, on_cpu: bool, cores: int | None = None) -> tuple[int | None, int]:
    """(CPU threads of each network call (None: the runtime's default, all cores), network calls
    at once) while several photos are in the server. An .onnx on a CPU: one single-threaded call
    per core (at most MAX_NETWORKS calls, the cores shared among them) unless told (U2NETP at 320
    on two cores: more throughput than one call on two threads, documents/serving.md); a photo
    alone still gets all the cores (the Batcher's ``fast`` Matter). PyTorch on a CPU with
    ``networks`` N > 1: N lanes of ``cores // N`` threads each (bf16 on AMX: ~1.5x one call on two
    threads, documents/serving.md). PyTorch otherwise, or a GPU: one call at a time, as apply.py runs."""
    cores = cores or cpu_cores()
    if not onnx and on_cpu and (config.networks or 1) > 1:
        # PyTorch lanes (--networks N): torch's thread count is one setting for the whole process,
        # so each call gets its share of the cores, always (no switch for a photo alone)
        return config.threads or max(1, cores // config.networks), config.networks
    if not (onnx and on_cpu):
        return config.threads, config.networks or 1
    # at most MAX_NETWORKS calls by default: each holds its own activations (~150 MB for U2NETP at 320)
    networks = config.networks or (max(1, cores // config.threads) if config.threads else min(cores, MAX_NETWORKS))
    return config.threads or max(1, cores // networks), networks


@dataclass
class Loaded:
    """A server process's model: ``matter`` (apply.py's, for /api/matte), ``fast`` (rembg's
    route: ``matter`` itself unless fixed-shape sessions run it), the weights' ``path``, where
    the size came from (``size_source``), network calls at once (``networks``) and the
    fixed-shape ``OnnxModel`` views (``fixed``: for a photo alone, on all the cores; ``narrow``
    and its Matter ``fast_narrow``: while other calls run, ``--threads`` each; None without)."""
    matter: Matter
    fast: Matter
    path: str
    size_source: str
    networks: int
    fixed: object = None
    fast_narrow: Matter | None = None
    narrow: object = None


def load_matter(config: ServeConfig) -> Loaded:
    """The model of a server process (``Loaded``), as apply.py builds its own (``load_model_file``,
    the size by ``network_size``, the batch size as apply.py's unless ``max_batch``); the
    Batcher's max batch is its ``options.batch_size``. For an .onnx on a CPU the second Matter
    runs fixed-shape sessions (``static_shapes``) and is otherwise the first. Raises ValueError
    naming the file."""
    path = resolve_model(config)
    onnx = is_onnx_path(path)
    on_cpu = config.device == "cpu" or (onnx and config.device == "auto")  # refined below for an .onnx
    if not onnx and config.device != "cpu":
        from utils.device import resolve_device  # imports torch: a .pth needs it anyway
        on_cpu = resolve_device(config.device).type == "cpu"
    threads, networks = network_threads(config, onnx, on_cpu)
    if onnx:  # the dynamic graph (apply.py's bytes): all the cores unless --threads says
        model = load_any_model(path, device=config.device,
                               threads=config.threads or (threads if networks == 1 else None))
        device = model.device
        if device != "cpu":  # onnxruntime-gpu took it: one call at a time on the device
            threads, networks = config.threads, config.networks or 1
    else:
        model, device = load_model_file(path, config.device, threads)
    size, source = network_size(path, config.size, getattr(model, "input_size", None))
    options = MatteOptions(size=size, resize=config.resize, device=str(device), precision=config.precision,
                           batch_size=config.max_batch or default_batch_size(device),
                           refine=refine_options(config.refine))
    # --openvino --precision bf16: only rembg's route runs bf16 (OpenVINO); /api/matte keeps apply.py's fp32 graph
    matte_options = replace(options, precision="fp32") if config.openvino else options
    matter = Matter(model, matte_options, copy_model=False)
    static = config.static_shapes if config.static_shapes is not None else (4 if onnx and device == "cpu" else 0)
    if config.openvino and not (onnx and device == "cpu" and static):
        raise ValueError(f"--openvino: {path} is not an .onnx run on the CPU with fixed-shape sessions")
    if not (onnx and static):
        return Loaded(matter, matter, path, source, networks)
    hybrid = networks > 1 and not config.threads
    if config.openvino and not hybrid:
        raise ValueError(f"--openvino: {path} runs one network call at a time here ({networks}); it needs "
                         "several (two or more cores, no --networks 1)")
    # a photo alone runs on all the cores (fixed), several on `threads` each (narrow); --threads: always that.
    # --openvino: narrow is a single-threaded OpenVINO stream per network thread, and with bf16 fixed is too
    # (one precision for the route, whatever the load)
    if config.openvino:
        narrow = openvino_view(model, size, networks, config.precision)
    else:
        narrow = model.static_view(static, threads) if hybrid else None
    if config.openvino and config.precision == "bf16":
        fixed = narrow
    else:  # spinning off where narrow calls may run beside it: its idle threads would take their cores
        fixed = model.static_view(static, spinning=False) if hybrid else model.static_view(static)
    if config.resize == "square":  # every input is (1, size, size): opened and run now
        warm_up(model, fixed, narrow, size, networks)
    return Loaded(matter, Matter(fixed, options, copy_model=False), path, source, networks, fixed,
                  Matter(narrow, options, copy_model=False) if narrow else None, narrow)


def warm_up(model, fixed, narrow, size: int, networks: int) -> None:
    """Run a (1,3,size,size) zero input through each session, the narrow one from ``networks``
    threads at once: onnxruntime's arenas grow to what concurrent calls need at start-up, not
    over the first few hundred requests (RSS +35 % from the 100th to the 2,000th without, +1 %
    with: documents/serving.md)."""
    from concurrent.futures import ThreadPoolExecutor

    zeros = np.zeros((1, 3, size, size), np.float32)
    for net in (model, fixed):
        net(zeros)
    if narrow is not None:
        with ThreadPoolExecutor(networks) as pool:
            list(pool.map(lambda _: narrow(zeros), range(networks)))


# ---------------------------------------------------------------- errors, in one place
def error_response(err: ApiError) -> JSONResponse:
    """``{"error": message, "status": code}`` with the error's status and headers."""
    return JSONResponse({"error": err.message, "status": err.status}, status_code=err.status, headers=err.headers)


async def send_refusal(scope, receive, send, err: ApiError) -> None:
    """An ``ApiError`` sent from below the app (``UploadGate``)."""
    await error_response(err)(scope, receive, send)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, err):
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, err):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                             for e in err.errors())
        return error_response(ApiError(422, f"bad request: {problems}"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, err):
        return error_response(ApiError(err.status_code, str(err.detail), getattr(err, "headers", None)))

    @app.exception_handler(Exception)
    async def unexpected(request, err):  # logged with its traceback; the client gets one line
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(ApiError(500, f"internal error: {type(err).__name__}: {err}"))


# ---------------------------------------------------------------- the app
def create_app(config: ServeConfig) -> FastAPI:
    """The FastAPI app for ``config``; the model loads when the app starts (its lifespan)."""
    occupancy = Occupancy()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loaded = load_matter(config)
        matter, fast, path, size_source, networks = (loaded.matter, loaded.fast, loaded.path, loaded.size_source,
                                                     loaded.networks)
        app.state.matter, app.state.fixed = matter, loaded.fixed
        app.state.batcher = Batcher(matter, matter.options.batch_size, config.max_wait_ms, config.pool,
                                    networks=networks, fast=fast, narrow=loaded.fast_narrow,
                                    crowded=lambda: occupancy.in_server > 1)  # another request decoded or sent
        runtime = matter.runtime if matter.runtime == "onnxruntime" else config.precision
        log.info("serving %s (%s, %dx%d from %s) on %s, %s; refine %s; batches of up to %d, %d network call(s) "
                 "at once%s", path, matter.arch, matter.options.size, matter.options.size, size_source,
                 matter.device, runtime, config.refine, matter.options.batch_size, networks,
                 "; fixed-shape sessions for /api/remove" if fast is not matter else "")
        try:
            yield
        finally:
            app.state.batcher.close()

    app = FastAPI(title="U^2-Net human matting", lifespan=lifespan, version="1.0",
                  description="Background removal for photos of people. POST /api/remove takes rembg's "
                              "request; POST /api/matte gives alpha mattes, cut-outs and composites.")
    add_error_handlers(app)
    app.add_middleware(UploadGate, limits=config.limits, paths=UPLOAD_ROUTES, respond=send_refusal,
                       occupancy=occupancy)
    if config.cors:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors), allow_methods=["GET", "POST"],
                           allow_headers=["X-API-Key", "Content-Type"])
    pages = {name: open(os.path.join(STATIC, name), encoding="utf-8").read()
             for name in ("index.html", *STATIC_FILES)}  # read once: no request path reaches the disk

    def check_key(request: Request) -> None:
        if config.api_key and not secrets.compare_digest(request.headers.get("x-api-key", ""), config.api_key):
            raise ApiError(401, "missing or wrong API key: send it in the X-API-Key header")

    async def photo_to_alpha(request: Request, data: bytes, method: str | None, options: dict | None = None,
                             exact: bool = True):
        """(photo uint8 (H,W,3), alpha float32 (H,W)) of an upload, under the request time limit;
        ``exact`` False: the network by the batcher's fast Matter (rembg's route)."""
        batcher, matter = request.app.state.batcher, request.app.state.matter

        async def work():
            image = await batcher.run(decode_upload, data, config.limits.max_pixels)
            coarse = await batcher.coarse(image, exact)
            return image, await batcher.run(full_alpha, matter, image, coarse, method, options)
        return await within_time(work())

    async def within_time(coroutine):
        try:
            return await asyncio.wait_for(coroutine, config.limits.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took over {config.limits.timeout_s:g} s (--timeout)") from None
        except ModelOutputError as err:  # the weights' fault, not the photo's
            raise ApiError(500, f"the model failed: {err}") from err

    # ------------------------------------------------------------ pages and status
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(pages["index.html"])

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC_FILES:
            raise ApiError(404, f"no static file {name!r}")
        return Response(pages[name], media_type=STATIC_FILES[name])

    @app.get("/healthz", summary="Ready, and how many requests are in the server")
    async def healthz(request: Request):
        batcher = request.app.state.batcher
        return {"status": "ready", "queue": occupancy.in_server, "max_queue": config.limits.max_queue,
                "waiting_for_network": batcher.waiting, "network": batcher.stats.as_dict()}

    @app.get("/api/info", summary="The model served and the server's limits")
    async def info(request: Request):
        matter, fixed = request.app.state.matter, request.app.state.fixed
        limits = config.limits
        return {"arch": matter.arch, "size": matter.options.size, "resize": matter.options.resize,
                "device": matter.device, "precision": matter.options.precision,
                "remove_precision": request.app.state.batcher.fast.options.precision,
                "runtime": matter.runtime,
                "refine": config.refine, "refine_methods": list(REFINE_METHODS), "outputs": list(OUTPUT_KINDS),
                "formats": list(FORMATS), "max_batch": matter.options.batch_size, "max_wait_ms": config.max_wait_ms,
                "networks": request.app.state.batcher.networks,
                "fixed_shapes": [list(shape) for shape in (fixed.fixed_shapes if fixed else [])],
                "crowd_runtime": "openvino" if config.openvino else matter.runtime,
                "api_key_required": bool(config.api_key),
                "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                           "max_queue": limits.max_queue, "timeout_s": limits.timeout_s}}

    # ------------------------------------------------------------ rembg's API
    @app.get("/api/remove", summary="rembg's URL form: refused (this server fetches no URLs)")
    async def remove_url(url: str | None = Query(None)):
        raise ApiError(400, URL_REFUSED)

    @app.post("/api/remove", dependencies=[Depends(check_key)],
              summary="rembg 2.0.86's POST /api/remove: the photo's cut-out as an RGBA PNG",
              responses={200: {"content": {"image/png": {}}}})
    async def remove(request: Request,
                     file: UploadFile | None = File(None, description="the photo"),
                     model: str | None = Form(None, description="accepted and ignored: one model is served"),
                     a: bool | None = Form(None, description="alpha matting: refine with matting"),
                     af: int | None = Form(None, ge=0, le=255, description="matting: sure foreground above af/255"),
                     ab: int | None = Form(None, ge=0, le=255, description="matting: sure background below ab/255"),
                     ae: int | None = Form(None, ge=0, description="accepted; the band follows the photo's scale"),
                     om: bool | None = Form(None, description="only the mask (8-bit gray PNG)"),
                     ppm: bool | None = Form(None, description="post-process the mask (rembg's binary mask)"),
                     url: str | None = Form(None, include_in_schema=False),
                     bgc: str | None = Query(None, description="background colour r,g,b,a (0-255)"),
                     extras: str | None = Query(None, description="accepted and ignored")):
        if file is None:
            raise ApiError(400 if url else 422, URL_REFUSED if url else "no file: send the photo as the multipart "
                                                                        "field 'file'")
        fields = rembg_fields(request, a=a, af=af, ab=ab, ae=ae, om=om, ppm=ppm)
        colour = parse_colour(bgc, "bgc") if bgc else None
        method, options = ("matting", matting_thresholds(fields)) if fields["a"] else (None, None)
        image, alpha = await photo_to_alpha(request, await file.read(), method, options, exact=False)
        batcher = request.app.state.batcher
        body, media_type = await within_time(batcher.run(
            lambda: encode(rembg_output(image, alpha, fields["om"], fields["ppm"], colour))))
        return Response(body, media_type=media_type)

    # ------------------------------------------------------------ ours
    @app.post("/api/matte", dependencies=[Depends(check_key)],
              summary="An alpha matte, cut-out or composite at the photo's size, as apply.py writes it",
              responses={200: {"content": {"image/png": {}, "image/webp": {}}}})
    async def matte(request: Request,
                    file: UploadFile = File(..., description="the photo"),
                    outputs: str = Form("cutout", description="alpha | cutout | composite"),
                    refine: str | None = Form(None, description="none | guided | matting (default: the server's)"),
                    background: str = Form("#ffffff", description="composite: a colour (#00ff00, white, 0,255,0)"),
                    background_file: UploadFile | None = File(None, description="composite: a background image"),
                    format: str = Form("png", description="png | webp")):
        if outputs not in OUTPUT_KINDS:
            raise ApiError(422, f"outputs {outputs!r}: expected one of {', '.join(OUTPUT_KINDS)}")
        if refine is not None and refine not in REFINE_METHODS:
            raise ApiError(422, f"refine {refine!r}: expected one of {', '.join(REFINE_METHODS)}")
        if format not in FORMATS:
            raise ApiError(422, f"format {format!r}: expected one of {', '.join(FORMATS)}")
        batcher = request.app.state.batcher
        under = None
        if outputs == "composite":
            under = (await within_time(batcher.run(decode_upload, await background_file.read(),
                                                   config.limits.max_pixels))
                     if background_file is not None else
                     np.array(parse_colour(background, "background")[:3], dtype=np.uint8))
        image, alpha = await photo_to_alpha(request, await file.read(), refine)
        body, media_type = await within_time(batcher.run(
            lambda: encode(render(outputs, image, alpha, under), format)))
        return Response(body, media_type=media_type,
                        headers={"X-Refine": refine or config.refine, "X-Image-Size": f"{image.shape[1]}x{image.shape[0]}"})

    return app


def rembg_fields(request: Request, **form) -> dict:
    """rembg's form fields, each from the form, else from the query string (some of rembg's
    clients send them there, which rembg itself ignores), else rembg's default."""
    defaults = {"a": False, "af": None, "ab": None, "ae": None, "om": False, "ppm": False}
    query = request.query_params
    out = {}
    for name, value in form.items():
        if value is None and name in query:
            text = query[name].strip().lower()
            if defaults[name] is False:
                if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ApiError(422, f"{name} {query[name]!r}: expected true or false")
                value = text in ("1", "true", "yes", "on")
            else:
                try:
                    value = int(text)
                except ValueError:
                    raise ApiError(422, f"{name} {query[name]!r}: expected an integer") from None
        out[name] = defaults[name] if value is None else value
    return out


def matting_thresholds(fields: dict) -> dict:
    """Our matting's trimap thresholds from rembg's ``af``/``ab`` when a client sends them (rembg:
    mask above af is sure foreground, below ab sure background); our defaults otherwise."""
    options = {}
    if fields["af"] is not None:
        options["high"] = min(fields["af"], 254) / 255.0
    if fields["ab"] is not None:
        options["low"] = max(fields["ab"], 1) / 255.0
    if options.get("low", 0.0) >= options.get("high", 1.0):
        raise ApiError(422, f"ab ({fields['ab']}) must be below af ({fields['af']})")
    return options


def app_from_env() -> FastAPI:
    """``create_app`` for the settings serve.py put in ``$U2NET_SERVE_CONFIG`` (uvicorn's
    import-string factory, which each of its ``--workers`` processes calls)."""
    if not logging.getLogger().handlers:  # a worker process of --workers: serve.py's logging stayed in the parent
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    text = os.environ.get(CONFIG_ENV)
    if not text:
        sys.exit(f"{CONFIG_ENV} is not set: start the server with python serve.py")
    return create_app(ServeConfig.from_json(text))

