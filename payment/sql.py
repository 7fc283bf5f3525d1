"""The ORM's own statements, made cheaper on the hot paths: statements compiled once and run with new values
(Prepared, also for UPDATE ... RETURNING, which Django 5.2 cannot build; and an INSERT), and the first statement
of a unit of work as its connection's health check."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, InterfaceError, OperationalError, connections, models, router, transaction
from django.db.models import AutoField, signals
from django.db.models.sql import InsertQuery, UpdateQuery

M = TypeVar("M", bound=models.Model)
T = TypeVar("T")

Converter = Callable[[Any, Any, Any], Any]


def update_returning_supported(using: str = "default") -> bool:
    """PostgreSQL, and SQLite from 3.35 (Django's flag for RETURNING on INSERT is the same SQLite check)."""
    connection = connections[using]
    return connection.vendor == "postgresql" or (
        connection.vendor == "sqlite" and bool(connection.features.can_return_columns_from_insert))


class _RowReader:
    """Rows of every concrete column of `model`, in _meta order, turned into model instances with the same
    conversions a SELECT of those columns gets (SQLite dates are text, JSON is text, ...)."""

    def __init__(self, model: type[models.Model], using: str) -> None:
        connection = connections[using]
        self.model, self.using, self.connection = model, using, connection
        fields: Sequence[models.Field[Any, Any]] = model._meta.concrete_fields
        quote = connection.ops.quote_name
        self.columns = ", ".join(f"{quote(model._meta.db_table)}.{quote(f.column)}" for f in fields)
        self.fields = list(fields)
        self.names = [f.attname for f in fields]
        self.cols = [field.get_col(model._meta.db_table) for field in fields]
        self.converters: list[list[Converter]] = [
            [*connection.ops.get_db_converters(col), *col.get_db_converters(connection)] for col in self.cols]

    def instances(self, rows: Sequence[Sequence[Any]]) -> list[Any]:
        instances = []
        for row in rows:
            converted = []
            for raw, col, col_converters in zip(row, self.cols, self.converters, strict=True):
                value = raw
                for convert in col_converters:
                    value = convert(value, col, self.connection)
                converted.append(value)
            instances.append(self.model.from_db(self.using, self.names, converted))
        return instances


Kind = Literal["rows", "update", "update_returning"]


class Prepared(Generic[M]):
    """One ORM statement, compiled once per database and run many times with new values.

    Building a queryset and compiling it costs the worker more CPU than PostgreSQL spends running the statement
    (bench/FINDINGS.md, "End to end"). Here the ORM builds the statement once, with a marker value in each
    slot: `build(slots)` returns the queryset (and, for an UPDATE, the values to set) exactly as the plain ORM
    call would, with `slots["name"]` where a value changes from call to call. Each marker is found among the
    compiled parameters, and each run puts that slot's value, prepared by its model field as the ORM prepares
    it, in the same places. The SQL, the WHERE and SET clauses and the quoting stay the ORM's own.

    `slots` maps each slot to the model field whose values it takes (an integer, text or date-time field; a
    value of None only in a SET clause: the ORM writes "IS NULL" in a WHERE, which a marker cannot stand for).
    A slot the compiled statement does not take as a parameter is an error at the first run, never a silent
    constant. The shape (which filters, how many values in an IN list) is the builder's; a caller with several
    shapes keeps one Prepared per shape.
    """

    def __init__(self, model: type[M], kind: Kind, build: Callable[[dict[str, Any]], Any],
                 slots: dict[str, str], *, also_return: Callable[[], Mapping[str, Any]] | None = None) -> None:
        """`also_return` (update_returning only): expressions (a Subquery with OuterRef to the updated row, say)
        returned beside the row and set on each instance under their names: what the caller would otherwise
        read in a statement of its own."""
        if also_return is not None and kind != "update_returning":
            raise ImproperlyConfigured("also_return is for update_returning statements")
        self.model, self.kind, self.build, self.slots, self.also_return = model, kind, build, slots, also_return
        # Per connection object, not per alias: Django's connections are per thread, and the row converters
        # are bound to the connection they came from. A thread's connection that goes away takes its entry.
        self._compiled: weakref.WeakKeyDictionary[Any, _Compiled] = weakref.WeakKeyDictionary()

    def rows(self, values: Mapping[str, Any], *, using: str | None = None) -> list[M]:
        """The model instances the queryset selects (kind "rows") or the UPDATE changed ("update_returning")."""
        compiled, params = self._bind(using, values)
        with compiled.connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            fetched = cursor.fetchall()
        assert compiled.reader is not None
        if not compiled.extras:
            return compiled.reader.instances(fetched)
        width = len(compiled.reader.fields)
        instances = compiled.reader.instances([row[:width] for row in fetched])
        for instance, row in zip(instances, fetched, strict=True):
            for (name, expression, converters), raw in zip(compiled.extras, row[width:], strict=True):
                value = raw
                for convert in converters:
                    value = convert(value, expression, compiled.connection)
                setattr(instance, name, value)
        return instances

    def update(self, values: Mapping[str, Any], *, using: str | None = None) -> int:
        """Run the UPDATE; the number of rows it changed."""
        compiled, params = self._bind(using, values)
        with compiled.connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            return int(cursor.rowcount)

    def _bind(self, using: str | None, values: Mapping[str, Any]) -> tuple[_Compiled, list[Any]]:
        if set(values) != set(self.slots):
            raise TypeError(f"{self.model.__name__} statement takes {sorted(self.slots)}, got {sorted(values)}")
        if using is None:
            using = router.db_for_read(self.model) if self.kind == "rows" else router.db_for_write(self.model)
        connection = connections[using]
        compiled = self._compiled.get(connection)
        if compiled is None:
            compiled = self._compiled[connection] = self._compile(using)
        params = list(compiled.params)
        for name, field, positions in compiled.slot_positions:
            prepared = field.get_db_prep_value(values[name], compiled.connection)
            for position in positions:
                params[position] = prepared
        return compiled, params

    def _compile(self, using: str) -> _Compiled:
        connection = connections[using]
        meta = self.model._meta
        fields = {name: _concrete_field(self.model, field_name) for name, field_name in self.slots.items()}
        markers = {name: _marker(field, i) for i, (name, field) in enumerate(fields.items())}
        built = self.build(markers)
        extras: list[tuple[str, Any, list[Converter]]] = []
        if self.kind == "rows":
            queryset = built.using(using)
            compiler = queryset.query.get_compiler(using)
            sql, params = compiler.as_sql()
            selected = [column.target for column, _sql, _alias in compiler.select]
            if selected != list(meta.concrete_fields):
                raise ImproperlyConfigured(f"a Prepared SELECT of {meta.label} takes every concrete column")
            reader: _RowReader | None = _RowReader(self.model, using)
        else:
            queryset, update_values = built
            query = queryset.using(using).query.chain(UpdateQuery)
            query.add_update_values(update_values)
            update_compiler = query.get_compiler(using)
            update_compiler.pre_sql_setup()
            sql, params = update_compiler.as_sql()
            if not sql:
                raise ImproperlyConfigured(f"a Prepared UPDATE of {meta.label} compiled to nothing")
            reader = None
            if self.kind == "update_returning":
                if not update_returning_supported(using):
                    raise ImproperlyConfigured(f"{connection.vendor} cannot return the rows an UPDATE changed")
                reader = _RowReader(self.model, using)
                returned = [reader.columns]
                params = list(params)
                for name, expression in (self.also_return() if self.also_return else {}).items():
                    resolved = expression.resolve_expression(query, allow_joins=False)
                    extra_sql, extra_params = update_compiler.compile(resolved)
                    returned.append(extra_sql)
                    params.extend(extra_params)
                    extras.append((name, resolved, [*connection.ops.get_db_converters(resolved),
                                                    *resolved.get_db_converters(connection)]))
                sql = f"{sql} RETURNING {', '.join(returned)}"
        params = tuple(params)
        slot_positions = []
        for name, field in fields.items():
            expected = field.get_db_prep_value(markers[name], connection)
            positions = tuple(i for i, p in enumerate(params) if type(p) is type(expected) and p == expected)
            if not positions:
                raise ImproperlyConfigured(f"slot {name!r} is not a parameter of the compiled {meta.label} statement")
            slot_positions.append((name, field, positions))
        return _Compiled(connection=connection, sql=sql, params=params, slot_positions=tuple(slot_positions),
                         reader=reader, extras=tuple(extras))


class Together:
    """Two Prepared UPDATEs that must commit together, as one statement where the database allows it
    (PostgreSQL: the first in a WITH clause, which the statement runs to completion whatever the second
    reads): one round trip and one commit, not BEGIN, two statements and COMMIT. Elsewhere the two run in
    one transaction. Both statements are on the same database."""

    def __init__(self, first: Prepared[Any], second: Prepared[Any]) -> None:
        if "update" not in (first.kind, second.kind) or first.kind != second.kind:
            raise ImproperlyConfigured("Together runs two Prepared UPDATEs")
        self.first, self.second = first, second

    def update(self, first: Mapping[str, Any], second: Mapping[str, Any], *, using: str | None = None) -> None:
        using = using or router.db_for_write(self.first.model)
        if connections[using].vendor != "postgresql":
            with transaction.atomic(using=using):
                self.first.update(first, using=using)
                self.second.update(second, using=using)
            return
        one, one_params = self.first._bind(using, first)
        two, two_params = self.second._bind(using, second)
        with connections[using].cursor() as cursor:
            cursor.execute(f"WITH first_update AS ({one.sql}) {two.sql}", [*one_params, *two_params])


class _Compiled:
    __slots__ = ("connection", "extras", "params", "reader", "slot_positions", "sql")

    def __init__(self, *, connection: Any, sql: str, params: tuple[Any, ...],
                 slot_positions: tuple[tuple[str, Any, tuple[int, ...]], ...], reader: _RowReader | None,
                 extras: tuple[tuple[str, Any, list[Converter]], ...]) -> None:
        self.connection, self.sql, self.params = connection, sql, params
        self.slot_positions, self.reader, self.extras = slot_positions, reader, extras


def _concrete_field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    field = model._meta.get_field(name)
    if not isinstance(field, models.Field) or not field.concrete:
        raise ImproperlyConfigured(f"{model._meta.label}.{name} is not a column")
    return field


_MARKER_EPOCH = datetime(1901, 2, 3, 4, 5, 6, tzinfo=UTC)


def _marker(field: models.Field[Any, Any], index: int) -> Any:
    """A value of the field's type that no real call uses and that survives the ORM's preparation whole."""
    kind = field.get_internal_type()
    if kind in ("CharField", "TextField", "EmailField", "SlugField", "URLField"):
        return f"\x1fpayshift-slot-{index}\x1f"
    if kind in ("AutoField", "BigAutoField", "IntegerField", "BigIntegerField", "PositiveIntegerField",
                "PositiveBigIntegerField", "SmallIntegerField", "ForeignKey"):
        return -(7_340_000_000 + index)
    if kind == "DateTimeField":
        marker = _MARKER_EPOCH + timedelta(seconds=index, microseconds=1 + index)
        # As the values it stands for: aware with USE_TZ, naive without (the backends refuse the other kind).
        return marker if settings.USE_TZ else marker.replace(tzinfo=None)
    raise ImproperlyConfigured(f"no Prepared slot for a {kind} ({field.name})")


def save_signals_connected(model: type[models.Model]) -> bool:
    """True when the host project listens to this model's pre_save or post_save: then the hot paths save through
    the ORM, which sends them, instead of their compiled statements, which do not."""
    return signals.pre_save.has_listeners(model) or signals.post_save.has_listeners(model)


def insert_compiled(obj: models.Model) -> None:
    """`obj.save(force_insert=True)` at a fraction of its CPU, for one hot INSERT: the ORM compiles the
    statement once per model and database, each call only prepares the values (bench/FINDINGS.md). Where the
    database cannot return the new id from the INSERT, or a receiver listens to the model's save signals, it
    is a plain save()."""
    model = type(obj)
    using = router.db_for_write(model, instance=obj)
    connection = connections[using]
    if not connection.features.can_return_columns_from_insert or save_signals_connected(model):
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
