"""Issue 15: datasets from the user's own code, data.dataset = "package.module:function".

The factory returns (train, val) or {"train": ..., "val": ...}, each a map-style Dataset or
an (x, y) pair; its targets are checked against task.kind; what fits in memory is collated
once into the built-in cached path, the rest streams, and both give the same batches.
Everything wrong is one sentence naming data.dataset, a DataError (exit 2 in `mpt run`).
The factories here are real modules written into tmp_path; the data is real.
"""

from __future__ import annotations

import itertools
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from engine.data import BatchTransform, DatasetInputs, load_data, require_validation
from engine.distributed import World
from engine.errors import DataError
from engine.placement import DataPlacement
from engine.profile import DataSection, profile_from_dict

CPU = torch.device("cpu")
_names = itertools.count()


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """factory(source) -> "module:make": `source` written as a new module on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str, name: str = "make") -> str:
        module = f"user_factory_{next(_names)}_{tmp_path.name[-8:].replace('-', '_')}"
        text = "import numpy as np\nimport torch\n\n" + textwrap.dedent(source)
        (tmp_path / f"{module}.py").write_text(text)
        return f"{module}:{name}"

    return write


def load(path: str, kind: str = "classification", seed: int = 0, **data):
    return load_data(DataSection(dataset=path, **data), seed, kind)


def refused(path: str, kind: str = "classification", **data) -> str:
    """The sentence load_data refuses the factory's data with."""
    with pytest.raises(DataError) as info:
        load(path, kind, **data)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# A Dataset of float features and class labels; its `targets` only when asked.
FEATURES_DATASET = """
class Features(torch.utils.data.Dataset):
    classes = ["low", "mid", "high"]

    def __init__(self, n, seed, with_targets):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)
        if with_targets:
            self.targets = self.y.tolist()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])

def make(n=200, with_targets=True, val=True):
    return Features(n, 0, with_targets), Features(50, 1, with_targets) if val else None
"""


# ---- what a factory may return ----


def test_tensor_pairs_become_the_splits_as_they_are(factory):
    path = factory(
        """
        X = torch.randn(100, 10, generator=torch.Generator().manual_seed(0))
        Y = X[:, 0] * 2 + 1

        def make():
            return (X[:80], Y[:80]), (X[80:], Y[80:])
        """
    )
    data = load(path, "regression")
    assert (len(data.train), len(data.val)) == (80, 20)
    assert data.in_shape == (10,) and data.num_classes == 1 and data.kind == "regression"
    assert data.mean is None and data.std is None  # float inputs stay as they are
    module = __import__(path.partition(":")[0])
    assert torch.equal(data.train.x, module.X[:80])
    assert data.train.y.shape == (80, 1) and data.train.y.dtype == torch.float32
    assert torch.equal(data.val.y[:, 0], module.Y[80:])


def test_numpy_pairs_work_and_float64_inputs_become_float32(factory):
    path = factory(
        """
        def make():
            rng = np.random.default_rng(0)
            x, y = rng.normal(size=(60, 4)), rng.integers(0, 3, 60)
            return (x[:40], y[:40]), (x[40:], y[40:])
        """
    )
    data = load(path)
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    assert data.num_classes == 3 and data.in_shape == (4,)


def test_a_dict_return_names_the_splits(factory):
    path = factory(
        """
        def make():
            x, y = torch.randn(30, 3), torch.arange(30) % 2
            return {"train": (x[:20], y[:20]), "val": (x[20:], y[20:])}
        """
    )
    data = load(path)
    assert (len(data.train), len(data.val), data.num_classes) == (20, 10, 2)


def test_val_none_holds_out_val_fraction_seeded_by_the_run_seed(factory):
    path = factory(
        """
        def make():
            return (torch.arange(50.0)[:, None], torch.arange(50) % 5), None
        """
    )
    data = load(path, seed=7, val_fraction=0.2)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(7))
    assert data.val.x[:, 0].tolist() == perm[:10].float().tolist()
    assert data.train.x[:, 0].tolist() == perm[10:].float().tolist()
    assert load(path, seed=0, val_fraction=0.0).val is None


def test_a_dataset_with_targets_and_one_without_give_the_same_data(factory):
    path = factory(FEATURES_DATASET)
    with_targets = load(path, cache="memory")
    without = load(path, cache="memory", options={"with_targets": False})
    assert torch.equal(with_targets.train.x, without.train.x)
    assert torch.equal(with_targets.train.y, without.train.y)
    assert torch.equal(with_targets.val.y, without.val.y)
    assert with_targets.train.y.dtype == torch.int64 and with_targets.num_classes == 3


