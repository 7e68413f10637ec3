"""deepvis from Python: see what each filter of a CNN has learned.

The work happens in deepvis's Rust engine (the same one the `deepvis` command line runs), on
a worker thread without the GIL; this module turns arguments into its calls and its results
into numpy arrays.

    import deepvis
    model = deepvis.load("efficientnet_lite0")        # bundled, offline
    img = deepvis.render(model, "_blocks.8:33")        # HxWx3 float32 in [0, 1]
    sheet = deepvis.filters(model, "_blocks.8", range(16), out="out")
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
import warnings
import weakref
from typing import Any, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._errors import Error, InvalidArgument, Interrupted, NotFound

__all__ = [
    "Error",
    "Image",
    "Layer",
    "Model",
    "Probe",
    "Sheet",
    "dream",
    "filters",
    "load",
    "models",
    "probe",
    "render",
    "render_vis",
]
__version__: str = _native.__version__

Size = Union[int, Tuple[int, int]]
PathLike = Union[str, "os.PathLike[str]"]

_WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")


# ---------------------------------------------------------------------------------------------
# Results


class Image(np.ndarray):
    """An image (HxWxC) or a batch of them (NxHxWxC), float32 in [0, 1].

    It is a numpy array (every numpy operation works on it) that also shows itself inline in
    Jupyter (`_repr_png_`) and saves as PNG (`save`). `objective`, `initial` and `final` say
    what was maximized and its value before and after, per image.
    """

    objective: Optional[str]
    initial: Optional[np.ndarray]
    final: Optional[np.ndarray]

    def __new__(
        cls,
        array: Any,
        objective: Optional[str] = None,
        initial: Optional[np.ndarray] = None,
        final: Optional[np.ndarray] = None,
    ) -> "Image":
        obj = np.asarray(array, dtype=np.float32).view(cls)
        obj.objective = objective
        obj.initial = initial
        obj.final = final
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        self.objective = getattr(obj, "objective", None)
        self.initial = getattr(obj, "initial", None)
        self.final = getattr(obj, "final", None)

    def _planar(self) -> Optional[Tuple[np.ndarray, Tuple[int, int, int]]]:
        a = np.asarray(self, dtype=np.float32)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim == 4 and a.shape[0] >= 1:
            return None
        if a.ndim != 3 or a.shape[0] == 0 or a.shape[1] == 0 or a.shape[2] == 0:
            return None
        chw = np.ascontiguousarray(a.transpose(2, 0, 1))
        return chw, (int(chw.shape[0]), int(chw.shape[1]), int(chw.shape[2]))

    def _repr_png_(self) -> Optional[bytes]:
        a = np.asarray(self, dtype=np.float32)
        if a.ndim == 4:
            if a.shape[0] == 0:
                return None
            return _grid(a, [f"image {i}" for i in range(a.shape[0])])._repr_png_()
        p = self._planar()
        if p is None:
            return None
        chw, shape = p
        return _native.encode_png(chw.tobytes(), shape)

    def save(self, path: PathLike) -> None:
        """Writes the image as PNG (a batch as a labeled grid), atomically. Images with 2 or
        more than 3 channels also get their raw values beside it as `.npy`."""
        a = np.asarray(self, dtype=np.float32)
        if a.ndim == 4:
            _grid(a, [f"image {i}" for i in range(a.shape[0])]).save(path)
            return
        p = self._planar()
        if p is None:
            raise InvalidArgument(f"an image of shape {a.shape} cannot be saved; expected HxWxC")
        chw, shape = p
        _native.save_image(os.fspath(path), chw.tobytes(), shape)


def _array(pair: Tuple[List[int], bytes]) -> np.ndarray:
    shape, data = pair
    return np.frombuffer(data, dtype=np.float32).reshape(shape)


def _hwc(nchw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))


def _grid(nhwc: np.ndarray, labels: Sequence[str]) -> Image:
    nchw = np.ascontiguousarray(np.asarray(nhwc, dtype=np.float32).transpose(0, 3, 1, 2))
    sheet = _array(_native.grid(nchw.tobytes(), list(nchw.shape), list(labels)))
    return Image(sheet.transpose(1, 2, 0))


class Sheet:
    """The filters of a layer: `images` (NxHxWxC), `grid` (a labeled sheet, HxWx3), and per
    filter its initial and final activation. Shows as its grid in Jupyter; indexes and
    iterates over the images; converts to numpy as the image stack."""

    def __init__(
        self,
        layer: str,
        filters: List[int],
        images: Image,
        grid: Image,
        initial: np.ndarray,
        final: np.ndarray,
    ) -> None:
        self.layer = layer
        self.filters = filters
        self.images = images
        self.grid = grid
        self.initial = initial
        self.final = final

    def __len__(self) -> int:
        return len(self.filters)

    def __getitem__(self, i: int) -> Image:
        return self.images[i]

    def __iter__(self):
        return iter(self.images)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = np.asarray(self.images)
        return a if dtype is None else a.astype(dtype)

    def _repr_png_(self) -> Optional[bytes]:
        return self.grid._repr_png_()

    def save(self, path: PathLike) -> None:
        """Writes the grid sheet as PNG."""
        self.grid.save(path)

    def __repr__(self) -> str:
        return f"<deepvis.Sheet {self.layer}: {len(self.filters)} filters, images {self.images.shape}>"


class Probe(NamedTuple):
    """A layer's activation ([N, C, H, W] or [N, F]) and, for a channel, the gradient of its
    mean with respect to the normalized input ([N, C, H, W])."""

    activation: np.ndarray
    input_grad: Optional[np.ndarray]


class Layer(NamedTuple):
    """One addressable layer: its name, op, output channels and shape (without the batch) at
    the size asked for, receptive field in pixels (None: global), and other names (an ONNX
    value's PyTorch module paths)."""

    name: str
    op: str
    channels: int
    shape: Tuple[int, ...]
    receptive_field: Optional[int]
    aliases: Tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Models


class Model:
    """A loaded network. `layers()` lists what can be visualized."""

    def __init__(self, native: Any, tmpdir: Optional[str] = None) -> None:
        self._native = native
        if tmpdir is not None:
            # The exported ONNX file lives as long as the model (other sizes re-read it).
            self._cleanup = weakref.finalize(self, shutil.rmtree, tmpdir, True)

    @property
    def name(self) -> str:
        return self._native.name

    @property
    def channels(self) -> int:
        """Input channels (3 for RGB)."""
        return self._native.channels

    @property
    def native_size(self) -> Tuple[int, int]:
        """(height, width) the model was made for."""
        return tuple(self._native.native_size)  # type: ignore[return-value]

    @property
    def normalization(self) -> Tuple[List[float], List[float]]:
        """Per-channel (mean, std) applied to images in [0, 1] before the network."""
        return self._native.normalization

    @property
    def weights(self) -> str:
        return self._native.weights

    def layers(self, size: Optional[Size] = None) -> List[Layer]:
        """Every addressable layer with its op, channels, output shape at `size` (default:
        the native size) and receptive field."""
        out = []
        for name, aliases, op, shape, field in self._native.layers(_size(size)):
            out.append(
                Layer(
                    name,
                    op,
                    int(shape[1]) if len(shape) > 1 else 0,
                    tuple(shape[1:]),
                    field,
                    tuple(aliases),
                )
            )
        return out

    def _lucent_names(self) -> dict:
        """Lucent writes module paths with `_` for `.` (`layer4_1`); those names to ours."""
        names: dict = {}
        for layer in self.layers():
            for n in (layer.name,) + layer.aliases:
                names.setdefault(n.replace(".", "_"), n)
        return names

    def __repr__(self) -> str:
        h, w = self.native_size
        return f"<deepvis.Model {self.name}: {self.channels}x{h}x{w} input, weights {self.weights}>"


def _size(size: Optional[Size]) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, str):
        m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?", size)
        if not m:
            raise InvalidArgument(
                f"'{size}' is not an image size; write N or HxW (height x width), e.g. 224 or 48x192"
            )
        h = int(m.group(1))
        return (h, int(m.group(2)) if m.group(2) else h)
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        if size < 1:
            raise InvalidArgument("--size must be at least 1 pixel on each side")
        return (int(size), int(size))
    try:
        h, w = size  # type: ignore[misc]
        h, w = int(h), int(w)
    except (TypeError, ValueError):
        raise InvalidArgument(
            f"size must be N or (height, width), not {size!r}"
        ) from None
    if h < 1 or w < 1:
        raise InvalidArgument("--size must be at least 1 pixel on each side")
    return (h, w)


