"""What the tests share: one way to compose a config (:func:`compose`), one way to run a command (:func:`run_cli`),
the judge-key variable's name (:data:`KEY_ENV`), a study on a small precomputed pool (:func:`precomputed_pool`)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.engine.config import CONFIG_DIR, PROJECT_ROOT

KEY_ENV = "DIVBENCH_TEST_KEY"  # the variable a test judge's api_key_env names (set to a dummy key per test)
COMMANDS = ("study", "measure", "report", "finetune", "select", "embed", "data", "judge", "doctor", "agreement")


def compose(config: str = "study", overrides: Iterable[str] = (), *, resolve: bool = True, hydra: bool = False,
            all_values: bool = True) -> Any:
    """``configs/<config>.yaml`` composed with ``overrides`` as the command would (Hydra's compose API): a plain
    dict when ``resolve`` (missing values raise unless ``all_values`` is false), else the DictConfig (with Hydra's
    own node when ``hydra``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose(config, overrides=list(overrides), return_hydra_config=hydra)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=all_values) if resolve else cfg


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __iter__(self):  # code, output = run_cli(...)
        return iter((self.code, self.output))


def run_cli(command: str, *args: str, capsys: Any = None, env: dict[str, str | None] | None = None,
            timeout: float = 600, cwd: os.PathLike | str = PROJECT_ROOT) -> CliResult:
    """Run ``divbench-<command> args...`` as its console script does.

    With pytest's ``capsys``: in this process (``main()`` with ``sys.argv`` set; seconds). Without: a subprocess
    on this checkout's code (``python -m experiments.cli.<command>``), with ``env``'s variables set (None: removed).
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; one of {COMMANDS}")
    if capsys is not None:
        return _in_process(command, list(args), capsys)
    environ = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), OMP_WAIT_POLICY="PASSIVE")
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    proc = subprocess.run([sys.executable, "-m", f"experiments.cli.{command}", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def _in_process(command: str, args: list[str], capsys: Any) -> CliResult:
    main = importlib.import_module(f"experiments.cli.{command}").main
    old = sys.argv
    sys.argv = [f"divbench-{command}", *args]
    try:
        code = main(args) if command in ("data", "agreement") else main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return CliResult(int(code or 0), captured.out, captured.err)


def precomputed_pool(tmp: Path, n: int, *, question: Callable[[int], str] = lambda i: f"question {i}",
                     min_words: int = 5) -> list[str]:
    """Write ``n`` conversations to ``tmp/pool.jsonl`` (answers of ``min_words + i % 7`` words) and seeded random
    6-d vectors to ``tmp/emb.npy``; return the ``debug=tiny`` study overrides that read them (no model is loaded)."""
    pool = tmp / "pool.jsonl"
    pool.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": question(i)},
        {"role": "assistant", "content": " ".join(f"w{j}" for j in range(min_words + i % 7))}]}) + "\n"
        for i in range(n)))
    np.save(tmp / "emb.npy", np.random.default_rng(0).normal(size=(n, 6)).astype(np.float32))
    return ["debug=tiny", f"cache_dir={tmp}/cache", f"results_dir={tmp}/results", "pool=file", f"pool.path={pool}",
            "pool.size=null", "pool.max_prompt_chars=null", "embed=precomputed", f"embed.path={tmp}/emb.npy",
            "logger.enabled=false"]
