"""export.py and the onnxruntime path: round trips (ONNX and TorchScript, U2NETP and U2NET), the
metadata, the parity check failing and leaving no file, .onnx models in apply.py (without
torch) and test_stage2.py within 1/255 of the PyTorch path, corrupt and foreign .onnx files,
and apply.py without arguments.

Small inputs (64 px, the smallest export size) and random weights with varied BatchNorm
statistics, so that the alphas differ from pixel to pixel.
"""
import copy
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import apply
import export
import test_stage2
from model import build_model, load_model
from utils.constants import IMAGENET_MEAN, IMAGENET_STD
from utils.inference.onnx_model import OnnxModel, OnnxModelError, load_any_model
from utils.inference.core import predict_alphas

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_weights(path, arch="u2netp", seed=0):
    """Random weights whose BatchNorm statistics vary, saved as a plain state_dict."""
    torch.manual_seed(seed)
    net = build_model(arch)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_weights(tmp_path_factory.mktemp("weights") / "u2netp.pth")


@pytest.fixture(scope="module")
def onnx_file(weights, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx") / "u2netp.onnx")
    assert export.main(["--model", weights, "--output", path, "--size", str(SIZE)]) == 0
    return path


def photos(folder, count=3, shape=(90, 70)):
    """Smooth random photos (gradients plus noise) as JPEGs; returns their paths."""
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        h, w = shape[0] + 7 * i, shape[1] + 5 * i
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), 120.0)], axis=2)
        image = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"p{i}.jpg")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image).save(path, quality=95)
        paths.append(path)
    return paths


def test_onnx_round_trip_and_metadata(onnx_file, weights):
    net = OnnxModel(onnx_file, threads=1)
    meta = net.metadata
    assert (net.arch, net.input_size, net.precision, meta["dynamic"]) == ("u2netp", SIZE, "fp32", "true")
    assert np.allclose(json.loads(meta["mean"]), IMAGENET_MEAN) and np.allclose(json.loads(meta["std"]), IMAGENET_STD)
    assert json.loads(meta["outputs"]) == ["alpha"] and meta["source"] == "u2netp.pth"
    inputs, outputs = net.session.get_inputs(), net.session.get_outputs()
    assert [i.name for i in inputs] == ["input"] and [o.name for o in outputs] == ["alpha"]
    assert net.fixed_size is None  # dynamic batch, height and width
    reference = load_model(weights)
    x = np.random.default_rng(0).normal(size=(2, 3, 75, 99)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x))[0][:, 0].numpy()
    got = net(x)
    assert got.shape == (2, 75, 99) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-4 and expected.std() > 1e-3


def test_export_prints_parity_at_two_sizes(weights, tmp_path, capsys):
    assert export.main(["--model", weights, "--output", str(tmp_path / "m.onnx"), "--size", str(SIZE)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("parity ")]
    assert [line.split(":")[0] for line in lines] == ["parity 1x3x64x64", "parity 2x3x49x81"]
    assert all(float(line.rsplit("=", 1)[1]) <= 1e-4 for line in lines)
    assert os.listdir(tmp_path) == ["m.onnx"]  # no temporary file left


def test_export_size_defaults_to_the_training_runs_own(weights, tmp_path):
    """No --size: the run's image_size (so apply.py runs the .onnx at the size it was trained at)."""
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "best.pth").write_bytes(open(weights, "rb").read())
    (run / "settings.json").write_text(json.dumps({"image_size": 80}))
    path = str(tmp_path / "m.onnx")
    assert export.main(["--model", str(run / "model" / "best.pth"), "--output", path]) == 0
    assert OnnxModel(path).input_size == 80


def test_torchscript_round_trip(weights, tmp_path):
    path = str(tmp_path / "u2netp.pt")
    assert export.main(["--model", weights, "--output", path, "--size", str(SIZE)]) == 0  # format from .pt
    extra = {"metadata.json": ""}
    traced = torch.jit.load(path, _extra_files=extra)
    assert json.loads(extra["metadata.json"])["arch"] == "u2netp"
    x = torch.randn(1, 3, 72, 88)
    with torch.no_grad():
        assert torch.allclose(traced(x)[0], load_model(weights)(x)[0], atol=1e-5)