def _floats(name: str, v: Any) -> Optional[List[float]]:
    if v is None:
        return None
    if isinstance(v, (int, float, np.number)):
        return [float(v)]
    try:
        return [float(x) for x in v]
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name} takes a number or a list of numbers, not {v!r}") from None


def _is_torch_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _export_onnx(module: Any, input_shape: Sequence[int], opset: int) -> Tuple[str, str]:
    """Exports an nn.Module through torch.onnx (TorchScript exporter: its node names carry the
    module paths deepvis recovers layer names from) to a temporary file."""
    import torch

    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise InvalidArgument(
            f"input_shape must be (N, C, H, W), e.g. (1, 3, 224, 224), not {tuple(input_shape)}"
        )
    tmpdir = tempfile.mkdtemp(prefix="deepvis-")
    path = os.path.join(tmpdir, f"{type(module).__name__}.onnx")
    was_training = module.training
    module.eval()
    try:
        # On the module's device (a notebook's model often lives on the GPU); the weights are
        # written out either way.
        param = next(module.parameters(), None)
        x = torch.zeros(shape, device=param.device if param is not None else "cpu")
        kwargs = dict(input_names=["input"], output_names=["output"], opset_version=opset)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(module, (x,), path, dynamo=False, **kwargs)
            except TypeError:  # a torch before the dynamo switch
                torch.onnx.export(module, (x,), path, **kwargs)
    except Exception:
        shutil.rmtree(tmpdir, True)
        raise
    finally:
        module.train(was_training)
    return path, tmpdir


