"""Issue 13, groups 9 and 10: out of memory on the CPU, and data files that lie.

What can be sized before it is allocated (a synthetic set, an npz array, a batch, decoded
images, a built-in model) is refused by key before training, exit 2; an allocation that
still fails is "out of memory" with advice, exit 1. Data edge cases (a .npy named .npz,
labels that wrap or are one-hot, half a test split, channels-last arrays, damaged image
files) are one sentence naming the file or array, exit 2, before training.

`mpt` runs here get an address-space limit (RLIMIT_AS) as a safety net: a regression that
allocates for real fails fast instead of swapping the machine.
"""

from __future__ import annotations

import math
import os
import pickle
import resource
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MPT
from PIL import Image

from engine.data import ImageFiles, load_data
from engine.errors import DataError
from engine.memory import host_memory_free, is_out_of_memory
from engine.profile import DataSection

# torch (CUDA build) and a small run fit in 4 GB of address space (measured); 8 GB leaves
# room for more threads' stacks and malloc arenas on bigger machines; 30 TB do not fit.
ADDRESS_SPACE = 8 * 2**30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def mpt_limited(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`mpt` as a user runs it, under the address-space limit."""
    return subprocess.run(
        [*MPT, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
        preexec_fn=_limit_memory,
        env={**os.environ, "MALLOC_ARENA_MAX": "2"},  # arenas reserve address space per thread
    )


def profile(tmp_path: Path, data: str, model: str = 'arch = "mlp"\nhidden = [16]') -> Path:
    path = tmp_path / "p.toml"
    path.write_text(
        f'[run]\ndevice = "cpu"\nepochs = 1\nout_dir = "{tmp_path / "runs"}"\n'
        f"[data]\nbatch_size = 16\nval_fraction = 0.2\n{data}\n[model]\n{model}\n"
    )
    return path


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a refused or failed run; never a traceback."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def refused(cfg: DataSection) -> str:
    with pytest.raises(DataError) as info:
        load_data(cfg, seed=0)
    message = str(info.value)
    assert "\n" not in message
    return message


def npz(tmp_path: Path, **arrays) -> str:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return str(path)


def images(n: int = 12, shape=(8, 8)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)


# ---- group 9: out of memory on the CPU ----


def test_an_enormous_synthetic_shape_is_refused_by_key_before_allocating(tmp_path):
    toml = profile(
        tmp_path,
        'dataset = "synthetic"\nsynthetic_shape = [3, 100000, 100000]\nsynthetic_samples = 1000',
    )
    result = mpt_limited("run", toml, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert line.startswith(
        "error: data.synthetic_shape [3, 100000, 100000] x data.synthetic_samples 1000: "
        "30 TB as uint8 images"
    )
    assert "of memory free on this machine" in line and "use a smaller shape" in line


def test_a_model_too_big_for_memory_is_refused_by_key_before_it_is_built(tmp_path):
    toml = profile(tmp_path, 'dataset = "digits"', 'arch = "mlp"\nhidden = [1000000000]')
    result = mpt_limited("run", toml, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert line.startswith(
        "error: model.hidden [1000000000]: the mlp has 75,000,000,010 parameters, 1.2 TB "
        "to train (weights, gradients, optimizer state), more than the "
    )
    assert line.endswith("; make the model smaller")


def test_a_cnn_too_wide_is_refused_naming_its_channels(train):
    done = train({"model": {"arch": "cnn", "channels": [10**8], "hidden": [128]}}, check=False)
    assert done.reason == "failed" and done.run.user_error
    assert done.run.error.startswith("model.channels [100000000] and model.hidden [128]: the cnn ")
    assert not done.of("step")


def test_a_factory_that_runs_out_of_memory_is_named_with_what_it_asked(
    train, tmp_path, monkeypatch
):
    (tmp_path / "huge_factory_model.py").write_text(
        "import torch\n\n"
        "def build(in_shape, num_classes):\n"
        "    return torch.nn.Linear(2**24, 2**24)  # 1 PB of weights\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    done = train({"model": {"arch": "huge_factory_model:build"}}, check=False)
    assert done.reason == "failed" and done.run.user_error
    assert done.run.error == (
        "model.arch 'huge_factory_model:build': the factory ran out of memory building the "
        "model (it tried to allocate 1.13 PB); make the model smaller"
    )


def test_out_of_memory_on_the_cpu_while_training_is_reported_with_advice(tmp_path):
    (tmp_path / "greedy.py").write_text(
        "import torch\n\n"
        "class Greedy(torch.nn.Module):\n"
        "    def __init__(self, n):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(64, n)\n"
        "        self.calls = 0\n\n"
        "    def forward(self, x):\n"
        "        self.calls += 1  # call 1 is mpt's first-batch check, before training\n"
        "        if self.calls > 1:  # the first step asks for 1 TB, as a runaway model does\n"
        "            torch.empty(2**40, dtype=torch.uint8)\n"
        "        return self.fc(x.flatten(1))\n\n"
        "def build(in_shape, num_classes):\n"
        "    return Greedy(num_classes)\n"
    )
    toml = profile(tmp_path, 'dataset = "digits"', 'arch = "greedy:build"')
    result = mpt_limited("run", toml, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert error_line(result) == (
        "error: out of memory on cpu at step 0 (data.batch_size 16, train.grad_accum 1, "
        "precision.mode 'fp32'); lower data.batch_size and raise train.grad_accum to keep the "
        'step the same, or use precision.mode = "bf16"'
    )


def test_every_kind_of_failed_allocation_counts_as_out_of_memory():
    failures = []
    for allocate in (
        lambda: torch.empty(2**50, dtype=torch.uint8),  # the CPU allocator's RuntimeError
        lambda: np.empty(2**50, dtype=np.uint8),  # numpy's MemoryError subclass
        lambda: bytearray(2**62),  # Python's own MemoryError
    ):
        try:
            allocate()
        except Exception as e:  # noqa: BLE001
            failures.append(e)
    assert len(failures) == 3 and all(is_out_of_memory(e) for e in failures)
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("can't allocate memory"))


def test_an_npz_whose_header_claims_a_huge_array_is_refused_before_reading_it(tmp_path):
    path = tmp_path / "d.npz"
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**6, 3, 1000, 1000)}
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("x_train.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)  # the header alone: 12 TB claimed
        with archive.open("y_train.npy", "w") as f:
            np.lib.format.write_array(f, np.zeros(10**6, np.int64))
    message = refused(DataSection(dataset="npz", path=str(path)))
    assert message.startswith(
        f"{path}: x_train is (1000000, 3, 1000, 1000) float32; loading the arrays needs "
    )
    assert "more than the" in message and message.endswith("use a smaller dataset")


def test_a_batch_too_big_for_memory_is_refused_naming_image_size(tmp_path):
    make_folder(tmp_path / "imgs")
    cfg = DataSection(
        dataset="image_folder", path=str(tmp_path / "imgs"), image_size=1_000_000, batch_size=4
    )
    message = refused(cfg)
    assert message.startswith(
        "data.image_size 1000000 with data.batch_size 4: one batch of 3x1000000x1000000 "
        "images needs 144 TB of memory as float32, more than the "
    )
    assert message.endswith("lower data.image_size or data.batch_size")


def test_decoding_an_image_folder_too_big_for_memory_up_front_is_refused(tmp_path):
    free = host_memory_free()
    if free is None:
        pytest.skip("this system does not say how much memory is free")
    # 60 images whose decoded size is twice the free memory; one batch of one fits.
    side = math.isqrt(free // 90)
    make_folder(tmp_path / "imgs", per_class=30)
    cfg = DataSection(
        dataset="image_folder",
        path=str(tmp_path / "imgs"),
        image_size=side,
        batch_size=1,
        cache="memory",
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
    )
    message = refused(cfg)
    assert message.startswith(
        f"data.cache 'memory': decoding the 60 images at data.image_size {side}"
    )
    assert message.endswith('set data.cache = "stream" or lower data.image_size')


def test_a_random_crop_as_large_as_the_images_is_refused():
    message = refused(DataSection(dataset="digits", random_crop=100000))
    assert message == (
        "data.random_crop 100000: pads each side of the 8x8 images by at least their size, "
        "so most crops would be padding; use a pad below 8, e.g. 1"
    )


def test_mean_and_std_are_exact_whatever_the_dataset_size(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (300, 3, 40, 40), dtype=np.uint8)
    path = npz(tmp_path, x_train=x, y_train=np.arange(300) % 3)
    data = load_data(DataSection(dataset="npz", path=path, val_fraction=0.0), seed=0)
    xf = torch.from_numpy(x).double() / 255
    assert data.mean == pytest.approx(xf.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert data.std == pytest.approx(xf.std(dim=(0, 2, 3)).tolist(), abs=1e-9)


# ---- group 10: npz files that are something else ----


def test_a_npy_file_named_npz_says_what_it_is(tmp_path):
    path = tmp_path / "d.npz"
    with open(path, "wb") as f:
        np.save(f, images())
    assert refused(DataSection(dataset="npz", path=str(path))) == (
        f"{path}: is a single .npy array (numpy.save), not a .npz archive; save the arrays "
        "with numpy.savez(path, x_train=..., y_train=...)"
    )


def test_a_pickle_named_npz_is_refused_unloaded_saying_why(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(pickle.dumps({"x_train": [1, 2, 3]}))
    message = refused(DataSection(dataset="npz", path=str(path)))
    assert message.startswith(f"{path}: is a Python pickle, not a .npz archive; mpt never ")
    assert "allow_pickle=False" in message


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "the file is empty (0 bytes), not a .npz"),
        (b"x,y\n1,2\n", "cannot be read as a .npz file (it is not a zip archive of .npy arrays)"),
    ],
    ids=["empty", "csv"],
)
def test_an_empty_or_text_file_named_npz_says_so(tmp_path, content, says):
    path = tmp_path / "d.npz"
    path.write_bytes(content)
    assert refused(DataSection(dataset="npz", path=str(path))).startswith(f"{path}: {says}")


def test_a_zip_of_plain_files_named_like_the_arrays_is_refused(tmp_path):
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train", "not an array")
        archive.writestr("y_train", "nor this")
    assert refused(DataSection(dataset="npz", path=str(path))) == (
        f"{path}: x_train is not a numpy array (a plain file in the zip); save the arrays "
        "with numpy.savez(path, x_train=..., y_train=...)"
    )


def test_an_empty_npz_lists_no_arrays(tmp_path):
    path = npz(tmp_path)
    assert refused(DataSection(dataset="npz", path=path)) == (
        f"{path}: needs arrays x_train and y_train (Keras layout), found none"
    )


@pytest.mark.parametrize(("have", "missing"), [("x_test", "y_test"), ("y_test", "x_test")])
def test_half_a_test_split_is_refused_naming_the_missing_array(tmp_path, have, missing):
    half = {"x_test": images(4), "y_test": np.arange(4) % 2}
    path = npz(tmp_path, x_train=images(), y_train=np.arange(12) % 2, **{have: half[have]})
    assert refused(DataSection(dataset="npz", path=path)) == (
        f"{path}: has {have} but no {missing}; add {missing}, remove {have}, or set "
        "data.use_test_split = false"
    )
    # Not using the test split, the stray array is harmless.
    cfg = DataSection(dataset="npz", path=path, use_test_split=False, val_fraction=0.25)
    assert len(load_data(cfg, seed=0).val) == 3


# ---- group 10: labels ----


def test_uint64_labels_that_would_wrap_to_negative_are_refused(tmp_path):
    y = (np.arange(12) % 3).astype(np.uint64)
    y[5] = np.uint64(2**64 - 1)  # a -1 written as uint64: cast to int64 it is -1 again
    path = npz(tmp_path, x_train=images(), y_train=y)
    assert refused(DataSection(dataset="npz", path=path)) == (
        f"{path}: y_train: label 18446744073709551615 is no class index (a -1 stored as "
        "uint64?); store class indices 0..K-1"
    )


@pytest.mark.parametrize(
    "dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.uint64]
)
def test_labels_of_any_integer_type_are_class_indices(tmp_path, dtype):
    path = npz(tmp_path, x_train=images(), y_train=(np.arange(12) % 3).astype(dtype))
    data = load_data(DataSection(dataset="npz", path=path, val_fraction=0.0), seed=0)
    assert data.train.y.tolist() == [0, 1, 2] * 4 and data.num_classes == 3


def test_whole_number_float_and_boolean_labels_are_class_indices(tmp_path):
    for y, classes in ((np.arange(12.0) % 3, 3), (np.arange(12) % 2 == 1, 2)):
        path = npz(tmp_path, x_train=images(), y_train=y)
        data = load_data(DataSection(dataset="npz", path=path, val_fraction=0.0), seed=0)
        assert data.train.y.tolist() == [int(v) for v in y] and data.num_classes == classes


@pytest.mark.parametrize(
    ("y", "says"),
    [
        (np.where(np.arange(12) == 4, 0.5, np.arange(12) % 3), "label 4 is 0.5, not a whole"),
        (np.where(np.arange(12) == 7, np.nan, np.arange(12) % 3), "label 7 is nan; labels"),
        (np.array(["cat", "dog"] * 6), "labels are text ('cat', ...); store class indices"),
    ],
)
def test_labels_that_are_not_whole_numbers_are_refused_saying_which(tmp_path, y, says):
    path = npz(tmp_path, x_train=images(), y_train=y)
    assert refused(DataSection(dataset="npz", path=path)).startswith(f"{path}: y_train: {says}")


def test_labels_of_python_objects_are_refused_unpickled(tmp_path):
    y = np.empty(12, dtype=object)
    y[:] = ["cat", 1] * 6
    path = npz(tmp_path, x_train=images(), y_train=y)
    assert refused(DataSection(dataset="npz", path=path)) == (
        f"{path}: y_train is an array of Python objects (labels as text?), which mpt does not "
        "unpickle (allow_pickle=False: unpickling can run code); store the labels as integer "
        "class indices 0..K-1"
    )


def test_one_hot_labels_are_named_as_such_with_the_fix(tmp_path):
    path = npz(tmp_path, x_train=images(), y_train=np.eye(10)[np.arange(12) % 10])
    assert refused(DataSection(dataset="npz", path=path)) == (
        f"{path}: y_train looks one-hot (shape (12, 10)); store class indices: y.argmax(1)"
    )


def test_one_hot_labels_exit_2_in_one_line(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=images(), y_train=np.eye(3)[np.arange(12) % 3])
    result = mpt_limited("run", profile(tmp_path, 'dataset = "npz"\npath = "d.npz"'), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert error_line(result) == (
        "error: d.npz: y_train looks one-hot (shape (12, 3)); store class indices: y.argmax(1)"
    )


def test_several_values_per_image_that_are_not_one_hot_are_refused(tmp_path):
    path = npz(tmp_path, x_train=images(), y_train=np.full((12, 4), 0.25))
    assert refused(DataSection(dataset="npz", path=path)) == (
        f"{path}: y_train: labels have shape (12, 4), more than one value per image; store "
        "one class index per image, shape (N,)"
    )


# ---- group 10: image arrays ----


@pytest.mark.parametrize(
    ("shape", "chw"),
    [
        ((12, 28, 28, 1), (1, 28, 28)),  # Keras MNIST
        ((12, 32, 32, 3), (3, 32, 32)),  # Keras CIFAR
        ((12, 3, 32, 32), (3, 32, 32)),  # torch layout
        ((12, 32, 32, 2), (2, 32, 32)),  # two channels, channels-last: was read as 32 channels
        ((12, 2, 32, 32), (2, 32, 32)),
        ((12, 4, 4, 3), (3, 4, 4)),  # both ends a usual channel count: the square reading
        ((12, 3, 4, 4), (3, 4, 4)),
        ((12, 20, 30, 5), (5, 20, 30)),  # neither: the end with fewer
    ],
)
def test_channels_first_and_last_arrays_are_read_in_their_layout(tmp_path, shape, chw):
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = npz(tmp_path, x_train=x, y_train=np.arange(12) % 2)
    data = load_data(DataSection(dataset="npz", path=path, val_fraction=0.0), seed=0)
    assert data.in_shape == chw
    last = shape[1:] != chw
    want = x.transpose(0, 3, 1, 2) if last else x
    assert np.array_equal(data.train.x.numpy(), want)


def test_an_array_that_reads_the_same_in_both_layouts_is_refused(tmp_path):
    path = npz(tmp_path, x_train=images(12, (4, 4, 4)), y_train=np.arange(12) % 2)
    assert refused(DataSection(dataset="npz", path=path)) == (
        f"{path}: x_train: cannot tell whether shape (12, 4, 4, 4) is channels-first "
        "(N, C, H, W) or channels-last (N, H, W, C); store it as (N, H, W, C) with fewer "
        "channels than rows and columns"
    )


def test_flat_vectors_are_refused_with_the_reshape_to_images(tmp_path):
    path = npz(tmp_path, x_train=images(12, (784,)), y_train=np.arange(12) % 2)
    assert refused(DataSection(dataset="npz", path=path)) == (
        f"{path}: x_train: shape (12, 784) holds flat vectors, not images; store images as "
        "(N, H, W) or (N, H, W, C), e.g. x.reshape(-1, 28, 28)"
    )


def test_a_scalar_x_train_is_refused_with_its_shape(tmp_path):
    path = npz(tmp_path, x_train=np.array(3.0), y_train=np.arange(12) % 2)
    assert refused(DataSection(dataset="npz", path=path)) == (
        f"{path}: x_train: images must be (N, H, W) or (N, H, W, C), got shape ()"
    )


def test_float_pixels_in_0_255_are_rounded_not_truncated(tmp_path):
    x = np.full((12, 4, 4), 127.9, np.float64)
    path = npz(tmp_path, x_train=x, y_train=np.arange(12) % 2)
    data = load_data(DataSection(dataset="npz", path=path, val_fraction=0.0), seed=0)
    assert int(data.train.x.max()) == 128 and int(data.train.x.min()) == 128


# ---- group 10: image files PIL cannot read ----


def make_folder(root: Path, per_class: int = 3) -> Path:
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8 + i, 8), colour).save(root / name / f"{i:03d}.png")
    return root


def png_with_size(width: int, height: int) -> bytes:
    """A small real PNG whose header says width x height (checksum fixed): a bomb's header."""
    path_bytes = _png_bytes()
    at = path_bytes.index(b"IHDR")
    chunk = bytearray(path_bytes[at : at + 17])
    chunk[4:12] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(bytes(chunk)))
    return path_bytes[:at] + bytes(chunk) + crc + path_bytes[at + 21 :]


