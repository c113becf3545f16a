"""Video files in and out (PyAV: FFmpeg's libraries in a wheel, no ffmpeg binary), and
``matte_video``: every frame of a clip through the inference core into alpha, composite and
cut-out videos.

    matter = Matter.load("best.pth", MatteOptions())
    report = matte_video(matter, "clip.mp4", "out", outputs=("alpha", "cutout"))
    # out/alpha/clip.mp4, out/cutout/clip.webm; report.ok is False if a frame was damaged

Outputs (codec settings chosen so that each survives what it is used for):

========================  ==================================================================
``alpha/<stem>.mp4``      H.264 (libx264), the alpha in the luma plane, full range (0..255,
                          flagged ``pc``), chroma 128, CRF ``ALPHA_CRF``, preset ``ALPHA_PRESET``:
                          the decoded luma is the 8-bit alpha within ``0.5/255`` on average
``composite/<stem>.mp4``  H.264, yuv420p BT.709 limited range, CRF ``COMPOSITE_CRF``
``cutout/<stem>.webm``    VP9 (libvpx-vp9) yuva420p, CRF ``CUTOUT_CRF`` (browsers, editors)
``cutout/<stem>.mov``     ProRes 4444 (prores_ks, profile 4444, yuva444p10le; editors)
``<kind>/<stem>/*.png``   ``frames="also"|"only"``: PNG sequences, ``%06d.png``, as photos
========================  ==================================================================

Kept from the input: the frame rate and time base (each frame keeps its timestamp, so a
variable frame rate stays variable), the frame count, the rotation (display matrix: frames are
matted upright and written as stored, with the same rotation) and the audio track (copied
packet for packet where the container takes the codec, else re-encoded: AAC in mp4/mov, Opus
in webm). 4:2:0 needs even sizes: an odd width or height is padded by one replicated pixel in
the videos (not in the PNG frames). Every file is written under a temporary name and renamed
when complete; a clip whose decoding fails half-way (truncated, corrupt) still gets the frames
before the damage, in properly closed files, and the failure names the file and the frame.
"""
from __future__ import annotations

import contextlib
import os
import queue
import shutil
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import cv2
import numpy as np

from utils.fileio import TMP_SUFFIX

from .core import Matted, error_reason
from .cutout import parse_background
from .files import (InputFile, MatteReport, clash_reason, collect_inputs, encode_png, is_complete,
                    remove_stale_temporaries, render_outputs, separate_clashes)
from .temporal import DEFAULT_TEMPORAL, make_stabiliser

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
VIDEO_FORMATS = ("webm", "mov")    # the cut-out's container: VP9 with alpha, or ProRes 4444
FRAME_MODES = ("none", "also", "only")
ALPHA_CRF = 6        # with ALPHA_PRESET, benchmarks/video.py's clip: mean |decoded - PNG| 0.009/255 at 360p, 0.004 at 720p, largest 3/255
ALPHA_PRESET = "ultrafast"  # x264: 2.7 ms a 360p frame (medium: 12.3, mean 0.043/255, largest 64/255), files 2.5x medium's
COMPOSITE_CRF = 18   # visually lossless for x264
CUTOUT_CRF = 24      # VP9 (with -b:v 0: constant quality)
QUEUE_FRAMES = 8     # decoded frames held ahead of the network (bounded memory)
MAX_LANES = 4        # frames in the network at once on a CPU (frame_results); each holds its activations
LANE_CV_THREADS = True  # OpenCV's threads shared between the lanes as PyTorch's are (1 each on 2 cores)
_CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".webm": "webm", ".mkv": "matroska", ".png": None}
_AUDIO_FALLBACK = {"mp4": "aac", "mov": "aac", "webm": "libopus"}


class VideoError(ValueError):
    """A video that cannot be read or written; the message names the file (and the frame)."""