def test_options_reach_the_factory_as_keyword_arguments(factory):
    path = factory(FEATURES_DATASET)
    data = load(path, options={"n": 120, "val": False}, val_fraction=0.25)
    assert (len(data.train), len(data.val)) == (90, 30)


def test_a_datasets_classes_become_the_bundles_classes(factory):
    data = load(factory(FEATURES_DATASET))
    assert data.classes == ["low", "mid", "high"]


def test_pairs_have_no_class_names(factory):
    path = factory("def make():\n    return (torch.randn(10, 2), torch.arange(10) % 2), None\n")
    assert load(path, val_fraction=0.2).classes is None


def test_built_in_datasets_name_their_classes(tmp_path):
    assert load_data(DataSection(dataset="digits"), 0).classes == [str(d) for d in range(10)]
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / name / f"{i}.png")
    cfg = DataSection(dataset="image_folder", path=str(tmp_path), image_size=8)
    assert load_data(cfg, 0).classes == ["cat", "dog"]


def test_uint8_images_from_a_factory_take_the_built_in_path(factory):
    """The same images as the built-in digits, returned by a factory: the same bundle."""
    path = factory(
        """
        from sklearn.datasets import load_digits

        def make():
            d = load_digits()
            images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
            return (images, d.target), None
        """
    )
    mine = load(path, val_fraction=0.2)
    built_in = load_data(DataSection(dataset="digits", val_fraction=0.2), 0)
    assert mine.in_shape == built_in.in_shape == (1, 8, 8)  # the channel added
    assert torch.equal(mine.train.x, built_in.train.x) and torch.equal(mine.val.y, built_in.val.y)
    assert mine.mean == built_in.mean and mine.std == built_in.std


@pytest.mark.filterwarnings("error::UserWarning")  # (no tensor resized to fit)
@pytest.mark.parametrize("items", ["float64 arrays", "uint8 (H, W) arrays", "uint8 (H, W) tensors"])
def test_a_datasets_items_are_converted_as_a_pairs_arrays_are(factory, items):
    """1,797 items: more than one chunk of the collating pass; the same tensors either way."""
    make_x = "d.data" if items.startswith("float64") else "np.rint(d.images * 15).astype(np.uint8)"
    path = factory(
        f"""
        from sklearn.datasets import load_digits

        def arrays():
            d = load_digits()
            return {make_x}, d.target

        def as_pair():
            return arrays(), None

        def as_items():
            x, y = arrays()
            item = torch.from_numpy if {items.endswith("tensors")} else np.asarray
            return [(item(x[i]), y[i]) for i in range(len(x))], None
        """
    )
    pair = load(path.replace(":make", ":as_pair"), val_fraction=0.0)
    dataset = load(path.replace(":make", ":as_items"), val_fraction=0.0)
    assert torch.equal(dataset.train.x, pair.train.x) and torch.equal(dataset.train.y, pair.train.y)
    want = (torch.float32, (64,)) if items.startswith("float64") else (torch.uint8, (1, 8, 8))
    assert (dataset.train.x.dtype, dataset.in_shape) == want


def test_float_inputs_are_normalised_only_when_data_mean_asks(factory):
    path = factory(
        """
        def make():
            x = torch.arange(40.0).view(20, 2)
            return (x, torch.arange(20) % 2), None
        """
    )
    plain = load(path, val_fraction=0.0)
    assert plain.mean is None and torch.equal(plain.train.x, torch.arange(40.0).view(20, 2))
    scaled = load(path, val_fraction=0.0, mean=[10.0, 20.0], std=[2.0, 4.0])
    assert scaled.mean == [10.0, 20.0] and scaled.std == [2.0, 4.0]
    want = (plain.train.x - torch.tensor([10.0, 20.0])) / torch.tensor([2.0, 4.0])
    assert torch.equal(scaled.train.x, want)
    # normalised once here: BatchTransform passes a factory's float batch as it is
    transform = BatchTransform(scaled.mean, scaled.std, CPU)
    assert torch.equal(transform(scaled.train.x[:4]), scaled.train.x[:4])


# ---- cached and streamed ----

MULTILABEL_IMAGES = """
class Tagged(torch.utils.data.Dataset):
    classes = ["bright", "striped"]

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, 256, (n, 3, 6, 6), generator=g, dtype=torch.uint8)
        self.y = torch.randint(0, 2, (n, 2), generator=g).float()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

def make():
    return Tagged(120, 0), None
"""


