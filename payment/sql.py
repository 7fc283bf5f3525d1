"""The ORM's own statements, made cheaper on the hot paths: statements compiled once and run with new values
(Prepared, also for UPDATE ... RETURNING, which Django 5.2 cannot build; and an INSERT), and the first statement
of a unit of work as its connection's health check."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeAlias, TypeVar

from django.conf import settings
from django.core.exceptions import FullResultSet, ImproperlyConfigured
from django.db import DatabaseError, InterfaceError, OperationalError, connections, models, router, transaction
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
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
    """One ORM statement, compiled once per connection and run many times with new values.

    Building a queryset and compiling it costs the worker more CPU than PostgreSQL spends running the statement
    (bench/FINDINGS.md, "End to end"). Here the ORM builds the statement with marker values in the slots:
    `build(slots)` returns the queryset (and, for an UPDATE, the values to set) exactly as the plain ORM call
    would, with `slots["name"]` where a value changes from call to call. It is built twice, with two sets of
    markers: the SQL must come out the same, the parameters that differ are the slots' places, and each must be
    exactly one slot's marker as its model field prepares it. Each run puts that slot's value, prepared the
    same way, in the same places. The SQL, the WHERE and SET clauses and the quoting stay the ORM's own.

    `slots` maps each slot to the model field whose values it takes (an integer, text or date-time field).
    Refused at the first run, never run with a silent constant: a slot the statement does not take, or takes
    transformed (`startswith`, an escaped LIKE), or whose value changes the SQL. Refused at each run: None in
    a WHERE slot (the ORM writes IS NULL there). The shape (which filters, how many values in an IN list) is
    the builder's; a caller with several shapes keeps one Prepared per shape.
    """

    def __init__(self, model: type[M], kind: Kind, build: Callable[[dict[str, Any]], Any],
                 slots: dict[str, str], *, also_return: Callable[[], Mapping[str, Any]] | None = None) -> None:
        """`also_return` (update_returning only): expressions (a Subquery with OuterRef to the updated row, say)
        returned beside the row and set on each instance under their names: what the caller would otherwise
        read in a statement of its own."""
        if also_return is not None and kind != "update_returning":
            raise ImproperlyConfigured("also_return is for update_returning statements")
        self.model, self.kind, self.build, self.slots, self.also_return = model, kind, build, slots, also_return

    def rows(self, values: Mapping[str, Any], *, using: str | None = None) -> list[M]:
        """The model instances the queryset selects (kind "rows") or the UPDATE changed ("update_returning")."""
        connection, compiled, params = self._bind(using, values)
        with bound_cursor(connection) as cursor:
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
                    value = convert(value, expression, connection)
                setattr(instance, name, value)
        return instances

    def update(self, values: Mapping[str, Any], *, using: str | None = None) -> int:
        """Run the UPDATE; the number of rows it changed."""
        connection, compiled, params = self._bind(using, values)
        with bound_cursor(connection) as cursor:
            cursor.execute(compiled.sql, params)
            return int(cursor.rowcount)

    def using(self) -> str:
        return router.db_for_read(self.model) if self.kind == "rows" else router.db_for_write(self.model)

    def _bind(self, using: str | None, values: Mapping[str, Any]) -> tuple[Any, _Compiled, list[Any]]:
        if set(values) != set(self.slots):
            raise TypeError(f"{self.model.__name__} statement takes {sorted(self.slots)}, got {sorted(values)}")
        connection = connections[using or self.using()]
        # Kept on the connection object: Django's connections are per thread (per request context under ASGI),
        # the row converters are bound to the one they came from, and the cache goes when the connection goes.
        cache: dict[Prepared[Any], _Compiled] = connection.__dict__.setdefault("_payshift_prepared", {})
        compiled = cache.get(self)
        if compiled is None:
            compiled = cache[self] = self._compile(connection)
        params = list(compiled.params)
        for name, field, positions, in_where in compiled.slot_positions:
            value = values[name]
            if value is None and in_where:
                raise ValueError(f"{self.model.__name__} statement: None for {name!r}, which a WHERE compares "
                                 "(the ORM writes IS NULL there: build another shape)")
            prepared = field.get_db_prep_value(value, connection)
            for position in positions:
                params[position] = prepared
        return connection, compiled, params

    def _compile(self, connection: Any) -> _Compiled:
        meta = self.model._meta
        fields = {name: _concrete_field(self.model, field_name) for name, field_name in self.slots.items()}
        one, one_markers = self._sql(connection, fields, variant=0)
        two, two_markers = self._sql(connection, fields, variant=1)
        sql, params, where_from, reader, extras = one
        if (sql, len(params)) != (two[0], len(two[1])):
            raise ImproperlyConfigured(f"a {meta.label} statement whose SQL depends on a slot's value cannot be "
                                       "prepared")
        prepared_markers = {name: (field.get_db_prep_value(one_markers[name], connection),
                                   field.get_db_prep_value(two_markers[name], connection))
                            for name, field in fields.items()}
        positions: dict[str, list[int]] = {name: [] for name in fields}
        for i, (first, second) in enumerate(zip(params, two[1], strict=True)):
            if type(first) is type(second) and first == second:
                continue  # a constant of the statement
            owners = [name for name, (a, b) in prepared_markers.items()
                      if type(a) is type(first) and a == first and type(b) is type(second) and b == second]
            if len(owners) != 1:
                raise ImproperlyConfigured(f"parameter {i} of the {meta.label} statement is a slot's value "
                                           "transformed (or no slot's): it cannot be prepared")
            positions[owners[0]].append(i)
        missing = [name for name, found in positions.items() if not found]
        if missing:
            raise ImproperlyConfigured(f"slot(s) {missing} are not parameters of the compiled {meta.label} statement")
        slot_positions = tuple((name, fields[name], tuple(found), any(p >= where_from for p in found))
                               for name, found in positions.items())
        return _Compiled(sql=sql, params=tuple(params), slot_positions=slot_positions, reader=reader,
                         extras=tuple(extras))

    def _sql(self, connection: Any, fields: Mapping[str, models.Field[Any, Any]], *, variant: int) -> tuple[
            tuple[str, list[Any], int, _RowReader | None, list[tuple[str, Any, list[Converter]]]], dict[str, Any]]:
        """(SQL, parameters, index of the first WHERE parameter, row reader, extras) with one set of markers."""
        using = connection.alias
        meta = self.model._meta
        markers = {name: _marker(field, i, variant, connection) for i, (name, field) in enumerate(fields.items())}
        built = self.build(markers)
        extras: list[tuple[str, Any, list[Converter]]] = []
        if self.kind == "rows":
            compiler = built.using(using).query.get_compiler(using)
            sql, params = compiler.as_sql()
            selected = [column.target for column, _sql, _alias in compiler.select]
            if selected != list(meta.concrete_fields):
                raise ImproperlyConfigured(f"a Prepared SELECT of {meta.label} takes every concrete column")
            return (sql, list(params), 0, _RowReader(self.model, using), extras), markers
        queryset, update_values = built
        query = queryset.using(using).query.chain(UpdateQuery)
        query.add_update_values(update_values)
        update_compiler = query.get_compiler(using)
        update_compiler.pre_sql_setup()
        sql, params = update_compiler.as_sql()
        if not sql:
            raise ImproperlyConfigured(f"a Prepared UPDATE of {meta.label} compiled to nothing")
        params = list(params)
        # SET's parameters come first, then WHERE's (SQLUpdateCompiler.as_sql).
        try:
            where_params = update_compiler.compile(update_compiler.query.where)[1]
        except FullResultSet:
            where_params = []
        where_from = len(params) - len(where_params)
        reader = None
        if self.kind == "update_returning":
            if not update_returning_supported(using):
                raise ImproperlyConfigured(f"{connection.vendor} cannot return the rows an UPDATE changed")
            reader = _RowReader(self.model, using)
            returned = [reader.columns]
            for name, expression in (self.also_return() if self.also_return else {}).items():
                resolved = expression.resolve_expression(query, allow_joins=False)
                extra_sql, extra_params = update_compiler.compile(resolved)
                returned.append(extra_sql)
                params.extend(extra_params)
                extras.append((name, resolved, [*connection.ops.get_db_converters(resolved),
                                                *resolved.get_db_converters(connection)]))
            sql = f"{sql} RETURNING {', '.join(returned)}"
        return (sql, params, where_from, reader, extras), markers


class Together:
    """Two Prepared UPDATEs of two tables that must commit together, as one statement where the database allows
    it (PostgreSQL: the first in a WITH clause, which the statement runs to completion whatever the second
    reads): one round trip and one commit, not BEGIN, two statements and COMMIT. Elsewhere the two run in one
    transaction. Two tables, because PostgreSQL applies only one of two such UPDATEs of the same row."""

    def __init__(self, first: Prepared[Any], second: Prepared[Any]) -> None:
        if first.kind != "update" or second.kind != "update":
            raise ImproperlyConfigured("Together runs two Prepared UPDATEs")
        if first.model._meta.db_table == second.model._meta.db_table:
            raise ImproperlyConfigured("Together runs UPDATEs of two different tables")
        self.first, self.second = first, second

    def update(self, first: Mapping[str, Any], second: Mapping[str, Any]) -> None:
        using = self.first.using()
        if self.second.using() != using:
            raise ImproperlyConfigured("Together's two tables are routed to different databases")
        connection = connections[using]
        if connection.vendor != "postgresql":
            with transaction.atomic(using=using):
                self.first.update(first, using=using)
                self.second.update(second, using=using)
            return
        _, one, one_params = self.first._bind(using, first)
        _, two, two_params = self.second._bind(using, second)
        with bound_cursor(connection) as cursor:
            cursor.execute(f"WITH first_update AS ({one.sql}) {two.sql}", [*one_params, *two_params])


class _Compiled:
    __slots__ = ("extras", "params", "reader", "slot_positions", "sql")

    def __init__(self, *, sql: str, params: tuple[Any, ...],
                 slot_positions: tuple[tuple[str, Any, tuple[int, ...], bool], ...], reader: _RowReader | None,
                 extras: tuple[tuple[str, Any, list[Converter]], ...]) -> None:
        self.sql, self.params, self.slot_positions = sql, params, slot_positions
        self.reader, self.extras = reader, extras


def _concrete_field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    field = model._meta.get_field(name)
    if not isinstance(field, models.Field) or not field.concrete:
        raise ImproperlyConfigured(f"{model._meta.label}.{name} is not a column")
    return field


_MARKER_EPOCH = datetime(1901, 2, 3, 4, 5, 6, tzinfo=UTC)
_INTEGER_KINDS = frozenset({"AutoField", "BigAutoField", "SmallAutoField", "IntegerField", "BigIntegerField",
                            "SmallIntegerField", "PositiveIntegerField", "PositiveBigIntegerField",
                            "PositiveSmallIntegerField"})


def _marker(field: models.Field[Any, Any], index: int, variant: int, connection: Any) -> Any:
    """A value of the field's type that no real call uses, one per slot and variant: integers inside the
    column's range (the ORM drops or empties a comparison with one outside it), text with the characters an
    escaping lookup would change (so a transformed slot is seen and refused)."""
    target = field.target_field if isinstance(field, models.ForeignKey) else field
    kind = target.get_internal_type()
    if kind in ("CharField", "TextField", "EmailField", "SlugField", "URLField"):
        return f"\x1f%_\\payshift-slot-{index}-{variant}\x1f"
    if kind in _INTEGER_KINDS:
        _low, high = connection.ops.integer_field_range(kind)
        top = 1_000_000_007 if high is None else min(high - 1_000, 1_000_000_007)
        return top - 2 * index - variant
    if kind == "DateTimeField":
        marker = _MARKER_EPOCH + timedelta(days=variant, seconds=index, microseconds=1 + index)
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
    with bound_cursor(connection) as cursor:
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
    logging and CaptureQueriesContext see it). No validation is run; where the database cannot return the new
    id, or a receiver listens to the model's save signals, it is a plain save() (which sends them)."""
    using = using or router.db_for_write(model)
    connection = connections[using]
    unknown = set(values) - {f.attname for f in model._meta.concrete_fields}
    if unknown:
        raise TypeError(f"{model.__name__} has no field {sorted(unknown)}")
    if not connection.features.can_return_columns_from_insert or save_signals_connected(model):
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
    with bound_cursor(connection) as cursor:
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


