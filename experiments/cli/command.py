"""What every entry point does around its work: refuse secrets before Hydra writes anything, turn user errors
into one exit code, and keep the full traceback of anything else in the run's log.

Exit codes: 0 success; 2 bad input or config (:class:`metrics.validation.InputError`: what, where, how to fix),
including a damaged costly cache artifact; 3 the judge failed after its retries (finished work is cached, a re-run
resumes); 1 anything else, with the full traceback in the run's log file.

Secrets: Hydra writes the command line and the composed config into ``.hydra/`` and the log before the task
starts, so :func:`preflight` runs first, on ``sys.argv`` and on the composed (unresolved) config: a key-like field
(``api_key``, ``*_key``, ``token``, ``*_token``, ``password``, ``secret``) holding a value, or any value shaped like
an OpenAI (``sk-...``) or Hugging Face (``hf_...``) key, is refused and shown only masked; ``api_key_env`` must
be an environment variable's name. Composition errors and missing mandatory values (``???``) are reported here
too, as input errors, before any output folder exists.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class DemoteToDebug(logging.Filter):
    """Third-party loader chatter (faiss tries AVX512/AVX2 builds and logs each ModuleNotFoundError at INFO,
    which reads like a failure): kept in the log file at DEBUG, out of the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


LOADERS = ("faiss.loader",)


class _EarlyRecords(logging.Handler):
    """Holds loader records emitted before Hydra configures logging (faiss loads while the config is checked),
    so :func:`guard` can replay them into the run's log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_EARLY = _EarlyRecords()


def quiet_loaders() -> None:
    """Until Hydra's logging config takes over (configs/hydra/job_logging/divbench.yaml), loader chatter is held
    back, demoted to DEBUG, instead of reaching the console."""
    for name in LOADERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.addFilter(DemoteToDebug())
        logger.addHandler(_EARLY)
        logger.propagate = False


def replay_early_records() -> None:
    """Send the held-back loader records through the now configured handlers (the log file keeps DEBUG)."""
    records, _EARLY.records = _EARLY.records, []
    for name in LOADERS:
        logging.getLogger(name).removeHandler(_EARLY)
        logging.getLogger(name).propagate = True
    for record in records:
        for handler in logging.getLogger().handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


quiet_loaders()  # before the first import of metrics, which loads faiss

from divcore.errors import InputError  # noqa: E402

log = logging.getLogger("divbench")

SECRET_FIELD = re.compile(r"^(.*_)?(key|token)$|^(password|secret)$", re.IGNORECASE)
SECRET_VALUE = re.compile(r"(?<![A-Za-z0-9])(sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{16,})")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HYDRA_ACTIONS = ("--help", "-h", "--hydra-help", "--version", "--info", "-i", "--cfg", "-c", "--shell-completion",
                 "-sc", "--resolve")
FLAGS_WITH_VALUE = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun")


def mask(value: str) -> str:
    """A form of a secret safe to print: its first three characters and its length."""
    return f"{value[:3]}... ({len(value)} characters)"


def _field(key: str) -> str:
    return re.split(r"[./]", key.lstrip("+~"))[-1]


def check_secret(key: str, value: Any, where: str) -> None:
    """Refuse a key-like ``key`` holding a value, a key-shaped value anywhere, or a non-name ``api_key_env``."""
    text = "" if value is None else str(value)
    if _field(key) == "api_key_env":
        if text and text.lower() != "null" and not ENV_NAME.match(text):
            raise InputError(f"{where}: {key} must name an environment variable (letters, digits, _), got "
                             f"{mask(text)}; export the key (export MY_KEY=...) and pass {key}=MY_KEY")
        return
    if SECRET_FIELD.match(_field(key)) and text and text.lower() != "null":
        raise InputError(f"{where}: {key} holds a value ({mask(text)}); never put a key in a config or on the "
                         "command line (Hydra, logs and W&B store them): export it in an environment variable and "
                         "name the variable in eval.judge.api_key_env")
    found = SECRET_VALUE.search(text)
    if found:
        raise InputError(f"{where}: {key} holds what looks like an API key ({mask(found.group())}); export it in "
                         "an environment variable and name the variable (eval.judge.api_key_env) instead")


def iter_leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from iter_leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from iter_leaves(v, f"{prefix}.{i}")
    else:
        yield prefix, node


def split_argv(argv: list[str]) -> tuple[list[str], bool, list[str]]:
    """(``key=value`` overrides, whether the config can be composed here (no multirun sweep, no other config),
    config folders given with ``--config-dir`` / ``-cd``)."""
    overrides, composable, dirs, flag = [], True, [], None
    for tok in argv:
        if flag is not None:
            if flag in ("--config-dir", "-cd"):
                dirs.append(tok)
            flag = None
            continue
        if tok.startswith("-"):
            composable = False
            name, eq, value = tok.partition("=")
            if name in ("--config-dir", "-cd") and eq:
                dirs.append(value)
            elif name in FLAGS_WITH_VALUE and not eq:
                flag = name
            continue
        overrides.append(tok)
    return overrides, composable, dirs


def scan_config_files(folders: list[str]) -> None:
    """Secrets in every YAML file of config folders: the check for command lines that cannot be composed here
    (a multirun sweep, ``--config-dir``), so a key in a config file is refused there too."""
    import yaml

    for folder in folders:
        for path in sorted(Path(folder).rglob("*.yaml")):
            try:
                data = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError):
                continue  # Hydra reports unreadable configs itself; this pass only looks for secrets
            for key, value in iter_leaves(data):
                check_secret(key, value, f"config {path}")


def check_argv(argv: list[str]) -> None:
    for tok in argv:
        key, _, value = tok.partition("=")
        check_secret(key, value, "command line")
        if SECRET_VALUE.search(tok):  # e.g. a key pasted into the key part
            raise InputError(f"command line: an argument holds what looks like an API key "
                             f"({mask(SECRET_VALUE.search(tok).group())}); remove it")


def compose_checked(config_name: str, overrides: list[str], resolve: bool = True) -> dict[str, Any] | None:
    """Compose the config as Hydra will, scan it for secrets, and resolve it (missing values are input errors);
    ``resolve=False``: the secret scan only (entry points whose mandatory keys depend on the mode)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    from experiments.engine.config import CONFIG_DIR

    task = [o for o in overrides if not re.match(r"^[+~]*hydra[./]", o)]
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name, overrides=task)
    except (HydraException, OmegaConfBaseException) as e:
        raise InputError(f"command line: {e} (check the key's spelling and its config group; the README lists "
                         "every key)") from None
    for key, value in iter_leaves(OmegaConf.to_container(cfg, resolve=False)):
        check_secret(key, value, "config")
    if not resolve:
        return None
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        raise InputError(f"{e.full_key} has no value: set it on the command line ({e.full_key}=...)") from None
    except OmegaConfBaseException as e:
        raise InputError(f"config key {getattr(e, 'full_key', '?')}: {e.msg if hasattr(e, 'msg') else e}") from None


