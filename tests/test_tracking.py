"""W&B runs: a stage that raises leaves a run marked failed (exit code 1), a stage that succeeds exit code 0.
Read back from the offline run files W&B itself wrote."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from experiments.engine.tracking import wandb_run

BLOCK, HEADER = 32768, 7  # W&B's .wandb files use LevelDB's log format: 32 KiB blocks, 7-byte record headers


def _records(path: Path) -> list[bytes]:
    data, pos, out, buf = path.read_bytes(), HEADER, [], b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if length == 0 and kind == 0:
            break
        buf += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            out.append(buf)
            buf = b""
    return out


def _exit_code(run_dir: Path, timeout_s: float = 30.0) -> int:
    """The exit code in a run's offline file; W&B's core process may still be flushing it, so poll a while."""
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout_s
    while True:
        kinds = []
        for blob in _records(next(run_dir.glob("run-*.wandb"))):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(blob)
            kinds.append(record.WhichOneof("record_type"))
            if kinds[-1] == "exit":
                return record.exit.exit_code
        if time.monotonic() > deadline:
            raise AssertionError(f"no exit record in {run_dir} after {timeout_s} s: {kinds}")
        time.sleep(0.2)


def test_failed_stage_run_is_marked_failed(tmp_path):
    cfg = {"enabled": True, "project": "divbench-test", "mode": "offline", "dir": str(tmp_path)}
    dirs = []
    with wandb_run(cfg, name="ok", job_type="metrics", config={}) as run:
        run.log({"x": 1.0})
        dirs.append(Path(run.dir).parent)
    with pytest.raises(RuntimeError, match="stage crashed"), \
            wandb_run(cfg, name="crashed", job_type="finetune", config={}) as run:
        dirs.append(Path(run.dir).parent)
        raise RuntimeError("stage crashed")
    assert [_exit_code(d) for d in dirs] == [0, 1]
