"""Run folders in shared places, and the control channel's folder, under a second user.

A real second local user (`nobody`, through setpriv) makes folders, links and commands in a
folder every user can write (mode 1777, like /tmp) while a real `mpt run` (as this test's
user) works there; the control channel gets FIFOs, folders and links where its command
files go. Nothing another user plants may steer a run, be written through, or cost a file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import MPT, PROFILES

from engine.remote import ControlChannel

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="acting as a second user needs root and setpriv",
)


def as_nobody(script: str) -> None:
    """Run a shell script as the user `nobody`."""
    subprocess.run([*NOBODY, "sh", "-c", script], check=True, timeout=30)


@pytest.fixture
def shared():
    """A folder every user can write, like /tmp (mode 1777), that `nobody` can reach."""
    path = Path(tempfile.mkdtemp(prefix="mpt-shared-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A folder of this user's files that another user would like to see gone."""
    folder = tmp_path / "precious"
    folder.mkdir()
    for name in ("thesis.tex", "data.csv", "notes.md"):
        (folder / name).write_text(f"{name}: months of work\n")
    return folder


def mpt_run(out_dir: Path, *sets: str, umask: int = 0o022) -> subprocess.Popen:
    """`mpt run` on the quickstart profile (digits, a small MLP), its runs under out_dir."""
    args = ["--set", f"run.out_dir={json.dumps(str(out_dir))}"]
    for item in sets:
        args += ["--set", item]
    return subprocess.Popen(
        [*MPT, "run", str(PROFILES / "quickstart.toml"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.umask(umask),
    )


def swap_once_started(proc: subprocess.Popen, shared: Path, plant: str) -> tuple[str, str]:
    """As `nobody`, who made `shared/quickstart/` first: once the run says where it writes,
    and the run has begun training, rename its run folder away and put one of nobody's own
    in its place, with `plant` (a shell script run inside it); then interrupt the run (which
    saves a checkpoint and ends). Returns (stdout, stderr)."""
    line = proc.stdout.readline()
    if line.startswith("run directory: "):
        run_dir = Path(line.split()[2])
        line += proc.stdout.readline()  # the run's first line once set up: it trains now
        as_nobody(
            f"cd {shared}/quickstart && mv {run_dir.name} stolen && mkdir {run_dir.name} "
            f"&& cd {run_dir.name} && {plant}"
        )
        time.sleep(1.0)  # the run polls its control folder every 0.2 s
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    return line + out, err


def test_a_run_folder_another_user_made_first_is_refused_naming_its_owner(shared: Path):
    as_nobody(f"mkdir {shared}/quickstart")
    proc = mpt_run(shared, "run.max_steps=2")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 2, out + err
    assert err == (
        f"error: run.out_dir: {shared}/quickstart is owned by user 'nobody' (uid 65534); "
        "mpt makes run folders only in folders you own; choose another run.out_dir or "
        "run.name\n"
    )
    assert os.listdir(shared / "quickstart") == []  # nothing written into nobody's folder


def test_a_shared_folder_without_the_sticky_bit_is_refused(tmp_path: Path):
    out_dir = tmp_path / "open"
    out_dir.mkdir()
    out_dir.chmod(0o777)  # anyone may rename what is in it, our run folders too
    proc = mpt_run(out_dir, "run.max_steps=2")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 2, out + err
    assert err.startswith(f"error: run.out_dir: {out_dir} is writable by other users (mode 0777")
    assert "chmod go-w" in err and not (out_dir / "quickstart").exists()


def test_run_folders_in_a_folder_every_user_can_write_are_writable_by_no_one_else(
    shared: Path,
):
    proc = mpt_run(shared, "run.max_steps=2", umask=0)  # a umask that shares everything
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    (run_dir,) = (shared / "quickstart").iterdir()
    for folder in (shared / "quickstart", run_dir, run_dir / "checkpoints"):
        st = folder.lstat()
        assert st.st_uid == os.geteuid() and st.st_mode & 0o022 == 0, folder  # ours alone


def test_another_users_control_folder_never_stops_the_run(shared: Path):
    as_nobody(f"mkdir {shared}/quickstart")
    proc = mpt_run(shared, "run.epochs=2000")
    plant = "mkdir control && echo stop > control/1.cmd"
    out, err = swap_once_started(proc, shared, plant)
    assert "control: stop requested" not in out
    assert proc.returncode == 2, out + err  # refused before it began
    assert "is owned by user 'nobody'" in err


def test_a_control_link_planted_by_another_user_costs_no_file(shared: Path, victim: Path):
    as_nobody(f"mkdir {shared}/quickstart")
    proc = mpt_run(shared, "run.epochs=2000")
    out, err = swap_once_started(proc, shared, f"ln -s {victim} control")
    assert sorted(p.name for p in victim.iterdir()) == ["data.csv", "notes.md", "thesis.tex"]
    assert victim.stat().st_mode & 0o777 == 0o755  # not even its mode changed
    assert proc.returncode == 2, out + err


def test_nothing_is_written_through_a_checkpoints_link_another_user_planted(
    shared: Path, tmp_path: Path
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    as_nobody(f"mkdir {shared}/quickstart")
    proc = mpt_run(shared, "run.epochs=2000")
    out, err = swap_once_started(proc, shared, f"ln -s {elsewhere} checkpoints")
    assert list(elsewhere.iterdir()) == []
    assert proc.returncode == 2, out + err


# ---- the control channel's own folder: only plain command files are commands ----


def test_a_fifo_a_folder_and_a_link_in_control_neither_block_nor_steer_the_run(
    tmp_path: Path,
):
    target = tmp_path / "order.txt"
    target.write_text("stop\n")
    proc = mpt_run(tmp_path / "runs", "run.max_steps=5")
    try:
        line = proc.stdout.readline()
        control = Path(line.split()[2]) / "control"
        deadline = time.monotonic() + 60
        while not control.is_dir() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.mkfifo(control / "a.cmd")  # opening it to read would wait for a writer
        (control / "b.cmd").mkdir()
        (control / "b.cmd" / "inner").write_text("x")
        (control / "c.cmd").symlink_to(target)
        out, err = proc.communicate(timeout=180)  # before: blocked on the FIFO for ever
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "control: stop requested" not in out  # the link's target was not read
    assert target.read_text() == "stop\n"
    for name, what in (("a", "a named pipe (FIFO)"), ("b", "a folder"), ("c", "a symbolic link")):
        assert err.count(f"{control / name}.cmd: {what}, not a command") == 1, err
    assert control.exists()  # the folder with a file in it stays, and the run says so
    assert f"warning: left {control} in place: it still holds b.cmd" in err
    assert os.listdir(control) == ["b.cmd"]


def test_a_fifo_among_the_commands_is_passed_over_at_once(tmp_path: Path):
    channel = ControlChannel(tmp_path)
    channel.listen()
    os.mkfifo(channel.dir / "0-fifo.cmd")
    channel.send("pause")
    taken: list[list[str]] = []
    reader = threading.Thread(target=lambda: taken.append(channel.take()), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # blocked in open(): give it a writer so the thread can end
        os.close(os.open(channel.dir / "0-fifo.cmd", os.O_WRONLY | os.O_NONBLOCK))
        reader.join(5)
    assert taken == [["pause"]]


def test_a_symlinked_command_is_not_followed_and_its_target_survives(tmp_path: Path, capfd):
    channel = ControlChannel(tmp_path)
    channel.listen()
    target = tmp_path / "order.txt"
    target.write_text("stop\n")
    (channel.dir / "1.cmd").symlink_to(target)
    assert channel.take() == []
    assert channel.take() == []
    assert target.read_text() == "stop\n"
    assert capfd.readouterr().err == (
        f"warning: control: ignored {channel.dir}/1.cmd: a symbolic link, not a command; "
        "removed it\n"
    )


def test_an_empty_folder_or_an_oversized_file_in_control_does_not_stay_behind(tmp_path: Path):
    channel = ControlChannel(tmp_path)
    channel.listen()
    (channel.dir / "x.cmd").mkdir()
    (channel.dir / "y.cmd").write_text("stop" * 100)  # 400 bytes: not a command
    (channel.dir / "z").mkdir()  # not even named like a command
    assert channel.take() == []
    channel.close()
    assert not channel.dir.exists()


def test_a_control_link_in_place_before_listening_is_neither_used_nor_emptied(
    tmp_path: Path, victim: Path, capfd
):
    (tmp_path / "control").symlink_to(victim)
    channel = ControlChannel(tmp_path)
    channel.listen()
    (victim / "x.cmd").write_text("stop\n")
    assert channel.take() == []
    channel.close()
    assert sorted(p.name for p in victim.iterdir()) == [
        "data.csv",
        "notes.md",
        "thesis.tex",
        "x.cmd",
    ]
    assert victim.stat().st_mode & 0o777 == 0o755
    assert capfd.readouterr().err == (
        f"warning: cannot make {tmp_path}/control (something is already there); "
        "this run takes no commands\n"
    )


def test_a_checkpoints_link_is_never_written_through(tmp_path: Path):
    from durable_helpers import finish, profile_dict, start

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = start(profile_dict(tmp_path / "runs"), resume=None)
    (run.run_dir / "checkpoints").symlink_to(elsewhere)  # before the first save
    done = finish(run)
    assert list(elsewhere.iterdir()) == []
    said = [e.message for e in done.of("warning")] + [e.error for e in done.of("run_failed")]
    assert any("checkpoints is a symbolic link, not a folder mpt made" in s for s in said), said
