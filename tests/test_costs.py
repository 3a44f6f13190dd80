"""Cost estimates: the arithmetic, when there is none, the detail page, the list summary (with a
constant number of queries), the default price table, and who may edit prices."""

from __future__ import annotations

import datetime as dt
import re
import time
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from batches import costs
from batches.models import Batch, ModelPrice, SyncState
from batches.sync import store_batches
from batches.templatetags.cost_tags import usd
from tests.factories import batch_json

LIST = reverse("batch_list")
NOW = int(time.time())
DAY = dt.date(2026, 11, 1)


@pytest.fixture(autouse=True)
def offline(offline_accounts):  # type: ignore[no-untyped-def]
    """Every test here runs against the two offline accounts (tests/conftest.py)."""


def price(
    model: str = "m", inp: str = "2", cached: str = "0.5", out: str = "8", discount: str = "50"
) -> ModelPrice:
    return ModelPrice(
        model=model,
        input=Decimal(inp),
        cached_input=Decimal(cached),
        output=Decimal(out),
        batch_discount=Decimal(discount),
        effective_date=DAY,
    )


def usage(
    model: str = "m", inp: int | None = 1_000_000, cached: int | None = 0, out: int | None = 0
) -> Batch:
    total = None if inp is None or out is None else inp + out
    return Batch(model=model, input_tokens=inp, cached_tokens=cached, output_tokens=out, total_tokens=total)


def usage_json(inp: int, cached: int, out: int) -> dict[str, object]:
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": inp + out,
    }


# --- the arithmetic -----------------------------------------------------------------------------


def test_input_and_output_at_list_price_less_the_batch_discount():
    prices = {"m": price()}
    # 1M input at $2 + 0.5M output at $8 = $6, half of it for the batch API.
    assert costs.estimate(usage(inp=1_000_000, out=500_000), prices) == Decimal(3)


def test_cached_tokens_are_input_tokens_at_the_cached_price():
    prices = {"m": price()}
    # 600k uncached at $2 + 400k cached at $0.50 + 100k output at $8 = 1.2 + 0.2 + 0.8 = 2.2; -50 %.
    assert costs.estimate(usage(inp=1_000_000, cached=400_000, out=100_000), prices) == Decimal("1.1")
    # Cached not reported counts as none cached.
    assert costs.estimate(usage(inp=1_000_000, cached=None, out=0), prices) == Decimal(1)


def test_discount_is_a_percentage():
    batch = usage(inp=1_000_000, out=0)
    assert costs.estimate(batch, {"m": price(discount="0")}) == Decimal(2)
    assert costs.estimate(batch, {"m": price(discount="25")}) == Decimal("1.5")
    assert costs.estimate(batch, {"m": price(discount="100")}) == Decimal(0)


def test_small_counts_keep_their_precision():
    prices = {"gpt-4o-mini": price("gpt-4o-mini", "0.15", "0.075", "0.60")}
    batch = usage("gpt-4o-mini", inp=100_000, cached=25_000, out=40_000)
    # (75k x 0.15 + 25k x 0.075 + 40k x 0.60) / 1M = 0.037125, halved.
    assert costs.estimate(batch, prices) == Decimal("0.0185625")


def test_a_dated_snapshot_costs_what_its_alias_costs():
    prices = {"gpt-4o-mini": price("gpt-4o-mini")}
    assert costs.estimate(usage("gpt-4o-mini-2024-07-18"), prices) == Decimal(1)
    # An exact entry wins over the alias.
    prices["gpt-4o-mini-2024-07-18"] = price("gpt-4o-mini-2024-07-18", inp="4")
    assert costs.estimate(usage("gpt-4o-mini-2024-07-18"), prices) == Decimal(2)


