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


def test_w_and_b_config_has_credentials_masked(tmp_path):
    """A URL password reaching a resolved config (e.g. base_url from an environment variable) and a credential
    key's value are masked in what W&B stores, read back from the offline run's files."""
    cfg = {"enabled": True, "project": "divbench-test", "mode": "offline", "dir": str(tmp_path)}
    config = {"judge": {"base_url": "http://user:pa55word@host:8000/v1", "token": "gsk_secretvalue123",
                        "api_key_env": "MY_KEY", "model": "m"}}
    with wandb_run(cfg, name="judge", job_type="judge", config=config) as run:
        assert run.config["judge"]["base_url"] == "http://***@host:8000/v1"
        run_dir = Path(run.dir).parent
    _exit_code(run_dir)  # flushed
    stored = b"".join(_records(next(run_dir.glob("run-*.wandb"))))
    assert b"pa55word" not in stored and b"secretvalue123" not in stored
    assert b"host:8000/v1" in stored and b"MY_KEY" in stored