def _png_bytes(size=(8, 8)) -> bytes:
    import io

    out = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(out, "PNG")
    return out.getvalue()


def bad_crc() -> bytes:
    data = bytearray(_png_bytes())
    data[data.index(b"IDAT") + 6] ^= 0xFF  # one byte of image data flipped: its CRC fails
    return bytes(data)


def truncated() -> bytes:
    data = _png_bytes((64, 64))
    return data[: data.index(b"IDAT") + 200]  # the header whole, the image data cut


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("bad.png", bad_crc(), "cannot be read as an image (broken PNG file"),
        ("cut.png", truncated(), "cannot be read as an image ("),
        ("empty.png", b"", "cannot be read as an image (the file is empty (0 bytes))"),
        ("notes.jpg", b"just some text", "cannot be read as an image (cannot identify image"),
        ("bomb.png", png_with_size(30000, 30000), "has more pixels than PIL decodes safely"),
        ("big.png", png_with_size(14000, 14000), "has more pixels than PIL decodes safely"),
    ],
    ids=["bad-crc", "truncated", "zero-bytes", "text-named-jpg", "bomb", "over-the-limit"],
)
def test_an_image_file_pil_cannot_read_is_refused_naming_it(tmp_path, name, content, says):
    root = make_folder(tmp_path / "imgs")
    (root / "red" / name).write_bytes(content)
    message = refused(DataSection(dataset="image_folder", path=str(root), image_size=8))
    assert message.startswith(f"{root / 'red' / name}: {says}")