def load(
    model: Any,
    input_shape: Optional[Sequence[int]] = None,
    *,
    arch: Optional[str] = None,
    weights: Optional[PathLike] = None,
    size: Optional[Size] = None,
    mean: Any = None,
    std: Any = None,
    range: Optional[str] = None,
    offline: bool = False,
    cache_dir: Optional[PathLike] = None,
    random_weights: bool = False,
    opset: int = 13,
) -> Model:
    """Loads a network.

    - a zoo name (`deepvis.models()`): `"efficientnet_lite0"` is bundled (offline); others
      read `weights=` or download torchvision's file once into the cache (`offline=True`
      never downloads);
    - a `.pth`/`.safetensors` file with its architecture: `load("vgg16.pth", arch="vgg16")`;
    - an `.onnx` file: `mean`, `std` (one value or one per channel) and `range` ("0-1" or
      "0-255") give its input normalization (default: ImageNet's, with a warning); `size`
      fixes a free input size;
    - a `torch.nn.Module` with `input_shape=(N, C, H, W)`: exported through `torch.onnx` to a
      temporary file, then loaded as ONNX.
    """
    tmpdir = None
    if _is_torch_module(model):
        if input_shape is None:
            raise InvalidArgument(
                "a torch.nn.Module needs input_shape=(N, C, H, W) to be exported, e.g. (1, 3, 224, 224)"
            )
        if arch is not None or weights is not None:
            raise InvalidArgument("an nn.Module holds its own weights; drop arch= / weights=")
        name, tmpdir = _export_onnx(model, input_shape, opset)
        if size is None:
            size = (int(input_shape[2]), int(input_shape[3]))
    elif isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        if input_shape is not None:
            if len(input_shape) != 4:
                raise InvalidArgument(
                    f"input_shape must be (N, C, H, W), not {tuple(input_shape)}"
                )
            if size is None:
                size = (int(input_shape[2]), int(input_shape[3]))
        if name.lower().endswith(_WEIGHT_SUFFIXES):
            if arch is None:
                raise InvalidArgument(
                    f"{name} is a weight file; name its architecture: deepvis.load({name!r}, arch='vgg16') (see deepvis.models())"
                )
            if weights is not None:
                raise InvalidArgument("pass the weight file once: as the first argument or weights=")
            name, weights = arch, name
        elif arch is not None:
            raise InvalidArgument(
                "arch= is for weight files (.pth, .safetensors); a zoo name or .onnx file says it already"
            )
    else:
        raise InvalidArgument(
            f"deepvis.load takes a zoo name, a file path or a torch.nn.Module, not {type(model).__name__}"
        )
    try:
        native = _native.load(
            name,
            weights=None if weights is None else os.fspath(weights),
            offline=bool(offline),
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            mean=_floats("mean", mean),
            std=_floats("std", std),
            range=range,
            size=_size(size),
            random_weights=bool(random_weights),
        )
    except BaseException:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, True)
        raise
    for note in native.notes:
        warnings.warn(note.removeprefix("note: "), stacklevel=2)
    return Model(native, tmpdir)