def _epoch(data, cache: str, workers: int = 0, start: int = 0):
    """Epoch 1's train batches from step `start`, then the val batches, as the model sees
    them, with the splits placed by `cache`."""
    transform = BatchTransform(data.mean, data.std, CPU)
    placed = DataPlacement(data, cache, CPU, transform, num_workers=workers)
    _, fetch = placed.train_epoch(0, 1, batch=16, accum=1, world=World(), start=start)
    batches = [(transform(x), y) for x, y in fetch]
    batches += [(transform(x), y) for x, y in placed.val_batches(32, World())]
    placed.close()
    return placed.mode, batches


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("kind", ["classification", "multilabel"])
def test_cached_and_streamed_give_the_same_batches(factory, kind):
    path = factory(FEATURES_DATASET if kind == "classification" else MULTILABEL_IMAGES)
    options = {"with_targets": False} if kind == "classification" else {}
    cached = load(path, kind, options=options, val_fraction=0.2)
    streamed = load(path, kind, options=options, val_fraction=0.2, cache="stream")
    assert isinstance(streamed.train.x, DatasetInputs)  # read per sample from the Dataset
    assert streamed.in_shape == cached.in_shape and streamed.num_classes == cached.num_classes
    streamed.mean, streamed.std = cached.mean, cached.std  # (images: streamed estimates them)
    mode, from_memory = _epoch(cached, "memory")
    assert mode == "memory"
    mode, from_loader = _epoch(streamed, "auto", workers=2)
    assert mode == "stream"
    assert _same(from_memory, from_loader)


def test_a_streamed_epoch_resumes_at_its_step_as_the_cached_one_does(factory):
    path = factory(FEATURES_DATASET)
    cached, streamed = load(path), load(path, cache="stream")
    _, whole = _epoch(cached, "memory")
    _, resumed = _epoch(streamed, "stream", start=5)
    assert _same(whole[5:], resumed)


def test_data_mean_gives_the_same_inputs_cached_and_streamed(factory):
    path = factory(FEATURES_DATASET)
    stats = {"mean": [0.5] * 6, "std": [2.0] * 6}
    cached, streamed = load(path, **stats), load(path, cache="stream", **stats)
    assert cached.mean == streamed.mean == [0.5] * 6
    assert torch.equal(cached.train.x, streamed.train.x.materialize())


def test_a_dataset_too_big_for_memory_streams_under_auto(factory, monkeypatch):
    monkeypatch.setattr("engine.user_data.host_memory_free", lambda: 4096)
    data = load(factory(FEATURES_DATASET))
    assert isinstance(data.train.x, DatasetInputs) and isinstance(data.val.x, DatasetInputs)


def test_collating_ten_thousand_small_items_takes_well_under_a_second(factory):
    path = factory(FEATURES_DATASET)
    load(path, options={"n": 100})  # imports and first calls out of the timing
    start = time.perf_counter()
    data = load(path, options={"n": 10_000, "with_targets": False})
    seconds = time.perf_counter() - start
    assert isinstance(data.train.x, torch.Tensor) and len(data.train) + len(data.val) == 10_050
    # a guard against a per-item pathology, not a speed target (bench/ holds those): it
    # took over 0.5 s once with the whole suite loading the machine
    assert seconds < 5, f"{seconds:.2f} s"


# ---- task kinds ----


def test_multilabel_targets_are_float_0_1_rows_and_name_their_labels(factory):
    data = load(factory(MULTILABEL_IMAGES), "multilabel", val_fraction=0.25)
    assert data.train.y.dtype == torch.float32 and data.train.y.shape == (90, 2)
    assert data.num_classes == 2 and data.classes == ["bright", "striped"]
    assert data.in_shape == (3, 6, 6) and len(data.mean) == 3  # uint8 images: normalised


def test_regression_targets_of_several_columns_keep_them(factory):
    path = factory(
        "def make():\n    return (torch.randn(20, 3), np.ones((20, 2), dtype=np.int32)), None\n"
    )
    data = load(path, "regression", val_fraction=0.0)
    assert data.train.y.dtype == torch.float32 and data.num_classes == 2


