"""Issue 16, "see the machine" on the dashboard: on a CPU run the memory panel shows the
host's figures from the step events (CPU %, RSS, memory and disk free, the data wait of a
streamed run) instead of the bare word "CPU"; a GPU run keeps its GPU memory and adds one
compact host line."""

from __future__ import annotations

from pathlib import Path

from tui_helpers import event_line, run_async, wait_for, write_run

from engine import events as ev
from tui import viewmodel as vm

MiB, GiB = 2**20, 2**30
HOST = dict(cpu_percent=187.4, rss=312 * MiB, mem_available=5 * GiB, disk_free=40 * GiB)
GPU = dict(
    gpu_mem_allocated=GiB, gpu_mem_reserved=2 * GiB, gpu_mem_peak=GiB, gpu_mem_total=80 * GiB
)


def view_of(*steps: dict) -> vm.RunView:
    started = ev.RunStarted(step=0, epoch=1, name="quick", device="cpu", total_steps=90)
    events = [ev.Step(step=5 * (i + 1), epoch=1, **fields) for i, fields in enumerate(steps)]
    return vm.build_view([started, *events])


def test_a_cpu_runs_step_event_shows_the_hosts_figures():
    assert vm.memory_lines(view_of(HOST)) == [
        "CPU 187%  RSS 312.0 MiB",
        "free: memory 5.0 GiB, disk 40.0 GiB",
    ]


def test_a_streamed_run_adds_the_share_of_the_time_spent_waiting_for_data():
    lines = vm.memory_lines(view_of({**HOST, "data_wait": 0.123}))
    assert lines[0] == "CPU 187%  RSS 312.0 MiB  data wait 12%"
    assert all(len(line) <= 38 for line in lines)  # half of an 80-column dashboard


def test_a_figure_the_system_did_not_give_reads_as_a_dash():
    lines = vm.memory_lines(view_of({**HOST, "cpu_percent": None, "disk_free": None}))
    assert lines == ["CPU -  RSS 312.0 MiB", "free: memory 5.0 GiB, disk -"]


def test_a_run_recorded_before_the_host_figures_still_says_cpu():
    assert vm.memory_lines(view_of({}))[0] == "memory  CPU"


def test_a_gpu_run_keeps_its_memory_and_adds_one_host_line():
    lines = vm.memory_lines(view_of({**GPU, **HOST, "data_wait": 0.5}))
    assert lines == [
        "GPU mem alloc 1.0 GiB  reserved 2.0 GiB",
        "        peak 1.0 GiB  total 80.0 GiB",
        "CPU 187%  RSS 312.0 MiB  data wait 50%  free: memory 5.0 GiB, disk 40.0 GiB",
    ]


# ---- on the screen ----


def recorded(device: str, step_fields: dict) -> list[str]:
    lines = [
        event_line(
            "run_started", run_dir="runs/quick/20260101-000000", name="quick", device=device,
            dataset="digits", arch="mlp", epochs=3, steps_per_epoch=45, total_steps=135,
        )
    ]  # fmt: skip
    for step in (5, 10):
        fields = {"loss": 1.0, "lr": 1e-3, "epoch_progress": step / 45, **step_fields}
        lines.append(event_line("step", step=step, time=1_700_000_000.0 + step, **fields))
    return lines


async def open_recorded_run(pilot):
    from tui.screens.dashboard import DashboardScreen

    await pilot.press("tab", "enter")  # the runs list: the one run
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, DashboardScreen))
    await pilot.pause(0.2)
    return pilot.app.screen


@run_async
async def test_the_dashboard_of_a_cpu_run_shows_the_host_figures(workdir: Path):
    from tui.app import MptApp

    write_run(workdir / "runs", "quick", "20260101-000000", recorded("cpu", HOST))
    async with MptApp("profiles", "runs").run_test(size=(80, 24)) as pilot:
        dash = await open_recorded_run(pilot)
        state = str(dash.query_one("#state").render())
        assert "CPU 187%  RSS 312.0 MiB" in state
        assert "free: memory 5.0 GiB, disk 40.0 GiB" in state
        assert "memory  CPU" not in state


@run_async
async def test_the_dashboard_of_a_gpu_run_has_room_for_the_host_line(workdir: Path):
    from tui.app import MptApp

    write_run(workdir / "runs", "quick", "20260101-000000", recorded("cuda:0", {**GPU, **HOST}))
    async with MptApp("profiles", "runs").run_test(size=(120, 40)) as pilot:
        dash = await open_recorded_run(pilot)
        state = dash.query_one("#state")
        lines = str(state.render()).splitlines()
        assert lines[0].startswith("GPU mem alloc 1.0 GiB")
        assert lines[2].startswith("CPU 187%  RSS 312.0 MiB  free: memory 5.0 GiB")
        assert lines[3].startswith("early stop")
        # all five lines are on the screen: the block is as high as the panel
        assert state.size.height >= 5 and dash.query_one("#info").size.height >= 5
