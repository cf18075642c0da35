"""Datasets: each loader decodes its data once into uint8 image tensors (N, C, H, W).

Batches are then index slices of those tensors, normalised (and augmented) per batch
on the training device, as in cifar10-airbench: speed comes from where the data lives.
`LOADERS` maps a dataset name to its loader; adding a dataset is one entry. A
"package.module:function" dataset is the user's own (engine/user_data.py): collated once
into tensors when it fits in memory, it then takes the same path.
"""

from __future__ import annotations

import contextlib
import math
import re
import socket
import urllib.error
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import DataError
from engine.memory import cache_fits, format_bytes, host_memory_free, too_big
from engine.profile import DataSection
from engine.user_data import load_factory, read_input, require_named_outputs


@dataclass
class Split:
    x: torch.Tensor  # uint8 images (N, C, H, W), or a factory's inputs (N, ...)
    y: torch.Tensor  # int64 class indices (N,), or float32 (N, labels or targets)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Raw:
    """What a loader returns: the training split, the dataset's own test split if any."""

    train: Split
    test: Split | None
    mean: list[float] | None = None  # the dataset's published normalisation constants
    std: list[float] | None = None
    classes: list[str] | None = None  # the class names, when the dataset has them


@dataclass
class DataBundle:
    """What a run trains on. `x`: uint8 images (N, C, H, W) for the built-in datasets and
    image factories, or any float tensor (N, ...) of a factory; `y` by task.kind:
    classification int64 class indices (N,), multilabel float32 0/1 (N, labels),
    regression float32 (N, targets). uint8 images are normalised per batch by
    BatchTransform with `mean`/`std`; float inputs are as the model sees them (a factory's,
    normalised here already when data.mean asked for it)."""

    train: Split
    val: Split | None
    num_classes: int  # the model's outputs: classes, labels (multilabel) or targets (regression)
    in_shape: tuple[int, ...]  # one sample's shape: (C, H, W) for images, (features,) ...
    mean: list[float] | None  # per channel (dim 1); None: the inputs are used as they are
    std: list[float] | None
    kind: str = "classification"  # task.kind
    classes: list[str] | None = None  # class (or label) names, when the data has them


def _as_images(x: np.ndarray, source: str) -> torch.Tensor:
    """(N, H, W), (N, C, H, W) or (N, H, W, C) array -> uint8 tensor (N, C, H, W)."""
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4:
        if _channels_last(x.shape, source):
            x = x.transpose(0, 3, 1, 2)
    elif x.ndim == 2 and len(x):
        side = math.isqrt(x.shape[1])
        hint = f", e.g. x.reshape(-1, {side}, {side})" if side * side == x.shape[1] else ""
        raise DataError(
            f"{source}: shape {tuple(x.shape)} holds flat vectors, not images; store images "
            f"as (N, H, W) or (N, H, W, C){hint}"
        )
    else:
        raise DataError(
            f"{source}: images must be (N, H, W) or (N, H, W, C), got shape {tuple(x.shape)}"
        )
    if x.dtype != np.uint8:
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise DataError(f"{source}: pixel values must be numbers, got dtype {x.dtype}")
        if np.issubdtype(x.dtype, np.floating):
            if not np.isfinite(x).all():
                raise DataError(f"{source}: pixel values must be finite, found NaN or infinity")
            if x.size and x.max() <= 1.0 and x.min() >= 0:
                x = x * 255.0  # images stored as floats in [0, 1]
            x = np.rint(x)  # to the nearest level, not truncated towards 0
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(
                f"{source}: pixel values must lie in 0..255 (uint8) or 0..1 "
                f"(floats), got {x.min()}..{x.max()}"
            )
        x = x.astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(x))


# Channel counts images usually have: grey, RGB, RGBA.
_USUAL_CHANNELS = (1, 3, 4)


def _channels_last(shape: tuple[int, ...], source: str) -> bool:
    """Whether a 4-D image array is (N, H, W, C) rather than (N, C, H, W).

    The end holding a usual channel count (1, 3, 4) is the channels; when both or neither
    do, the reading with square images, then the one with fewer channels than the other
    end; an array that reads the same both ways is refused rather than guessed."""
    first, last = shape[1], shape[3]
    if (first in _USUAL_CHANNELS) != (last in _USUAL_CHANNELS):
        return last in _USUAL_CHANNELS
    square_first, square_last = shape[2] == shape[3], shape[1] == shape[2]
    if square_first != square_last:
        return square_last
    if first != last:
        return last < first
    raise DataError(
        f"{source}: cannot tell whether shape {tuple(shape)} is channels-first (N, C, H, W) "
        "or channels-last (N, H, W, C); store it as (N, H, W, C) with fewer channels than "
        "rows and columns"
    )