def models() -> List[Tuple[str, str, bool]]:
    """The zoo: (name, description, bundled)."""
    return _native.models()


# ---------------------------------------------------------------------------------------------
# Running jobs: off the GIL, with a progress bar, stoppable with Ctrl-C


class _Plain:
    """A progress line every few seconds on stderr, where tqdm is not installed."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc = total, desc
        self.start = self.last = time.monotonic()

    def update_to(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= 5 or (done >= total and now - self.start >= 5):
            self.last = now
            elapsed = now - self.start
            eta = elapsed / max(done, 1) * (total - done)
            print(
                f"{self.desc}: {done}/{total} steps, {elapsed:.0f} s elapsed, ETA {eta:.0f} s",
                file=sys.stderr,
            )

    def close(self) -> None:
        pass


class _Tqdm:
    def __init__(self, tqdm: Any, total: int, desc: str) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="step", leave=False)

    def update_to(self, done: int, total: int) -> None:
        if self.bar.total != total:
            self.bar.total = total
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _bar(total: int, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Plain(total, desc)
    return _Tqdm(tqdm, total, desc)


def _run(job: Any, progress: bool, desc: str) -> dict:
    """Waits for a job with the GIL released, a bar updated between waits; Ctrl-C asks the
    job to stop after its current step, waits for it, and re-raises KeyboardInterrupt."""
    bar = _bar(job.progress()[1], desc) if progress else None
    try:
        while not job.wait(0.1):
            if bar is not None:
                bar.update_to(*job.progress())
        if bar is not None:
            bar.update_to(*job.progress())
    except KeyboardInterrupt:
        job.cancel()
        while not job.wait(0.2):
            pass
        raise
    finally:
        if bar is not None:
            bar.close()
    try:
        return job.result()
    except Interrupted:
        raise KeyboardInterrupt from None


def _precision(precision: str, model: "Model") -> None:
    """Sets the arithmetic for `model` (warns where it falls back to float32)."""
    note = _native.set_precision(precision, model._native)
    if note:
        warnings.warn(note, stacklevel=3)


def _options(preset: str, size: Optional[Size], steps: Optional[int], kw: dict) -> Any:
    return _native.Options(preset=preset, size=_size(size), steps=steps, **kw)


def _init(init: Any, channels: int) -> Optional[Tuple[bytes, List[int]]]:
    """A start image (a file, HxWxC or NxHxWxC in [0, 1]) as NCHW float32 bytes."""
    if init is None:
        return None
    if isinstance(init, (str, os.PathLike)):
        shape, data = _native.read_image(os.fspath(init))
        return data, [1] + list(shape)
    a = np.asarray(init, dtype=np.float32)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise InvalidArgument(f"init must be an image file or an HxWxC array, not shape {a.shape}")
    nchw = np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    return nchw.tobytes(), list(nchw.shape)


# ---------------------------------------------------------------------------------------------
# The calls


def render(
    model: Model,
    objective: str,
    *,
    preset: str = "default",
    size: Optional[Size] = None,
    steps: Optional[int] = None,
    seed: int = 0,
    batch: int = 1,
    precision: str = "auto",
    init: Any = None,
    step_size: Optional[float] = None,
    param: Optional[str] = None,
    transforms: Optional[str] = None,
    optimizer: Optional[str] = None,
    lr: Optional[float] = None,
    octaves: Optional[int] = None,
    l2: Optional[float] = None,
    tv: Optional[float] = None,
    blur: Optional[str] = None,
    clip_norm: Optional[str] = None,
    clip_contribution: Optional[str] = None,
    budget: Optional[float] = None,
    progress: bool = True,
) -> Image:
    """Optimizes an image for `objective` (the CLI's grammar: `"layer4.1:7"`,
    `"layer4.1:7 - 0.5 * layer4.1:8"`, `neuron(...)`, `class(...)`, `diversity(...)`, ...).

    Returns an HxWxC float32 `Image` in [0, 1] (NxHxWxC for `batch` > 1). `preset` is
    default, seed, lucid or maco; the other keywords override its parts as the CLI's flags
    of the same names do (`budget`: seconds of wall time per image for adaptive steps, as
    `--budget`; without it the default preset's steps adapt reproducibly). `init` starts
    from an image (a file or an HxWxC array, resized to the first scale). `precision` is "auto" (bf16
    where the CPU has AVX512-BF16 and the model's bf16 output stays within 10 % of float32's,
    as the CLI's `--precision auto`), "f32" or "bf16".
    """
    _check_model(model)
    opts = _options(
        preset,
        size,
        steps,
        dict(
            step_size=step_size,
            param=param,
            transforms=transforms,
            optimizer=optimizer,
            lr=lr,
            octaves=octaves,
            l2=l2,
            tv=tv,
            blur=blur,
            clip_norm=clip_norm,
            clip_contribution=clip_contribution,
            budget=budget,
        ),
    )
    _precision(precision, model)
    job = _native.start_render(
        model._native,
        objective,
        opts,
        seed=_seed(seed),
        batch=int(batch),
        init=_init(init, model.channels),
    )
    out = _run(job, progress, objective)
    images = _hwc(_array(out["images"]))
    initial, final = _array(out["initial"]).copy(), _array(out["final"]).copy()
    return Image(images[0] if batch == 1 else images, objective, initial, final)


def filters(
    model: Model,
    layer: str,
    filters: Iterable[int] = range(16),
    out: Optional[PathLike] = None,
    *,
    preset: str = "default",
    size: Optional[Size] = None,
    steps: Optional[int] = None,
    seed: int = 0,
    precision: str = "auto",
    progress: bool = True,
    **overrides: Any,
) -> Sheet:
    """Renders filters (channels) of a layer, one image each, and a labeled grid sheet.

    Each image is the one `deepvis filters --batch 1` makes with the same seed and settings.
    With `out`, writes `out/filter_NNNN.png` and `out/grid.png` (atomically).
    """
    _check_model(model)
    wanted = [int(f) for f in filters]
    if any(f < 0 for f in wanted):
        raise InvalidArgument("filter indices must be non-negative")
    opts = _options(preset, size, steps, _overrides(overrides))
    _precision(precision, model)
    job = _native.start_filters(model._native, layer, wanted, opts, seed=_seed(seed))
    res = _run(job, progress, f"{job.label} filters")
    images = Image(_hwc(_array(res["images"])))
    initial, final = _array(res["initial"]).copy(), _array(res["final"]).copy()
    grid = _grid(images, [f"filter {f}" for f in wanted])
    sheet = Sheet(job.label, wanted, images, grid, initial, final)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        for f, img in zip(wanted, images):
            Image(img).save(os.path.join(out, f"filter_{f:04d}.png"))
        grid.save(os.path.join(out, "grid.png"))
    return sheet


def render_vis(
    model: Model,
    objective_f: str,
    param_f: Any = None,
    optimizer: Any = None,
    transforms: Any = None,
    thresholds: Sequence[int] = (512,),
    verbose: bool = False,
    preprocess: bool = True,
    progress: bool = True,
    show_image: bool = True,
    save_image: bool = False,
    image_name: Optional[str] = None,
    show_inline: bool = False,
    fixed_image_size: Any = None,
    *,
    size: Size = 128,
    preset: str = "lucid",
    seed: int = 0,
) -> List[np.ndarray]:
    """Lucent's `render_vis` call shape, to switch with one line: `objective_f` is Lucent's
    `"layer:channel"` string, whose layer may be written Lucent's way (`layer4_1` for
    `layer4.1`). Lucent's defaults: the lucid preset (Fourier image with colour
    decorrelation, standard transforms, Adam 0.05) at 128 px, images after 512 steps.

    Returns one array per threshold, each 1xHxWxC in [0, 1], as Lucent does. Each threshold
    is a render of that many steps from the same seed (with one scale, as the lucid preset
    has, what a longer render shows at that step). Lucent's callables (`param_f`,
    `optimizer`, `transforms`) have no equivalent: use `preset=` or `deepvis.render`'s
    keywords instead.
    """
    for name, v in (("param_f", param_f), ("optimizer", optimizer), ("transforms", transforms)):
        if v is not None:
            raise InvalidArgument(
                f"{name} is a Lucent callable deepvis cannot run; choose preset= (default, seed, lucid, maco) or use deepvis.render's keywords"
            )
    if fixed_image_size is not None:
        raise InvalidArgument("fixed_image_size is not supported; pass size= (the image side)")
    if not preprocess:
        raise InvalidArgument(
            "preprocess=False is not supported: deepvis always applies the model's own input normalization"
        )
    _check_model(model)
    objective = _lucent_objective(model, objective_f)
    steps = sorted({int(t) for t in thresholds})
    if not steps or steps[0] < 1:
        raise InvalidArgument("thresholds must be step counts of at least 1")
    results = {}
    for t in steps:
        img = render(model, objective, preset=preset, size=size, steps=t, seed=seed, progress=progress)
        if verbose:
            print(f"step {t}: {objective} = {float(img.final[0]):.4f}")
        results[t] = img
    images = [np.asarray(results[int(t)])[None] for t in thresholds]
    last = results[steps[-1]]
    if save_image:
        last.save(image_name or "image.png")
    if show_image or show_inline:
        try:
            from IPython.display import display
        except ImportError:
            pass
        else:
            display(last)
    return images


def dream(
    model: Model,
    image: Any,
    layer: Optional[str] = None,
    *,
    objective: Optional[str] = None,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps_per_octave: int = 10,
    lr: float = 0.02,
    seed: int = 0,
    precision: str = "auto",
    progress: bool = True,
) -> Image:
    """DeepDream: amplifies what `layer` (or any `objective`) sees in a photo (a file or an
    HxWx3 array in [0, 1]), over `octaves` scales. The result has the photo's size."""
    _check_model(model)
    if objective is None:
        if layer is None:
            raise InvalidArgument("pass layer=LAYER or objective=EXPR")
        objective = f'layer("{layer}")'
    elif layer is not None:
        raise InvalidArgument("pass layer= or objective=, not both")
    if isinstance(image, (str, os.PathLike)):
        shape, data = _native.read_image(os.fspath(image))
        photo = (data, list(shape))
    else:
        a = np.asarray(image, dtype=np.float32)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3:
            raise InvalidArgument(f"image must be a file or an HxWxC array, not shape {a.shape}")
        chw = np.ascontiguousarray(a.transpose(2, 0, 1))
        photo = (chw.tobytes(), list(chw.shape))
    _precision(precision, model)
    job = _native.start_dream(
        model._native,
        objective,
        photo,
        octaves=int(octaves),
        octave_scale=float(octave_scale),
        steps_per_octave=int(steps_per_octave),
        lr=float(lr),
        seed=_seed(seed),
    )
    out = _run(job, progress, "dream")
    return Image(_hwc(_array(out["images"]))[0], objective)