BAD_TARGETS = {
    # kind, the targets of 8 samples (Python source), what the sentence says
    "float class indices": (
        "classification",
        "torch.rand(8)",
        'the train targets are float32, not class indices; set task.kind = "regression"',
    ),
    "one-hot rows": ("classification", "torch.eye(4)[torch.arange(8) % 4]", "y.argmax(1)"),
    "negative labels": ("classification", "torch.arange(8) - 1", "found -1"),
    "text labels": ("classification", "np.array(['cat', 'dog'] * 4)", "are text ('cat', ...)"),
    "multilabel indices": (
        "multilabel",
        "torch.arange(8) % 3",
        "one class index per sample; multilabel needs 0/1 rows (N, labels), e.g. "
        "torch.nn.functional.one_hot(y).float()",
    ),
    "multilabel not 0/1": (
        "multilabel",
        "torch.full((8, 2), 0.5)",
        "must be 0 or 1 for multilabel, but sample 0 has 0.5 for label 0",
    ),
    "regression text": (
        "regression",
        "np.array(['a'] * 8)",
        "must be numbers, not text ('a', ...)",
    ),
    "regression infinite": (
        "regression",
        "torch.tensor([1.0] * 7 + [float('inf')])",
        "must be finite numbers, but sample 7 has inf",
    ),
    "regression 3-D": ("regression", "torch.zeros(8, 2, 2)", "needs (N,) or (N, targets)"),
}


@pytest.mark.parametrize("case", list(BAD_TARGETS))
def test_targets_that_do_not_fit_task_kind_are_refused(factory, case):
    kind, targets, says = BAD_TARGETS[case]
    path = factory(f"def make():\n    return (torch.randn(8, 3), {targets}), None\n")
    message = refused(path, kind, val_fraction=0.25)
    assert message.startswith(f"data.dataset {path!r}: ") and says in message, message


# ---- bad input: one sentence naming data.dataset ----

BAD_FACTORIES = {
    "factory raising": (
        "def make():\n    raise ValueError('no data here')\n",
        "raised ValueError: no data here (",
    ),
    "something else returned": (
        "def make():\n    return 42\n",
        "returned an int; return (train, val) or",
    ),
    "one pair, not (train, val)": (
        "def make():\n    return torch.zeros(4, 2), torch.zeros(4)\n",
        "returned one (x, y) pair of arrays, not (train, val); return ((x, y), None)",
    ),
    "unknown dict key": (
        "def make():\n    return {'training': (torch.zeros(4, 2), torch.zeros(4))}\n",
        "returned a dict with keys ['training']; it needs \"train\"",
    ),
    "items not (x, y)": (
        "def make():\n    return [torch.zeros(3)] * 4, None\n",
        "train item 0 is a Tensor, not an (x, y) pair",
    ),
    "x of different shapes": (
        "def make():\n    return [(torch.zeros(3), 0)] * 3 + [(torch.zeros(4), 1)], None\n",
        "train item 3's x has shape (4,) but item 0's (3,); every x must have the same shape",
    ),
    "an empty train split": (
        "def make():\n    return (torch.zeros(0, 2), torch.zeros(0)), None\n",
        "the training split is empty",
    ),
    "an empty train Dataset": ("def make():\n    return [], None\n", "the training split is empty"),
    "x and y of different lengths": (
        "def make():\n    return (torch.zeros(10, 2), torch.zeros(9).long()), None\n",
        "the train x holds 10 samples but y 9; they must match",
    ),
    "an item raising": (
        "class D(torch.utils.data.Dataset):\n"
        "    def __len__(self):\n        return 4\n"
        "    def __getitem__(self, i):\n        return {}[i]\n\n"
        "def make():\n    return D(), None\n",
        "reading train item 0 raised KeyError: 0 (",
    ),
    "a PIL image as x": (
        "from PIL import Image\n\n"
        "def make():\n    return [(Image.new('L', (4, 4)), 0)] * 4, None\n",
        "train item 0's x is an Image, not a tensor or numpy array, e.g. with the transform "
        "torchvision.transforms.PILToTensor()",
    ),
    "an iterable dataset": (
        "class D(torch.utils.data.IterableDataset):\n"
        "    def __iter__(self):\n        return iter([])\n\n"
        "def make():\n    return D(), None\n",
        "its train split is a D; return (train, val)",
    ),
    "val inputs of another shape": (
        "def make():\n"
        "    y = torch.arange(4) % 2\n"
        "    return (torch.zeros(4, 3), y), (torch.zeros(4, 5), y)\n",
        "the val inputs have shape (5,) per sample but the train inputs (3,); they must match",
    ),
    "channels-last images": (
        "def make():\n    x = np.zeros((4, 8, 8, 3), dtype=np.uint8)\n"
        "    return (x, np.arange(4) % 2), None\n",
        "looks like channels-last images (4, 8, 8, 3); images are (C, H, W), e.g. "
        "x.permute(0, 3, 1, 2)",
    ),
    "classes too few for the labels": (
        "class D(torch.utils.data.TensorDataset):\n    classes = ['a', 'b']\n\n"
        "def make():\n    return D(torch.zeros(6, 2), torch.arange(6) % 3), None\n",
        "its classes list 2 names but the labels reach 2; give one name per class",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FACTORIES))
