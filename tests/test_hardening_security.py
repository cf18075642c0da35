"""Security: checkpoints load as weights only; a profile runs user code only through an
import path it names; nothing is downloaded unless `download = true`; nothing listens on a
network port. Each promise is checked in the source (every call site) and in behaviour.
"""

from __future__ import annotations

import ast
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import MPT, REPO

from engine.data import load_data
from engine.errors import DataError
from engine.profile import DataSection

SOURCES = sorted((REPO / "engine").rglob("*.py")) + sorted((REPO / "tui").rglob("*.py"))


def calls(name: str):
    """(file, node) for every call of `name` ("torch.load", "np.load", "exec"...) in mpt."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                yield path.relative_to(REPO), node


def keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return ast.literal_eval(kw.value)
    return None


# ---- checkpoints: weights only ----


def test_every_torch_load_in_mpt_is_weights_only():
    found = list(calls("torch.load"))
    assert found, "no torch.load found: the scan is looking in the wrong place"
    for path, node in found:
        assert keyword(node, "weights_only") is True, f"{path}:{node.lineno}"


def test_nothing_in_mpt_unpickles():
    for name in ("pickle.load", "pickle.loads", "marshal.loads", "torch.jit.load"):
        assert list(calls(name)) == [], name
    for path, node in calls("np.load"):
        assert keyword(node, "allow_pickle") is False, f"{path}:{node.lineno}"


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path):
    # tests/test_checkpoint.py covers the kinds of bad files; this is the attack itself.
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch

    torch.save({"format": "mpt-checkpoint", "version": 1, "model": Exploit()}, tmp_path / "x.pt")
    r = subprocess.run(
        [*MPT, "run", "--resume", "x.pt"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "refused to load" in r.stderr
    assert not marker.exists()


# ---- user code: only through an import path the profile names ----


def test_only_engine_user_code_imports_or_executes_code_by_name():
    # One door for "package.module:function" (model, dataset and loss factories alike).
    dynamic = [
        (path, node.lineno)
        for name in ("importlib.import_module", "__import__", "exec", "eval", "compile",
                     "runpy.run_path", "runpy.run_module")
        for path, node in calls(name)
    ]  # fmt: skip
    assert [(str(p), name) for p, name in dynamic] == [
        ("engine/user_code.py", next(n.lineno for _, n in calls("importlib.import_module")))
    ]


def test_a_builtin_arch_never_imports_a_module_of_that_name_from_the_working_folder(
    train, tmp_path, monkeypatch
):
    marker = tmp_path / "imported"
    for name in ("mlp", "models", "cnn"):  # what a careless or hostile folder might hold
        (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write('{name}')\n")
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    done = train({"model": {"arch": "mlp"}, "run": {"max_steps": 2}})
    assert done.reason == "completed"
    assert not marker.exists()
    assert sys.path == path_before  # the working folder was not added for a builtin arch


# ---- downloads: only with download = true ----


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "cifar10"])
def test_without_download_true_no_connection_is_even_attempted(dataset, tmp_path, monkeypatch):
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError("network use in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    with pytest.raises(DataError, match="set data.download = true"):
        load_data(DataSection(dataset=dataset, root=str(tmp_path), download=False), seed=0)
    assert attempts == []


def test_every_torchvision_dataset_is_built_with_the_profiles_download_flag():
    found = [
        (path, node)
        for path in SOURCES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and any(kw.arg == "download" for kw in node.keywords)
    ]
    assert found
    for path, node in found:
        (kw,) = [kw for kw in node.keywords if kw.arg == "download"]
        assert ast.unparse(kw.value) == "cfg.download", f"{path}:{node.lineno}"


# ---- no network port ----


def test_mpt_source_opens_no_server():
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                for bad in ("socketserver", "http.server", "xmlrpc.server", "wsgiref"):
                    assert bad not in names, f"{path}:{node.lineno} imports {bad}"
            if isinstance(node, ast.Call):
                func = ast.unparse(node.func)
                assert func not in (
                    "socket.socket", "socket.create_server", "asyncio.start_server",
                    "loop.create_server",
                ), f"{path}:{node.lineno} calls {func}"  # fmt: skip
                assert not func.endswith(".bind"), f"{path}:{node.lineno} calls {func}"


def _inet_sockets(pid: int) -> list[str]:
    """The TCP/UDP sockets (any state) that process `pid` holds, as /proc/net lines."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            if line.split()[9] in inodes:
                found.append(f"{table}: {line.strip()}")
    return found


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_a_running_mpt_run_holds_no_network_socket_at_all(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((64, 8, 8), np.uint8), y_train=np.arange(64) % 4)
    (tmp_path / "p.toml").write_text(
        '[run]\nname = "quiet"\ndevice = "cpu"\nepochs = 100000\n'
        '[data]\ndataset = "npz"\npath = "d.npz"\n[train]\nlog_every = 1\n'
        "[checkpoint]\nevery_epochs = 0\nsave_best = false\n"
    )
    proc = subprocess.Popen(
        [*MPT, "run", "p.toml"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("runs/quiet/*/events.jsonl")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(1.0)  # training, logging, its control channel polled
        assert proc.poll() is None
        assert _inet_sockets(proc.pid) == []
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