def preflight(config_name: str, argv: list[str] | None = None,
              validate: Callable[[dict[str, Any]], None] | None = None, resolve: bool = True) -> None:
    """Checks that must pass before Hydra creates the run folder; exits 2 with the reason when one fails."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        check_argv(argv)  # --cfg job would print a key to the console: checked even for Hydra's actions
        if any(a in HYDRA_ACTIONS or a.startswith("--cfg") for a in argv):
            return
        overrides, composable, dirs = split_argv(argv)
        if not composable:
            from experiments.engine.config import CONFIG_DIR

            scan_config_files([CONFIG_DIR, *dirs])
        else:
            cfg = compose_checked(config_name, overrides, resolve)
            if validate is not None and cfg is not None:
                validate(cfg)
    except InputError as e:  # logging is not configured yet (Hydra does that), and nothing may be written
        sys.stderr.write(f"[divbench][ERROR] - {e}\n")
        sys.exit(2)


def guard(work: Callable[[], Any]) -> Any:
    """Run ``work``; map input errors to exit 2, judge failures to 3, anything else to 1 with its traceback."""
    from eval.judges import JudgeError

    replay_early_records()
    try:
        return work()
    except InputError as e:
        log.error("%s", e)
        sys.exit(2)
    except JudgeError as e:  # finished stages and annotations are cached; a re-run resumes
        log.error("%s", e)
        sys.exit(3)
    except Exception:
        log.exception("unexpected failure (a bug, or an environment problem): full traceback follows and is in "
                      "the run's log file")
        sys.exit(1)
