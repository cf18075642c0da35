"""An offline W&B run read back: the records of a `run-<id>.wandb` file, parsed by the
wandb package's own protobuf schema (wandb.proto.wandb_internal_pb2.Record).

wandb 0.31 reads these files only inside its Go service (`wandb sync`); its Python reader
(wandb.sdk.internal.datastore) is gone. The framing is LevelDB's log format, as that
reader read it: a 7-byte file header (":W&B", magic 0xBEE1, version 0), then 32 KiB
blocks of chunks, each with a 7-byte header (CRC-32C, length, type: full, first, middle,
last); a block's tail shorter than a header is padding.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    """Every Record of a .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    magic, version = struct.unpack("<HB", data[4:_HEADER])
    assert data[:4] == b":W&B" and magic == 0xBEE1 and version == 0, f"{path}: not a .wandb file"
    out, pos, parts = [], _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # padding at the end of a block
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0:  # zeros: the rest of the block is padding
            pos += left - _HEADER - length
        elif kind in (_FULL, _FIRST):
            parts = chunk
        elif kind in (_MIDDLE, _LAST):
            parts += chunk
        if kind in (_FULL, _LAST):
            out.append(pb.Record.FromString(parts))
    return out


def _items(items) -> dict[str, Any]:
    return {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in items}


@dataclass
class OfflineRun:
    """What one .wandb file holds: run id and project, config, history rows, summary, tags."""

    run_id: str = ""
    project: str = ""
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # each row with its _step
    summary: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    exit_code: int | None = None

    def points(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of each history row that has `key`."""
        return [(row["_step"], row[key]) for row in self.history if key in row]


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """The W&B runs written under a run directory's wandb/ folder."""
    return [read_run(p) for p in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))]


def read_run(path: Path) -> OfflineRun:
    run = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.name = r.run_id, r.project, r.display_name
            run.config.update(_items(r.config.update))
            run.tags = list(r.tags)
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "history":
            run.history.append(_items(record.history.item))
        elif kind == "summary":
            run.summary.update(_items(record.summary.update))
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run