def _as_labels(y: np.ndarray, n: int, source: str) -> torch.Tensor:
    """Labels as int64 class indices (N,); whole-number floats and booleans are accepted."""
    y = np.asarray(y)
    if y.ndim >= 2 and y.shape[0] == n and math.prod(y.shape[1:]) > 1:
        raise DataError(_labels_per_image(y, source))
    y = y.reshape(-1)
    if len(y) != n:
        raise DataError(f"{source}: {n} images but {len(y)} labels; they must match")
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating):
        y = _whole_labels(y, source)
    elif y.dtype.kind in "USO":
        first = repr(y[0].item()) if len(y) else ""
        raise DataError(
            f"{source}: labels are text ({first}, ...); store class indices 0..K-1, e.g. "
            "numpy.unique(y, return_inverse=True)[1]"
        )
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: labels must be integers, got {y.dtype}")
    if len(y) and y.min() < 0:
        raise DataError(f"{source}: labels must be >= 0, got {y.min()}")
    if len(y) and int(y.max()) > np.iinfo(np.int64).max:  # uint64 past int64: would wrap
        raise DataError(
            f"{source}: label {int(y.max())} is no class index (a -1 stored as "
            f"{y.dtype}?); store class indices 0..K-1"
        )
    return torch.from_numpy(y.astype(np.int64))


def _labels_per_image(y: np.ndarray, source: str) -> str:
    """The sentence for labels of shape (N, K): one-hot rows said as such."""
    rows = y.reshape(len(y), -1)
    one_hot = np.issubdtype(rows.dtype, np.number) or rows.dtype == np.bool_
    if one_hot:
        one_hot = bool(np.isin(rows, (0, 1)).all() and (rows.sum(axis=1) == 1).all())
    if one_hot:
        return f"{source} looks one-hot (shape {tuple(y.shape)}); store class indices: y.argmax(1)"
    return (
        f"{source}: labels have shape {tuple(y.shape)}, more than one value per image; "
        "store one class index per image, shape (N,)"
    )


