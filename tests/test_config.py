"""Configuration: the real settings module, started in a child process with a crafted environment.

A configuration error stops start-up with a non-zero exit and a message naming the variable; the
production environment of `.env.example` passes `manage.py check --deploy` without an issue.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management.utils import get_random_secret_key

from tests.conftest import REPO, child_env, manage, sqlite_url

SETUP = "import django; django.setup(); from django.db import connection; connection.ensure_connection()"


def start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SETUP],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def last_line(process: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    return child_env(DATABASE_URL=sqlite_url(tmp_path / "db.sqlite3"))


def test_a_valid_environment_starts(base_env):
    process = start({**base_env, "OPENAI_API_KEY": "sk-x", "UPSTREAM_ACCOUNTS": "research,azure-eu",
                     "UPSTREAM_RESEARCH_API_KEY": "sk-r", "UPSTREAM_AZURE_EU_KIND": "azure",
                     "UPSTREAM_AZURE_EU_API_KEY": "k",
                     "UPSTREAM_AZURE_EU_BASE_URL": "https://res.openai.azure.com/openai/v1"})  # fmt: skip

    assert process.returncode == 0, process.stderr


BAD = [
    ("DATABASE_URL", {"DATABASE_URL": "notadb://x"}),
    ("DATABASE_URL", {"DATABASE_URL": "postgres://:bad"}),
    ("DATABASE_URL", {"DATABASE_URL": "postgres://db:notaport/x"}),
    ("UPSTREAM_RESEARCH_API_KEY", {"UPSTREAM_ACCOUNTS": "research"}),
    ("OPENAI_BASE_URL", {"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "ftp://x"}),
    ("OPENAI_BASE_URL", {"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "javascript:alert(1)"}),
    (
        "UPSTREAM_RESEARCH_BASE_URL",
        {
            "UPSTREAM_ACCOUNTS": "research",
            "UPSTREAM_RESEARCH_API_KEY": "sk-x",
            "UPSTREAM_RESEARCH_BASE_URL": "ftp://x",
        },
    ),
    ("UPSTREAM_ACCOUNTS", {"UPSTREAM_ACCOUNTS": "Research_1"}),
    ("UPSTREAM_ACCOUNTS", {"UPSTREAM_ACCOUNTS": "../etc"}),
    (
        "UPSTREAM_RESEARCH_KIND",
        {
            "UPSTREAM_ACCOUNTS": "research",
            "UPSTREAM_RESEARCH_API_KEY": "sk-x",
            "UPSTREAM_RESEARCH_KIND": "gcp",
        },
    ),
    (
        "UPSTREAM_AZURE_BASE_URL",
        {"UPSTREAM_ACCOUNTS": "azure", "UPSTREAM_AZURE_API_KEY": "k", "UPSTREAM_AZURE_KIND": "azure"},
    ),
    ("CACHE_URL", {"CACHE_URL": "notacache://x"}),
    ("CACHE_URL", {"CACHE_URL": "redis://:bad"}),
    ("SECURE_PROXY_SSL_HEADER", {"SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO"}),
    ("SYNC_INTERVAL", {"SYNC_INTERVAL": "often"}),
    ("SESSION_COOKIE_AGE", {"SESSION_COOKIE_AGE": "8h"}),
    ("UPSTREAM_READ_TIMEOUT", {"UPSTREAM_READ_TIMEOUT": "thirty"}),
    ("LOGIN_FAILURE_LIMIT", {"LOGIN_FAILURE_LIMIT": "five"}),
    ("METRICS_ALLOWED_IPS", {"METRICS_ALLOWED_IPS": "127.0.0.1,localhost"}),
    ("DASHBOARD_URL", {"DASHBOARD_URL": "ftp://batches.example.com"}),
    ("DASHBOARD_URL", {"DASHBOARD_URL": "https://"}),
]


@pytest.mark.parametrize(("variable", "bad"), BAD, ids=[f"{v}={'|'.join(b.values())}" for v, b in BAD])
def test_a_configuration_error_stops_start_up_naming_the_variable(base_env, variable, bad):
    process = start({**base_env, **bad})

    assert process.returncode != 0, f"started with {bad}"
    message = last_line(process)
    assert message.startswith("django.core.exceptions.ImproperlyConfigured:"), process.stderr[-2000:]
    assert re.search(rf"\b{variable}\b", message), message


def test_without_secret_key_start_up_stops(base_env):
    if (REPO / ".env").is_file() and "SECRET_KEY" in (REPO / ".env").read_text():
        pytest.skip("a local .env sets SECRET_KEY")
    env = {k: v for k, v in base_env.items() if k != "SECRET_KEY"}

    process = start(env)

    assert process.returncode != 0
    assert re.search(r"ImproperlyConfigured: SECRET_KEY is not set", last_line(process)), process.stderr


def test_an_empty_secret_key_is_refused_too(base_env):
    process = start({**base_env, "SECRET_KEY": ""})

    assert process.returncode != 0
    assert "SECRET_KEY" in last_line(process)


def production_block() -> dict[str, str]:
    """The commented `# KEY=value` lines of the production block at the end of .env.example."""
    text = (REPO / ".env.example").read_text()
    block = text.split("A production environment", 1)[1]
    values = dict(re.findall(r"^# ([A-Z][A-Z0-9_]*)=(.*)$", block, re.M))
    assert {"SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "CACHE_URL", "SECURE_SSL_REDIRECT"} <= set(values)
    return values


def test_check_deploy_is_clean_with_the_production_block_of_env_example(tmp_path):
    env = child_env(
        **{
            **production_block(),
            "SECRET_KEY": get_random_secret_key(),  # 50 random characters
            "DATABASE_URL": sqlite_url(tmp_path / "db.sqlite3"),  # no server needed
            "CACHE_URL": "locmemcache://",
            "OPENAI_API_KEY": "sk-x",
        }
    )
    del env["STATIC_MANIFEST"]  # the production default

    process = manage("check", "--deploy", "--fail-level", "WARNING", env=env)

    assert process.returncode == 0, process.stdout + process.stderr
    assert "System check identified no issues" in process.stdout, process.stdout + process.stderr