def is_video_file(path: str) -> bool:
    """Whether ``path``'s extension is one of ``VIDEO_EXTENSIONS`` (case-insensitive)."""
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe_video`` reads from a file's headers. width, height: as stored (before the
    rotation); frames: the header's count (None when the container does not say); fps: the
    average rate (None if unknown); rotation: counter-clockwise degrees to display upright."""
    path: str
    width: int
    height: int
    frames: int | None
    fps: Fraction | None
    time_base: Fraction
    rotation: int
    pix_fmt: str
    audio: str | None
    duration: float | None = None   # seconds, from the headers (the stream's, else the container's)


def _open(path: str):
    import av

    try:
        return av.open(path)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise VideoError(f"{path}: empty file") from err
        if isinstance(err, av.EOFError):  # a header and nothing after it
            raise VideoError(f"{path}: has no frames (the file ends before any)") from err
        raise VideoError(f"{path}: not a video FFmpeg can read ({_ffmpeg_reason(err)})") from err


def _ffmpeg_reason(err) -> str:
    """FFmpeg's own words for ``err`` (its strerror), else the message's last line."""
    text = str(err).strip()
    return getattr(err, "strerror", None) or (text.splitlines()[-1] if text else type(err).__name__)


def probe_video(path: str, max_pixels: int | None = None) -> VideoInfo:
    """Read ``path``'s headers (no frame decoded) -> ``VideoInfo``. Raises ``VideoError``: not
    a video, no video stream (audio only), frames above ``max_pixels``."""
    with _open(path) as container:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            raise VideoError(f"{path}: has no video stream (streams: {kinds})")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if not ctx.width or not ctx.height:
            raise VideoError(f"{path}: the video stream has no frame size (no frames?)")
        if max_pixels is not None and ctx.width * ctx.height > max_pixels:
            raise VideoError(f"{path}: {ctx.width}x{ctx.height} frames have {ctx.width * ctx.height} pixels, "
                             f"more than --max-pixels {max_pixels}")
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        duration = float(stream.duration * stream.time_base) if stream.duration else \
            (container.duration / 1e6 if container.duration else None)
        rotation = _stream_rotation(container, stream)
        return VideoInfo(path, ctx.width, ctx.height, stream.frames or None, stream.average_rate,
                         Fraction(stream.time_base), rotation, ctx.format.name if ctx.format else "?", audio,
                         duration)


def _stream_rotation(container, stream) -> int:
    """The display rotation, read from the first decodable frame's side data (PyAV exposes it
    there); 0 if none can be decoded here (decoding problems are reported by ``read_frames``)."""
    import av

    try:
        for frame in container.decode(stream):
            return int(round(frame.rotation or 0)) % 360
    except (av.FFmpegError, OSError):
        pass
    return 0


@dataclass
class Frame:
    """One decoded frame: ``index`` (0-based), ``pts`` in ``time_base`` units and ``image``
    uint8 RGB (H,W,3), upright (the rotation applied)."""
    index: int
    pts: int
    image: np.ndarray


class FrameReader:
    """Decodes a video's frames in a thread, ``QUEUE_FRAMES`` ahead; iterate for ``Frame``s.

    After the iteration ends, ``error`` is None or a ``VideoError`` naming the file and the
    frame where decoding stopped (truncated, corrupt), and ``count`` the frames given. Use as a
    context manager (the thread and file are closed on leaving)."""

    def __init__(self, path: str, info: VideoInfo | None = None, gray: bool = False):
        self.path, self.info = path, info or probe_video(path)
        self.gray = gray
        self.error: VideoError | None = None
        self.count = 0
        self._queue: queue.Queue = queue.Queue(QUEUE_FRAMES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._decode, name="video-decode", daemon=True)
        self._thread.start()

    def _decode(self) -> None:
        import av

        k = self.info.rotation // 90
        index, fallback, first, last = 0, 0, None, None
        try:
            with _open(self.path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                tb = stream.time_base
                step = int(round(1 / (self.info.fps * tb))) if self.info.fps and tb else 1
                for frame in container.decode(stream):
                    image = _frame_array(frame, self.gray)
                    pts = frame.pts if frame.pts is not None else fallback
                    fallback = pts + step
                    first = pts if first is None else first
                    last = pts + step
                    if not self._offer(Frame(index, pts, np.ascontiguousarray(np.rot90(image, k)) if k else image)):
                        return
                    index += 1
        except VideoError as err:
            self.error = err
        except (av.FFmpegError, OSError, ValueError) as err:
            self.error = VideoError(f"{self.path}: decoding failed at frame {index} "
                                    f"({_ffmpeg_reason(err)}); frames 0-{index - 1} are all that could be read")
        if self.error is None and self.info.frames and index < self.info.frames:
            self.error = VideoError(f"{self.path}: truncated or corrupt: frame {index} of the {self.info.frames} "
                                    "the header announces could not be decoded")
        if self.error is None and not self.info.frames and self.info.duration and last is not None:
            # no frame count in the header (Matroska, WebM): the duration says whether the data ended early
            decoded = float((last - first) * self.info.time_base)
            frame_time = float(1 / self.info.fps) if self.info.fps else 0.04
            if decoded < self.info.duration - max(3 * frame_time, 0.1):
                self.error = VideoError(f"{self.path}: truncated or corrupt: decoding stopped after frame {index - 1} "
                                        f"({decoded:.2f} s of the {self.info.duration:.2f} s the header gives)")
        if self.error is None and index == 0:
            self.error = VideoError(f"{self.path}: has no frames")
        self._offer(None)

    def _offer(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Frame]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self.count += 1
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _frame_array(frame, gray: bool) -> np.ndarray:
    """A decoded frame -> uint8 RGB (H,W,3); ``gray``: the alpha it holds, uint8 (H,W) (the
    luma plane as it is when full range, else limited range stretched to 0..255)."""
    if not gray:
        return frame.to_ndarray(format="rgb24")
    name = frame.format.name
    if name.startswith(("yuv", "yuvj", "nv12")) and frame.format.components[0].bits == 8:
        plane = frame.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:frame.height, :frame.width]
        if name.startswith("yuvj") or int(frame.color_range or 0) == 2:
            return y.copy()
        return np.clip((y.astype(np.float32) - 16) * (255 / 219) + 0.5, 0, 255).astype(np.uint8)
    return frame.to_ndarray(format="gray")


def read_alpha_frames(path: str) -> Iterator[np.ndarray]:
    """An alpha video (ours, or any gray-looking one) -> float32 (H,W) in [0,1] per frame, as
    stored (not rotated). Raises ``VideoError`` at the end if decoding failed part-way."""
    info = probe_video(path)
    info = VideoInfo(**{**info.__dict__, "rotation": 0})
    with FrameReader(path, info, gray=True) as reader:
        for frame in reader:
            yield frame.image.astype(np.float32) / 255.0
        if reader.error is not None:
            raise reader.error


# ---------------------------------------------------------------- writing
def temporary_path(path: str) -> str:
    """``<folder>/.<name>.<pid>.<thread>.tmp``: the name ``files.remove_stale_temporaries``
    cleans up after a killed run."""
    folder, base = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{base}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}")


def _even(n: int) -> int:
    return n + (n & 1)


def _pad_even(array: np.ndarray) -> np.ndarray:
    h, w = array.shape[:2]
    if not (h & 1 or w & 1):
        return array
    pad = ((0, h & 1), (0, w & 1)) + ((0, 0),) * (array.ndim - 2)
    return np.pad(array, pad, mode="edge")


class VideoWriter:
    """One output video: ``kind`` alpha (``write`` takes uint8 (H,W)), composite (uint8 RGB
    (H,W,3)) or cutout (uint8 RGBA (H,W,4)), into ``path`` (its extension picks the container:
    .mp4, .webm, .mov). Frames keep the input's timestamps, time base, rate and rotation; the
    audio of ``info.path`` is muxed alongside. ``close(complete)`` renames the temporary file
    into place, or removes it. Raises ``VideoError`` naming ``path``."""

    def __init__(self, path: str, kind: str, info: VideoInfo, audio: bool = True):
        import av

        self.path, self.kind, self.info = path, kind, info
        self.tmp = temporary_path(path)
        fmt = _CONTAINERS[os.path.splitext(path)[1].lower()]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            self.container = av.open(self.tmp, "w", format=fmt)
            self.stream = self._video_stream(fmt)
            self.audio = _AudioTrack(info.path, self.container, fmt) if audio and info.audio else None
        except (av.FFmpegError, OSError, ValueError) as err:
            self._discard()
            raise VideoError(f"{path}: cannot start writing ({_ffmpeg_reason(err)})") from err
        self.frames = 0

    def _video_stream(self, fmt):
        rate = self.info.fps or Fraction(25)
        width, height = _even(self.info.width), _even(self.info.height)
        if self.kind == "cutout" and fmt == "mov":
            stream = self.container.add_stream("prores_ks", rate=rate)
            stream.pix_fmt = "yuva444p10le"
            stream.options = {"profile": "4444", "alpha_bits": "16"}
        elif self.kind == "cutout":
            stream = self.container.add_stream("libvpx-vp9", rate=rate)
            stream.pix_fmt = "yuva420p"
            stream.options = {"crf": str(CUTOUT_CRF), "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
        else:
            stream = self.container.add_stream("libx264", rate=rate)
            stream.pix_fmt = "yuv420p"
            crf = ALPHA_CRF if self.kind == "alpha" else COMPOSITE_CRF
            # the alpha: ultrafast, 4-5x less encoding time than medium and closer to the PNG (more bits)
            stream.options = {"crf": str(crf), "preset": ALPHA_PRESET if self.kind == "alpha" else "medium"}
            if self.kind == "alpha":
                stream.codec_context.color_range = 2  # full range: 0 and 255 stay 0 and 255
            else:
                stream.codec_context.colorspace = stream.codec_context.color_primaries = 1  # BT.709
                stream.codec_context.color_trc = 1
        stream.width, stream.height = width, height
        stream.time_base = self.info.time_base
        stream.codec_context.time_base = self.info.time_base
        if self.info.rotation:
            stream.set_display_rotation(self.info.rotation)
        return stream

    def write(self, array: np.ndarray, pts: int) -> None:
        """Encode one frame (as stored: not rotated), timestamp ``pts`` in the input's time base."""
        import av

        frame = self._frame(_pad_even(array))
        frame.pts, frame.time_base = pts, self.info.time_base
        try:
            if self.audio is not None:
                self.audio.mux_until(pts * self.info.time_base)
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        except (av.FFmpegError, OSError, ValueError) as err:
            raise VideoError(f"{self.path}: encoding frame {self.frames} failed ({_ffmpeg_reason(err)})") from err
        self.frames += 1

    def _frame(self, array):
        import av

        if self.kind == "alpha":  # the alpha is the luma itself: no colour conversion to round it
            h, w = array.shape
            chroma = np.full(h * w // 2, 128, np.uint8)
            frame = av.VideoFrame.from_ndarray(np.concatenate([array.ravel(), chroma]).reshape(-1, w), format="yuv420p")
            frame.color_range = 2
            return frame
        if self.kind == "composite":
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            return frame.reformat(format="yuv420p", dst_colorspace="ITU709")
        return av.VideoFrame.from_ndarray(array, format="rgba")

    def close(self, complete: bool = True) -> None:
        """Flush and close; ``complete``: rename into place (also after a partial clip: what
        is written is a valid file), else remove the temporary file."""
        import av

        try:
            if complete:
                for packet in self.stream.encode():
                    self.container.mux(packet)
                if self.audio is not None:
                    self.audio.mux_until(None)
            self.container.close()
        except (av.FFmpegError, OSError, ValueError) as err:
            self._discard()
            raise VideoError(f"{self.path}: finishing the file failed ({_ffmpeg_reason(err)})") from err
        finally:
            if self.audio is not None:
                self.audio.close()
        if complete and self.frames:
            os.replace(self.tmp, self.path)
        self._discard()

    def _discard(self):
        with contextlib.suppress(Exception):
            self.container.close()
        with contextlib.suppress(OSError):
            os.remove(self.tmp)


class _AudioTrack:
    """The input's first audio stream into an output container: packets copied where the
    container takes the codec, else decoded and re-encoded (``_AUDIO_FALLBACK``); muxed in
    step with the video (``mux_until``), so nothing of it is held in memory."""

    def __init__(self, source: str, container, fmt: str):
        self.input = _open(source)
        self.source = self.input.streams.audio[0]
        self.copy = self.source.codec_context.name in container.supported_codecs
        if self.copy:
            self.stream = container.add_stream_from_template(self.source)
        else:
            self.stream = container.add_stream(_AUDIO_FALLBACK[fmt], rate=48000 if fmt == "webm" else self.source.rate)
            self.stream.layout = "stereo" if self.source.layout.nb_channels > 1 else "mono"
        self.packets = self.input.demux(self.source)
        self.pending = None
        self.done = False

    def mux_until(self, seconds) -> None:
        """Mux the audio up to ``seconds`` (None: all of it)."""
        container = self.stream.container
        while not self.done:
            packet = self.pending or next(self.packets, None)
            self.pending = None
            if packet is None:
                self.done = True
                if not self.copy:
                    for out in self.stream.encode(None):
                        container.mux(out)
                return
            if packet.dts is None and packet.size == 0:  # the demuxer's flush packet
                continue
            if seconds is not None and packet.pts is not None and packet.pts * packet.time_base > seconds:
                self.pending = packet
                return
            if self.copy:
                packet.stream = self.stream
                container.mux(packet)
            else:
                for frame in packet.decode():
                    frame.pts = None
                    for out in self.stream.encode(frame):
                        container.mux(out)

    def close(self):
        self.input.close()


class FrameFolder:
    """A PNG sequence ``<folder>/%06d.png`` written into a temporary folder beside it and
    renamed into place when complete (as ``VideoWriter``)."""

    def __init__(self, folder: str):
        self.folder, self.tmp = folder, temporary_path(folder)
        os.makedirs(self.tmp, exist_ok=True)
        self.frames = 0

    def write(self, array: np.ndarray, pts: int = 0) -> None:
        with open(os.path.join(self.tmp, f"{self.frames:06d}.png"), "wb") as f:
            f.write(encode_png(array))
        self.frames += 1

    def close(self, complete: bool = True) -> None:
        if complete and self.frames:
            if os.path.isdir(self.folder):
                shutil.rmtree(self.folder)
            os.replace(self.tmp, self.folder)
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------- backgrounds
class VideoBackground:
    """A background video for composites, looped: ``next()`` gives its next frame, from the
    start again after its last."""

    def __init__(self, path: str):
        self.path, self.info = path, probe_video(path)
        self.reader: FrameReader | None = None
        self.frames: Iterator[Frame] | None = None

    def next(self) -> np.ndarray:
        """The next frame, uint8 RGB (H,W,3) (``render_outputs`` fits it to the photo)."""
        for _ in range(2):
            if self.frames is None:
                self.reader = FrameReader(self.path, self.info)
                self.frames = iter(self.reader)
            frame = next(self.frames, None)
            if frame is not None:
                return frame.image
            error, given = self.reader.error, self.reader.count
            self.close()
            if given == 0:
                raise error or VideoError(f"--background {self.path}: has no frames")
        raise VideoError(f"--background {self.path}: gives no frames")

    def first(self) -> np.ndarray:
        """The first frame, uint8 RGB (H,W,3): the background of photos matted in the same run."""
        with FrameReader(self.path, self.info) as reader:
            for frame in reader:
                return frame.image
            raise reader.error or VideoError(f"--background {self.path}: has no frames")

    def close(self):
        if self.reader is not None:
            self.reader.close()
        self.reader = self.frames = None


def parse_video_background(spec: str):
    """``--background`` for videos: a colour or an image (``parse_background``), or a video
    file (``VideoBackground``, looped). Raises ValueError naming ``spec``."""
    if os.path.isfile(spec) and is_video_file(spec):
        return VideoBackground(spec)
    return parse_background(spec)


# ---------------------------------------------------------------- matting a clip
def video_output_path(output_dir: str, kind: str, name: str, video_format: str = "webm") -> str:
    """``<output_dir>/<kind>/<name's folders>/<stem>.mp4`` (cut-outs: ``.webm`` or ``.mov``)."""
    ext = f".{video_format}" if kind == "cutout" else ".mp4"
    return os.path.join(output_dir, kind, os.path.splitext(name)[0] + ext)


def frames_output_path(output_dir: str, kind: str, name: str) -> str:
    """``<output_dir>/<kind>/<name's folders>/<stem>/``: a PNG sequence's folder."""
    return os.path.join(output_dir, kind, os.path.splitext(name)[0])


def _is_complete_folder(path: str) -> bool:
    with contextlib.suppress(OSError):
        return any(n.endswith(".png") for n in os.listdir(path))
    return False


def _plan(output_dir, name, outputs, video_format, frames, overwrite):
    """[(kind, "video"|"frames", path)] still to write, and the kinds kept as they are."""
    todo, kept = [], []
    for kind in outputs:
        targets = []
        if frames != "only":
            targets.append(("video", video_output_path(output_dir, kind, name, video_format)))
        if frames != "none":
            targets.append(("frames", frames_output_path(output_dir, kind, name)))
        for how, path in targets:
            remove_stale_temporaries(path)  # a killed run's temporary file or frame folder
            done = is_complete(path) if how == "video" else _is_complete_folder(path)
            (kept if done and not overwrite else todo).append((kind, how, path))
    return todo, kept


@dataclass
class VideoOptions:
    """How ``matte_video`` writes a clip. background: for composites, a colour/image array
    (``parse_background``), a ``VideoBackground`` or a spec string (``parse_video_background``).
    temporal: a ``utils.inference.temporal`` method (``none``: per frame). video_format: the
    cut-out's container, ``webm`` or ``mov``. frames: ``none``, ``also`` or ``only`` (PNG
    sequences beside or instead of the videos). overwrite: replace complete outputs (else kept).
    progress: a progress bar per clip. max_pixels: larger frames fail (from the header)."""
    background: object = None
    temporal: str = DEFAULT_TEMPORAL
    video_format: str = "webm"
    frames: str = "none"
    overwrite: bool = False
    progress: bool = True
    max_pixels: int | None = None

    def check(self, outputs: tuple[str, ...]) -> None:
        """Raise ValueError naming the first bad field (before any work)."""
        from .files import OUTPUT_KINDS

        unknown = [k for k in outputs if k not in OUTPUT_KINDS]
        if not outputs or unknown:
            raise ValueError(f"outputs must be a non-empty subset of {OUTPUT_KINDS}, got {list(outputs)}")
        if self.video_format not in VIDEO_FORMATS:
            raise ValueError(f"video_format must be one of {VIDEO_FORMATS}, got {self.video_format!r}")
        if self.frames not in FRAME_MODES:
            raise ValueError(f"frames must be one of {FRAME_MODES}, got {self.frames!r}")
        if "composite" in outputs and self.background is None:
            raise ValueError("a composite needs a background (a colour, an image or a video)")
        make_stabiliser(self.temporal)


def matte_video(matter, path: str, output_dir: str, outputs: tuple[str, ...] = ("alpha", "cutout"),
                options: VideoOptions | None = None, name: str | None = None, note=None) -> MatteReport:
    """Matte every frame of the video ``path`` into ``<output_dir>/<kind>/<name>.<ext>``.

    matter: a ``utils.inference.core.Matter``. outputs: subset of alpha, cutout, composite.
    options: a ``VideoOptions`` (default: its defaults). name: the output name (default the
    file's name; apply.py passes the name relative to the folder given). note: where messages
    go (default stderr). Returns a ``MatteReport`` with this clip done, skipped (outputs exist)
    or failed (a damaged clip is failed, and its outputs hold the frames before the damage);
    raises ValueError for bad options and ModelOutputError for a broken network.
    """
    options = options or VideoOptions()
    note = note or (lambda message: print(message, file=sys.stderr))
    name = name or os.path.basename(path)
    options.check(outputs)
    background = options.background
    if isinstance(background, str):
        background = parse_video_background(background)
    stabilise = make_stabiliser(options.temporal)  # a new state for every clip
    report, start = MatteReport(), time.perf_counter()
    todo, kept = _plan(output_dir, name, outputs, options.video_format, options.frames, options.overwrite)
    if kept:
        note(f"{'skipped' if not todo else 'kept'} existing {', '.join(p for _, _, p in kept)} (--overwrite replaces)")
    if not todo:
        report.skipped.append((name, "outputs exist"))
        return report
    try:
        info = probe_video(path, options.max_pixels)
        reason = _matte_clip(matter, info, todo, background, stabilise, options.progress)
    except VideoError as err:
        reason = str(err)
    report.seconds = time.perf_counter() - start
    if reason is None:
        report.done.append(name)
    else:
        report.failed.append((name, reason))
        note(f"failed: {path}: {reason}" if not reason.startswith(path) else f"failed: {reason}")
    return report


def _matte_clip(matter, info: VideoInfo, todo, background, stabilise, progress) -> str | None:
    """The frames of one clip through ``matter`` into the writers of ``todo``; None when every
    frame was written, else the reason (frames before it are written and closed)."""
    from tqdm import tqdm

    writers = []
    reason, complete = None, False
    try:
        for kind, how, path in todo:
            writers.append((kind, FrameFolder(path) if how == "frames" else VideoWriter(path, kind, info)))
        k = info.rotation // 90
        kinds = {kind for kind, _ in writers}
        bar = tqdm(total=info.frames, unit="frame", disable=not progress, dynamic_ncols=True,
                   desc=os.path.basename(info.path))
        with FrameReader(info.path, info) as reader:
            for done in frame_results(matter, reader, stabilise):
                if done.error is not None:
                    reason = f"{info.path}: frame {done.item.index}: {done.error}"
                    break
                _write_frame(writers, kinds, done.item, done.image, done.alpha, background, k)
                bar.update(1)
            if reason is None and reader.error is not None:
                reason = str(reader.error)
        bar.close()
        complete = True  # what was written is kept, also when the clip stopped early
    except VideoError as err:
        reason = str(err)
    finally:
        if isinstance(background, VideoBackground):
            background.close()
        for _, writer in writers:
            try:
                writer.close(complete)
            except VideoError as err:
                reason = reason or str(err)
    return reason


def cpu_lanes(matter) -> int:
    """How many frames ``frame_results`` puts through the network at once: on a CPU with
    PyTorch, one per core (at most ``MAX_LANES``), each call on ``threads // lanes`` threads;
    1 elsewhere (CUDA, onnxruntime: the core's ``Matter.stream``, batched)."""
    if matter.runtime != "pytorch" or not matter.device.startswith("cpu"):
        return 1
    import torch

    return max(1, min(MAX_LANES, torch.get_num_threads()))


def frame_results(matter, frames: Iterator[Frame], stabilise=None) -> Iterator:
    """``Matter.stream(frames, ...)`` for a clip's frames (``Matted`` items in order, the
    stabiliser called in order between the network and refinement), faster on a CPU: there
    ``cpu_lanes`` frames go through the network at once, each call single-threaded (or on its
    share of the threads), and each frame is refined in the thread that ran its network call.

    Why (documents/video.md, "Speed and memory"): one network call on all the cores runs its
    OpenMP team in lock-step, and the refinement, stabiliser and encoder threads that run
    beside it stall the whole team (U2NETP bf16 at 360p: 151 ms a call alone, 240-300 ms in the
    core's pipeline). Independent single-threaded calls keep every core busy instead. The
    values are the same: each frame's network call, stabiliser step and refinement are the
    core's own (``Matter.prepare``, ``network``, ``full``)."""
    lanes = cpu_lanes(matter)
    if lanes == 1:
        yield from matter.stream(frames, lambda frame: frame.image, stabilise)
        return
    import torch

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(max(1, threads // lanes))  # each lane's share (the settings are global)
    if LANE_CV_THREADS:
        cv2.setNumThreads(max(1, cv_threads // lanes))
    try:
        yield from _Lanes(matter, stabilise, lanes).run(frames)
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


class _Lanes:
    """One clip through ``frame_results``' lanes: a pool of ``lanes`` threads, each taking the
    next frame through prepare -> network -> (in frame order) the stabiliser's step ->
    refinement. (Making the stabiliser's flows in the lanes beside the network calls was
    measured slower and removed: documents/video.md.)"""

    def __init__(self, matter, stabilise, lanes: int):
        self.matter, self.stabilise, self.lanes = matter, stabilise, lanes
        self.turn = 0                   # the frame whose stabiliser step is next
        self.failed: int | None = None  # the first frame whose network call failed: later ones need not wait
        self.order = threading.Condition()
        self.stop = threading.Event()   # the consumer left

    def _skip(self, index: int) -> bool:
        return self.stop.is_set() or (self.failed is not None and index > self.failed)

    def _fail(self, index: int) -> None:
        """Frame ``index`` failed (called holding ``order``): the earliest failure ends the clip."""
        self.failed = index if self.failed is None else min(self.failed, index)

    def _frame(self, frame: Frame):
        try:
            small = self.matter.network(self.matter.prepare(frame.image)[None])[0]
        except BaseException:  # the clip ends at this frame (raised in order by ``run``)
            with self.order:
                self._fail(frame.index)
                self.order.notify_all()
            raise
        with self.order:  # the stabiliser's steps in frame order: it carries the previous frame's state
            self.order.wait_for(lambda: self.turn == frame.index or self._skip(frame.index))
            if self._skip(frame.index):
                return None  # after a failure: never handed out
            try:
                if self.stabilise is not None:
                    small = self.stabilise(frame, frame.image, small)
            except BaseException:
                self._fail(frame.index)
                raise
            finally:
                self.turn = frame.index + 1
                self.order.notify_all()
        try:
            return Matted(frame, frame.image, self.matter.full(frame.image, small))
        except Exception as err:  # noqa: BLE001 - as the core's stream: a frame's refinement failure is that frame's
            return Matted(frame, None, None, error_reason(err))

    def run(self, frames: Iterator[Frame]) -> Iterator:
        pending: deque = deque()
        pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="lane")
        try:
            for frame in frames:
                pending.append(pool.submit(self._frame, frame))
                if len(pending) >= 2 * self.lanes:  # bounded: at most 2 x lanes frames in flight
                    yield pending.popleft().result()  # a network error (ModelOutputError) ends the clip here
            while pending:
                yield pending.popleft().result()
        finally:
            self.stop.set()
            with self.order:
                self.order.notify_all()
            pool.shutdown(wait=True, cancel_futures=True)


def _write_frame(writers, kinds, frame: Frame, image, alpha, background, k) -> None:
    """One matted frame (upright) into every writer: videos get it as stored (rotated back),
    PNG frames upright, as photos are."""
    if isinstance(background, VideoBackground):
        background = background.next()
    arrays = render_outputs(kinds, image, alpha, background)
    for kind, writer in writers:
        if isinstance(writer, FrameFolder):
            writer.write(arrays[kind])
        else:
            writer.write(np.ascontiguousarray(np.rot90(arrays[kind], -k)) if k else arrays[kind], frame.pts)


def collect_videos(specs: list[str], recursive: bool = False, exclude: str | None = None) -> list[InputFile]:
    """The video files (``VIDEO_EXTENSIONS``) in the folders and globs of ``specs``, named as
    ``files.collect_inputs`` names photos, in a stable order. Files named explicitly are
    ``collect_inputs``' (it takes any file)."""
    folders_and_globs = [spec for spec in specs if not os.path.isfile(spec)]
    return collect_inputs(folders_and_globs, recursive, exclude, wanted=is_video_file)[0]


def matte_videos(matter, videos: list[InputFile], output_dir: str, outputs: tuple[str, ...],
                 options: VideoOptions | None = None) -> MatteReport:
    """``matte_video`` for each of ``videos`` (``InputFile``s), one report for all; two videos
    whose outputs would overwrite each other (``a.mp4``, ``a.mov``): the second fails by name."""
    report = MatteReport()
    kept, clashes = separate_clashes(videos)
    for item, owner in clashes:
        report.failed.append((item.name, clash_reason(owner)))
        print(f"failed: {item.path}: output name clashes with {owner}", file=sys.stderr)
    for item in kept:
        report = report.add(matte_video(matter, item.path, output_dir, outputs, options, name=item.name))
    return report


# ---------------------------------------------------------------- scoring (test_stage2.py --video)
VIDEO_SCORE_COLUMNS = ("name", "frames", "mad", "mse", "grad", "conn", "dtssd", "messddt")


def ground_truth_clips(root: str) -> dict[str, list[str]]:
    """A VideoMatte240K-style folder ``<root>/<clip>/pha/*.png`` (or .jpg) -> {clip: sorted
    frame paths}. Raises ``EvaluationError`` naming ``root`` when it holds no such clip."""
    from data_loader.image_io import is_image_file

    from .evaluate import EvaluationError

    if not os.path.isdir(root):
        raise EvaluationError(f"folder not found: {root}")
    clips = {}
    for clip in sorted(os.listdir(root)):
        pha = os.path.join(root, clip, "pha")
        if os.path.isdir(pha):
            clips[clip] = sorted(os.path.join(pha, n) for n in os.listdir(pha) if is_image_file(n))
    if not clips:
        raise EvaluationError(f"{root}: no <clip>/pha/ folders of ground-truth frames (VideoMatte240K layout)")
    return clips


def prediction_of(folder: str, clip: str) -> str | None:
    """Where ``clip``'s predicted alphas are in ``folder``: ``<clip>.<video ext>`` (apply.py's
    alpha video), ``<clip>/pha/`` or ``<clip>/`` (PNG frames, apply.py --frames); None if none."""
    for ext in VIDEO_EXTENSIONS:
        if os.path.isfile(os.path.join(folder, clip + ext)):
            return os.path.join(folder, clip + ext)
    for sub in (os.path.join(folder, clip, "pha"), os.path.join(folder, clip)):
        if _is_complete_folder(sub):
            return sub
    return None


def _predicted_frames(path: str) -> Iterator[np.ndarray]:
    from data_loader.image_io import is_image_file, read_alpha

    if os.path.isfile(path):
        yield from read_alpha_frames(path)
        return
    for name in sorted(n for n in os.listdir(path) if is_image_file(n)):
        yield read_alpha(os.path.join(path, name))


def score_clip(prediction: str, truth_frames: list[str]) -> dict:
    """One clip's row: mean MAD, MSE, Grad, Conn over its frames, and its dtSSD and MESSDdt
    (utils/metrics.py), reading two frames at a time. A prediction padded to even sizes (our
    4:2:0 videos) is cropped back. Raises ``EvaluationError`` naming the files."""
    from data_loader.image_io import read_alpha
    from utils.metrics import dtssd_frame, matting_metrics, messddt_pair

    from .evaluate import EvaluationError

    sums = dict.fromkeys(("mad", "mse", "grad", "conn", "dtssd", "messddt"), 0.0)
    previous, count = None, 0
    predicted = _predicted_frames(prediction)
    try:
        for index, truth_path in enumerate(truth_frames):
            pred = next(predicted, None)
            if pred is None:
                raise EvaluationError(f"{prediction}: {index} frames, but {os.path.dirname(truth_path)} has "
                                      f"{len(truth_frames)}")
            gt = read_alpha(truth_path)
            h, w = gt.shape
            if pred.shape != gt.shape and (pred.shape[0] - h, pred.shape[1] - w) in ((0, 1), (1, 0), (1, 1)):
                pred = pred[:h, :w]
            if pred.shape != gt.shape:
                raise EvaluationError(f"{prediction}: frame {index} is {pred.shape[1]}x{pred.shape[0]} but "
                                      f"{truth_path} is {w}x{h}")
            for key, value in matting_metrics(pred, gt).items():
                if key in sums:
                    sums[key] += value
            if previous is not None:
                sums["dtssd"] += dtssd_frame(pred, previous[0], gt, previous[1])
                sums["messddt"] += messddt_pair(previous[0], previous[1], pred, gt)
            previous, count = (pred, gt), count + 1
        if next(predicted, None) is not None:
            raise EvaluationError(f"{prediction}: more frames than the {len(truth_frames)} of "
                                  f"{os.path.dirname(truth_frames[0])}")
    except VideoError as err:
        raise EvaluationError(str(err)) from err
    row = {key: value / count for key, value in sums.items() if key not in ("messddt",)}
    row["messddt"] = sums["messddt"] / (count - 1) if count > 1 else 0.0
    return {"frames": count, **row}


def score_video_folders(predictions: str, truths: str, output: str) -> dict:
    """test_stage2.py --video: every clip of ``truths`` (``<clip>/pha/*.png``) against its
    prediction in ``predictions`` (``prediction_of``), into ``<output>/metrics.csv`` (one row a
    clip, ``VIDEO_SCORE_COLUMNS``) and ``summary.json`` (the means over clips, the frame count).
    Clips without a prediction are listed and skipped; none at all is an ``EvaluationError``.
    Returns the summary."""
    import csv

    from .evaluate import EvaluationError, write_json

    clips = ground_truth_clips(truths)
    found = {clip: prediction_of(predictions, clip) for clip in clips}
    missing = sorted(clip for clip, path in found.items() if path is None)
    if len(missing) == len(clips):
        raise EvaluationError(f"{predictions}: no prediction for any of the {len(clips)} clips of {truths} "
                              "(expected <clip>.mp4, <clip>/pha/*.png or <clip>/*.png)")
    if missing:
        print(f"{len(missing)} clip(s) without a prediction, skipped: {', '.join(missing)}")
    rows = []
    for clip, path in found.items():
        if path is not None:
            rows.append({"name": clip, **score_clip(path, clips[clip])})
            print(f"  {clip}: " + ", ".join(f"{k} {rows[-1][k]:.5g}" for k in VIDEO_SCORE_COLUMNS[2:]))
    means = {key: float(np.mean([row[key] for row in rows])) for key in VIDEO_SCORE_COLUMNS[2:]}
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=VIDEO_SCORE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    summary = {"clips": len(rows), "frames": sum(row["frames"] for row in rows), "means": means,
               "means_of": "clips (each clip's mean over its frames)", "predictions": predictions, "truths": truths,
               "skipped_clips": missing,
               "scaling": "mad, mse unscaled; grad, conn / 1000 (mean per frame); dtssd x 100; messddt x 1000"}
    write_json(os.path.join(output, "summary.json"), summary)
    return summary


def work_units(files: list[InputFile]) -> int:
    """How much work ``files`` are, in photos: 1 a photo, a video its frame count (from the
    header; its duration x rate where the container gives no count; 10 000 if neither, or if
    it cannot be read). For torchrun's waits (apply.py's ``gather_report``)."""
    units = 0
    for item in files:
        if not is_video_file(item.path):
            units += 1
            continue
        try:
            info = probe_video(item.path)
        except VideoError:
            units += 1  # it fails at once
            continue
        estimate = info.frames or (info.duration * float(info.fps) if info.duration and info.fps else 10_000)
        units += int(estimate)
    return units