def _whole_labels(y: np.ndarray, source: str) -> np.ndarray:
    """Float labels that are whole numbers (as pandas or Keras may store them), as int64."""
    finite = np.isfinite(y)
    if not finite.all():
        i = int(np.argmin(finite))
        raise DataError(f"{source}: label {i} is {y[i]}; labels must be class indices 0..K-1")
    whole = y == np.rint(y)
    if not whole.all():
        i = int(np.argmin(whole))
        raise DataError(
            f"{source}: label {i} is {y[i]}, not a whole number; labels must be class "
            "indices 0..K-1"
        )
    if len(y) and y.max() > 2**53:  # beyond the floats that hold integers exactly
        raise DataError(f"{source}: labels must be class indices 0..K-1, got {y.max():g}")
    return y.astype(np.int64)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: images (1797, 8, 8) in 0..16 and labels. Read from
    its file without importing sklearn, which costs ~1.6 s of every start (and draws from
    Python's random stream on import); sklearn's own loader where the file is elsewhere."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path) as f:
                table = np.loadtxt(f, delimiter=",")  # 64 pixels, then the label, a row
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return d.images, d.target


def load_digits(cfg: DataSection, seed: int) -> Raw:
    images, labels = _digits_arrays()
    x = np.rint(images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 grey levels -> 0..255
    train = Split(_as_images(x, "digits"), _as_labels(labels, len(x), "digits"))
    return Raw(train, None, classes=[str(digit) for digit in range(10)])


def load_npz(cfg: DataSection, seed: int) -> Raw:
    path = Path(cfg.path).expanduser()
    arrays = _open_npz(path)
    with arrays:
        keys = set(arrays.files)
        if not {"x_train", "y_train"} <= keys:
            raise DataError(
                f"{path}: needs arrays x_train and y_train (Keras layout), found "
                f"{', '.join(sorted(keys)) or 'none'}"
            )
        has_test = {"x_test", "y_test"} & keys
        if cfg.use_test_split and len(has_test) == 1:  # half a test split: never ignored
            (have,) = has_test
            missing = "y_test" if have == "x_test" else "x_test"
            raise DataError(
                f"{path}: has {have} but no {missing}; add {missing}, remove {have}, or set "
                "data.use_test_split = false"
            )
        names = ["x_train", "y_train"] + (["x_test", "y_test"] if len(has_test) == 2 else [])
        _require_room_for_npz(path, names)
        train_x = _as_images(_npz_array(arrays, "x_train", path), f"{path}: x_train")
        y_train = _npz_array(arrays, "y_train", path)
        train = Split(train_x, _as_labels(y_train, len(train_x), f"{path}: y_train"))
        test = None
        if len(has_test) == 2:
            test_x = _as_images(_npz_array(arrays, "x_test", path), f"{path}: x_test")
            if test_x.shape[1:] != train_x.shape[1:]:
                raise DataError(
                    f"{path}: x_test images are {tuple(test_x.shape[1:])} but "
                    f"x_train images are {tuple(train_x.shape[1:])}"
                )
            y_test = _npz_array(arrays, "y_test", path)
            test = Split(test_x, _as_labels(y_test, len(test_x), f"{path}: y_test"))
            if len(test) == 0:
                raise DataError(
                    f"{path}: x_test holds no images; fill it, drop x_test/y_test, or set "
                    "data.use_test_split = false"
                )
    return Raw(train, test)


_SAVE_AS_NPZ = "save the arrays with numpy.savez(path, x_train=..., y_train=...)"


def _open_npz(path: Path):
    """The open .npz archive, after telling apart what else the file may be by its first
    bytes: empty, a lone .npy array, a pickle (never loaded), anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not head:
        raise DataError(f"{path}: the file is empty (0 bytes), not a .npz; {_SAVE_AS_NPZ}")
    if head.startswith(b"\x93NUMPY"):
        raise DataError(
            f"{path}: is a single .npy array (numpy.save), not a .npz archive; {_SAVE_AS_NPZ}"
        )
    if head[:1] == b"\x80":  # the pickle protocol's opcode
        raise DataError(
            f"{path}: is a Python pickle, not a .npz archive; mpt never unpickles data "
            f"(allow_pickle=False: loading a pickle can run code); {_SAVE_AS_NPZ}"
        )
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # a zip archive, as .npz is
        raise DataError(
            f"{path}: cannot be read as a .npz file (it is not a zip archive of .npy arrays); "
            f"{_SAVE_AS_NPZ}"
        )
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot be read as a .npz file ({e})") from None


def _npz_header(path: Path, name: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of one array of a .npz from its header alone (None: unreadable;
    reading the array itself then says why)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(f, max_header_size=2**20)
            return tuple(shape), dtype
    except Exception:  # noqa: BLE001 - any damage is reported when the array is read
        return None


def _require_room_for_npz(path: Path, names: list[str]) -> None:
    """Refuse arrays too big for the memory free, from their headers, before reading them:
    a stored array, its uint8 images, and a float array's temporary while converting."""
    sizes = {}
    for name in names:
        header = _npz_header(path, name)
        if header is None or header[1].hasobject:
            continue
        shape, dtype = header
        count = math.prod(shape)
        sizes[name] = (shape, dtype, count * dtype.itemsize)
        if name.startswith("x_"):
            extra = count * (2 if dtype == np.uint8 else 2 + dtype.itemsize)
            sizes[name] = (shape, dtype, sizes[name][2] + extra)
    need = sum(nbytes for _, _, nbytes in sizes.values())
    over = too_big(need)
    if over:
        name = max(sizes, key=lambda k: sizes[k][2])
        shape, dtype, _ = sizes[name]
        raise DataError(
            f"{path}: {name} is {shape} {dtype}; loading the arrays needs "
            f"{format_bytes(need)} of memory, {over}; use a smaller dataset"
        )


def _npz_array(arrays, name: str, path: Path) -> np.ndarray:
    """One array of an open .npz; arrays of Python objects are refused, never unpickled."""
    try:
        array = arrays[name]
    except ValueError:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        what, fix = (
            (
                "(images of different shapes?)",
                "one numeric array of shape (N, H, W) or (N, H, W, C)",
            )
            if name.startswith("x_")
            else ("(labels as text?)", "the labels as integer class indices 0..K-1")
        )
        raise DataError(
            f"{path}: {name} is an array of Python objects {what}, which mpt does not "
            f"unpickle (allow_pickle=False: unpickling can run code); store {fix}"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:  # a damaged member of the archive
        raise DataError(f"{path}: {name} cannot be read ({e})") from None
    if not isinstance(array, np.ndarray):  # a zip member without the .npy format: bytes
        raise DataError(
            f"{path}: {name} is not a numpy array (a plain file in the zip); {_SAVE_AS_NPZ}"
        )
    return array


_TORCHVISION = {
    # name: (torchvision class, folder it creates under root, mean, std)
    "mnist": ("MNIST", "MNIST", [0.1307], [0.3081]),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST", [0.2860], [0.3530]),
    "cifar10": (
        "CIFAR10",
        "cifar-10-batches-py",
        [0.4914, 0.4822, 0.4465],
        [0.2470, 0.2435, 0.2616],
    ),
}


def load_torchvision(cfg: DataSection, seed: int) -> Raw:
    import torchvision.datasets as tvd

    cls_name, folder, mean, std = _TORCHVISION[cfg.dataset]
    cls = getattr(tvd, cls_name)
    root = Path(cfg.root).expanduser()
    splits = []
    files = f"{root / folder / 'raw'}" if folder != "cifar-10-batches-py" else f"{root / folder}"
    for train in (True, False):
        try:
            with _socket_timeout(30):  # torchvision's urlopen has none: a silent network hangs
                ds = cls(str(root), train=train, download=cfg.download)
        except (urllib.error.URLError, OSError, ConnectionError) as e:
            raise DataError(_download_failed(cls_name, files, folder, _reason(e))) from None
        except RuntimeError as e:  # torchvision: "Dataset not found" / "Error downloading"
            text = str(e)
            if cfg.download and "download" in text.lower():
                net = re.search(r"<urlopen error (.*?)>", text)
                raise DataError(
                    _download_failed(cls_name, files, folder, net.group(1) if net else text)
                ) from None
            raise DataError(
                f"{cls_name} not found in {root / folder}; set data.download = true, or set "
                f"data.root to the folder that holds {folder}/"
            ) from None
        x = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
        x = _as_images(x, cls_name)
        splits.append(Split(x, _as_labels(np.asarray(ds.targets), len(x), cls_name)))
    return Raw(splits[0], splits[1], mean, std, [str(name) for name in ds.classes])


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download_failed(name: str, files: str, folder: str, why: str) -> str:
    return (
        f"could not download {name} ({why.strip()}); with no network, copy the {name} files "
        f"into {files} yourself, or set data.root to a folder that already holds {folder}/"
    )


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e
    return str(reason).strip() or type(e).__name__


class ImageFiles:
    """Images on disk, decoded on demand to uint8 (3, size, size): the streamed path.

    Indexing with a tensor of indices or a slice gives a lazy subset; `load(i)` decodes
    one image; `materialize()` decodes them all into one uint8 tensor (N, 3, size, size).
    """

    def __init__(self, files: list[Path], size: int):
        self.files = list(files)
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), 3, self.size, self.size)

    @property
    def nbytes(self) -> int:
        return len(self.files) * 3 * self.size * self.size

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8

    def __getitem__(self, index) -> ImageFiles:
        if isinstance(index, slice):
            return ImageFiles(self.files[index], self.size)
        return ImageFiles([self.files[int(i)] for i in index], self.size)

    def load(self, i: int) -> torch.Tensor:
        from PIL import Image

        try:
            with _bombs_refused(), Image.open(self.files[i]) as im:
                # A JPEG decodes straight to 1/2, 1/4 or 1/8 of its size (libjpeg's DCT
                # scaling) while that stays >= image_size: less to decode and to resize.
                im.draft("RGB", (self.size, self.size))
                im = im.convert("RGB")
                if im.size != (self.size, self.size):
                    im = im.resize((self.size, self.size))
                return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
            raise DataError(_unreadable_image(self.files[i], e)) from None

    def materialize(self) -> torch.Tensor:
        out = torch.empty(self.shape, dtype=torch.uint8)  # filled in place: no second copy
        for i in range(len(self.files)):
            out[i] = self.load(i)
        return out


class DatasetInputs(ImageFiles):
    """The inputs of a user's map-style Dataset (a "package.module:function" factory's),
    read per sample: the streamed path, for data too big to collate or data.cache "stream".

    ImageFiles' interface (a subset by index tensor or slice, `load(i)`, `materialize()`,
    `shape`, `nbytes`), so that wherever the streamed path asks `isinstance(x,
    ImageFiles)` both are alike. `load(i)` reads item i through engine/user_data.py's
    checks, with data.mean/std applied per sample when `affine` holds them."""

    def __init__(self, dataset, sample, dtype, source, name="train", index=None, affine=None):
        self.dataset, self.source, self.name = dataset, source, name
        self.sample = tuple(sample)  # one input's shape and dtype, as read
        self.read_dtype = dtype
        self.index = torch.arange(len(dataset)) if index is None else index  # of the Dataset
        self.affine = affine  # (mean, std) shaped for one sample, or None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.sample)

    @property
    def dtype(self) -> torch.dtype:
        if self.affine is None:
            return self.read_dtype
        return torch.promote_types(self.read_dtype, self.affine[0].dtype)

    @property
    def nbytes(self) -> int:
        return len(self.index) * math.prod(self.sample) * self.dtype.itemsize

    def __getitem__(self, index) -> DatasetInputs:
        subset = self.index[index]
        return DatasetInputs(
            self.dataset, self.sample, self.read_dtype, self.source, self.name, subset, self.affine
        )

    def load(self, i: int) -> torch.Tensor:
        x = read_input(self.dataset, int(self.index[i]), self.sample, self.source, self.name)
        if self.affine is not None:
            x = (x - self.affine[0]) / self.affine[1]  # as a collated split's, per sample
        return x

    def materialize(self) -> torch.Tensor:
        out = torch.empty(self.shape, dtype=self.dtype)  # filled in place: no second copy
        for i in range(len(self.index)):
            out[i] = self.load(i)
        return out


# Extensions of image files: such a file that PIL cannot read is refused; other files
# (README.txt, .DS_Store, Thumbs.db) are skipped unless PIL reads them as images.
IMAGE_EXTENSIONS = {
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2",
}  # fmt: skip


@contextlib.contextmanager
def _bombs_refused():
    """PIL only warns about an image between its pixel limit and twice that: refuse it too."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _unreadable_image(path: Path, e: BaseException) -> str:
    from PIL import Image

    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return (
            f"{path}: has more pixels than PIL decodes safely ({e}); shrink it or remove it "
            "from the folder"
        )
    why = str(e).strip() or type(e).__name__
    if path.is_file() and path.stat().st_size == 0:
        why = "the file is empty (0 bytes)"
    return f"{path}: cannot be read as an image ({why})"


def _scan_image_tree(root: Path, size: int) -> tuple[Split, list[str]]:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"{root}: no class folders found; image_folder expects "
            f"{root}/<class name>/<image files>"
        )
    files, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if not f.is_file() or f.name.startswith("."):
                continue
            image_name = f.suffix.lower() in IMAGE_EXTENSIONS
            try:
                with _bombs_refused(), Image.open(f) as im:
                    im.verify()  # the header, and a PNG's chunks and checksums: no decoding
            except UnidentifiedImageError as e:
                if image_name:  # a damaged or empty image, or another file named as one
                    raise DataError(_unreadable_image(f, e)) from None
                continue  # README.txt and the like
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - bad checksum (SyntaxError), bomb, ...
                raise DataError(_unreadable_image(f, e)) from None
            files.append(f)
            labels.append(label)
    if not files:
        raise DataError(f"{root}: no readable images in its class folders")
    return Split(ImageFiles(files, size), torch.tensor(labels, dtype=torch.int64)), classes


def load_image_folder(cfg: DataSection, seed: int) -> Raw:
    root = Path(cfg.path).expanduser()
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, classes = _scan_image_tree(root / "train", cfg.image_size)
        val, val_classes = _scan_image_tree(root / "val", cfg.image_size)
        if val_classes != classes:
            raise DataError(f"{root}: train/ and val/ must hold the same class folders")
        return Raw(train, val, classes=classes)
    train, classes = _scan_image_tree(root, cfg.image_size)
    return Raw(train, None, classes=classes)


def load_synthetic(cfg: DataSection, seed: int) -> Raw:
    """Learnable random data: each class is a fixed pattern plus noise."""
    c, h, w = cfg.synthetic_shape
    n, k = cfg.synthetic_samples, cfg.synthetic_classes
    images = n * c * h * w
    need = images * 9 + k * c * h * w * 4  # float32 noise and its sum, then the uint8 copy
    over = too_big(need)
    if over:
        raise DataError(
            f"data.synthetic_shape {list(cfg.synthetic_shape)} x data.synthetic_samples {n}: "
            f"{format_bytes(images)} as uint8 images, {format_bytes(need)} of memory to make "
            f"them, {over}; use a smaller shape or fewer samples"
        )
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(k, c, h, w, generator=g) * 255
    y = torch.randint(0, k, (n,), generator=g)
    # In place: the same values as prototypes[y] + noise * 40, with one float temporary.
    x = torch.randn(n, c, h, w, generator=g).mul_(40).add_(prototypes[y])
    return Raw(Split(x.clamp_(0, 255).round_().to(torch.uint8), y), None)


LOADERS = {
    "digits": load_digits,
    "mnist": load_torchvision,
    "fashion_mnist": load_torchvision,
    "cifar10": load_torchvision,
    "image_folder": load_image_folder,
    "npz": load_npz,
    "synthetic": load_synthetic,
}


def load_data(cfg: DataSection, seed: int, kind: str = "classification") -> DataBundle:
    """Load the dataset (a built-in one, or the user's "package.module:function": see
    engine/user_data.py), choose the validation split, check the targets against task.kind
    (`kind`) and settle the normalisation."""
    raw = _load_raw(cfg, seed, kind)
    train, val = raw.train, raw.test if cfg.use_test_split else None
    if len(train) == 0:
        raise DataError(f"data.dataset {cfg.dataset!r}: the training split is empty")
    if val is None and cfg.val_fraction > 0:
        n_val = max(1, round(len(train) * cfg.val_fraction))
        if n_val >= len(train):
            raise DataError(
                f"data.val_fraction {cfg.val_fraction} leaves no training data "
                f"({len(train)} samples)"
            )
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        val = Split(train.x[perm[:n_val]], train.y[perm[:n_val]])
        train = Split(train.x[perm[n_val:]], train.y[perm[n_val:]])
    if val is not None and len(val) == 0:
        val = None
    outputs = _count_outputs(cfg, kind, train, val, raw.classes)
    in_shape = tuple(train.x.shape[1:])
    _require_room_for_batches(cfg, in_shape, len(train))
    lazy_images = isinstance(train.x, ImageFiles) and not isinstance(train.x, DatasetInputs)
    if lazy_images and cfg.cache != "stream":  # (a factory's data: collated or not already)
        if cfg.cache == "auto" and not _fits_in_memory(train, val):
            pass  # too big to decode up front: the trainer streams it through a DataLoader
        else:
            _require_room_to_decode(cfg, train, val)
            train = Split(train.x.materialize(), train.y)
            val = Split(val.x.materialize(), val.y) if val is not None else None
    mean, std = raw.mean, raw.std  # a factory's other inputs: normalised already, if asked
    if train.x.dtype == torch.uint8 and len(in_shape) == 3:  # images, built-in or not
        mean, std = _image_mean_std(cfg, raw, train, seed)
    return DataBundle(train, val, outputs, in_shape, mean, std, kind, raw.classes)


def _load_raw(cfg: DataSection, seed: int, kind: str) -> Raw:
    """The built-in loader's Raw, or the factory's (its Datasets read per sample as
    DatasetInputs where engine/user_data.py did not collate them)."""
    if cfg.dataset in LOADERS:
        if kind != "classification":  # (the profile refuses this already)
            raise DataError(
                f"data.dataset {cfg.dataset!r} is classification data; for task.kind "
                f'{kind!r} name your own "package.module:function"'
            )
        return LOADERS[cfg.dataset](cfg, seed)
    made = load_factory(cfg, kind)
    src = f"data.dataset {cfg.dataset!r}"

    def split(part, name: str) -> Split | None:
        if part is None:
            return None
        x = part.x  # collated, or else read per sample:
        if x is None:
            x = DatasetInputs(part.dataset, part.sample, part.dtype, src, name, affine=part.affine)
        return Split(x, part.y)

    train, val = split(made.train, "train"), split(made.val, "val")
    return Raw(train, val, made.mean, made.std, made.classes)


def _count_outputs(
    cfg: DataSection, kind: str, train: Split, val: Split | None, classes: list[str] | None
) -> int:
    """The model's outputs: the classes (labels checked as class indices), else the
    labels or targets per sample; a factory's class names must fit them."""
    if cfg.dataset in LOADERS:
        return _count_classes(cfg, train, val)
    src = f"data.dataset {cfg.dataset!r}"
    if kind == "classification":
        outputs = _count_classes(cfg, train, val, named=len(classes or ()))
    else:
        outputs = train.y.shape[1]
    return require_named_outputs(classes, outputs, kind, src)


def _image_mean_std(
    cfg: DataSection, raw: Raw, train: Split, seed: int
) -> tuple[list[float], list[float]]:
    """Images' per-channel normalisation: data.mean/std, the dataset's published
    constants, or computed from the training images (a seeded sample of 512 if streamed)."""
    channels = train.x.shape[1]
    mean, std = cfg.mean or raw.mean, cfg.std or raw.std
    if not mean:
        sample = train.x
        if isinstance(sample, ImageFiles):  # estimate from a seeded sample of 512 images
            pick = torch.randperm(len(sample), generator=torch.Generator().manual_seed(seed))
            sample = sample[pick[:512]]
        mean, std = _mean_std(sample)
    if len(mean) != channels:
        raise DataError(
            f"data.mean has {len(mean)} values but the images have {channels} channel(s)"
        )
    return list(mean), list(std)


def require_validation(profile, data: DataBundle) -> None:
    """Refuse a run whose settings act on validation when the data brought none (e.g. an
    npz without x_test and val_fraction 0): early stopping or plateau would never act."""
    if data.val is not None:
        return
    es, d = profile.early_stop, profile.data
    needs = []
    if es.enabled and es.monitor.startswith("val_"):
        needs.append(f"early_stop.monitor {es.monitor!r}")
    if profile.schedule.name == "plateau":
        needs.append("schedule.name 'plateau'")
    if needs:
        where = d.path if d.dataset in ("npz", "image_folder") else f"data.dataset {d.dataset!r}"
        lacks = f"{where} has no test split"
        if d.dataset not in LOADERS:  # a factory's own split is its val
            lacks = f"{where} returned no val split"
            lacks = lacks if d.use_test_split else "data.use_test_split is false"
        raise DataError(
            f"{' and '.join(needs)} need{'' if len(needs) > 1 else 's'} a validation set, but "
            f"{lacks} and "
            f"data.val_fraction is {d.val_fraction:g}; set data.val_fraction > 0 or monitor "
            "train_loss"
        )


def _count_classes(cfg: DataSection, train: Split, val: Split | None, named: int = 0) -> int:
    """The classes are the labels 0..max; refuse labels that cannot be class indices
    (labels within the `named` classes a dataset lists are indices)."""
    labels = train.y if val is None else torch.cat([train.y, val.y])
    where = cfg.path if cfg.dataset in ("npz", "image_folder") else f"data.dataset {cfg.dataset!r}"
    present = len(torch.unique(labels))
    num_classes = int(labels.max()) + 1
    if present < 2:
        raise DataError(
            f"{where}: every label is {int(labels[0])}; a classifier needs at least 2 classes"
        )
    # IDs (e.g. 1000, 2000, 3000) instead of indices would build a huge, mostly dead
    # classifier layer, or exhaust memory: a model has one output per index up to the max.
    if num_classes > max(2 * present, named) and cfg.dataset != "synthetic":  # synthetic: indices
        raise DataError(
            f"{where}: labels must be class indices 0..K-1, but {present} distinct labels "
            f"reach {num_classes - 1}; map them to 0..{present - 1}"
        )
    return num_classes


def _mean_std(x: torch.Tensor | ImageFiles) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images scaled to 0..1, summed in
    float64 over chunks of about 8 M values: memory stays small whatever the dataset."""
    n, c, h, w = x.shape
    chunk = max(1, 2**23 // (c * h * w))
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for i in range(0, n, chunk):
        part = x[i : i + chunk]
        part = part.materialize() if isinstance(part, ImageFiles) else part
        xf = part.to(torch.float64).div_(255.0)
        total += xf.sum(dim=(0, 2, 3))
        squares += xf.square_().sum(dim=(0, 2, 3))
    count = n * h * w
    mean = total / count
    var = (squares - count * mean.square()).clamp_min(0) / max(count - 1, 1)
    return mean.tolist(), var.sqrt().clamp_min(1e-3).tolist()


def _require_room_for_batches(cfg: DataSection, sample: tuple[int, ...], n: int) -> None:
    """Refuse a random_crop pad as large as the images (crops of mostly padding), and a
    batch whose float32 copies (normalised, padded, cropped) would not fit in memory."""
    pad = cfg.random_crop
    if len(sample) == 3:
        c, h, w = sample
        if pad >= min(h, w):
            raise DataError(
                f"data.random_crop {pad}: pads each side of the {h}x{w} images by at least "
                f"their size, so most crops would be padding; use a pad below {min(h, w)}, "
                f"e.g. {max(1, min(h, w) // 8)}"
            )
        grown, what = c * (h + 2 * pad) * (w + 2 * pad), f"{c}x{h}x{w} images"
    else:
        grown, what = math.prod(sample), f"samples of shape {sample}"
    batch = min(cfg.batch_size, n)  # a batch is a slice of the dataset: never more than n
    need = batch * grown * 4 * 3
    over = too_big(need)
    if over:
        key = f"data.batch_size {cfg.batch_size}"
        lower = "data.batch_size"
        if cfg.dataset == "image_folder":
            key, lower = (
                f"data.image_size {cfg.image_size} with {key}",
                f"data.image_size or {lower}",
            )
        raise DataError(
            f"{key}: one batch of {what} needs {format_bytes(need)} of memory "
            f"as float32, {over}; lower {lower}"
        )


def _require_room_to_decode(cfg: DataSection, train: Split, val: Split | None) -> None:
    """Refuse decoding an image folder up front (data.cache "memory" or "device") when its
    uint8 images would not fit in the memory free."""
    nbytes = train.x.nbytes + (val.x.nbytes if val is not None else 0)
    over = too_big(nbytes)
    if over:
        count = len(train) + (len(val) if val is not None else 0)
        raise DataError(
            f"data.cache {cfg.cache!r}: decoding the {count} images at data.image_size "
            f"{cfg.image_size} needs {format_bytes(nbytes)} of memory, {over}; set "
            'data.cache = "stream" or lower data.image_size'
        )


def _fits_in_memory(train: Split, val: Split | None) -> bool:
    """Decoded, the images fit the cache rule of engine/memory.py (unknown: assume so)."""
    nbytes = train.x.nbytes + (val.x.nbytes if val is not None else 0)
    return cache_fits(nbytes, host_memory_free(), unknown=True)


# Seeds derived from run.seed (each epoch's order, each process's dropout) step by a large
# prime, so that the streams of neighbouring seeds, epochs and ranks never meet.
SEED_STRIDE = 1_000_003


def epoch_generator(seed: int, epoch: int, device) -> torch.Generator:
    """A fresh stream per epoch, so any epoch's order is known from the seed alone."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * SEED_STRIDE + epoch)
    return g


class SplitDataset(torch.utils.data.Dataset):
    """Per-sample access to a Split, for the streamed DataLoader path."""

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.split.x
        return (x.load(i) if isinstance(x, ImageFiles) else x[i]), self.split.y[i]


class EpochBatches(torch.utils.data.Sampler):
    """A batch sampler whose batches the trainer sets per epoch (its own seeded order)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchTransform:
    """uint8 image batch on the device -> normalised float batch (augmented when training).
    Other batches (normalised already, or a factory's inputs) pass as they are. `mean`
    None: the data has no normalisation (DataBundle.mean)."""

    def __init__(
        self,
        mean: list[float] | None,
        std: list[float] | None,
        device: torch.device,
        random_crop: int = 0,
        hflip: bool = False,
    ):
        self.mean = self.std = None
        if mean is not None:
            self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
            self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.pad = random_crop
        self.hflip = hflip

    def __call__(self, xb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # A float batch comes from a split that `normalize_split` (or load_data) normalised.
        x = xb
        if xb.dtype == torch.uint8 and self.mean is not None:
            x = (xb.float().div_(255.0) - self.mean) / self.std
        if generator is None:
            return x
        if self.pad:
            x = _random_crop(x, self.pad, generator)
        if self.hflip:
            flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        return x

    def normalize_split(self, split: Split, chunk: int = 4096) -> Split:
        """The split's images normalised once, as float32 (4x the uint8 bytes); the same
        arithmetic as per batch, so training sees bit-identical inputs either way. Inputs
        that are no uint8 images stay as they are."""
        if split.x.dtype != torch.uint8 or self.mean is None:
            return split
        x = torch.empty(split.x.shape, dtype=torch.float32, device=split.x.device)
        for i in range(0, len(x), chunk):  # in chunks: no float temporary of the whole set
            x[i : i + chunk] = (split.x[i : i + chunk].float().div_(255.0) - self.mean) / self.std
        return Split(x, split.y)


def _random_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Pad by `pad` with zeros (the mean after normalising), crop back at random offsets."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=g)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chans, rows, cols]