def test_all_outputs_and_static_shape(weights, tmp_path):
    path = str(tmp_path / "static.onnx")
    assert export.main(["--model", weights, "--output", path, "--size", str(SIZE), "--static", "--all-outputs"]) == 0
    net = OnnxModel(path, threads=1)
    assert [o.name for o in net.session.get_outputs()] == ["alpha", "d1", "d2", "d3", "d4", "d5", "d6"]
    assert net.fixed_size == (SIZE, SIZE) and net.metadata["dynamic"] == "false"
    assert net(np.zeros((1, 3, SIZE, SIZE), np.float32)).shape == (1, SIZE, SIZE)
    with pytest.raises(ValueError, match="--static"):
        net(np.zeros((1, 3, 80, 80), np.float32))


def test_u2net_round_trip(tmp_path):
    """The full U2NET (176 MB of weights) exports and matches PyTorch too (~15-20 s)."""
    weights = random_weights(tmp_path / "u2net.pth", "u2net")
    path = str(tmp_path / "u2net.onnx")
    assert export.main(["--model", weights, "--output", path, "--size", str(SIZE)]) == 0
    assert OnnxModel(path, threads=1).arch == "u2net"


def test_parity_failure_leaves_no_file(weights, tmp_path, monkeypatch, capsys):
    """A graph that differs from the PyTorch model (written from a copy with one weight altered)
    fails the export, prints the difference, and leaves neither a file nor a temporary."""
    write_onnx = export.write_onnx

    def altered(head, path, *args):
        head = copy.deepcopy(head)  # the reference keeps the original weights
        with torch.no_grad():
            head.net.outconv.bias += 0.05  # the fused alpha moves by up to 0.05 * sigmoid'
        write_onnx(head, path, *args)

    monkeypatch.setattr(export, "write_onnx", altered)
    output = tmp_path / "m.onnx"
    output.write_bytes(b"an older export")  # kept as it was
    assert export.main(["--model", weights, "--output", str(output), "--size", str(SIZE)]) == 1
    err = capsys.readouterr().err
    assert "parity check failed" in err and "no file written" in err
    assert output.read_bytes() == b"an older export" and sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_tolerance_is_checked_for_torchscript_too(weights, tmp_path, capsys):
    path = tmp_path / "m.pt"
    assert export.main(["--model", weights, "--output", str(path), "--size", str(SIZE), "--tolerance", "-1"]) == 1
    assert "parity check failed" in capsys.readouterr().err and not os.listdir(tmp_path)


def one_line_error(argv, capsys):
    """export.main's argparse error for ``argv``: exit 2 and the message line."""
    with pytest.raises(SystemExit) as stop:
        export.main(argv)
    assert stop.value.code == 2
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line][0]


@pytest.mark.parametrize("extra, message", [
    (["--size", "32"], "--size must be in 64..4096, got 32"),
    (["--size", "0"], "--size: must be >= 1, got 0"),  # 0 was 'the default' before
    (["--size", "5000"], "--size must be in 64..4096, got 5000"),
    (["--opset", "5"], "--opset must be in 11..20"),  # was a long exporter traceback
    (["--opset", "99"], "--opset must be in 11..20"),
    (["--calibrate-count", "0"], "--calibrate-count: must be >= 1, got 0"),
    (["--precision", "int8", "--opset", "12"], "--precision int8 needs --opset >= 13"),
])
def test_bad_export_numbers_are_one_line_errors(weights, tmp_path, capsys, extra, message):
    line = one_line_error(["--model", weights, "--output", str(tmp_path / "m.onnx"), *extra], capsys)
    assert message in line and not os.listdir(tmp_path)


@pytest.mark.parametrize("name, extra, message", [
    ("x.txt", [], "--output x.txt: a onnx file must end in .onnx"),  # apply.py would read it as PyTorch weights
    ("x.pth", [], "a onnx file must end in .onnx"),
    ("x.onnx", ["--format", "torchscript"], "a torchscript file must end in .pt or .ts or .torchscript"),
    ("x.pt", ["--format", "onnx"], "a onnx file must end in .onnx"),
    ("x.pt", ["--precision", "int8"], "--precision int8 is for ONNX files"),
])
def test_output_suffix_must_match_the_format(weights, tmp_path, capsys, monkeypatch, name, extra, message):
    monkeypatch.chdir(tmp_path)
    assert message in one_line_error(["--model", weights, "--output", name, *extra], capsys)
    assert not os.listdir(tmp_path)