def test_bad_factory_data_is_one_sentence_naming_the_key(factory, case):
    source, says = BAD_FACTORIES[case]
    path = factory(source)
    message = refused(path, val_fraction=0.25)
    assert message.startswith(f"data.dataset {path!r}") and says in message, message


def test_a_missing_module_or_function_is_named(factory):
    assert refused("no_such_module_here:make").startswith(
        "data.dataset 'no_such_module_here:make': cannot import module 'no_such_module_here'"
    )
    path = factory("def other():\n    pass\n")
    assert refused(path).endswith("has no callable 'make'")


def test_options_the_factory_does_not_take_are_named(factory):
    path = factory("def make(n=4):\n    return (torch.zeros(n, 2), torch.arange(n) % 2), None\n")
    message = refused(path, options={"size": 3})
    assert message.startswith(f"data.dataset {path!r}: cannot be called with ['size']")


@pytest.mark.parametrize(
    ("key", "setting", "off"),
    [("data.random_crop", {"random_crop": 2}, "0"), ("data.hflip", {"hflip": True}, "false")],
)
def test_augmenting_is_refused_on_data_that_is_no_images(factory, key, setting, off):
    message = refused(factory(FEATURES_DATASET), **setting)
    assert message.startswith(f"{key} = ") and "applies to images (samples of shape (C, H, W))"
    assert message.endswith(f"have shape (6,); set {key} = {off}")


def test_data_mean_must_fit_the_features(factory):
    message = refused(factory(FEATURES_DATASET), mean=[0.0, 0.0], std=[1.0, 1.0])
    assert message.startswith("data.mean has 2 values but the inputs of data.dataset ")
    assert "have 6 channel(s)" in message


def test_a_run_that_needs_validation_names_the_factory_without_one(factory):
    path = factory("def make():\n    return (torch.randn(20, 2), torch.arange(20) % 2), None\n")
    p = profile_from_dict(
        {
            "data": {"dataset": path, "val_fraction": 0.0},
            "early_stop": {"enabled": True, "monitor": "val_loss"},
        }
    )
    data = load_data(p.data, 0, p.task.kind)
    with pytest.raises(DataError) as info:
        require_validation(p, data)
    assert str(info.value) == (
        f"early_stop.monitor 'val_loss' needs a validation set, but data.dataset {path!r} "
        "returned no val split and data.val_fraction is 0; set data.val_fraction > 0 or "
        "monitor train_loss"
    )


# ---- the shipped examples ----


def test_the_diabetes_example_reaches_r2_0_4_with_a_small_mlp():
    data = load("examples.diabetes:make", "regression")
    assert data.in_shape == (10,) and data.num_classes == 1 and data.mean is None
    assert abs(float(data.train.y.mean())) < 1e-5  # standardised targets
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # epochs of batches of 32: a fraction of a second
        for idx in torch.randperm(len(data.train), generator=g).split(32):
            loss = torch.nn.functional.mse_loss(model(data.train.x[idx]), data.train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        error = (model(data.val.x) - data.val.y).square().sum()
    r2 = 1 - float(error / (data.val.y - data.val.y.mean()).square().sum())
    assert r2 >= 0.4, r2
    raw = load("examples.diabetes:make", "regression", options={"scale_targets": False})
    assert float(raw.train.y.min()) >= 25 and float(raw.train.y.max()) <= 346  # the scores


def test_the_multilabel_digits_example_is_a_dataset_with_classes_and_targets():
    data = load("examples.digits_multilabel:make", "multilabel")
    assert data.classes == ["even", "at least 5", "prime", "round shape"]
    assert data.num_classes == 4 and data.in_shape == (1, 8, 8)
    assert (len(data.train), len(data.val)) == (1438, 359)
    assert data.train.x.dtype == torch.uint8 and len(data.mean) == 1  # images, as digits
    digits = load_digits()
    x = torch.from_numpy(np.rint(digits.images * (255 / 16)).astype(np.uint8))
    seven = int(np.flatnonzero(digits.target == 7)[0])
    row = next(i for i in range(len(data.train)) if torch.equal(data.train.x[i, 0], x[seven]))
    assert data.train.y[row].tolist() == [0.0, 1.0, 1.0, 0.0]  # 7: odd, >= 5, prime, no loop
