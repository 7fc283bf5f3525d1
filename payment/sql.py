"""The ORM's own statements, made cheaper on the hot paths: UPDATE ... RETURNING (which Django 5.2 cannot build),
an INSERT compiled once, and the first statement of a unit of work as its connection's health check."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias, TypeVar

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


def insert_values(model: type[models.Model], values: dict[str, Any], *, using: str | None = None) -> Any:
    """INSERT one row of `model` from attribute values and return its primary key: insert_compiled without
    building a model instance, for the webhook's INSERT (bench/FINDINGS.md).

    `values` maps attribute names (`payment_id`, not `payment`) to Python values. A field not given takes its
    default; an auto_now or auto_now_add field takes the current time (one timestamp for the row). Each value is
    prepared as the ORM prepares it (`get_db_prep_save`), except that a str for a plain CharField or TextField,
    and None for a nullable field, are passed as they are (what the ORM would hand to the driver too).
    On PostgreSQL with psycopg 3 the values travel apart from the statement (server-side binding, as Django
    does with OPTIONS["server_side_binding"]; no named prepared statement unless the database's OPTIONS ask for
    one with prepare_threshold): nothing is quoted into the SQL text, the raw body included. The statement goes
    through Django's cursor wrapper (its error translation: a unique violation is an IntegrityError; query
    logging and CaptureQueriesContext see it). No model signals are sent, no validation is run."""
    using = using or router.db_for_write(model)
    connection = connections[using]
    unknown = set(values) - {f.attname for f in model._meta.concrete_fields}
    if unknown:
        raise TypeError(f"{model.__name__} has no field {sorted(unknown)}")
    if not connection.features.can_return_columns_from_insert:
        obj = model(**values)
        obj.save(force_insert=True, using=using)
        return obj.pk
    statement, plan = _insert_plan(model, using)
    now = None
    params: list[Any] = []
    for field, attname, kind in plan:
        if kind == _AUTO_NOW:
            if attname in values:
                value = values[attname]
            else:
                if now is None:
                    from django.utils import timezone  # noqa: PLC0415  (settings are needed: call time only)

                    now = timezone.now()
                value = now
        else:
            value = values[attname] if attname in values else field.get_default()
            if (kind == _PLAIN_TEXT and type(value) is str) or (value is None and field.null):
                params.append(value)
                continue
        params.append(field.get_db_prep_save(value, connection))
    with _insert_cursor(connection) as cursor:
        cursor.execute(statement, params)
        row = cursor.fetchone()
    if row is None:
        raise DatabaseError(f"INSERT ... RETURNING gave no row for {model.__name__}")
    return row[0]


_GENERIC, _PLAIN_TEXT, _AUTO_NOW = 0, 1, 2


InsertPlan: TypeAlias = "tuple[tuple[models.Field[Any, Any], str, int], ...]"


@functools.cache
def _insert_plan(model: type[models.Model], using: str) -> tuple[str, InsertPlan]:
    statement, fields = _insert_statement(model, using)
    plan = []
    for field in fields:
        if isinstance(field, models.DateTimeField | models.DateField) and (field.auto_now or field.auto_now_add):
            kind = _AUTO_NOW
        elif type(field) in (models.CharField, models.TextField):
            kind = _PLAIN_TEXT
        else:
            kind = _GENERIC
        plan.append((field, field.attname, kind))
    return statement, tuple(plan)


def _insert_cursor(connection: Any) -> Any:
    """A cursor for insert_values: Django's own (connection.cursor()), but on psycopg 3 with server-side
    binding. Opened as connection.cursor() opens one: the health check when due, then the connection."""
    if connection.vendor != "postgresql":
        return connection.cursor()
    from django.db.backends.postgresql.psycopg_any import is_psycopg3  # noqa: PLC0415  (PostgreSQL only)

    if not is_psycopg3:
        return connection.cursor()
    import psycopg  # noqa: PLC0415

    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        connection.validate_thread_sharing()
        # Django's ServerBindingCursor is this class plus callproc(); a psycopg Cursor binds server-side.
        raw = psycopg.Cursor(connection.connection)
        return connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)