@pytest.mark.parametrize(
    "batch",
    [
        usage(inp=None, out=None),  # no usage reported (yet, or before 2025-09-07)
        usage(inp=1000, out=None),
        usage(model="unpriced"),
        usage(model=""),
        usage(model="ft:m:org::abc"),  # a fine-tuned model has prices of its own
    ],
    ids=["no-usage", "partial-usage", "unknown-model", "no-model", "fine-tuned"],
)
def test_no_estimate_without_usage_or_without_a_price(batch):
    assert costs.estimate(batch, {"m": price()}) is None


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "—"),
        (Decimal(0), "$0.00"),
        (Decimal("0.004"), "< $0.01"),
        (Decimal("0.005"), "$0.01"),
        (Decimal("1.234"), "$1.23"),
        (Decimal("1234.565"), "$1,234.57"),
    ],
)
def test_usd_format(value, shown):
    assert usd(value) == shown


# --- the pages ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_detail_shows_the_estimate_with_the_prices_date(bob_client):
    price("gpt-4.1").save()
    obj = batch_json("completed", model="gpt-4.1", usage=False)
    obj["usage"] = usage_json(1_000_000, 0, 250_000)  # $2 + $2 = $4, halved
    store_batches("sim", [obj])

    page = bob_client.get(reverse("batch_detail", args=["sim", obj["id"]])).content.decode()

    assert "≈ $2.00" in page
    assert "(estimate, prices of 2026-11-01)" in page


@pytest.mark.django_db
def test_detail_says_when_a_model_has_no_price(bob_client):
    obj = batch_json("completed", model="brand-new-model")
    store_batches("sim", [obj])

    page = bob_client.get(reverse("batch_detail", args=["sim", obj["id"]])).content.decode()

    assert "no price for brand-new-model" in page
    assert "≈ $" not in page


def summary_cost(page: str) -> str:
    found = re.search(r'<div class="cost-estimate">(.*?)</div>', page, re.S)
    assert found, "no cost in the summary"
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", found.group(1))).strip()


@pytest.mark.django_db
def test_list_summary_sums_the_estimates_of_the_current_filter(bob_client):
    price("a", inp="1", cached="1", out="0", discount="0").save()
    price("b", inp="10", cached="5", out="0", discount="50").save()
    objs = []
    for model, status, inp, cached in [
        ("a", "completed", 1_000_000, 0),  # $1
        ("a", "completed", 2_000_000, 1_000_000),  # $2
        ("b", "completed", 1_000_000, 500_000),  # (5 + 2.5) / 2 = $3.75
        ("b", "expired", 1_000_000, 0),  # $5
        ("unpriced", "completed", 1_000_000, 0),
    ]:
        obj = batch_json(status, model=model, usage=False)
        obj["usage"] = usage_json(inp, cached, 0)
        objs.append(obj)
    objs.append(batch_json("completed", model="a", usage=False))  # no usage: nothing to add
    store_batches("sim", objs)

    everything = summary_cost(bob_client.get(LIST).content.decode())
    assert everything.startswith("≈ $11.75 cost (estimate, prices of 2026-11-01;")
    assert "without 1 batch of unpriced models: unpriced" in everything

    completed = summary_cost(bob_client.get(LIST, {"status": "completed", "model": "b"}).content.decode())
    assert completed == "≈ $3.75 cost (estimate, prices of 2026-11-01)"

    assert summary_cost(bob_client.get(LIST, {"status": "failed"}).content.decode()) == "— cost (estimate)"

    # The estimates of single batches add up to the summary.
    prices = costs.load_prices()
    assert sum(filter(None, (costs.estimate(b, prices) for b in Batch.objects.all()))) == Decimal("11.75")


@pytest.mark.django_db
def test_list_summary_costs_a_constant_number_of_queries(bob_client, django_assert_num_queries):
    for model in ("gpt-4o-mini", "gpt-4.1"):
        price(model).save()

    def fill(n: int) -> None:
        store_batches(
            "sim",
            [
                batch_json(model=m, created_at=NOW - i)
                for i in range(n)
                for m in ("gpt-4o-mini", "gpt-4.1", "x-unpriced")
            ],
        )

    fill(3)
    cache.clear()  # the filter menus' options are cached
    with CaptureQueriesContext(connection) as few:
        assert bob_client.get(LIST).status_code == 200
    Batch.objects.all().delete()
    fill(40)
    cache.clear()
    with django_assert_num_queries(len(few.captured_queries)):
        assert bob_client.get(LIST).status_code == 200


