"""Issue 19's GPU checks in one script (run through bench/gpu.sh). A benchmark, not a test.

Each section prints its figures and adds rows to the final table; a section that fails
prints its error and the script goes on (exit 1 at the end when any section failed).

- workloads: workload W (bench/speed.py: the MNIST npz, the tutorial MLP and the small
             CNN), mpt against speed.py's hand-written floor loop on the same device.
- resnet18:  ResNet-18 on CIFAR-10-shaped synthetic data (50,000 images 3x32x32) in fp32,
             fp16 + GradScaler and bf16 (channels_last on CUDA), mpt against a floor loop.
- compile:   train.compile = true against eager (the median epoch after the first).
- events:    a run's events.jsonl carries the GPU memory and NVML figures.
- resume:    straight against interrupted + `mpt run --resume` in a fresh process, the final
             weights compared, under the default switches and under run.deterministic.
- torchrun:  `torchrun --standalone --nproc_per_node 1 -m engine.cli run ...`, and one nccl
             all_reduce.

Without a GPU the same checks run on the CPU at tiny sizes (fp16 and nccl are skipped,
saying why); `--quick` (or MPT_GPU_QUICK=1) takes the tiny sizes on any device.

    bash bench/gpu.sh                 # on a GPU: every check, under 5 minutes on an H200
    bash bench/gpu.sh --quick         # tiny sizes: the CPU fallback's test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import speed  # noqa: E402 - bench/ is not a package

FLOOR_TARGET = 0.95  # mpt's samples/s over the floor's
RESUME_TOLERANCE = 1e-3  # the largest weight difference, relative to the largest weight


@dataclass(frozen=True)
class Sizes:
    """How much work each section does: `FULL` on a GPU, `TINY` on the CPU or --quick."""

    mnist: tuple[int, int] | None  # (train, val) samples of the npz; None: all of it
    w_epochs: int
    w_reps: int
    resnet_samples: int
    resnet_shape: tuple[int, int, int]
    resnet_batch: int
    resnet_epochs: int
    resnet_reps: int
    compile_archs: tuple[str, ...]
    compile_epochs: int
    resume_epochs: int


FULL = Sizes(None, 4, 2, 50_000, (3, 32, 32), 256, 3, 1, ("mlp", "cnn"), 4, 2)
TINY = Sizes((128, 64), 2, 1, 40, (3, 8, 8), 18, 2, 1, ("mlp",), 2, 2)


@dataclass
class Row:
    section: str
    check: str
    figure: str
    target: str
    status: str  # ok, MISS, info, skip, ERROR


class Bench:
    """The device, the sizes, the time budget and the table the sections fill."""

    def __init__(self, device: torch.device, sizes: Sizes, budget: float, workdir: Path):
        self.device, self.sizes, self.budget, self.workdir = device, sizes, budget, workdir
        self.rows: list[Row] = []
        self.start = time.perf_counter()
        self.npz = speed.NPZ  # replaced by a subset for TINY

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def row(self, section, check, figure, target="", status="info"):
        self.rows.append(Row(section, check, figure, target, status))
        print(f"  [{status}] {check}: {figure}" + (f" (target {target})" if target else ""))

    def ratio_row(self, section, check, ratio):
        if self.sizes is TINY:  # a few steps an epoch: mpt's per-epoch work dominates
            self.row(section, check, f"{ratio:.3f}x floor (tiny sizes: not a measurement)")
            return
        status = "ok" if ratio >= FLOOR_TARGET else "MISS"
        self.row(section, check, f"{ratio:.3f}x floor", f">= {FLOOR_TARGET}x", status)


# ---- the device ---------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def section_device(b: Bench) -> None:
    print(f"  torch {torch.__version__}, python {platform.python_version()}")
    if not b.cuda:
        b.row("device", "GPU", "none: the checks run on the CPU at tiny sizes", status="skip")
        return
    props = torch.cuda.get_device_properties(b.device)
    print(
        f"  {props.name}: {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} "
        f"SMs, compute capability {props.major}.{props.minor}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}, bf16 {torch.cuda.is_bf16_supported()}"
    )
    print(
        f"  TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, "
        f"cuDNN {torch.backends.cudnn.allow_tf32} (torch's defaults; mpt keeps them)"
    )
    smi = shutil.which("nvidia-smi")
    try:
        query = "--query-gpu=driver_version,clocks.max.sm,power.limit"
        out = subprocess.run([smi, query, "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout.strip()  # fmt: skip
        print(f"  nvidia-smi: driver, max SM clock, power limit: {out}")
    except (OSError, TypeError, subprocess.SubprocessError) as e:  # TypeError: no nvidia-smi
        print(f"  nvidia-smi: not run ({type(e).__name__})")
    b.row("device", "GPU", props.name)


# ---- workload W: MLP and CNN on the MNIST npz ----------------------------------------


def tiny_npz(b: Bench) -> Path:
    """The npz's first samples, for the tiny sizes; speed.py's variants read speed.NPZ."""
    n_train, n_val = b.sizes.mnist
    d = np.load(b.npz)
    path = b.workdir / "mnist-tiny.npz"
    np.savez(
        path,
        x_train=d["x_train"][:n_train],
        y_train=d["y_train"][:n_train],
        x_test=d["x_test"][:n_val],
        y_test=d["y_test"][:n_val],
    )
    return path


def median_after_first(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def section_workloads(b: Bench) -> None:
    s = b.sizes
    n_train = len(np.load(speed.NPZ)["y_train"])
    for arch in ("mlp", "cnn"):
        per = {"floor": [], "mpt": []}
        for rep in range(s.w_reps):  # interleaved, so drift hits both alike
            t, _ = speed.in_fresh_thread(speed.run_floor, arch, s.w_epochs, b.device, "fp32", rep)
            per["floor"].append(median_after_first(t))
            t, _ = speed.in_fresh_thread(
                speed.run_mpt, arch, s.w_epochs, b.device, "fp32", rep, False
            )
            per["mpt"].append(median_after_first(t))
        floor, mpt = statistics.median(per["floor"]), statistics.median(per["mpt"])
        print(
            f"  {arch}: floor {n_train / floor:,.0f} samples/s, mpt {n_train / mpt:,.0f} "
            f"samples/s ({s.w_epochs} epochs x {s.w_reps} reps, median epoch after the first)"
        )
        b.ratio_row("workloads", f"{arch} fp32 mpt / floor", floor / mpt)


# ---- ResNet-18 on CIFAR-10-shaped synthetic data -------------------------------------


def resnet_sections(s: Sizes) -> dict:
    """The profile sections (besides run) of mpt's ResNet-18 runs."""
    return {
        "data": {
            "dataset": "synthetic",
            "synthetic_samples": s.resnet_samples,
            "synthetic_shape": list(s.resnet_shape),
            "synthetic_classes": 10,
            "val_fraction": 0.1,
            "batch_size": s.resnet_batch,
            "eval_batch_size": 1000,
        },
        "model": {"arch": "resnet18", "small_input": True},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
                  "weight_decay": 5e-4},
    }  # fmt: skip