def test_a_bad_checksum_in_an_image_folder_exits_2_in_one_line(tmp_path):
    make_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "blue" / "bad.png").write_bytes(bad_crc())
    toml = profile(tmp_path, 'dataset = "image_folder"\npath = "imgs"\nimage_size = 8')
    result = mpt_limited("run", toml, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert error_line(result).startswith(
        "error: imgs/blue/bad.png: cannot be read as an image (broken PNG file"
    )


def test_files_that_are_not_named_as_images_are_still_skipped(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "red" / "README.txt").write_text("red ones")
    (root / "red" / "Thumbs.db").write_bytes(b"\x00" * 10)
    data = load_data(DataSection(dataset="image_folder", path=str(root), val_fraction=0), 0)
    assert len(data.train) == 6


def test_an_image_that_fails_to_decode_later_is_one_sentence_naming_it(tmp_path):
    root = make_folder(tmp_path / "imgs")
    files = ImageFiles([root / "red" / "000.png"], 8)
    # Replaced after the folder was read: a bomb raises no OSError but its own error.
    (root / "red" / "000.png").write_bytes(png_with_size(30000, 30000))
    with pytest.raises(DataError) as info:
        files.load(0)
    assert str(info.value).startswith(
        f"{root / 'red' / '000.png'}: has more pixels than PIL decodes safely"
    )