def bound_cursor(connection: Any) -> Any:
    """The cursor of every statement this module runs: Django's own (connection.cursor()), but on psycopg 3
    with server-side binding. Opened as connection.cursor() opens one: the health check when due, then the
    connection. Where the database's OPTIONS set prepare_threshold (Payshift's own settings do), psycopg sends
    a statement as a named prepared statement from that run on, so PostgreSQL parses and plans each of these
    statements once per connection; Django's own queries bind on the client and are never prepared."""
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
        return _BoundDebugCursor(raw, connection) if connection.queries_logged else connection.make_cursor(raw)


class _BoundDebugCursor(CursorDebugWrapper):
    """Django's query-logging cursor (DEBUG, CaptureQueriesContext) for bound_cursor: it logs the statement with
    its values composed as Django does for its own server-side binding. Django asks psycopg for the last query
    instead, which a prepared statement leaves empty."""

    def execute(self, sql: Any, params: Any = None) -> Any:
        with self.debug_sql(_composed(self.db, sql, params), params):
            return CursorWrapper.execute(self, sql, params)


def _composed(connection: Any, sql: Any, params: Any) -> str:
    import psycopg  # noqa: PLC0415  (PostgreSQL only)

    try:
        return str(connection.ops.compose_sql(sql, params))
    except psycopg.Error:  # a value psycopg cannot quote client-side: the statement as sent, without values
        return sql
