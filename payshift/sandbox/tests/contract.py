"""Contract checks for the sandbox tests: Paystack answers against its OpenAPI spec, bodies against samples."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml
from openapi_core import OpenAPI
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.templating.paths.finders import APICallPathFinder
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.response.exceptions import InvalidData
from openapi_schema_validator import OAS30Validator

HERE = Path(__file__).parent
SPEC_PATH = HERE / "spec" / "paystack.yaml"
PAYLOADS = HERE / "payloads"
PAYSTACK_SERVER = "https://api.paystack.co"


# Fields of the one transaction object that the spec types twice: VerifyResponse allows what an unpaid or
# plain transaction has (null paid_at, fees, plan, source; {} authorization; names null; metadata "" or any
# JSON), while TransactionFetchResponse and the rows of TransactionListResponse were drawn from paid samples
# with custom fields and require all of it. GET /transaction/{id} and each GET /transaction row are the very
# object verify answers, so these fields take verify's typing there.
FETCH_FIELDS_TYPED_AS_VERIFY = ("metadata", "paid_at", "paidAt", "fees", "log", "authorization", "customer",
                                "plan", "source")


@functools.cache
def paystack_spec() -> dict[str, Any]:
    """The spec with its two known slips corrected, each asserted first so the correction fails loudly
    once the slip is fixed upstream:

    - the shared `Error` schema puts the enum of error kinds on `code`, while its own example, the
      initialize error model and Paystack's answers put it on `type` (`code` names the error, e.g.
      duplicate_reference);
    - TransactionFetchResponse and TransactionListResponseArray type FETCH_FIELDS_TYPED_AS_VERIFY more
      narrowly than VerifyResponse types the same transaction object.
    """
    with SPEC_PATH.open(encoding="utf-8") as handle:
        spec = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schemas = spec["components"]["schemas"]
    error = schemas["Error"]["properties"]
    assert error["code"].get("enum") == ["validation_error", "processor_error", "api_error"], "spec changed"
    assert "enum" not in error["type"], "spec changed: drop the Error correction in contract.paystack_spec"
    verify_data = schemas["VerifyResponse"]["properties"]["data"]["properties"]
    fetch_data = schemas["TransactionFetchResponse"]["properties"]["data"]["properties"]
    assert fetch_data["paid_at"] != verify_data["paid_at"], "spec changed: drop the fetch correction"
    fixed = copy.deepcopy(spec)
    fixed_schemas = fixed["components"]["schemas"]
    fixed_error = fixed_schemas["Error"]["properties"]
    fixed_error["type"]["enum"] = fixed_error["code"].pop("enum")
    for narrow in (
        fixed_schemas["TransactionFetchResponse"]["properties"]["data"]["properties"],
        fixed_schemas["TransactionListResponseArray"]["properties"],
    ):
        for name in FETCH_FIELDS_TYPED_AS_VERIFY:
            narrow[name] = copy.deepcopy(verify_data[name])
    return fixed


@functools.cache
def _openapi() -> OpenAPI:
    return OpenAPI.from_dict(paystack_spec())


@functools.cache
def _error_validator() -> OAS30Validator:
    # The $ref is resolved inside this root document, which carries the spec's components.
    return OAS30Validator({"$ref": "#/components/schemas/Error", "components": paystack_spec()["components"]})


def documented_statuses(method: str, path: str) -> tuple[str, set[str]]:
    """The spec's path template for `path` and the statuses it documents for `method` (not "default")."""
    found = APICallPathFinder(_openapi().spec).find(method.lower(), PAYSTACK_SERVER + path)
    template = str(found.path.parts[-1])
    with (found.operation / "responses").open() as responses:
        statuses = {str(code) for code in responses if str(code) != "default"}
    return template, statuses


class SpecViolation(AssertionError):
    """An answer that breaks the spec, with each failing field's JSON path (openapi-core only lists messages)."""

    def __init__(self, method: str, template: str, status: int, cause: InvalidData) -> None:
        errors = getattr(cause.__cause__, "schema_errors", ())
        details = "; ".join(f"{'.'.join(map(str, error.absolute_path)) or '$'}: {error.message}" for error in errors)
        super().__init__(f"{method} {template} {status} breaks the spec: {details or cause}")


# Every answer validated in this test run: (method, path template, status, "spec" | "Error").
VALIDATED: list[tuple[str, str, int, str]] = []


def validate_paystack(method: str, url: str, status: int, body: bytes, content_type: str) -> tuple[str, str, int, str]:
    """Validate one answer of the sandbox's /paystack API; returns (method, path template, status, how).

    A status the spec documents for the operation is checked by openapi-core against that response's
    schema. Any other status (a refusal the spec leaves under "default", a fault's 429/5xx) must still be
    Paystack's error shape: the spec's `Error` schema, checked with openapi-schema-validator.
    """
    parts = urlsplit(url)
    path = parts.path.removeprefix("/paystack")
    assert content_type.startswith("application/json"), f"{method} {path} answered {content_type}"
    try:
        template, statuses = documented_statuses(method, path)
    except (PathNotFound, OperationNotFound):
        template, statuses = "(not in the spec)", set()
    if str(status) in statuses:
        request = MockRequest(PAYSTACK_SERVER, method.lower(), path, args=dict(parse_qsl(parts.query)))
        response = MockResponse(body, status_code=status, content_type="application/json")
        try:
            _openapi().validate_response(request, response)
        except InvalidData as exc:
            raise SpecViolation(method, template, status, exc) from exc
        VALIDATED.append((method.upper(), template, status, "spec"))
        return VALIDATED[-1]
    payload = json.loads(body)
    assert status >= 400, f"{method} {path}: undocumented success status {status}"
    _error_validator().validate(payload)
    assert payload["status"] is False and {"message", "type", "code", "meta"} <= set(payload), payload
    VALIDATED.append((method.upper(), template, status, "Error"))
    return VALIDATED[-1]


# ---- structural comparison ----------------------------------------------------------------------


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def shape_differences(sample: Any, ours: Any, where: str = "$", *, extra_ok: frozenset[str] = frozenset()) -> list[str]:
    """Where `ours` differs from `sample` in keys, JSON types or nesting (null matches any type: samples
    and answers differ in which optional values are set). Keys we add beyond the sample are differences
    unless named in `extra_ok` (as dotted paths from $)."""
    if sample is None or ours is None:
        return []
    if json_type(sample) != json_type(ours):
        return [f"{where}: {json_type(ours)} where the sample has {json_type(sample)}"]
    if isinstance(sample, dict):
        problems = [f"{where}.{key}: missing" for key in sample if key not in ours]
        problems += [f"{where}.{key}: not in the sample" for key in ours if key not in sample
                     and f"{where}.{key}" not in extra_ok]
        for key in (key for key in sample if key in ours):
            problems += shape_differences(sample[key], ours[key], f"{where}.{key}", extra_ok=extra_ok)
        return problems
    if isinstance(sample, list) and sample and ours:
        return shape_differences(sample[0], ours[0], f"{where}[0]", extra_ok=extra_ok)
    return []


def load_payload(*parts: str) -> Any:
    path = PAYLOADS.joinpath(*parts)
    return json.loads(path.read_text(encoding="utf-8"))
