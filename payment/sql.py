"""The ORM's own statements, made cheaper on the hot paths: UPDATE ... RETURNING (which Django 5.2 cannot build),
an INSERT compiled once, and the first statement of a unit of work as its connection's health check."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, InterfaceError, OperationalError, connections, models, router
from django.db.models import AutoField
from django.db.models.sql import InsertQuery, UpdateQuery

M = TypeVar("M", bound=models.Model)
T = TypeVar("T")

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


def insert_compiled(obj: models.Model) -> None:
    """`obj.save(force_insert=True)` at a fraction of its CPU, for one hot INSERT: the ORM compiles the
    statement once per model and database, each call only prepares the values (bench/FINDINGS.md). No model
    signals are sent. Where the database cannot return the new id from the INSERT, it is a plain save()."""
    model = type(obj)
    using = router.db_for_write(model, instance=obj)
    connection = connections[using]
    if not connection.features.can_return_columns_from_insert:
        obj.save(force_insert=True, using=using)
        return
    statement, fields = _insert_statement(model, using)
    params = [field.get_db_prep_save(field.pre_save(obj, True), connection) for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        row = cursor.fetchone()
    if row is None:
        raise DatabaseError(f"INSERT ... RETURNING gave no row for {model.__name__}")
    obj.pk = row[0]
    obj._state.adding = False
    obj._state.db = using


@functools.cache
def _insert_statement(model: type[models.Model], using: str) -> tuple[str, tuple[models.Field[Any, Any], ...]]:
    """The ORM's own INSERT ... RETURNING pk for one row of `model` on that database, and the fields it takes."""
    meta = model._meta
    fields = tuple(f for f in meta.local_concrete_fields if not isinstance(f, AutoField) and not f.generated)
    query = InsertQuery(model)
    query.insert_values(fields, [model()], raw=False)
    compiler = query.get_compiler(using=using)
    compiler.returning_fields = [meta.pk]
    statements = compiler.as_sql()
    if len(statements) != 1:
        raise ImproperlyConfigured(f"one INSERT expected for {model.__name__} on {using!r}, got {len(statements)}")
    return statements[0][0], fields


def first_statement(run: Callable[[], T], *, using: str = "default") -> T:
    """Run the first statement of a request or task as its connection's health check.

    With CONN_HEALTH_CHECKS Django sends SELECT 1 before the first query of every request (and of every
    task, payshift/celery.py recycles connections the same way): one more round trip per webhook and per
    processed event. Here the statement itself is the check: if it fails because the connection died since
    its last use (a database restart, an idle timeout), a new connection runs it once more. Only for a
    statement that is safe to repeat, outside a transaction: if the first try committed before the
    connection died, the second must find that out (a unique key, a claim token) rather than act twice.
    """
    connection = connections[using]
    fresh_retry = not connection.in_atomic_block
    if fresh_retry and connection.connection is not None:
        # Every backend has this flag since Django 4.1; the stubs do not list it.
        connection.health_check_done = True  # type: ignore[attr-defined]
    try:
        return run()
    except (OperationalError, InterfaceError):
        if not fresh_retry or connection.is_usable():
            raise
        connection.close()
        return run()