@pytest.mark.django_db
def test_the_cached_prices_and_list_follow_every_edit_of_the_table(bob_client, settings):
    settings.PRICES_CACHE_SECONDS = 60
    settings.LIST_CACHE_SECONDS = 15
    for account in ("sim", "eu"):
        SyncState.objects.create(account=account, import_complete=True)
    obj = batch_json("completed", model="a", usage=False)
    obj["usage"] = usage_json(1_000_000, 0, 0)
    store_batches("sim", [obj])

    def cost() -> str:
        return summary_cost(bob_client.get(LIST).content.decode())

    assert cost().startswith("— cost")
    row = price("a", inp="1", cached="1", out="0", discount="0")
    row.save()  # post_save clears the cached table, and the list's results are keyed on it
    assert cost() == "≈ $1.00 cost (estimate, prices of 2026-11-01)"
    with CaptureQueriesContext(connection) as again:
        assert cost() == "≈ $1.00 cost (estimate, prices of 2026-11-01)"
    assert not [q for q in again.captured_queries if "batches_modelprice" in q["sql"]]
    row.input = Decimal(3)
    row.save()
    assert cost() == "≈ $3.00 cost (estimate, prices of 2026-11-01)"
    call_command("load_prices", verbosity=0)  # other models: created, so saved
    assert cost() == "≈ $3.00 cost (estimate, prices of 2026-11-01)"
    ModelPrice.objects.filter(model="a").update(input=Decimal(5))  # no signal: still the cached table
    assert cost() == "≈ $3.00 cost (estimate, prices of 2026-11-01)"
    call_command("load_prices", "--update", verbosity=0)  # only update()s, and then clears the cache
    assert cost() == "≈ $5.00 cost (estimate, prices of 2026-11-01)"
    row.delete()
    assert cost().startswith("— cost")


# --- the price table ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_load_prices_seeds_the_table_once_and_keeps_edits():
    call_command("load_prices", verbosity=0)
    assert set(ModelPrice.objects.values_list("model", flat=True)) == set(costs.DEFAULT_PRICES)
    mini = ModelPrice.objects.get(model="gpt-4o-mini")
    assert (mini.input, mini.cached_input, mini.output) == (Decimal("0.15"), Decimal("0.075"), Decimal("0.6"))
    assert mini.batch_discount == 50
    assert mini.effective_date == costs.PRICES_EFFECTIVE_DATE
    assert ModelPrice.objects.get(model="omni-moderation-latest").input == 0

    ModelPrice.objects.filter(model="gpt-4o-mini").update(input=Decimal("9"))
    call_command("load_prices", verbosity=0)
    assert ModelPrice.objects.count() == len(costs.DEFAULT_PRICES)
    assert ModelPrice.objects.get(model="gpt-4o-mini").input == 9

    call_command("load_prices", "--update", verbosity=0)
    assert ModelPrice.objects.get(model="gpt-4o-mini").input == Decimal("0.15")


@pytest.mark.django_db
def test_prices_are_edited_by_staff_in_the_admin_and_not_by_viewers(bob_client):
    price("gpt-4.1").save()
    row = ModelPrice.objects.get()
    change = reverse("admin:batches_modelprice_change", args=[row.pk])

    # A viewer is not staff: the admin sends them to its login.
    assert bob_client.get(change).status_code == 302

    admin_user = User.objects.create_superuser("root", "root@example.com", "root-password-1")
    from django.test import Client

    staff = Client()
    staff.force_login(admin_user)
    form = {
        "model": "gpt-4.1",
        "input": "3",
        "cached_input": "0.75",
        "output": "12",
        "batch_discount": "50",
        "effective_date": "2026-12-01",
        "note": "",
    }
    assert staff.post(change, form).status_code == 302
    row.refresh_from_db()
    assert (row.input, row.effective_date) == (Decimal(3), dt.date(2026, 12, 1))

    refused = staff.post(change, {**form, "batch_discount": "150"})
    assert refused.status_code == 200
    assert "between 0 and 100" in refused.content.decode()
