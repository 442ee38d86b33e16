"""The one shape of every divbench command: :func:`hydra_command` (eight commands) and :func:`argparse_command`
(``divbench-data``, ``divbench-agreement``) give each the same error handling, logging and exit codes.

Exit codes: 0 success; 2 bad input or config (:class:`divcore.errors.InputError`: what, where, how to fix; Hydra's
own composition errors: a misspelt key or option), including a damaged costly cache artifact; 3 the judge failed
after its retries (finished work is cached, a re-run resumes); 1 anything else (a bug), with the full traceback in
the run's log file. Inside a submitit job (a SLURM or local sweep job) the error is raised instead of turned into an
exit status, so submitit stores it and the launching command shows it (:func:`in_submitit_job`).

Before Hydra writes anything (``.hydra/*.yaml``, the log, the run folder) the :class:`BeforeRun` callback, which
``configs/hydra/default.yaml`` registers for every primary config, refuses credentials (:mod:`divcore.secrets`:
by key role and URL userinfo, masked in the message), values left missing (``???``) and whatever the command's own
``validate`` refuses; in a multirun, every job's config the same way and a SLURM launcher's request against the
cluster, before anything is submitted (:func:`check_sweep`). The command line
itself is checked first, with Hydra's own parsers, so ``--cfg`` / ``--help`` never print a key either.

Logging: the project's console and log file (``configs/hydra/job_logging/divbench.yaml``; argparse commands get its
console half) keep third-party chatter out of the console (:class:`KeepOffConsole`: faiss' loader lines, httpx's
line per request, FutureWarnings / DeprecationWarnings) and mask credentials in every line
(:class:`divcore.secrets.MaskSecrets`).
"""

from __future__ import annotations

import argparse
import copy
import functools
import logging
import logging.config
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from divcore.errors import InputError
from divcore.secrets import check_secrets, leaves, secret_problem

log = logging.getLogger("divbench")

EXIT_OK, EXIT_BUG, EXIT_INPUT, EXIT_JUDGE = 0, 1, 2, 3
DOCS = "experiments/README.md (every command in depth) and configs/README.md (every key and preset)"
# loggers whose records below WARNING are chatter, not news: faiss tries its AVX512 / AVX2 builds and logs each
# ModuleNotFoundError at INFO (it reads like a failure); httpx / httpcore log one INFO line per judge request
CHATTY_LOGGERS = ("faiss.loader", "httpx", "httpcore")
# warnings shown on the console: the project's own, except notices of future API changes; a warning raised in a
# third-party file (alpaca_eval's pkg_resources notice, transformers' FutureWarnings) goes to the log file only
THIRD_PARTY_WARNINGS = ("FutureWarning:", "DeprecationWarning:", "PendingDeprecationWarning:")
PROJECT_DIR = str(Path(__file__).resolve().parents[2]) + os.sep


