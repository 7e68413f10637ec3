"""The Python package against independent references: PyTorch's own activations and
gradients (the ONNX fixtures), the CLI binary's output for the same call, and properties a
correct render must have."""

import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest

import deepvis
from conftest import ONNX, read_safetensors


def normalized(model, hwc):
    """An HxWxC image in [0, 1] as the model's normalized 1xCxHxW input."""
    mean, std = (np.asarray(v, np.float32) for v in model.normalization)
    chw = np.asarray(hwc, np.float32).transpose(2, 0, 1)
    return ((chw - mean[:, None, None]) / std[:, None, None])[None]


# --- the bundled model --------------------------------------------------------------------


def test_render_returns_an_image_whose_objective_went_up(lite0):
    # float32, as the probe below computes by default.
    img = deepvis.render(
        lite0, "_blocks.8:33", size=64, steps=24, seed=1, precision="f32", progress=False
    )
    assert isinstance(img, np.ndarray) and isinstance(img, deepvis.Image)
    assert img.shape == (64, 64, 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert img.final[0] > img.initial[0] + 1.0
    # The reported value is the channel's mean activation on the returned image: recompute it
    # by another path (a forward pass of the image as a plain input).
    act = deepvis.probe(lite0, "_blocks.8", input=normalized(lite0, img)).activation
    assert act[0, 33].mean() == pytest.approx(float(img.final[0]), rel=1e-4, abs=1e-4)
    # numpy sees a plain array; Jupyter sees a PNG.
    assert type(np.asarray(img)) is np.ndarray
    assert img._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_image_other_seed_other_image(lite0):
    a = deepvis.render(lite0, "_blocks.4:3", size=32, steps=6, seed=5, progress=False)
    b = deepvis.render(lite0, "_blocks.4:3", size=32, steps=6, seed=5, progress=False)
    c = deepvis.render(lite0, "_blocks.4:3", size=32, steps=6, seed=6, progress=False)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_objective_grammar_batch_and_overrides(lite0):
    imgs = deepvis.render(
        lite0,
        "_blocks.8:33 - 0.5 * _blocks.8:34 + 0.2 * diversity(_blocks.8)",
        preset="lucid",
        size=32,
        steps=4,
        batch=2,
        tv=0.01,
        progress=False,
    )
    assert imgs.shape == (2, 32, 32, 3)
    assert imgs.final.shape == (2,)
    assert not np.array_equal(imgs[0], imgs[1])


def test_init_image_is_the_start(lite0):
    rng = np.random.default_rng(0)
    start = rng.uniform(0.3, 0.7, size=(40, 40, 3)).astype(np.float32)
    # The seed method is pixels + normalized ascent without transforms: one step of 0.5/255
    # RMS moves the image by little, so the result is the start, nudged.
    out = deepvis.render(
        lite0, "_blocks.4:3", preset="seed", size=40, steps=1, step_size=0.5, init=start,
        progress=False,
    )
    diff = np.abs(np.asarray(out) - start)
    assert 0 < diff.max() < 0.05
    assert np.sqrt((diff**2).mean()) == pytest.approx(0.5 / 255, rel=0.05)


def test_precision_bf16_is_close_to_f32_and_f32_comes_back(lite0):
    kw = dict(size=32, steps=4, seed=3, progress=False)
    a = deepvis.render(lite0, "_blocks.8:33", precision="f32", **kw)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")  # a CPU without AVX512-BF16 says so and stays f32
        b = deepvis.render(lite0, "_blocks.8:33", precision="bf16", **kw)
    bf16_ran = not said
    # On the same start image bf16 is within its rounding of float32. After a few steps the
    # two diverge (bf16 input gradients differ by ~20 % in relative L2 through ReLU6 units
    # near zero, and Adam's first steps follow their signs), so the runs are compared only
    # in that bf16 optimizes too.
    assert b.initial[0] == pytest.approx(float(a.initial[0]), rel=0.05)
    assert b.final[0] > b.initial[0] + 1.0
    c = deepvis.render(lite0, "_blocks.8:33", precision="f32", **kw)
    np.testing.assert_array_equal(a, c)
    # "auto" (the default) is bf16 exactly where the CPU runs it: the same image as one of them.
    auto = deepvis.render(lite0, "_blocks.8:33", **kw)
    np.testing.assert_array_equal(auto, b if bf16_ran else a)
    with pytest.raises(ValueError, match="precision must be"):
        deepvis.render(lite0, "_blocks.8:33", precision="f64", **kw)


def test_filters_match_the_cli(lite0, cli, tmp_path):
    cli(
        "filters", "--layer", "_blocks.8", "--filters", "3,7", "--size", "48", "--steps", "8",
        "--seed", "2", "--batch", "1", "--jobs", "1", "--quiet", "--out", tmp_path / "cli",
    )
    sheet = deepvis.filters(
        lite0, "_blocks.8", [3, 7], out=tmp_path / "py", size=48, steps=8, seed=2, progress=False
    )
    assert sheet.images.shape == (2, 48, 48, 3) and len(sheet) == 2
    assert sheet.grid.ndim == 3 and sheet.grid.shape[2] == 3
    cli_dir = tmp_path / "cli" / "efficientnet_lite0" / "_blocks.8"
    for f in (3, 7):
        ours = (tmp_path / "py" / f"filter_{f:04d}.png").read_bytes()
        theirs = (cli_dir / f"filter_{f:04d}.png").read_bytes()
        assert ours == theirs, f"filter {f} differs from `deepvis filters`"
    assert (tmp_path / "py" / "grid.png").is_file()
    assert sheet._repr_png_()[:4] == b"\x89PNG"
    assert np.asarray(sheet).shape == (2, 48, 48, 3)


def test_probe_matches_the_cli(lite0, cli, photo, tmp_path):
    out = tmp_path / "probe.safetensors"
    cli("probe", "--image", photo, "--size", "64x80", "--layer", "_blocks.8", "--channel", "5",
        "--out", out)
    ref = read_safetensors(out)
    p = deepvis.probe(lite0, "_blocks.8", photo, size=(64, 80), channel=5)
    assert p.activation.shape == ref["activation"].shape
    np.testing.assert_array_equal(p.activation, ref["activation"])
    np.testing.assert_array_equal(p.input_grad, ref["input_grad"])


def test_dream_changes_the_photo_and_keeps_its_size(lite0, photo):
    out = deepvis.dream(lite0, photo, "_blocks.4", octaves=2, steps_per_octave=3, progress=False)
    assert out.shape == (80, 96, 3)
    arr = np.asarray(out)
    assert 0 <= arr.min() and arr.max() <= 1
    shape, data = deepvis._native.read_image(str(photo))
    before = np.frombuffer(data, np.float32).reshape(shape).transpose(1, 2, 0)
    assert np.abs(arr - before).mean() > 1e-3


def test_layers_list_names_ops_channels_shapes(lite0):
    layers = lite0.layers()
    by_name = {l.name: l for l in layers}
    assert by_name["_blocks.8"].channels == 112
    assert by_name["_blocks.8"].shape == (112, 14, 14)
    assert lite0.layers(size=64)[-1].shape == (1000,)


def test_save_writes_a_png(lite0, tmp_path):
    img = deepvis.render(lite0, "_blocks.2:1", size=16, steps=2, progress=False)
    img.save(tmp_path / "a.png")
    shape, _ = deepvis._native.read_image(str(tmp_path / "a.png"))
    assert list(shape) == [3, 16, 16]


# --- ONNX models: PyTorch's numbers as the reference ---------------------------------------


def test_onnx_probe_matches_pytorch():
    with pytest.warns(UserWarning, match="assuming ImageNet normalization"):
        model = deepvis.load(str(ONNX / "mini_resnet.ts.onnx"))
    ref = read_safetensors(ONNX / "mini_resnet.safetensors")
    for layer, channel in (("layer2.0", 5), ("layer4", 7)):
        p = deepvis.probe(model, layer, input=ref["input"], channel=channel)
        np.testing.assert_allclose(p.activation, ref[f"act.{layer}"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            p.input_grad, ref[f"grad.{layer}.c{channel}"], rtol=1e-3, atol=1e-6
        )


def test_onnx_render_grey_model_with_its_normalization():
    model = deepvis.load(str(ONNX / "gray28.ts.onnx"), mean=0.5, std=0.25)
    assert model.channels == 1 and model.normalization == ([0.5], [0.25])
    img = deepvis.render(model, "4:3", size=28, steps=10, progress=False)
    assert img.shape == (28, 28, 1)
    assert img.final[0] > img.initial[0]
    assert img._repr_png_()[:4] == b"\x89PNG"


def test_onnx_free_input_size_is_lowered_per_size():
    model = deepvis.load(str(ONNX / "ppocr_cls.onnx"), mean=0.5, std=0.5, size=(48, 192))
    conv = next(l for l in model.layers(size=(48, 96)) if l.op.startswith("Conv"))
    a = deepvis.render(model, f'channel("{conv.name}", 0)', size=(48, 96), steps=3,
                       progress=False)
    assert a.shape == (48, 96, 3)
    assert a.final[0] > a.initial[0]


# --- Lucent's call shape -------------------------------------------------------------------


def test_render_vis_takes_lucent_names_and_returns_lucent_shapes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = deepvis.load(str(ONNX / "mini_resnet.ts.onnx"))
    images = deepvis.render_vis(model, "layer2_0:5", thresholds=(3, 6), size=32,
                                progress=False, show_image=False)
    assert [i.shape for i in images] == [(1, 32, 32, 3), (1, 32, 32, 3)]
    same = deepvis.render(model, "layer2.0:5", preset="lucid", size=32, steps=6, progress=False)
    np.testing.assert_array_equal(images[1][0], same)
    with pytest.raises(ValueError, match="Lucent callable"):
        deepvis.render_vis(model, "layer2_0:5", param_f=lambda: None)


# --- errors: the CLI's one-line messages, as Python exceptions -----------------------------


def test_errors_are_value_errors_with_the_cli_message(lite0, cli, tmp_path):
    r = cli("render", "--objective", "nope:3", "--size", "32", "--steps", "1", "--out",
            tmp_path, check=False)
    assert r.returncode != 0
    message = r.stderr.strip().splitlines()[-1].removeprefix("error: ")
    with pytest.raises(ValueError) as e:
        deepvis.render(lite0, "nope:3", size=32, steps=1, progress=False)
    assert isinstance(e.value, deepvis.Error)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "call, exc, text",
    [
        (lambda m: deepvis.render(m, "_blocks.8:1", steps=0), ValueError, "--steps must be at least 1"),
        (lambda m: deepvis.render(m, "_blocks.8:1", preset="fancy"), ValueError, "unknown preset"),
        (lambda m: deepvis.render(m, "_blocks.8:(", steps=1), ValueError, "at byte"),
        (lambda m: deepvis.filters(m, "_blocks.8", [999], steps=1), ValueError, "out of range"),
        (lambda m: deepvis.probe(m, "_blocks.8", input=np.zeros((1, 3, 32, 32)), channel=500),
         ValueError, "out of range"),
        (lambda m: deepvis.load("no_such_model"), ValueError, "unknown model 'no_such_model'"),
        (lambda m: deepvis.load("/nonexistent/x.onnx"), FileNotFoundError, "x.onnx"),
        (lambda m: deepvis.load("/nonexistent/w.pth", arch="vgg16"), FileNotFoundError, "w.pth"),
        (lambda m: deepvis.load("w.pth"), ValueError, "arch="),
        (lambda m: deepvis.load("efficientnet_lite0", mean=0.5), ValueError, "for ONNX models"),
        (lambda m: deepvis.load("vgg16", offline=True, cache_dir="/nonexistent"), ValueError,
         "--offline forbids downloading"),
        (lambda m: deepvis.render("not a model", "x:1"), ValueError, "deepvis.load"),
    ],
)
def test_bad_arguments(lite0, call, exc, text):
    with pytest.raises(exc, match=None) as e:
        call(lite0)
    assert isinstance(e.value, deepvis.Error)
    assert text in str(e.value)
    assert "\n" not in str(e.value)


def test_a_size_beyond_memory_is_refused_up_front(lite0):
    start = time.monotonic()
    with pytest.raises(ValueError, match="choose a smaller --size"):
        deepvis.render(lite0, "_blocks.8:1", size=32768, steps=1, progress=False)
    assert time.monotonic() - start < 5


def test_a_corrupt_file_is_a_deepvis_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(deepvis.Error):
        deepvis.load(str(bad))


# --- interruption --------------------------------------------------------------------------


def test_the_gil_is_free_while_rendering(lite0):
    """Python threads keep running during a render: a counting thread gets about as far as
    it does with the main thread asleep."""

    def count(seconds):
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            n += 1
        return n

    out = {}
    t = threading.Thread(target=lambda: out.__setitem__("idle", count(0.3)))
    t.start()
    time.sleep(0.4)
    t.join()
    t = threading.Thread(target=lambda: out.__setitem__("busy", count(0.3)))
    t.start()
    start = time.monotonic()
    deepvis.render(lite0, "_blocks.8:1", size=64, steps=200, progress=False)
    assert time.monotonic() - start > 0.3, "the render must outlast the counting"
    t.join()
    # The engine's threads compete for the cores, so some loss is fair; a held GIL would
    # leave the counter next to nothing.
    assert out["busy"] > 0.2 * out["idle"], out


def test_ctrl_c_stops_the_render_cleanly(lite0):
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        deepvis.render(lite0, "_blocks.8:1", size=64, steps=100_000, progress=False)
    assert time.monotonic() - start < 10
    # The engine is free again: the next call works.
    img = deepvis.render(lite0, "_blocks.8:1", size=16, steps=1, progress=False)
    assert img.shape == (16, 16, 3)
