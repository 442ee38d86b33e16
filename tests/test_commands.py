"""The one command shape (experiments/cli/command.py): exit codes, errors raised inside submitit jobs so the
launcher shows them, --help on every command."""

from __future__ import annotations

import pytest

from divcore.errors import InputError
from experiments.cli.command import EXIT_BUG, EXIT_INPUT, EXIT_JUDGE, in_submitit_job, run_work
from tests.helpers import COMMANDS, run_cli


def _raise(error: BaseException):
    def work() -> None:
        raise error

    return work


def test_exit_codes_input_judge_bug():
    from eval.judges import JudgeError

    assert run_work(lambda: None) == 0
    assert run_work(_raise(InputError("bad key"))) == EXIT_INPUT
    assert run_work(_raise(JudgeError("judge down"))) == EXIT_JUDGE
    assert run_work(_raise(ZeroDivisionError("bug"))) == EXIT_BUG


@pytest.mark.parametrize("error", [InputError("selection.only names unknown subset label(s) ['bogus']"),
                                   RuntimeError("a bug")])
def test_inside_a_submitit_job_the_error_is_raised_not_exited(error, tmp_path, monkeypatch):
    """submitit stores a raised exception as the job's result (the launcher re-raises and shows it); a SystemExit
    would leave no result."""
    import submitit  # noqa: F401  (the job runner has it imported; a shell inside a job has not)

    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path))
    assert in_submitit_job()
    with pytest.raises(type(error), match=str(error)[:20]):
        run_work(_raise(error))
    monkeypatch.delenv("SUBMITIT_FOLDER")
    assert not in_submitit_job() and run_work(_raise(error)) in (EXIT_INPUT, EXIT_BUG)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_says_what_the_command_does_and_where_the_docs_are(command, capsys):
    code, text = run_cli(command, "--help", capsys=capsys)
    assert code == 0, text
    assert f"divbench-{command}" in text and "configs/README.md" in text, text
    if command not in ("data", "agreement"):
        assert "Main keys:" in text and "== Config groups (group=option) ==" in text


@pytest.mark.slow
def test_failing_sweep_job_shows_its_error_at_the_launcher(tmp_path):
    """A job of a local submitit sweep fails on a malformed pool (found only when the job reads it): the launching
    command prints the job's own message and exits 2, instead of an exit code or a wait."""
    (tmp_path / "pool.json").write_text("{not json")
    proc = run_cli("study", "-m", "hydra/launcher=local", "debug=tiny", "pool=file", f"pool.path={tmp_path}/pool.json",
                   "seed=1", f"cache_dir={tmp_path}/c", f"results_dir={tmp_path}/r", "logger=none",
                   f"hydra.sweep.dir={tmp_path}/multirun", "hydra.launcher.timeout_min=5", timeout=300)
    assert proc.code == 2, proc.output[-3000:]
    assert "malformed JSON" in proc.output and "pool.json" in proc.output
    assert not (tmp_path / "r").exists()
