"""UPDATE ... RETURNING, which Django 5.2's ORM cannot build: the ORM's own UPDATE plus the model's columns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.db import connections, models
from django.db.models.sql import UpdateQuery

M = TypeVar("M", bound=models.Model)

Converter = Callable[[Any, Any, Any], Any]


def update_returning_supported(using: str = "default") -> bool:
    """PostgreSQL, and SQLite from 3.35 (Django's flag for RETURNING on INSERT is the same SQLite check)."""
    connection = connections[using]
    return connection.vendor == "postgresql" or (
        connection.vendor == "sqlite" and bool(connection.features.can_return_columns_from_insert))


def update_returning(queryset: models.QuerySet[M], **values: Any) -> list[M]:
    """`queryset.update(**values)` in one statement that also returns the updated rows, as model instances
    with every concrete field loaded (the values after the update).

    The WHERE and SET clauses are the ORM's own (lookups, F() expressions, field conversion); the RETURNING
    list is built from the model's _meta, so a new column is returned without anyone editing a list here.
    Callers check update_returning_supported() first and keep the two-statement way where it is not.
    """
    model = queryset.model
    using = queryset.db
    connection = connections[using]
    query = queryset.query.chain(UpdateQuery)
    assert isinstance(query, UpdateQuery)
    query.add_update_values(values)
    compiler = query.get_compiler(using)
    compiler.pre_sql_setup()
    sql, params = compiler.as_sql()
    if not sql:
        return []
    fields: Sequence[models.Field[Any, Any]] = model._meta.concrete_fields
    quote = connection.ops.quote_name
    returning = ", ".join(f"{quote(model._meta.db_table)}.{quote(f.column)}" for f in fields)
    # The same conversions a SELECT of these columns gets (SQLite dates are text, JSON is text, ...).
    cols = [field.get_col(model._meta.db_table) for field in fields]
    converters: list[list[Converter]] = [
        [*connection.ops.get_db_converters(col), *col.get_db_converters(connection)] for col in cols]
    with connection.cursor() as cursor:
        cursor.execute(f"{sql} RETURNING {returning}", params)
        rows = cursor.fetchall()
    names = [f.attname for f in fields]
    instances = []
    for row in rows:
        converted = []
        for raw, col, col_converters in zip(row, cols, converters, strict=True):
            value = raw
            for convert in col_converters:
                value = convert(value, col, connection)
            converted.append(value)
        instances.append(model.from_db(using, names, converted))
    return instances
