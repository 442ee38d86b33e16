"""Credentials by role, not by shape: a config key whose name says it holds a credential (``api_key*``, ``*_key``,
``token*``, ``*_token``, ``password*``, ``secret*``, ``credential*``) never holds a value, and no value carries a URL
password (``http://user:pw@host/v1``), whatever the value looks like (``gsk_...``, ``hunter2``, a JWT). Keys are
read from environment variables that a config names (``eval.judge.api_key_env: OPENAI_API_KEY``).

Values shaped like well-known keys (``sk-``, ``hf_``, ``gsk_``, ``ghp_``, ...) are a second net under any key name.
What reaches a log line, a message or a W&B config is masked (:func:`mask_text`, :func:`redact`, :class:`MaskSecrets`):
a key as its first three characters and its length, a URL's userinfo as ``***``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from divcore.errors import InputError

# words of a key name (split at _ - . and camelCase) that make it a credential
CREDENTIAL_WORDS = frozenset({"password", "passwd", "secret", "secrets", "token", "credential", "credentials",
                              "apikey", "key"})
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KEY_SHAPES = re.compile(r"(?<![A-Za-z0-9])(sk-[A-Za-z0-9_-]{16,}|(?:hf|gsk|ghp|gho|ghs|xai)_[A-Za-z0-9]{16,}|"
                        r"github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})")
URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@?#]+)@")
EMPTY = ("", "null", "none", "???")


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[_\-.\s]+", spaced.lower()) if w]


def field_name(key: str) -> str:
    """The last field of a dotted / slashed config path, without Hydra's ``+`` / ``++`` / ``~`` prefix."""
    return re.split(r"[./]", key.lstrip("+~"))[-1]


def names_env_var(key: str) -> bool:
    """A credential key that names the environment variable holding the credential (``api_key_env``, ``token_env``).

    >>> names_env_var("eval.judge.api_key_env"), names_env_var("api_key"), names_env_var("env")
    (True, False, False)
    """
    words = _words(field_name(key))
    return len(words) > 1 and words[-1] == "env" and bool(CREDENTIAL_WORDS & set(words[:-1]))


def holds_credential(key: str) -> bool:
    """Whether the config key ``key`` names a credential (its role, whatever its value looks like).

    >>> [holds_credential(k) for k in ("api_key", "eval.judge.openai_api_key", "+hf_token", "token", "db.password",
    ...                                "client_secret", "apiKey", "api_key_file", "GROQ_API_KEY")]
    [True, True, True, True, True, True, True, True, True]
    >>> [holds_credential(k) for k in ("api_key_env", "max_tokens", "judge_max_tokens", "tokenizer", "monkey",
    ...                                "embed_tokens_per_gpu_s", "keys")]
    [False, False, False, False, False, False, False]
    """
    words = _words(field_name(key))
    if names_env_var(key):
        return False
    return bool(CREDENTIAL_WORDS & set(words))


def mask(value: str) -> str:
    """A form of a secret safe to print: its first three characters and its length.

    >>> mask("sk-123456")
    'sk-... (9 characters)'
    """
    return f"{value[:3]}... ({len(value)} characters)"


def mask_text(text: str) -> str:
    """``text`` with URL passwords / userinfo replaced by ``***`` and key-shaped values masked.

    >>> mask_text("judge at http://user:pw@host/v1 with gsk_abcdefghijklmnopqrstu")
    'judge at http://***@host/v1 with gsk... (25 characters)'
    """
    text = URL_USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    return KEY_SHAPES.sub(lambda m: mask(m.group()), text)


def _empty(value: Any) -> bool:
    return value is None or str(value).strip().lower() in EMPTY


def secret_problem(key: str, value: Any) -> str | None:
    """What is wrong with ``key=value`` as far as credentials go (a masked description), or None."""
    text = "" if value is None else str(value)
    if names_env_var(key):
        if not _empty(value) and not ENV_NAME.match(text):
            return (f"{key} must name an environment variable (letters, digits, _), got {mask(text)}; export the "
                    f"credential (export MY_KEY=...) and pass {key}=MY_KEY")
        return None
    if holds_credential(key) and not _empty(value):
        return (f"{key} holds a value ({mask(text)}); a credential never goes into a config or onto the command "
                "line (Hydra's .hydra/ files, the logs and W&B keep them): export it in an environment variable and "
                "name the variable (e.g. eval.judge.api_key_env=MY_KEY)")
    found = URL_USERINFO.search(text)
    if found:
        return (f"{key} holds a URL with a user name or password ({mask_text(found.group())}...); put the "
                "credential in an environment variable the client reads (e.g. eval.judge.api_key_env) and give the "
                "URL without it")
    found = KEY_SHAPES.search(text)
    if found:
        return (f"{key} holds what looks like an API key ({mask(found.group())}); export it in an environment "
                "variable and name the variable (e.g. eval.judge.api_key_env=MY_KEY) instead")
    return None


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every leaf of nested dicts and lists."""
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if not isinstance(v, (dict, list)):
                yield path, v
            else:
                yield from leaves(v, path)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, f"{prefix}.{i}" if prefix else str(i))
    else:
        yield prefix, node


def check_secrets(node: Any, where: str) -> None:
    """Refuse the first credential in ``node`` (a plain config tree), naming it masked: ``where`` says whose tree."""
    for key, value in leaves(node):
        problem = secret_problem(key, value)
        if problem:
            raise InputError(f"{where}: {problem}")


def redact(node: Any, key: str = "") -> Any:
    """A copy of a config tree safe to log or send to W&B: credential keys' values masked, URL passwords and
    key-shaped strings masked everywhere.

    >>> redact({"judge": {"base_url": "http://u:p@h/v1", "api_key": "abcdef", "api_key_env": "K"}, "n": 3})
    {'judge': {'base_url': 'http://***@h/v1', 'api_key': 'abc... (6 characters)', 'api_key_env': 'K'}, 'n': 3}
    """
    if isinstance(node, dict):
        return {k: redact(v, str(k)) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [redact(v, key) for v in node]
    if isinstance(node, str):
        return mask(node) if holds_credential(key) and not _empty(node) else mask_text(node)
    return node


class MaskSecrets(logging.Filter):
    """On a log handler: the record's message with URL passwords and key-shaped values masked (:func:`mask_text`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
