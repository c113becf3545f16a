"""Video through apply.py (utils/inference/video.py, utils/inference/temporal.py): outputs and
their codecs, what is kept from the input (rate, time base, count, rotation, audio), the alpha
round trip, the temporal stabiliser, and bad input. Clips of 64x48, a few frames, made here."""
import os
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

import apply
from utils.inference.temporal import Stabiliser, make_stabiliser
from utils.inference.video import (VideoError, collect_videos, probe_video, read_alpha_frames,
                                   temporary_path)

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = ["--size", "64"]


def clip_frames(n, w, h):
    """A picture that moves: a bright disc over a gradient, uint8 RGB (h,w,3) each."""
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        disc = np.hypot(xx - (w / 3 + i * 2), yy - h / 2) < h / 4
        base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full((h, w), 90)], 2)
        yield np.where(disc[..., None], 230, base).astype(np.uint8)


def make_clip(path, n=10, w=64, h=48, rate=Fraction(25), rotation=0, audio=False, pts=None, codec="libx264",
              pix_fmt="yuv420p", fmt=None):
    """Write a test clip with PyAV: ``pts`` (list) gives variable frame times in 1/rate units."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    out = av.open(str(path), "w", format=fmt)
    stream = out.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
    if rotation:
        stream.set_display_rotation(rotation)
    sound = out.add_stream("aac", rate=44100) if audio else None
    for i, image in enumerate(clip_frames(n, w, h)):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = pts[i] if pts else i
        frame.time_base = 1 / Fraction(rate)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    if sound is not None:
        t = 0
        while t < n / rate * 44100:
            tone = (0.3 * np.sin(np.arange(t, t + 1024) / 7.0))[None].astype(np.float32)
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, t
            t += 1024
            for packet in sound.encode(frame):
                out.mux(packet)
        for packet in sound.encode():
            out.mux(packet)
    out.close()
    return str(path)


def run(weights, *args):
    return apply.main(["--model", weights, "--quiet", *SIZE, *map(str, args)])


def video_frames(path, codec=None, rgba=False):
    """[(pts, rotation, array)] of a file's video stream; ``codec`` picks the decoder (libvpx-vp9
    decodes VP9's alpha, FFmpeg's own vp9 does not), ``rgba`` the frames' format."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoder = av.CodecContext.create(codec, "r") if codec else None
        frames = []
        for packet in container.demux(stream):
            for frame in (decoder.decode(packet) if decoder else packet.decode()):
                fmt = "rgba" if codec or rgba else "rgb24"
                frames.append((frame.pts, frame.rotation, frame.to_ndarray(format=fmt)))
        return frames


def audio_packets(path):
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None, []
        stream = container.streams.audio[0]
        return stream.codec_context.name, [bytes(p) for p in container.demux(stream) if p.size]


def test_outputs_keep_rate_time_base_count_rotation_and_audio(tmp_path, weights):
    clip = make_clip(tmp_path / "in" / "walk.mp4", n=10, rate=Fraction(30000, 1001), rotation=90, audio=True)
    out = tmp_path / "out"
    assert run(weights, "--input", clip, "--output", out, "--outputs", "alpha,cutout,composite",
               "--background", "#00ff00", "--frames") == 0
    source = probe_video(clip)
    for path in (out / "alpha" / "walk.mp4", out / "composite" / "walk.mp4", out / "cutout" / "walk.webm"):
        info = probe_video(str(path))
        assert (info.width, info.height, info.rotation) == (64, 48, 90), path
        assert info.fps == Fraction(30000, 1001), path
        frames = video_frames(path)
        assert len(frames) == 10
        if path.suffix == ".mp4":
            assert info.time_base == source.time_base
            assert [f[0] for f in frames] == [f[0] for f in video_frames(clip)]  # every timestamp kept
    codec, packets = audio_packets(clip)
    assert audio_packets(out / "alpha" / "walk.mp4") == (codec, packets)  # copied, not re-encoded
    assert audio_packets(out / "composite" / "walk.mp4") == (codec, packets)
    assert audio_packets(out / "cutout" / "walk.webm")[0] == "opus"  # webm takes no AAC: re-encoded
    # PNG frames beside the videos, upright (the rotation applied), as photos are
    pngs = sorted(os.listdir(out / "alpha" / "walk"))
    assert pngs == [f"{i:06d}.png" for i in range(10)]
    assert np.array(Image.open(out / "alpha" / "walk" / pngs[0])).shape == (64, 48)
    assert not [n for n in os.listdir(out / "alpha") if n.endswith(".tmp")]