def resnet_floor(s: Sizes, device: torch.device, precision: str, seed: int):
    """A hand-written loop over the same split (engine.data's synthetic loader): images
    normalised once on the device, channels_last on CUDA, batches by a device randperm,
    one sync an epoch (the evaluation). Returns (seconds per epoch, val acc, train n)."""
    from engine.data import load_data
    from engine.models import build_model
    from engine.profile import DataSection, ModelSection

    sections = resnet_sections(s)
    bundle = load_data(DataSection(**sections["data"]), seed)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    mean = torch.tensor(bundle.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std, device=device).view(1, -1, 1, 1)

    def prep(x):
        return ((x.to(device).float().div_(255) - mean) / std).contiguous(memory_format=fmt)

    x, y = prep(bundle.train.x), bundle.train.y.to(device)
    xv, yv = prep(bundle.val.x), bundle.val.y.to(device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as mpt sets it
    torch.manual_seed(seed)
    model = build_model(ModelSection(arch="resnet18"), bundle.in_shape, 10)
    model = model.to(device, memory_format=fmt)
    o = sections["optim"]
    opt = torch.optim.SGD(
        model.parameters(),
        lr=o["lr"],
        momentum=o["momentum"],
        nesterov=True,
        weight_decay=o["weight_decay"],
    )
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    times = []
    for _ in range(s.resnet_epochs):
        start = time.perf_counter()
        for idx in torch.randperm(len(x), device=device).split(s.resnet_batch):
            with speed.autocast(device, precision):
                loss = F.cross_entropy(model(x[idx].contiguous(memory_format=fmt)), y[idx])
            opt.zero_grad(set_to_none=True)
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        acc = speed.evaluate(model, xv, yv, device, precision)  # the epoch's one sync
        times.append(time.perf_counter() - start)
    return times, acc, len(x)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 itself; without, oneDNN's bf16 convolutions crawl."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def section_resnet18(b: Bench) -> None:
    s = b.sizes
    print(
        f"  {s.resnet_samples:,} synthetic images {'x'.join(map(str, s.resnet_shape))}, "
        f"batch {s.resnet_batch}, {s.resnet_epochs} epochs x {s.resnet_reps} reps"
    )
    for precision in ("fp32", "fp16", "bf16"):
        check = f"resnet18 {precision} mpt / floor"
        if precision == "fp16" and not b.cuda:
            b.row("resnet18", check, "skipped: fp16 autocast + GradScaler is for CUDA", "", "skip")
            continue
        if precision == "bf16" and b.cuda and not torch.cuda.is_bf16_supported():
            b.row("resnet18", check, "skipped: this GPU has no bf16", "", "skip")
            continue
        if precision == "bf16" and not b.cuda and not native_cpu_bf16():
            b.row("resnet18", check, "skipped: this CPU has no native bf16 (avx512_bf16, "
                  "AMX): a ResNet-18 backward takes ~10 s a step", "", "skip")  # fmt: skip
            continue
        if b.elapsed() > b.budget:
            b.row("resnet18", check, f"skipped: past the {b.budget:.0f} s budget", "", "skip")
            continue
        try:
            per = {"floor": [], "mpt": []}
            n = 0
            for rep in range(s.resnet_reps):
                t, acc_f, n = speed.in_fresh_thread(resnet_floor, s, b.device, precision, rep)
                per["floor"].append(median_after_first(t))
                t, acc_m = speed.in_fresh_thread(
                    speed.run_mpt, "resnet18", s.resnet_epochs, b.device, precision, rep, False,
                    resnet_sections(s),
                )  # fmt: skip
                per["mpt"].append(median_after_first(t))
            floor, mpt = statistics.median(per["floor"]), statistics.median(per["mpt"])
            print(
                f"  {precision}: floor {n / floor:,.0f} samples/s (val acc {acc_f:.3f}), "
                f"mpt {n / mpt:,.0f} samples/s (val acc {acc_m:.3f})"
            )
            b.ratio_row("resnet18", check, floor / mpt)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - speed.run_mpt exits on a failed run
            report_error(b, "resnet18", check, e)
        finally:
            if b.cuda:
                torch.cuda.empty_cache()


# ---- torch.compile on/off ------------------------------------------------------------


def section_compile(b: Bench) -> None:
    s = b.sizes
    compiled = {"train": {"log_every": 25, "compile": True}}
    for arch in s.compile_archs:
        if b.elapsed() > b.budget:
            b.row("compile", arch, f"skipped: past the {b.budget:.0f} s budget", "", "skip")
            continue
        per = {}
        for name, sections in (("eager", None), ("compiled", compiled)):
            t, _ = speed.in_fresh_thread(
                speed.run_mpt, arch, s.compile_epochs, b.device, "fp32", 0, False, sections
            )
            per[name] = (t[0], median_after_first(t))
        ratio = per["eager"][1] / per["compiled"][1]
        print(
            f"  {arch}: eager {per['eager'][1]:.3f} s/epoch, compiled {per['compiled'][1]:.3f} "
            f"s/epoch; first epoch {per['eager'][0]:.1f} s eager, {per['compiled'][0]:.1f} s "
            "compiled (compiling)"
        )
        tiny = " (tiny sizes: not a measurement)" if s is TINY else ""
        b.row("compile", f"{arch} compiled / eager samples/s", f"{ratio:.2f}x{tiny}")


# ---- GPU memory and NVML in events.jsonl ---------------------------------------------


GPU_MEMORY = ("gpu_mem_allocated", "gpu_mem_reserved", "gpu_mem_peak", "gpu_mem_total")
NVML = ("gpu_util", "gpu_temp", "gpu_power")


def section_events(b: Bench) -> None:
    from engine.profile import profile_from_dict
    from engine.run import Run

    data = speed.workload_profile("cnn", 1, b.device, log_every=1 if b.sizes is TINY else 5)
    data["run"]["out_dir"] = str(b.workdir / "events-runs")
    run = Run.start(profile_from_dict(data))
    run.join()
    if run.reason != "completed":
        raise RuntimeError(f"the run did not complete: {run.error}")
    lines = (run.run_dir / "events.jsonl").read_text().splitlines()
    steps = [e for e in map(json.loads, lines) if e.get("kind") == "step"]
    print(f"  {run.run_dir / 'events.jsonl'}: {len(steps)} step events")
    if not steps:
        raise RuntimeError("events.jsonl has no step events")
    last = steps[-1]
    for group, keys in (("GPU memory", GPU_MEMORY), ("NVML", NVML)):
        present = [k for k in keys if last.get(k) is not None]
        figures = ", ".join(f"{k}={last[k]}" for k in present)
        if not b.cuda:
            status = "ok" if not present else "MISS"
            b.row("events", f"{group} in step events", "absent on the CPU", "absent", status)
        elif len(present) == len(keys):
            b.row("events", f"{group} in step events", figures, "all present", "ok")
        else:
            hint = " (NVML needs nvidia-ml-py: pip install 'mpt[gpu]')" if group == "NVML" else ""
            b.row(
                "events",
                f"{group} in step events",
                f"missing {[k for k in keys if k not in present]}{hint}",
                "all present",
                "MISS",
            )
    if b.cuda and last.get("gpu_mem_peak"):
        print(
            f"  peak {last['gpu_mem_peak'] / 2**20:.0f} MiB of "
            f"{last['gpu_mem_total'] / 2**30:.0f} GiB"
        )


# ---- exact resume --------------------------------------------------------------------


def mpt_cli(args: list[str], cwd: Path, env: dict | None = None, torchrun: bool = False):
    """`python -m engine.cli ARGS` (under torchrun when asked) in a fresh process."""
    launch = [sys.executable]
    if torchrun:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: unset it
    return subprocess.run(
        [*launch, "-m", "engine.cli", "run", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def resume_profile(b: Bench, out_dir: Path, deterministic: bool) -> Path:
    """CNN on the npz with dropout, crop and flip (random streams to restore), a step
    checkpoint every few steps (kept), written as a TOML file."""
    import tomli_w

    n_train = len(np.load(speed.NPZ)["y_train"])
    steps_per_epoch = math.ceil(n_train / 64)
    data = speed.workload_profile("cnn", b.sizes.resume_epochs, b.device, log_every=5)
    data["run"].update(name="resume", out_dir=str(out_dir), deterministic=deterministic)
    data["data"].update(random_crop=2, hflip=True)
    data["model"]["dropout"] = 0.2
    every = max(1, steps_per_epoch // 2)
    data["checkpoint"] = {"every_steps": every, "keep_last": 0, "save_best": False}
    path = out_dir / "profile.toml"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data))
    return path


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from engine import checkpoint

    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]


def compare_weights(a: dict, b: dict) -> tuple[bool, float]:
    """(bit for bit, the largest difference relative to the largest weight)."""
    exact = all(torch.equal(a[k], b[k]) for k in a)
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())
    scale = max(float(a[k].double().abs().max()) for k in a if a[k].numel())
    return exact, diff / scale


