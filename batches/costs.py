"""Cost estimates from the usage the upstream reports and an editable table of list prices.

An estimate, not a bill: the provider's invoice is the authority. Prices are USD per million tokens
(ModelPrice, edited in the admin; `manage.py load_prices` seeds DEFAULT_PRICES), less the Batch
API's discount. Cached input tokens are part of the input tokens and cost the cached price instead;
reasoning tokens are part of the output tokens.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache

from batches.models import Batch, ModelPrice

MILLION = Decimal(1_000_000)
MICRO_USD = Decimal("0.000001")
HUNDRED = Decimal(100)

# Public list prices (standard tier, USD per 1M tokens) on PRICES_EFFECTIVE_DATE. Check them against
# https://openai.com/api/pricing/ before relying on the estimates, and correct them in the admin.
PRICES_EFFECTIVE_DATE = dt.date(2025, 8, 7)
DEFAULT_BATCH_DISCOUNT = Decimal(50)
DEFAULT_PRICES: dict[str, dict[str, Any]] = {
    "gpt-4o-mini": {"input": "0.15", "cached_input": "0.075", "output": "0.60"},
    "gpt-4.1": {"input": "2.00", "cached_input": "0.50", "output": "8.00"},
    "gpt-5-mini": {"input": "0.25", "cached_input": "0.025", "output": "2.00"},
    "o4-mini": {"input": "1.10", "cached_input": "0.275", "output": "4.40"},
    "text-embedding-3-small": {"input": "0.02", "cached_input": "0.02", "output": "0", "note": "Input only."},
    "omni-moderation-latest": {"input": "0", "cached_input": "0", "output": "0", "note": "Free."},
}

# A dated snapshot ("gpt-4o-mini-2024-07-18") costs what its model alias costs.
_SNAPSHOT_RE = re.compile(r"-\d{4}-\d{2}-\d{2}\Z", re.ASCII)


def base_model(model: str) -> str:
    return _SNAPSHOT_RE.sub("", model)


def load_prices() -> dict[str, ModelPrice]:
    """The whole price table, by model name: one query."""
    return {price.model: price for price in ModelPrice.objects.all()}


PRICES_CACHE_KEY = "batches:prices"


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, ModelPrice]
    # Changes whenever a price does: part of the cache key of anything rendered with them.
    digest: str


def cached_prices() -> PriceTable:
    """The price table from the cache (tiny, and it changes only in the admin), else one query.

    post_save/post_delete of a ModelPrice clear it (see invalidate_prices), and it expires after
    PRICES_CACHE_SECONDS, which bounds how late another process sees an edit with a per-process cache.
    """
    table = cache.get(PRICES_CACHE_KEY)
    if isinstance(table, PriceTable):
        return table
    prices = load_prices()
    shown = sorted(
        (p.model, p.input, p.cached_input, p.output, p.batch_discount, p.effective_date, p.note)
        for p in prices.values()
    )
    table = PriceTable(prices, hashlib.blake2b(repr(shown).encode(), digest_size=8).hexdigest())
    if settings.PRICES_CACHE_SECONDS > 0:
        cache.set(PRICES_CACHE_KEY, table, settings.PRICES_CACHE_SECONDS)
    return table


def invalidate_prices(*args: Any, **kwargs: Any) -> None:
    """Receiver for ModelPrice's post_save and post_delete (connected in apps.py)."""
    cache.delete(PRICES_CACHE_KEY)


def price_for(model: str | None, prices: Mapping[str, ModelPrice]) -> ModelPrice | None:
    if not model:
        return None
    return prices.get(model) or prices.get(base_model(model))


def tokens_cost(input_tokens: int, cached_tokens: int, output_tokens: int, price: ModelPrice) -> Decimal:
    """USD for these token counts at this price, after the batch discount."""
    cached = min(max(cached_tokens, 0), input_tokens)
    list_price = (
        Decimal(input_tokens - cached) * Decimal(price.input)
        + Decimal(cached) * Decimal(price.cached_input)
        + Decimal(output_tokens) * Decimal(price.output)
    ) / MILLION
    return list_price * (1 - Decimal(price.batch_discount) / HUNDRED)


def estimate(batch: Batch, prices: Mapping[str, ModelPrice]) -> Decimal | None:
    """The batch's estimated cost in USD, or None without usage or without a price for its model."""
    cost = cost_of(batch, prices)
    return cost.usd if cost else None


@dataclass(frozen=True)
class Cost:
    usd: Decimal
    effective_date: dt.date
    batch_discount: Decimal


def batch_cost(batch: Batch) -> Cost | None:
    """One batch's estimate with the date of its price, from the cached price table."""
    return cost_of(batch, cached_prices().prices)


def cost_of(batch: Batch, prices: Mapping[str, ModelPrice]) -> Cost | None:
    """The estimate, its price's date and discount; None without usage or without a price."""
    if batch.input_tokens is None or batch.output_tokens is None:
        return None
    price = price_for(batch.model, prices)
    if price is None:
        return None
    usd = tokens_cost(batch.input_tokens, batch.cached_tokens or 0, batch.output_tokens, price)
    return Cost(usd, price.effective_date, Decimal(price.batch_discount))


@dataclass
class CostSummary:
    """The estimate for many batches: those with usage and a price; the others are counted apart."""

    usd: Decimal | None = None
    effective_date: dt.date | None = None
    priced_batches: int = 0
    unpriced_batches: int = 0
    unpriced_models: list[str] = field(default_factory=list)


def summarize_usage(rows: Iterable[Mapping[str, Any]], prices: Mapping[str, ModelPrice]) -> CostSummary:
    """The estimate from token sums of batches with usage: rows of model, n, input, cached, output
    (a model may come in several rows)."""
    summary = CostSummary()
    unpriced: set[str] = set()
    for row in rows:
        if not row["n"]:
            continue
        price = price_for(row["model"], prices)
        if price is None:
            summary.unpriced_batches += row["n"]
            unpriced.add(row["model"] or "(no model)")
            continue
        # Summing first is exact: the cost is linear in each count (the clamp of cached tokens to
        # the input tokens aside, which no consistent usage needs).
        usd = tokens_cost(row["input"] or 0, row["cached"] or 0, row["output"] or 0, price)
        summary.usd = usd if summary.usd is None else summary.usd + usd
        summary.priced_batches += row["n"]
        if summary.effective_date is None or price.effective_date > summary.effective_date:
            summary.effective_date = price.effective_date
    summary.unpriced_models = sorted(unpriced)
    return summary


def load_default_prices(*, update: bool = False) -> tuple[int, int]:
    """Add the models of DEFAULT_PRICES that the table lacks; with update, also reset the others.

    Returns (created, updated). Without update, prices edited in the admin are left alone.
    """
    created = updated = 0
    existing = load_prices()
    for model, spec in DEFAULT_PRICES.items():
        values = {
            "input": Decimal(spec["input"]),
            "cached_input": Decimal(spec["cached_input"]),
            "output": Decimal(spec["output"]),
            "batch_discount": Decimal(spec.get("batch_discount", DEFAULT_BATCH_DISCOUNT)),
            "effective_date": PRICES_EFFECTIVE_DATE,
            "note": spec.get("note", ""),
        }
        if model not in existing:
            ModelPrice.objects.create(model=model, **values)
            created += 1
        elif update:
            ModelPrice.objects.filter(model=model).update(**values)
            updated += 1
    invalidate_prices()  # update() sends no post_save
    return created, updated