def test_alpha_video_round_trip_matches_the_png_frames(tmp_path, weights):
    clip = make_clip(tmp_path / "c.mkv", n=8, codec="libx264")
    out = tmp_path / "out"
    assert run(weights, "--input", clip, "--output", out, "--outputs", "alpha", "--frames", "also") == 0
    decoded = list(read_alpha_frames(str(out / "alpha" / "c.mp4")))
    pngs = [np.array(Image.open(out / "alpha" / "c" / f"{i:06d}.png")) for i in range(8)]
    assert len(decoded) == 8
    errors = [np.abs(d * 255 - p.astype(np.float32)).mean() for d, p in zip(decoded, pngs)]
    assert max(errors) <= 0.5, errors
    assert all(p.std() > 0 for p in pngs)  # a matte that varies, not a constant that survives anything
    with av.open(str(out / "alpha" / "c.mp4")) as container:
        assert int(container.streams.video[0].codec_context.color_range) == 2  # full range


def test_cutout_webm_and_mov_carry_the_alpha(tmp_path, weights):
    clip = make_clip(tmp_path / "c.mp4", n=4)
    out = tmp_path / "out"
    assert run(weights, "--input", clip, "--output", out, "--outputs", "alpha,cutout", "--frames") == 0
    assert run(weights, "--input", clip, "--output", tmp_path / "mov", "--outputs", "cutout", "--video-format", "mov") == 0
    alphas = [np.array(Image.open(out / "alpha" / "c" / f"{i:06d}.png")).astype(np.float32) for i in range(4)]
    webm = video_frames(out / "cutout" / "c.webm", codec="libvpx-vp9")
    assert len(webm) == 4 and webm[0][2].shape == (48, 64, 4)
    assert np.mean([np.abs(f[2][..., 3] - a).mean() for f, a in zip(webm, alphas)]) < 3
    with av.open(str(tmp_path / "mov" / "cutout" / "c.mov")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "prores" and "4444" in (stream.profile or "")
        assert stream.codec_context.format.name.startswith("yuva444p1")  # written 10-bit; decoders give 12
    mov = video_frames(tmp_path / "mov" / "cutout" / "c.mov", rgba=True)
    assert len(mov) == 4
    assert np.mean([np.abs(f[2][..., 3] - a).mean() for f, a in zip(mov, alphas)]) <= 1.01  # 8 -> 10 -> 12 -> 8 bits


def test_variable_frame_rate_and_odd_sizes(tmp_path, weights):
    times = [0, 1, 2, 5, 6, 10, 11, 12]  # frames at uneven times
    clip = make_clip(tmp_path / "vfr.mkv", n=8, w=63, h=47, pts=times, fmt="matroska", pix_fmt="yuv444p")
    out = tmp_path / "out"
    assert run(weights, "--input", clip, "--output", out, "--outputs", "alpha", "--frames") == 0
    stamps = [f[0] for f in video_frames(out / "alpha" / "vfr.mp4")]
    source = [f[0] for f in video_frames(clip)]
    tb_in, tb_out = probe_video(clip).time_base, probe_video(str(out / "alpha" / "vfr.mp4")).time_base
    assert [s * tb_out for s in stamps] == [s * tb_in for s in source]  # the same instants
    assert probe_video(str(out / "alpha" / "vfr.mp4")).width == 64  # 4:2:0: padded to even
    assert np.array(Image.open(out / "alpha" / "vfr" / "000000.png")).shape == (47, 63)  # PNGs keep the size


def test_folders_mix_photos_and_videos_and_reruns_keep_outputs(tmp_path, weights, capsys):
    make_clip(tmp_path / "in" / "a.mp4", n=3)
    make_clip(tmp_path / "in" / "sub" / "b.webm", n=3, codec="libvpx-vp9", fmt="webm")
    Image.fromarray(next(clip_frames(1, 40, 30))).save(tmp_path / "in" / "p.png")
    assert [v.name for v in collect_videos([str(tmp_path / "in")], recursive=True)] == ["a.mp4", "sub/b.webm"]
    out = tmp_path / "out"
    assert run(weights, "--input", tmp_path / "in", "--recursive", "--output", out, "--outputs", "alpha") == 0
    assert sorted(os.listdir(out / "alpha")) == ["a.mp4", "p.png", "sub"]
    assert os.listdir(out / "alpha" / "sub") == ["b.mp4"]
    before = os.path.getmtime(out / "alpha" / "a.mp4")
    assert run(weights, "--input", tmp_path / "in" / "a.mp4", "--output", out, "--outputs", "alpha") == 0
    assert os.path.getmtime(out / "alpha" / "a.mp4") == before
    assert "skipped existing" in capsys.readouterr().err
    assert run(weights, "--input", str(tmp_path / "in" / "*.mp4"), "--output", out, "--outputs", "alpha",
               "--overwrite", "--temporal", "none") == 0
    assert os.path.getmtime(out / "alpha" / "a.mp4") > before


def test_background_video_is_looped(tmp_path, weights):
    clip = make_clip(tmp_path / "c.mp4", n=6)
    background = make_clip(tmp_path / "bg.mp4", n=2, w=32, h=24)
    out = tmp_path / "out"
    assert run(weights, "--input", clip, "--output", out, "--outputs", "composite", "--background", background) == 0
    assert len(video_frames(out / "composite" / "c.mp4")) == 6


def truncated(tmp_path):
    clip = make_clip(tmp_path / "long.mkv", n=30, fmt="matroska")
    data = open(clip, "rb").read()
    path = tmp_path / "cut.mkv"
    path.write_bytes(data[:len(data) * 2 // 3])
    return str(path)


def test_bad_inputs_fail_by_name_without_a_final_half_file(tmp_path, weights, capsys):
    (tmp_path / "text.mp4").write_text("not a video at all\n" * 20)
    (tmp_path / "empty.mov").write_bytes(b"")
    audio_only = tmp_path / "sound.mp4"
    with av.open(str(audio_only), "w") as out:
        stream = out.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 44100, 0
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            out.mux(packet)
    no_frames = tmp_path / "none.mkv"
    with av.open(str(no_frames), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()  # the header, then no frames
    cut = truncated(tmp_path)
    out = tmp_path / "out"
    for path, words in [(tmp_path / "text.mp4", "not a video"), (tmp_path / "empty.mov", "empty file"),
                        (audio_only, "no video stream"), (no_frames, "frame"), (cut, "frame")]:
        capsys.readouterr()
        assert run(weights, "--input", path, "--output", out, "--outputs", "alpha") == 1, path
        err = capsys.readouterr().err
        assert str(path) in err and words in err, err
        assert "Traceback" not in err
        stem = os.path.splitext(os.path.basename(path))[0]
        if path != cut:
            assert not os.path.exists(out / "alpha" / f"{stem}.mp4"), path
    # the truncated clip: the frames before the damage, in a file that plays to its end
    kept = video_frames(out / "alpha" / "cut.mp4")
    assert 0 < len(kept) < 30
    assert not [n for n in os.listdir(out / "alpha") if n.endswith(".tmp")]
    with pytest.raises(VideoError, match="no video stream"):
        probe_video(str(audio_only))


def test_temporary_names_are_the_ones_reruns_clean(tmp_path):
    name = os.path.basename(temporary_path(str(tmp_path / "a.mp4")))
    assert name.startswith(f".a.mp4.{os.getpid()}.") and name.endswith(".tmp")


def test_stabiliser_steadies_still_flicker_and_follows_motion():
    rng = np.random.default_rng(0)
    h, w = 40, 40
    truth = np.zeros((h, w), np.float32)
    truth[:, 20:] = 1
    image = np.repeat((truth * 200 + 20).astype(np.uint8)[..., None], 3, axis=2)
    for method in ("ema", "flow"):
        stabiliser = make_stabiliser(method)
        outs = [stabiliser(None, image, np.clip(truth + rng.normal(0, 0.05, (h, w)), 0, 1).astype(np.float32))
                for _ in range(20)]
        flicker = np.mean([np.abs(b - a).mean() for a, b in zip(outs[5:], outs[6:])])
        assert flicker < 0.6 * 0.05 * 2 / np.sqrt(np.pi) * np.sqrt(2), method  # per frame: E|n1 - n2|
        # an edge that jumps 6 px with the picture: the output is at the new place at once
        moved = np.roll(truth, 6, axis=1)
        moved_image = np.roll(image, 6, axis=1)
        out = stabiliser(None, moved_image, moved)
        assert np.abs(out - moved).mean() < 0.02, method
    assert make_stabiliser("none") is None
    with pytest.raises(ValueError, match="--temporal must be one of"):
        make_stabiliser("kalman")
    with pytest.raises(ValueError, match="strength"):
        Stabiliser("ema", strength=1.5)


def moving_alphas(n, w=40, h=30, speed=2):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return [np.clip((8 - np.hypot(xx - 12 - speed * i, yy - 15)) / 3, 0, 1) for i in range(n)]


def write_frames(folder, alphas):
    os.makedirs(folder, exist_ok=True)
    for i, alpha in enumerate(alphas):
        Image.fromarray(np.round(alpha * 255).astype(np.uint8)).save(os.path.join(folder, f"{i:05d}.png"))


def test_stage2_video_scores_clips_against_pha_frames(tmp_path, capsys):
    import json

    import test_stage2
    from utils.inference.video import VideoInfo, VideoWriter
    from utils.metrics import dtssd, matting_metrics, messddt

    truth = moving_alphas(6)
    quantised = [np.round(a * 255) / 255 for a in truth]
    rng = np.random.default_rng(1)
    noisy = [np.clip(a + rng.normal(0, 0.05, a.shape) * (a > 0), 0, 1) for a in quantised]
    write_frames(tmp_path / "gt" / "exact" / "pha", truth)
    write_frames(tmp_path / "gt" / "noisy" / "pha", truth)
    write_frames(tmp_path / "gt" / "video" / "pha", truth)
    write_frames(tmp_path / "gt" / "absent" / "pha", truth)
    write_frames(tmp_path / "pred" / "exact", truth)               # apply.py --frames layout
    write_frames(tmp_path / "pred" / "noisy" / "pha", noisy)       # RVM's layout
    info = VideoInfo("none", 40, 30, None, Fraction(25), Fraction(1, 25), 0, "yuv420p", None)
    writer = VideoWriter(str(tmp_path / "pred" / "video.mp4"), "alpha", info, audio=False)
    for i, alpha in enumerate(truth):
        writer.write(np.round(alpha * 255).astype(np.uint8), i)
    writer.close()
    out = tmp_path / "scores"
    test_stage2.main(["--video", "--predictions", str(tmp_path / "pred"), "--alphas", str(tmp_path / "gt"),
                      "--output", str(out)])
    assert "absent" in capsys.readouterr().out  # no prediction: named and skipped
    rows = {r.split(",")[0]: r.split(",") for r in open(out / "metrics.csv").read().splitlines()[1:]}
    assert set(rows) == {"exact", "noisy", "video"}
    exact = [float(x) for x in rows["exact"][2:]]
    assert exact == [0.0] * 6
    noisy8 = [np.round(a * 255) / 255 for a in noisy]
    expected_mad = np.mean([matting_metrics(p, g)["mad"] for p, g in zip(noisy8, quantised)])
    assert float(rows["noisy"][2]) == pytest.approx(expected_mad, rel=1e-5)
    assert float(rows["noisy"][6]) == pytest.approx(dtssd(noisy8, quantised), rel=1e-5)
    assert float(rows["noisy"][7]) == pytest.approx(messddt(noisy8, quantised), rel=1e-4)
    assert float(rows["video"][2]) < 0.5 / 255  # the alpha video decodes to the frames it was given
    summary = json.load(open(out / "summary.json"))
    assert summary["clips"] == 3 and summary["frames"] == 18 and summary["skipped_clips"] == ["absent"]
    # a prediction with a frame missing is named
    os.remove(tmp_path / "pred" / "exact" / "00005.png")
    with pytest.raises(Exception, match="5 frames, but"):
        test_stage2.main(["--video", "--predictions", str(tmp_path / "pred"), "--alphas", str(tmp_path / "gt"),
                          "--output", str(out)])


def test_a_killed_runs_temporaries_are_cleaned_and_the_clip_redone(tmp_path, weights):
    clip = make_clip(tmp_path / "k.mp4", n=3)
    out = tmp_path / "out"
    os.makedirs(out / "alpha")
    stale = out / "alpha" / ".k.mp4.999999999.1.tmp"  # a process that no longer exists
    stale.write_bytes(b"half a video")
    assert run(weights, "--input", clip, "--output", out, "--outputs", "alpha") == 0
    assert not stale.exists()
    assert len(video_frames(out / "alpha" / "k.mp4")) == 3


def test_torchrun_shares_videos_with_photos():
    from utils.inference.files import InputFile, share_inputs

    items = [InputFile(f"/x/{n}", n) for n in ("a.mp4", "b.jpg", "c.webm", "d.png", "e.mov")]
    shares = [share_inputs(items, rank, 2) for rank in range(2)]
    assert sorted(i.name for s in shares for i in s) == sorted(i.name for i in items)  # each exactly once
    assert [i.name for i in shares[0]] == ["a.mp4", "c.webm", "e.mov"]  # by position, videos as photos