def test_weight_errors_do_not_advise_weights_only_false(tmp_path, capsys):
    """A pickle that would run code is refused without torch's advice to load it unsafely."""
    class Evil:
        def __reduce__(self):
            return (print, ("this ran",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    assert export.main(["--model", str(tmp_path / "evil.pth"), "--output", str(tmp_path / "m.onnx")]) == 1
    captured = capsys.readouterr()
    assert "evil.pth" in captured.err and "other than tensors (print)" in captured.err
    assert "weights_only" not in captured.err and "this ran" not in captured.out


def test_bad_export_arguments(weights, tmp_path, capsys):
    assert export.main(["--model", str(tmp_path / "none.pth"), "--output", str(tmp_path / "m.onnx")]) == 1
    assert "none.pth" in capsys.readouterr().err and not os.listdir(tmp_path)


def test_corrupt_and_foreign_onnx_files(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    with pytest.raises(OnnxModelError, match="corrupt.onnx: not a usable ONNX model"):
        load_any_model(str(bad))
    with pytest.raises(OnnxModelError, match="missing.onnx: no such ONNX file"):
        load_any_model(str(tmp_path / "missing.onnx"))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(foreign))
    with pytest.raises(OnnxModelError, match=r"foreign.onnx: input 'x' has shape \[1, 5\]"):
        load_any_model(str(foreign))
    image = photos(str(tmp_path / "in"), count=1)[0]
    assert apply.main(["--input", image, "--output", str(tmp_path / "out"), "--model", str(bad), "--quiet"]) == 2
    assert "corrupt.onnx: not a usable ONNX model" in capsys.readouterr().err


def applied_alphas(model, images, output):
    """apply.py's alpha PNGs (int16, for differences) of ``images`` (one folder) with ``model``."""
    folder = os.path.dirname(images[0])
    assert apply.main(["--input", folder, "--outputs", "alpha", "--size", str(SIZE), "--quiet", "--threads", "1",
                       "--model", model, "--output", str(output)]) == 0
    names = [os.path.basename(p).replace(".jpg", ".png") for p in images]
    return [np.array(Image.open(output / "alpha" / name), np.int16) for name in names]


def test_onnx_alphas_match_pytorch_in_apply_and_predict(onnx_file, weights, tmp_path):
    images = photos(str(tmp_path / "in"))
    pytorch = applied_alphas(weights, images, tmp_path / "pt")
    onnx = applied_alphas(onnx_file, images, tmp_path / "onnx")
    for a, b in zip(pytorch, onnx):
        assert a.shape == b.shape and np.abs(a - b).max() <= 1 and a.std() > 0.5
    arrays = [np.array(Image.open(p).convert("RGB")) for p in images]
    expected = predict_alphas(load_model(weights), arrays, size=SIZE)
    got = predict_alphas(load_any_model(onnx_file, threads=1), arrays, size=SIZE)
    assert max(float(np.abs(g - e).max()) for g, e in zip(got, expected)) <= 1 / 255


def test_apply_with_onnx_does_not_import_torch(onnx_file, tmp_path):
    photos(str(tmp_path / "in"), count=1)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import apply; "
            "status = apply.main(['--input', sys.argv[2], '--output', sys.argv[3], '--model', sys.argv[4], "
            "'--size', '64', '--outputs', 'alpha', '--quiet', '--threads', '1']); "
            "print(status, sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])")
    done = subprocess.run([sys.executable, "-c", code, REPO, str(tmp_path / "in"), str(tmp_path / "out"), onnx_file],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "0 []", done.stdout + done.stderr
    assert os.path.isfile(tmp_path / "out" / "alpha" / "p0.png")


def test_test_stage2_scores_an_onnx_model_as_its_weights(onnx_file, weights, tmp_path):
    rng = np.random.default_rng(2)
    images = photos(str(tmp_path / "images"))
    for path in images:
        h, w = np.array(Image.open(path)).shape[:2]
        alpha = (rng.random((h, w)) > 0.5).astype(np.uint8) * 255
        os.makedirs(tmp_path / "alphas", exist_ok=True)
        Image.fromarray(alpha).save(tmp_path / "alphas" / os.path.basename(path).replace(".jpg", ".png"))
    means = {}
    for path in (weights, onnx_file):
        out = tmp_path / os.path.basename(path)
        test_stage2.main(["--images", str(tmp_path / "images"), "--alphas", str(tmp_path / "alphas"),
                          "--output", str(out), "--grid-rows", "0", "--set", "device=cpu",
                          "--set", f"image_size={SIZE}", "--set", "dataloader.num_worker=0",
                          "--set", f"model_path={os.path.dirname(path)}", "--set", f"pth_name={os.path.basename(path)}"])
        summary = json.loads((out / "summary.json").read_text())
        assert summary["model_file"].endswith(os.path.basename(path)) and summary["count"] == len(images)
        means[path] = summary["means"]
    assert abs(means[weights]["mad"] - means[onnx_file]["mad"]) <= 1 / 255


def test_apply_without_arguments_mattes_the_examples(weights, tmp_path, monkeypatch, capsys):
    """As the seed's ``python apply.py``: the bundled examples into results_apply/, with the
    newest trained weights, saying so. (The run itself uses two of the photos, in a copy.)"""
    assert len(glob.glob(apply.EXAMPLES)) >= 12 and apply.EXAMPLES.startswith(os.path.join(REPO, "data_examples"))
    examples = tmp_path / "data_examples" / "paixin_comp_mod"
    for category in ("portrait", "half_body"):
        photos(str(examples / category / "raw_image"), count=1)
    monkeypatch.setattr(apply, "EXAMPLES", str(examples / "*" / "raw_image" / "*"))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "results_stage2" / "run_a" / "model"
    run.mkdir(parents=True)
    os.link(weights, run / "best.pth")
    os.utime(run / "best.pth")  # the newest weights anywhere
    assert apply.main([]) == 0
    err = capsys.readouterr().err
    assert "no --input: matting the bundled examples" in err and "(the newest trained weights)" in err
    for category in ("portrait", "half_body"):
        for kind in ("alpha", "cutout"):
            assert os.path.isfile(tmp_path / "results_apply" / kind / category / "raw_image" / "p0.png")


def test_onnx_options_threads_arch_and_precision(onnx_file, tmp_path, capsys):
    net = load_any_model(onnx_file, device="auto", threads=1)
    assert net.session.get_session_options().intra_op_num_threads == 1 and net.device == "cpu"
    with pytest.raises(OnnxModelError, match="holds a u2netp graph"):
        load_any_model(onnx_file, arch="u2net")
    photos(str(tmp_path / "in"), count=1)
    common = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", onnx_file, "--quiet"]
    assert apply.main([*common, "--precision", "bf16"]) == 2
    assert "runs at the precision it was exported with (fp32)" in capsys.readouterr().err


def test_int8_export_calibrates_checks_and_runs_in_apply(weights, onnx_file, tmp_path, capsys):
    """--precision int8: a QDQ graph (int8 per-channel weights) calibrated on some photos of
    --calibrate, checked on the others, with precision=int8 in its metadata; apply.py takes it
    as any other .onnx, within a few 1/255 of the fp32 graph."""
    import onnx

    photos(str(tmp_path / "calib" / "sub"), count=6)  # searched recursively
    path = str(tmp_path / "m_int8.onnx")
    assert export.main(["--model", weights, "--output", path, "--size", str(SIZE), "--precision", "int8",
                        "--calibrate", str(tmp_path / "calib"), "--calibrate-count", "4"]) == 0
    out = capsys.readouterr().out
    assert "parity int8 on 2 held-out photos (calibrated on 4)" in out
    graph = onnx.load(path).graph
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= {node.op_type for node in graph.node}
    producer = {out: node.op_type for node in graph.node for out in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    float_weights = [node.name for node in convs if producer.get(node.input[1]) != "DequantizeLinear"]
    assert float_weights == [convs[0].name, "/outconv/Conv"] and convs[0].name.startswith("/stage1/")
    sigmoid = [node for node in graph.node if node.op_type == "Sigmoid"]
    assert len(sigmoid) == 1 and producer[sigmoid[0].input[0]] == "Conv"  # the alpha: no Q/DQ around it
    net = OnnxModel(path, threads=1)
    assert net.precision == "int8" and net.input_size == SIZE and net.metadata["calibration"] == "4 photos of calib"
    assert float(net.metadata["int8_alpha_mean_diff"]) <= 1 / 255
    assert sorted(os.listdir(tmp_path)) == ["calib", "m_int8.onnx"]  # no temporary left
    assert os.path.getsize(path) < 0.5 * os.path.getsize(onnx_file)  # int8 weights
    images = photos(str(tmp_path / "in"), count=2, shape=(80, 100))
    int8, fp32 = applied_alphas(path, images, tmp_path / "int8"), applied_alphas(onnx_file, images, tmp_path / "fp32")
    for a, b in zip(int8, fp32):
        assert a.shape == b.shape and np.abs(a - b).mean() <= 2 and b.std() > 0.5


def test_int8_parity_failure_leaves_no_file(weights, tmp_path, capsys):
    photos(str(tmp_path / "calib"), count=3)
    output = tmp_path / "out" / "m.onnx"
    assert export.main(["--model", weights, "--output", str(output), "--size", str(SIZE), "--precision", "int8",
                        "--calibrate", str(tmp_path / "calib"), "--mean-tolerance", "0"]) == 1
    err = capsys.readouterr().err
    assert "parity check failed: int8 alphas differ from fp32" in err and "no file written" in err
    assert os.listdir(tmp_path / "out") == []


def test_int8_needs_photos_to_calibrate_on(weights, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["--model", weights, "--output", str(tmp_path / "m.onnx"), "--size", str(SIZE), "--precision", "int8"]
    assert export.main([*argv, "--calibrate", str(tmp_path / "empty")]) == 1
    assert "0 photo(s) found" in capsys.readouterr().err
    assert "not a folder of photos" in one_line_error([*argv, "--calibrate", str(tmp_path / "none")], capsys)
    calibration, held = export.calibration_split(export.EXAMPLE_PHOTOS, 32)  # the bundled 48 portraits
    assert (len(calibration), len(held)) == (32, 16) and not set(calibration) & set(held)


def foreign_graph(path, input_type=None, input_shape=(1, 3, 8, 8), output_channels=1, metadata=None, inputs=1):
    """A tiny ONNX graph (1x1 Conv from 3 to ``output_channels``) with the given signature."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    input_type = TensorProto.FLOAT if input_type is None else input_type
    weight = numpy_helper.from_array(np.ones((output_channels, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Conv", ["xf", "w"], ["y"])]
    graph_inputs = [helper.make_tensor_value_info("x", input_type, list(input_shape))]
    graph_inputs += [helper.make_tensor_value_info(f"extra{i}", TensorProto.FLOAT, [1]) for i in range(inputs - 1)]
    graph = helper.make_graph(nodes, "g", graph_inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, output_channels, 8, 8])],
                              initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("kwargs, message", [
    ({"output_channels": 3}, r"first output 'y' has shape \[1, 3, 8, 8\]; a U\^2-Net's fused alpha is \(N,1,H,W\)"),
    ({"input_type": 7}, r"input 'x' is tensor\(int64\); a U\^2-Net takes float32"),  # 7: INT64
    ({"metadata": {"input_size": "20000"}}, r"metadata input_size='20000' is not a size in 1..4096"),
    ({"metadata": {"input_size": "-3"}}, r"metadata input_size='-3'"),
    ({"inputs": 2}, r"takes 2 inputs \(x, extra0\)"),
    ({"input_shape": (1, 3, 9000, 9000)}, r"fixed input size 9000x9000 is outside 1..4096"),
])
def test_foreign_onnx_signatures_are_refused_by_name(tmp_path, kwargs, message):
    path = foreign_graph(tmp_path / "foreign.onnx", **kwargs)
    with pytest.raises(OnnxModelError, match="foreign.onnx: " + message):
        load_any_model(path)


def test_a_foreign_onnx_that_fits_runs(tmp_path):
    net = load_any_model(foreign_graph(tmp_path / "ok.onnx", metadata={"input_size": "8"}), threads=1)
    assert net.input_size == 8 and net(np.ones((1, 3, 8, 8), np.float32)).shape == (1, 8, 8)


@pytest.mark.parametrize("session, io_binding", [
    ({"graph_optimization_level": "all"}, False), ({"graph_optimization_level": "disable"}, False),
    ({"enable_mem_pattern": True, "enable_cpu_mem_arena": False}, False),
    ({"execution_mode": "parallel", "inter_op_threads": 2}, False), (None, True),
])
def test_session_settings_change_speed_not_alphas(onnx_file, session, io_binding):
    x = np.random.default_rng(3).normal(size=(2, 3, SIZE, SIZE + 8)).astype(np.float32)
    expected = OnnxModel(onnx_file, threads=1)(x)
    net = OnnxModel(onnx_file, threads=1, session=session, io_binding=io_binding)
    assert np.abs(net(x) - expected).max() <= 1e-5
    options = net.session.get_session_options()
    assert options.enable_mem_pattern == bool((session or {}).get("enable_mem_pattern", False))


def test_unknown_session_setting_is_named(onnx_file):
    with pytest.raises(ValueError, match=r"unknown onnxruntime session setting\(s\) \['mem_pattern'\]"):
        OnnxModel(onnx_file, session={"mem_pattern": True})
