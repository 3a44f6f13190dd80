"""`manage.py demo` (run through `./dev demo`): the whole product on one machine, no API key.

Migrates the database, creates two demo users (alice the operator, bob the viewer) with fresh
passwords, starts two simulated upstream accounts (unless real accounts are configured), a sync
worker thread and the web server, and prints where to log in.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from batches.accounts import Account, get_accounts
from batches.auth import ensure_roles
from batches.simulator import Simulator, SimulatorServer
from batches.sync import sync_account

DEMO_KEY = "sk-sim-demo"


class Command(BaseCommand):
    help = "Run the dashboard against the built-in simulated upstream, with demo users."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--batches", type=int, default=400, help="batches per simulated account")
        parser.add_argument(
            "--cancel-delay", type=float, default=20.0, help="seconds from cancelling to cancelled"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        call_command("load_prices", verbosity=0)  # the cost estimates' default price table
        users = {
            "alice": self.demo_user("alice", "Operators"),
            "bob": self.demo_user("bob", "Viewers"),
        }
        accounts = get_accounts()
        if accounts:
            self.stdout.write(f"Using the configured upstream account(s): {', '.join(accounts)}")
        else:
            accounts = self.start_simulators(options["batches"], options["cancel_delay"])
            settings.UPSTREAM_ACCOUNTS = accounts
        threading.Thread(target=self.sync_forever, args=(list(accounts.values()),), daemon=True).start()

        url = f"http://{options['host']}:{options['port']}/"
        self.stdout.write(self.style.SUCCESS(f"\nBatch dashboard: {url}"))
        for name, password in users.items():
            role = "operator, may cancel" if name == "alice" else "viewer, read-only"
            self.stdout.write(f"  {name:6} password {password}   ({role})")
        self.stdout.write("Stop with Ctrl-C.\n")
        call_command(
            "runserver", f"{options['host']}:{options['port']}", use_reloader=False, use_threading=True
        )

    def demo_user(self, username: str, group: str) -> str:
        password = secrets.token_urlsafe(9)
        user, _ = User.objects.get_or_create(username=username, defaults={"email": f"{username}@example.com"})
        user.set_password(password)
        user.is_staff = username == "alice"
        user.save()
        ensure_roles()
        user.groups.set([Group.objects.get(name=group)])
        return password

    def start_simulators(self, batches: int, cancel_delay: float) -> dict[str, Account]:
        accounts = {}
        for seed, name in enumerate(("prod", "research"), start=1):
            count = batches if name == "prod" else batches // 4
            simulator = Simulator(
                batches=count,
                seed=seed,
                cancel_delay=cancel_delay,
                api_keys=[DEMO_KEY],
                arrival_interval=45.0,
                id_prefix=name,
            )
            server = SimulatorServer(simulator, host="127.0.0.1", port=0)
            server.start()
            self.stdout.write(f"Simulated upstream '{name}': {server.url} ({count} batches)")
            accounts[name] = Account(name=name, api_key=DEMO_KEY, base_url=server.url)
        return accounts

    def sync_forever(self, accounts: list[Account]) -> None:
        while True:
            close_old_connections()
            for account in accounts:
                try:
                    sync_account(account)
                except Exception as exc:  # keep the demo alive; the banner shows upstream errors
                    self.stderr.write(f"sync of {account.name} failed: {exc}")
            time.sleep(settings.SYNC_INTERVAL)
