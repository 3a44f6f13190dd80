"""Personal API tokens: made here, shown once, kept only as a SHA-256 hash.

A token is `bdt_` and 40 URL-safe characters (240 random bits), so a fast hash is enough: nobody
can guess their way to a token, and the database alone never lets anyone use one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from typing import Any

from django.db.models import Q
from django.utils import timezone

from batches.models import ApiToken

TOKEN_PREFIX = "bdt_"
TOKEN_RE = re.compile(r"bdt_[A-Za-z0-9_-]{40}", re.ASCII)
PREFIX_LENGTH = 8
# last_used_at is written at most this often per token, not on every request.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(user: Any, name: str) -> tuple[ApiToken, str]:
    """A new token for `user`: the saved row and the plaintext, which is not kept anywhere."""
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(30)
    token = ApiToken.objects.create(
        user=user, name=name, prefix=plaintext[:PREFIX_LENGTH], token_hash=hash_token(plaintext)
    )
    return token, plaintext


def lookup(plaintext: str) -> ApiToken | None:
    """The token row (with its user) for a presented token, revoked or not; None if unknown."""
    if not TOKEN_RE.fullmatch(plaintext):
        return None
    return ApiToken.objects.select_related("user").filter(token_hash=hash_token(plaintext)).first()


def touch(token: ApiToken, now: dt.datetime | None = None) -> None:
    """Record a use, at most once per LAST_USED_RESOLUTION (one conditional UPDATE when due)."""
    now = now or timezone.now()
    cutoff = now - LAST_USED_RESOLUTION
    if token.last_used_at is not None and token.last_used_at > cutoff:
        return
    ApiToken.objects.filter(Q(last_used_at__isnull=True) | Q(last_used_at__lte=cutoff), pk=token.pk).update(
        last_used_at=now
    )
    token.last_used_at = now


def revoke(tokens: Any) -> int:
    """Revoke the not yet revoked tokens of a queryset; returns how many."""
    return int(tokens.filter(revoked_at__isnull=True).update(revoked_at=timezone.now()))
