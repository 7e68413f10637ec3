# Type stubs of the native module (crates/deepvis-py/src/py.rs). Arrays travel as
# (shape, float32 bytes); deepvis/__init__.py wraps them in numpy.
from typing import Dict, List, Optional, Sequence, Tuple

__version__: str

Array = Tuple[List[int], bytes]

class Model:
    name: str
    source: str
    channels: int
    native_size: Tuple[int, int]
    normalization: Tuple[List[float], List[float]]
    weights: str
    notes: List[str]
    def layers(
        self, size: Optional[Tuple[int, int]] = None
    ) -> List[Tuple[str, List[str], str, List[int], Optional[int]]]: ...
    def resolve(self, layer: str, size: Optional[Tuple[int, int]] = None) -> Tuple[str, int]: ...

class Options:
    preset: str
    def __init__(
        self,
        preset: str = "default",
        size: Optional[Tuple[int, int]] = None,
        steps: Optional[int] = None,
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
    ) -> None: ...
    def total_steps(self, size: Tuple[int, int]) -> int: ...
    def describe(self, size: Tuple[int, int]) -> str: ...

class Job:
    label: str
    def wait(self, timeout: float) -> bool: ...
    def progress(self) -> Tuple[int, int]: ...
    def cancel(self) -> None: ...
    def result(self) -> Dict[str, Array]: ...

def load(
    model: str,
    weights: Optional[str] = None,
    offline: bool = False,
    cache_dir: Optional[str] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    range: Optional[str] = None,
    size: Optional[Tuple[int, int]] = None,
    random_weights: bool = False,
) -> Model: ...
def start_render(
    model: Model,
    objective: str,
    options: Options,
    seed: int = 0,
    batch: int = 1,
    init: Optional[Tuple[bytes, List[int]]] = None,
) -> Job: ...
def start_filters(
    model: Model, layer: str, filters: List[int], options: Options, seed: int = 0
) -> Job: ...
def start_dream(
    model: Model,
    objective: str,
    photo: Tuple[bytes, List[int]],
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps_per_octave: int = 10,
    lr: float = 0.02,
    seed: int = 0,
) -> Job: ...
def probe(
    model: Model,
    layer: str,
    input: Optional[Tuple[bytes, List[int]]] = None,
    image: Optional[str] = None,
    size: Optional[Tuple[int, int]] = None,
    channel: Optional[int] = None,
) -> Dict[str, Array]: ...
def read_image(path: str) -> Array: ...
def encode_png(data: bytes, shape: Sequence[int]) -> bytes: ...
def save_image(path: str, data: bytes, shape: Sequence[int]) -> Optional[str]: ...
def grid(data: bytes, shape: Sequence[int], labels: List[str]) -> Array: ...
def set_precision(precision: str, model: Model) -> Optional[str]: ...
def models() -> List[Tuple[str, str, bool]]: ...