def one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def failure(r: subprocess.CompletedProcess) -> str:
    """A failed command in one line: its exit status and the last line it wrote."""
    return f"exit {r.returncode}: {one_line(r.stderr) or one_line(r.stdout)}"


def resume_case(b: Bench, name: str, deterministic: bool, env: dict) -> None:
    out = b.workdir / f"resume-{name}"
    profile = resume_profile(b, out, deterministic)
    r = mpt_cli([str(profile)], out, env)
    if r.returncode != 0:
        b.row("resume", f"{name}: straight run", failure(r), "exit 0", "MISS")
        return
    (straight,) = [p for p in (out / "resume").iterdir() if p.is_dir()]
    steps = sorted((straight / "checkpoints").glob("step-*.pt"))
    ckpt = steps[-2] if len(steps) > 1 else steps[0]  # inside the last epoch
    r = mpt_cli(["--resume", str(ckpt)], out, env)
    if r.returncode != 0:
        b.row("resume", f"{name}: --resume {ckpt.name}", failure(r), "exit 0", "MISS")
        return
    (resumed,) = [p for p in (out / "resume").iterdir() if p.is_dir() and p != straight]
    exact, rel = compare_weights(final_weights(straight), final_weights(resumed))
    within = rel <= RESUME_TOLERANCE
    figure = f"{'bit for bit' if exact else 'not bit for bit'}, max |dw| {rel:.2e} of max |w|"
    status = "ok" if within else "MISS"
    b.row("resume", f"{name}: straight vs --resume {ckpt.name}", figure,
          f"<= {RESUME_TOLERANCE:g}", status)  # fmt: skip