def probe(
    model: Model,
    layer: str,
    image: Optional[PathLike] = None,
    *,
    input: Any = None,
    size: Optional[Size] = None,
    channel: Optional[int] = None,
    precision: str = "f32",
) -> Probe:
    """A layer's activation for a photo (resized to `size`, the model's normalization
    applied: what `deepvis probe --image` computes) or for an already normalized NCHW
    `input` array; with `channel`, also the gradient of that channel's mean with respect to
    the normalized input. In float32 unless `precision` says otherwise (as the CLI's probe):
    its values are for comparing with other frameworks'."""
    _check_model(model)
    if (image is None) == (input is None):
        raise InvalidArgument("pass image=FILE or input=ARRAY (normalized, N x C x H x W)")
    ch = None if channel is None else int(channel)
    if ch is not None and ch < 0:
        raise InvalidArgument("channel must be non-negative")
    _precision(precision, model)
    if input is not None:
        a = np.ascontiguousarray(np.asarray(input, dtype=np.float32))
        if a.ndim != 4:
            raise InvalidArgument(f"input must be N x C x H x W, not shape {a.shape}")
        out = _native.probe(model._native, layer, input=(a.tobytes(), list(a.shape)), channel=ch)
    else:
        out = _native.probe(model._native, layer, image=os.fspath(image), size=_size(size), channel=ch)
    act = _array(out["activation"]).copy()
    grad = _array(out["input_grad"]).copy() if "input_grad" in out else None
    return Probe(act, grad)