class KeepOffConsole(logging.Filter):
    """On the console handler: third-party chatter stays in the log file, out of the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and record.name.startswith(CHATTY_LOGGERS):
            return False
        if record.name == "py.warnings":  # logging.captureWarnings: "<file>:<line>: <Category>: <text>"
            message = record.getMessage()
            return message.startswith(PROJECT_DIR) and not any(kind in message for kind in THIRD_PARTY_WARNINGS)
        return True


def in_submitit_job() -> bool:
    """Whether this process runs a job that submitit started (``hydra/launcher=slurm_gpu``, ``local``, ...).

    There an error must be raised, never turned into ``sys.exit``: submitit stores a raised exception as the job's
    result, which the launching command re-raises and shows; a ``SystemExit`` leaves no result, so the launcher
    reports only an exit code (with SLURM accounting) or waits forever (without). submitit's job runner sets
    ``SUBMITIT_FOLDER`` in the job's own process; a command started by a shell inside a job has not imported it.
    """
    return "SUBMITIT_FOLDER" in os.environ and "submitit" in sys.modules


def command_help(job_name: str) -> str:
    """``--help``'s header (resolver ``divbench_help``, configs/hydra/default.yaml): the command module's docstring,
    which says what the command does and its main keys."""
    import importlib

    return importlib.import_module(f"experiments.cli.{job_name}").__doc__ or ""


OmegaConf.register_new_resolver("divbench_help", command_help, replace=True)


def configure_console_logging() -> None:
    """The project's console logging (the console half of the job logging config), from the first line on;
    Hydra replaces it with its own and then the job's (with the log file) once it runs. Like
    ``logging.basicConfig``, it leaves a process whose logging is already set up (an embedding application,
    pytest's capture) as it is."""
    logging.captureWarnings(True)  # warnings become log records: KeepOffConsole sorts them
    if logging.getLogger().handlers:
        return
    import yaml

    from experiments.engine.config import CONFIG_DIR

    with open(os.path.join(CONFIG_DIR, "hydra", "job_logging", "divbench.yaml")) as f:
        conf = yaml.safe_load(f)
    conf["handlers"].pop("file")
    conf["root"]["handlers"] = [h for h in conf["root"]["handlers"] if h != "file"]
    logging.config.dictConfig(conf)


def _failed(error: BaseException, code: int) -> int:
    """Report ``error`` (a traceback for a bug) and return the exit code, or raise it inside a submitit job."""
    if code == EXIT_BUG:
        log.exception("unexpected failure (a bug, or an environment problem): full traceback follows and is in "
                      "the run's log file")
    else:
        log.error("%s", error)
    if in_submitit_job():
        raise error
    return code


def is_judge_error(error: BaseException) -> bool:
    """Whether ``error`` is :class:`eval.judges.JudgeError`, without importing eval (seconds of torch on every
    command's start): if eval.judges was never imported, no judge ran, so no judge failed."""
    judges = sys.modules.get("eval.judges")
    return judges is not None and isinstance(error, judges.JudgeError)


def run_work(work: Callable[[], Any]) -> int:
    """Run ``work`` and map its failure to an exit code: input 2, judge 3, anything else 1 (:func:`_failed`)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        work()
    except InputError as e:
        return _failed(e, EXIT_INPUT)
    except (HydraException, OmegaConfBaseException) as e:  # a misspelt key, option or override
        cause = f"\n{e.__cause__}" if isinstance(e.__cause__, OmegaConfBaseException) else ""
        return _failed(InputError(f"{e}{cause}\n(check the key's spelling and its config group: <command> --help "
                                  f"lists them; {DOCS})"), EXIT_INPUT)
    except Exception as e:  # a judge's failure: finished stages and annotations are cached, a re-run resumes
        return _failed(e, EXIT_JUDGE if is_judge_error(e) else EXIT_BUG)
    return EXIT_OK


# ------------------------------------------------------------------------------------------ before Hydra writes
@dataclass
class Checks:
    """What the running command checks before Hydra writes: ``validate`` on the resolved config, and whether every
    value must be present (``all_values``: some commands' mandatory keys depend on the mode)."""

    validate: Callable[[dict[str, Any]], None] | None = None
    all_values: Callable[[DictConfig], bool] = lambda cfg: True


_CHECKS = Checks()  # set by the command's main() before Hydra runs; read by BeforeRun in the same process


class Refused(BaseException):  # noqa: N818 (not an error class: a signal through Hydra's callback runner)
    """An input error found by :class:`BeforeRun`. A BaseException because Hydra turns a callback's Exception into
    a warning and carries on (writing the run folder); the command's main() reports it and exits 2."""

    def __init__(self, error: InputError) -> None:
        super().__init__(str(error))
        self.error = error


def resolve(cfg: DictConfig, all_values: bool = True) -> dict[str, Any]:
    """The config as plain data; a missing mandatory value or a broken interpolation is an input error."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=all_values)
    except MissingMandatoryValue as e:
        raise InputError(f"{e.full_key} has no value: set it on the command line ({e.full_key}=...)") from None
    except OmegaConfBaseException as e:
        raise InputError(f"config key {getattr(e, 'full_key', '?')}: {getattr(e, 'msg', e)}") from None


def _task_config(config: DictConfig) -> DictConfig:
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def check_config_secrets(config: DictConfig) -> None:
    """Credentials anywhere in the composed config, Hydra's own node included (``hydra.job.env_set``), except the
    record of the command line (checked as such before Hydra ran)."""
    tree = OmegaConf.to_container(config, resolve=False)
    (tree.get("hydra") or {}).pop("overrides", None)
    check_secrets(tree, "config")


def check_before_run(config: DictConfig, checks: Checks) -> None:
    """Everything a run checks before Hydra creates its folder: credentials, missing values, the command's checks."""
    check_config_secrets(config)
    task = _task_config(config)
    resolved = resolve(task, checks.all_values(task))
    if checks.validate is not None:
        checks.validate(resolved)


def check_sweep(config: DictConfig, checks: Checks) -> None:
    """Before a multirun submits anything: a SLURM launcher's request against the cluster's nodes
    (:func:`experiments.engine.cluster.check_slurm_request`), then each job's config, composed as the sweeper will
    compose it, checked as a single run is (:func:`check_before_run`: a typo costs no queue wait per job)."""
    from experiments.engine.cluster import check_slurm_request, is_slurm, sweep_jobs, varying_keys

    if is_slurm(config.hydra.launcher):  # first: one sinfo call, before composing every job
        check_slurm_request(config.hydra.launcher)
    jobs = sweep_jobs(config, list(config.hydra.overrides.task)) or []  # another sweeper: its jobs check themselves
    varying = varying_keys(jobs)
    for number, job in enumerate(jobs):
        try:
            check_sweep_job(config, job, checks)
        except InputError as e:
            swept = " ".join(o for o in job if o.lstrip("+~").partition("=")[0] in varying) or " ".join(job)
            raise InputError(f"sweep job #{number} ({swept}) of {len(jobs)}: {e}; nothing was submitted") from None


def check_sweep_job(config: DictConfig, job: list[str], checks: Checks) -> None:
    """One sweep job's config, composed from the multirun's config and the job's overrides, through
    :func:`check_before_run`; a key Hydra cannot compose is an :class:`InputError` like any other."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        check_before_run(GlobalHydra.instance().config_loader().load_sweep_config(config, job), checks)
    except (HydraException, OmegaConfBaseException) as e:
        raise InputError(f"{e} (check the key's spelling and its config group)") from None


class BeforeRun(Callback):
    """Hydra callback (``configs/hydra/default.yaml``): the checks above, after composition and before the run's
    folder, ``.hydra/*.yaml`` and the log exist."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_before_run(config, _CHECKS)
        except InputError as e:
            raise Refused(e) from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_config_secrets(config)
            check_sweep(config, _CHECKS)
        except InputError as e:
            raise Refused(e) from None


def check_command_line(argv: list[str]) -> None:
    """Credentials in the command line's overrides, parsed by Hydra's own parsers (every mode: ``--cfg job`` would
    print them); a sweep's every value is checked."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args, _ = get_args_parser().parse_known_args(argv)
    for override in OverridesParser.create().parse_overrides(args.overrides):
        values = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                  else [override.value()])
        for value in values:
            tree = value if isinstance(value, (dict, list)) else {"": value}
            for key, leaf in leaves(tree):
                problem = secret_problem(f"{override.get_key_element()}{'.' + key if key else ''}", leaf)
                if problem:
                    raise InputError(f"command line: {problem}")


# ------------------------------------------------------------------------------------------ the two shapes
def hydra_command(config_name: str, *, validate: Callable[[dict[str, Any]], None] | None = None,
                  all_values: Callable[[DictConfig], bool] = lambda cfg: True,
                  additions: tuple[str, ...] = ()) -> Callable[[Callable[[dict[str, Any]], Any]], Callable[[], int]]:
    """Make ``work(resolved config)`` a command on ``configs/<config_name>.yaml``.

    ``validate``: the command's checks of the resolved config, run before Hydra writes anything. ``all_values``:
    whether every ``???`` must be set (else missing values stay missing until ``work`` reads them). ``additions``:
    key prefixes a user may add to without Hydra's ``+`` (a selector's free-form ``params.<name>=``; the selector's
    own signature then refuses unknown names).
    """
    import hydra

    from experiments.engine.config import CONFIG_DIR

    def decorate(work: Callable[[dict[str, Any]], Any]) -> Callable[[], int]:
        @functools.wraps(work)  # Hydra names the job (log file, run folder) after work's module: the command's
        def task(cfg: DictConfig) -> None:
            code = run_work(lambda: work(resolve(cfg, all_values(cfg))))
            if code:
                sys.exit(code)

        hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(task)

        def main() -> int:
            global _CHECKS
            configure_console_logging()
            os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra's errors reach run_work, not a print + exit 1
            sys.argv[1:] = [f"++{a}" if a.startswith(additions) and "=" in a else a for a in sys.argv[1:]] \
                if additions else sys.argv[1:]
            _CHECKS = Checks(validate, all_values)

            def start() -> None:
                check_command_line(sys.argv[1:])
                try:
                    hydra_main()
                except Refused as refused:
                    raise refused.error from None

            code = run_work(start)
            if code:
                sys.exit(code)
            return EXIT_OK  # every command: 0 returned, a failure's code exited with (SystemExit)

        main.__doc__ = work.__doc__
        return main

    return decorate


def argparse_command(parser: argparse.ArgumentParser) -> Callable[[Callable[[argparse.Namespace], Any]],
                                                                   Callable[[list[str] | None], int]]:
    """Make ``work(parsed arguments)`` a command with the same logging, credential check and exit codes as the
    Hydra commands: ``main(argv)`` returns 0, or exits with the failure's code."""
    parser.epilog = (parser.epilog + "\n" if parser.epilog else "") + f"Docs: {DOCS}."

    def decorate(work: Callable[[argparse.Namespace], Any]) -> Callable[[list[str] | None], int]:
        @functools.wraps(work)
        def main(argv: list[str] | None = None) -> int:
            configure_console_logging()
            tokens = sys.argv[1:] if argv is None else argv
            args = parser.parse_args(tokens)  # usage errors: argparse's message and exit 2

            def checked() -> None:  # by role (the option's name) and by shape (each argument as typed)
                check_secrets({k: v for k, v in vars(args).items() if isinstance(v, str)}, "command line")
                check_secrets({f"argument {i}": token for i, token in enumerate(tokens, 1)}, "command line")
                work(args)

            code = run_work(checked)
            if code:
                sys.exit(code)
            return EXIT_OK

        return main

    return decorate
