"""Sessions in the database, read in one query together with their user and its permissions.

Every signed-in request needs its session, its user and the user's permissions: three reads, or
a cache lookup and two queries with sessions in the cache. A process-local cache is wrong for
sessions besides: with several workers, a logout handled by one leaves the session alive in the
caches of the others. So sessions live only in the database (SESSION_ENGINE = "batches.sessions"),
each row records its user's id (batches.models.Session), and loading a session selects the user
row and the names of its permissions with it. Django's own get_user() then checks the user as
always (the session hash, is_active), through batches.auth.ModelBackend, which takes the user
from here when it is the one the session names. The row, the user and the permissions are read
at every request; only the decoding of session data already seen is remembered (`decode`).
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any, cast

from django.contrib.auth import SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore as DBStore
from django.db import connections, router
from django.utils import timezone

from batches.auth import USER_ROWS, permissions_from, user_pk
from batches.models import Session
from batches.rows import column

# Session data already decoded, by its encoded form: a process holds a few per signed-in user.
DECODED_MAX = 4096
_DECODED: dict[str | bytes, dict[str, Any]] = {}
# The names of the permissions as a JSON array, "[]" or NULL when there are none.
_AGGREGATES = {
    "sqlite": "json_group_array(ct.app_label || '.' || p.codename)",
    "postgresql": "json_agg(ct.app_label || '.' || p.codename)::text",
}


class SessionStore(DBStore):
    prefetched_user: User | None = None

    @classmethod
    def get_model_class(cls) -> type[Session]:
        return Session

    def create_model_instance(self, data: dict[str, Any]) -> Session:
        session = cast(Session, super().create_model_instance(data))
        session.user_id = user_pk(data.get(SESSION_KEY))
        return session

    def load(self) -> dict[str, Any]:
        connection = connections[router.db_for_read(Session)]
        sql = _sql(connection)
        if sql is None:  # a database this project does not support: Django's way, user apart
            return super().load()  # type: ignore[no-any-return]
        if not self.session_key:  # none, or not a key at all (SessionBase validates it)
            self._session_key = None
            return {}
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(sql, [self.session_key, now])
            row = cursor.fetchone()
        if row is None:  # unknown or expired
            self._session_key = None
            return {}
        session_data, *user_row, permissions = row
        if user_row[0] is not None:
            user = USER_ROWS.build(connection, user_row)
            if user.is_active and not user.is_superuser:  # as ModelBackend.get_all_permissions
                user._perm_cache = set(json.loads(permissions or "[]"))  # type: ignore[attr-defined]
            self.prefetched_user = user
        return self.decode(session_data)

    def decode(self, session_data: str | bytes) -> dict[str, Any]:
        """Django's decode (a signature check, then JSON), done once per distinct session data.

        The row is read at every request, so a logout or an expiry applies at once; only the
        checking of bytes already checked is skipped. Each request gets its own copy to change.
        """
        decoded = _DECODED.get(session_data)
        if decoded is None:
            decoded = super().decode(session_data)
            if not decoded:  # corrupted or empty: nothing worth remembering
                return decoded  # type: ignore[no-any-return]
            if len(_DECODED) >= DECODED_MAX:
                _DECODED.clear()
            _DECODED[session_data] = decoded
        return copy.deepcopy(decoded)


# Names from the models' metadata, never from input; the key and the time are parameters.
@functools.cache
def _sql_for(vendor: str, connection_alias: str) -> str | None:
    aggregate = _AGGREGATES.get(vendor)
    if aggregate is None:
        return None
    connection = connections[connection_alias]
    quote = connection.ops.quote_name
    key, data, expires, user = (
        quote(column(Session, name)) for name in ("session_key", "session_data", "expire_date", "user")
    )
    user_id = f"s.{user}"
    return (
        f"SELECT s.{data}, {USER_ROWS.columns(connection, 'u')},"  # noqa: S608
        f" (SELECT {aggregate}{permissions_from(user_id)})"
        f" FROM {quote(Session._meta.db_table)} s"
        f" LEFT JOIN {quote(User._meta.db_table)} u ON u.{quote(column(User, 'id'))} = {user_id}"
        f" WHERE s.{key} = %s AND s.{expires} > %s"
    )


def _sql(connection: Any) -> str | None:
    return _sql_for(connection.vendor, connection.alias)