def _check_model(model: Any) -> None:
    if not isinstance(model, Model):
        raise InvalidArgument(
            f"expected a model from deepvis.load(...), not {type(model).__name__}"
        )


def _seed(seed: Any) -> int:
    s = int(seed)
    if s < 0:
        raise InvalidArgument("seed must be non-negative")
    return s


_OVERRIDES = (
    "step_size",
    "param",
    "transforms",
    "optimizer",
    "lr",
    "octaves",
    "l2",
    "tv",
    "blur",
    "clip_norm",
    "clip_contribution",
    "budget",
)


def _overrides(kw: dict) -> dict:
    unknown = sorted(set(kw) - set(_OVERRIDES))
    if unknown:
        raise InvalidArgument(
            f"unknown option {unknown[0]!r}; the options are {', '.join(_OVERRIDES)}"
        )
    return kw


_LUCENT_TERM = re.compile(r"([A-Za-z_][\w.]*):(\d+)")


def _lucent_objective(model: Model, objective: str) -> str:
    """`layer4_1:7` (Lucent's spelling) as `layer4.1:7`; names that are already layers stay."""
    layers = model.layers()
    ours = {n for layer in layers for n in (layer.name,) + layer.aliases}
    lucent = model._lucent_names()

    def fix(m: "re.Match[str]") -> str:
        name = m.group(1)
        if name in ours:
            return m.group(0)
        return f"{lucent.get(name, name)}:{m.group(2)}"

    return _LUCENT_TERM.sub(fix, objective)