def section_resume(b: Bench) -> None:
    cublas = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    default_env = {"CUBLAS_WORKSPACE_CONFIG": None}
    print("  default: cudnn.benchmark on (CUDA), nondeterministic algorithms allowed")
    resume_case(b, "default", False, default_env)
    print("  deterministic: run.deterministic = true (use_deterministic_algorithms, "
          "cudnn.benchmark off), CUBLAS_WORKSPACE_CONFIG=:4096:8")  # fmt: skip
    if not b.cuda:  # two processes fewer for the CPU fallback's test
        b.row("resume", "deterministic", "skipped: the CPU resumes bit for bit either way",
              "", "skip")  # fmt: skip
        return
    resume_case(b, "deterministic", True, cublas)
    # What a user who sets only run.deterministic gets: mpt sets CUBLAS_WORKSPACE_CONFIG=:4096:8
    # itself then (engine/device.py), so this run should train, not be refused by torch.
    out = b.workdir / "resume-no-cublas"
    r = mpt_cli([str(resume_profile(b, out, True))], out, {"CUBLAS_WORKSPACE_CONFIG": None})
    figure = "trains" if r.returncode == 0 else failure(r)
    b.row("resume", "run.deterministic without CUBLAS_WORKSPACE_CONFIG", figure)


# ---- torchrun ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def section_torchrun(b: Bench) -> None:
    import tomli_w

    out = b.workdir / "torchrun"
    out.mkdir()
    data = speed.workload_profile("cnn", 1, "auto", log_every=10)
    data["run"].update(name="torchrun", out_dir=str(out))
    profile = out / "profile.toml"
    profile.write_text(tomli_w.dumps(data))
    start = time.perf_counter()
    r = mpt_cli([str(profile)], out, torchrun=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        b.row("torchrun", "torchrun --nproc_per_node 1 mpt run", failure(r), "exit 0", "MISS")
        return
    (run_dir,) = [p for p in (out / "torchrun").iterdir() if p.is_dir()]
    events = [json.loads(ln) for ln in (run_dir / "events.jsonl").read_text().splitlines()]
    started = next(e for e in events if e["kind"] == "run_started")
    epoch = [e for e in events if e["kind"] == "epoch_end"][-1]
    b.row(
        "torchrun",
        "torchrun --nproc_per_node 1 mpt run",
        f"exit 0 in {seconds:.1f} s, device {started['device']}, world_size "
        f"{started['world_size']}, {epoch['samples_per_s']:,.0f} samples/s",
        "exit 0",
        "ok",
    )
    print("  (one process: mpt trains without a process group; DDP starts at 2 processes)")
    if not b.cuda:
        b.row("torchrun", "nccl all_reduce", "skipped: nccl needs CUDA", "", "skip")
        return
    # In a process of its own, with a time limit: a GPU's nccl may hang rather than fail.
    r = subprocess.run([sys.executable, "-c", NCCL_PROBE, str(free_port())], capture_output=True,
                       text=True, timeout=180)  # fmt: skip
    ok = r.returncode == 0 and "sum ok" in r.stdout
    figure = "correct" if ok else failure(r)
    b.row("torchrun", "nccl all_reduce (1 process)", figure, "correct", "ok" if ok else "MISS")


NCCL_PROBE = """
import sys, torch, torch.distributed as dist
torch.cuda.set_device(0)
dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{sys.argv[1]}", rank=0,
                        world_size=1)
t = torch.full((1 << 20,), 2.0, device="cuda:0")
dist.all_reduce(t)
torch.cuda.synchronize()
print("sum ok" if bool((t == 2.0).all()) else "sum wrong")
dist.destroy_process_group()
"""


# ---- the script ----------------------------------------------------------------------


SECTIONS = {  # the cheap and the must-know first; compile (slow to compile) last
    "device": section_device,
    "events": section_events,
    "workloads": section_workloads,
    "resnet18": section_resnet18,
    "resume": section_resume,
    "torchrun": section_torchrun,
    "compile": section_compile,
}


def report_error(b: Bench, section: str, check: str, e: BaseException) -> None:
    print(f"  ERROR in {check}: {type(e).__name__}: {e}")
    print("    " + "".join(traceback.format_exception(e)[-3:]).replace("\n", "\n    "))
    b.rows.append(Row(section, check, f"{type(e).__name__}: {str(e)[:120]}", "", "ERROR"))


def print_table(b: Bench) -> None:
    print(f"\n== summary: {device_name(b.device)}, {b.elapsed():.0f} s ==")
    width = max(len(r.check) for r in b.rows) + 2
    for r in b.rows:
        target = f"  (target {r.target})" if r.target else ""
        print(f"{r.status:<6}{r.section:<11}{r.check:<{width}}{r.figure}{target}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cuda, cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (also MPT_GPU_QUICK=1)")
    ap.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    ap.add_argument("--budget", type=float,
                    help="seconds after which the sections not yet started are skipped "
                    "(default: 240 at full sizes, none at tiny ones)")  # fmt: skip
    ap.add_argument("--npz", help="the MNIST npz (default: ../shared/data/mnist-t10k.npz)")
    args = ap.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    quick = args.quick or os.environ.get("MPT_GPU_QUICK") == "1"
    sizes = FULL if device.type == "cuda" and not quick else TINY
    with tempfile.TemporaryDirectory(prefix="mpt-gpu-") as tmp:
        budget = args.budget or (240.0 if sizes is FULL else math.inf)
        b = Bench(device, sizes, budget, Path(tmp))
        if args.npz:
            b.npz = Path(args.npz)
        print(f"== bench/gpu.py on {device_name(device)} ({device}), "
              f"{'full' if sizes is FULL else 'tiny'} sizes ==")  # fmt: skip
        speed.NPZ = b.npz  # speed.py's variants read it
        if not b.npz.is_file():
            print(f"  {b.npz}: not found; the MNIST sections will fail (pass --npz PATH)")
        elif sizes.mnist is not None:
            speed.NPZ = tiny_npz(b)
        for name in args.sections:
            print(f"\n== {name} ({b.elapsed():.0f} s) ==", flush=True)
            if b.elapsed() > b.budget:
                b.row(name, name, f"skipped: past the {b.budget:.0f} s budget", "", "skip")
                continue
            try:
                SECTIONS[name](b)
            except (Exception, SystemExit) as e:  # noqa: BLE001 - one failing leaves the others
                report_error(b, name, name, e)
            sys.stdout.flush()
        print_table(b)
    return 1 if any(r.status == "ERROR" for r in b.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
