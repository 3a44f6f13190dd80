"""Upstream accounts, read from the environment.

The default account comes from the variables the OpenAI SDK itself reads
(`OPENAI_API_KEY`, `OPENAI_BASE_URL`, `OPENAI_ORG_ID`, `OPENAI_PROJECT_ID`).
More accounts are named in `UPSTREAM_ACCOUNTS=research,azure-eu`; each one reads
`UPSTREAM_<NAME>_API_KEY`, `_BASE_URL`, `_KIND` (openai or azure), `_ORG_ID`,
`_PROJECT_ID` and `_CONSOLE_URL`, where NAME is the account name upper-cased
with `-` as `_`.

Keys live only here, in memory, from the environment: never in the database,
never in a repr, never on a page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

DEFAULT_BASE_URL = "https://api.openai.com/v1"
ACCOUNT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
Kind = Literal["openai", "azure"]


@dataclass(frozen=True)
class Account:
    name: str
    api_key: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    kind: Kind = "openai"
    organization: str = ""
    project: str = ""
    console_url: str = ""

    def auth_headers(self) -> dict[str, str]:
        if self.kind == "azure":
            headers = {"api-key": self.api_key}
        else:
            headers = {"Authorization": f"Bearer {self.api_key}"}
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        if self.project:
            headers["OpenAI-Project"] = self.project
        return headers

    def batch_console_url(self, batch_id: str) -> str:
        """Where a person can see this batch in the provider's own console."""
        if self.console_url:
            return f"{self.console_url.rstrip('/')}/{batch_id}"
        if self.kind == "openai" and urlsplit(self.base_url).hostname == "api.openai.com":
            return f"https://platform.openai.com/batches/{batch_id}"
        return ""


def _check_url(variable: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImproperlyConfigured(
            f"{variable} must be an http(s) URL such as {DEFAULT_BASE_URL}, not {value!r}."
        )
    return value.rstrip("/")


def _env_prefix(name: str) -> str:
    return "UPSTREAM_" + name.upper().replace("-", "_") + "_"


def load_accounts(env: Mapping[str, str]) -> dict[str, Account]:
    """Parse every configured account; raise ImproperlyConfigured naming the variable."""
    accounts: dict[str, Account] = {}
    if env.get("OPENAI_API_KEY"):
        accounts["default"] = Account(
            name="default",
            api_key=env["OPENAI_API_KEY"],
            base_url=_check_url("OPENAI_BASE_URL", env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL),
            organization=env.get("OPENAI_ORG_ID", ""),
            project=env.get("OPENAI_PROJECT_ID", ""),
            console_url=env.get("OPENAI_CONSOLE_URL", ""),
        )
    names = [n.strip() for n in env.get("UPSTREAM_ACCOUNTS", "").split(",") if n.strip()]
    for name in names:
        if not ACCOUNT_NAME_RE.match(name):
            raise ImproperlyConfigured(
                f"UPSTREAM_ACCOUNTS: {name!r} is not a valid account name "
                "(lower-case letters, digits and '-', at most 40 characters)."
            )
        if name in accounts:
            raise ImproperlyConfigured(f"UPSTREAM_ACCOUNTS: account {name!r} is named twice.")
        prefix = _env_prefix(name)
        key = env.get(prefix + "API_KEY", "")
        if not key:
            raise ImproperlyConfigured(f"{prefix}API_KEY is not set, but UPSTREAM_ACCOUNTS names {name!r}.")
        kind = env.get(prefix + "KIND", "openai").lower()
        if kind not in ("openai", "azure"):
            raise ImproperlyConfigured(f"{prefix}KIND must be 'openai' or 'azure', not {kind!r}.")
        base_default = DEFAULT_BASE_URL if kind == "openai" else ""
        base_url = env.get(prefix + "BASE_URL", base_default)
        if not base_url:
            raise ImproperlyConfigured(
                f"{prefix}BASE_URL is required for an Azure account "
                "(like https://RESOURCE.openai.azure.com/openai/v1)."
            )
        accounts[name] = Account(
            name=name,
            api_key=key,
            base_url=_check_url(prefix + "BASE_URL", base_url),
            kind=kind,  # type: ignore[arg-type]
            organization=env.get(prefix + "ORG_ID", ""),
            project=env.get(prefix + "PROJECT_ID", ""),
            console_url=env.get(prefix + "CONSOLE_URL", ""),
        )
    return accounts


def get_accounts() -> dict[str, Account]:
    from django.conf import settings

    return settings.UPSTREAM_ACCOUNTS


def get_account(name: str) -> Account | None:
    return get_accounts().get(name)
