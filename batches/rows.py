"""Model instances by their key, for the lookups every signed-in request and every poll repeats.

The ORM builds and compiles a query each time (several times the cost of an indexed SELECT here),
and raw() resolves its columns against the model each time too. A RowLoader writes its SELECT
once, and per row applies the same database converters the ORM would (aware datetimes from
SQLite, decoded JSON) before Model.from_db: the instance is what the ORM would have loaded,
with the fields it leaves out deferred.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, cast

from django.db import connections, models, router


class RowLoader[M: models.Model]:
    def __init__(
        self, model: type[M], key: tuple[str, ...], *, only: tuple[str, ...] = (), defer: tuple[str, ...] = ()
    ) -> None:
        meta = model._meta
        self.model = model
        self.fields = [
            f
            for f in meta.concrete_fields
            if f.primary_key or ((not only or f.name in only) and f.name not in defer)
        ]
        self.attnames = [f.attname for f in self.fields]
        self.key_columns = [column(model, name) for name in key]
        self._sql: dict[str, str] = {}
        self._converters = threading.local()

    def get(self, *params: Any) -> M | None:
        """The row whose key has these values, or None."""
        found = self.all(*params)
        return found[0] if found else None

    def all(self, *params: Any) -> list[M]:
        """Every row whose key has these values (every row of the table for an empty key)."""
        connection, rows = self._select(params)
        return [self.build(connection, row) for row in rows]

    def values(self, *params: Any) -> dict[str, Any] | None:
        """The first row whose key has these values as {attname: value}, or None: what the
        instance's attributes would hold, without building the instance."""
        connection, rows = self._select(params)
        return dict(zip(self.attnames, self._convert(connection, rows[0]), strict=True)) if rows else None

    def _select(self, params: Sequence[Any]) -> tuple[Any, list[Sequence[Any]]]:
        connection = connections[router.db_for_read(self.model)]
        with connection.cursor() as cursor:
            cursor.execute(self._sql_for(connection), params)
            return connection, cursor.fetchall()

    def build(self, connection: Any, row: Sequence[Any]) -> M:
        """The instance from the values of `columns()`, in their order, as the database gave them."""
        return self.model.from_db(connection.alias, self.attnames, self._convert(connection, row))

    def _convert(self, connection: Any, row: Sequence[Any]) -> list[Any]:
        values = list(row)
        for i, col, converters in self._converters_for(connection):
            for convert in converters:
                values[i] = convert(values[i], col, connection)
        return values

    def columns(self, connection: Any, alias: str = "") -> str:
        """The SELECT list, each column qualified with the table's `alias` if given (for a query of
        one's own that joins the table)."""
        quote = connection.ops.quote_name
        prefix = f"{alias}." if alias else ""
        return ", ".join(prefix + quote(str(f.column)) for f in self.fields)

    def _converters_for(self, connection: Any) -> list[tuple[int, Any, list[Any]]]:
        """The columns that need converting, with their converters, as the ORM's compiler finds
        them; kept per connection (each thread has its own), and found again for a new one."""
        kept = self._converters.__dict__.get(connection.alias)
        if kept is None or kept[0] is not connection:
            found = []
            for i, field in enumerate(self.fields):
                col = field.get_col(self.model._meta.db_table)
                converters = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
                if converters:
                    found.append((i, col, converters))
            kept = self._converters.__dict__[connection.alias] = (connection, found)
        return kept[1]

    def _sql_for(self, connection: Any) -> str:
        if connection.vendor not in self._sql:
            quote = connection.ops.quote_name
            where = " AND ".join(f"{quote(column)} = %s" for column in self.key_columns)
            table = quote(self.model._meta.db_table)
            # Names from the model's metadata, never from input; the values are parameters.
            sql = f"SELECT {self.columns(connection)} FROM {table}"  # noqa: S608
            self._sql[connection.vendor] = f"{sql} WHERE {where}" if where else sql
        return self._sql[connection.vendor]


def column(model: type[models.Model], name: str) -> str:
    """The database column of the model's field `name`."""
    return str(cast(models.Field, model._meta.get_field(name)).column)
