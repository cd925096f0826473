"""The service's OpenAPI schema as a client sees it: BentoML's schema completed with every answer the
service gives (401, 405, 409, 413, 415, 429, 503 and their JSON bodies), the API-key scheme, and
optional fields that are omitted rather than null."""

from __future__ import annotations

import copy

PROTECTED = ("/recommend", "/feedback", "/events")
SECURITY_SCHEME = "ApiKey"

ERROR_SCHEMA = {
    "type": "object", "title": "Error", "required": ["error"],
    "properties": {"error": {"type": "string", "title": "Message"}},
}
VALIDATION_SCHEMA = {
    "type": "object", "title": "ValidationError", "required": ["error"],
    "properties": {
        "error": {"type": "string", "title": "Message"},
        "detail": {"type": "array", "title": "Fields at fault",
                   "items": {"type": "object", "properties": {"loc": {"type": "array"}, "msg": {"type": "string"},
                                                              "type": {"type": "string"}}}},
    },
}

ANSWERS = {
    "400": "Invalid request: a field is missing, of the wrong type or out of range (named in the answer)",
    "401": "Missing or wrong x-api-key header",
    "404": "Unknown decision_id",
    "405": "Method not allowed: use POST",
    "409": "Contradicts an outcome already recorded for this offer",
    "413": "Request body over the size limit",
    "415": "Content-Type is not application/json",
    "429": "Too many requests in flight: retry later",
    "503": "Not ready: models and features are loading, or the service cannot log durably",
}
PER_PATH = {
    "/recommend": ("400", "401", "405", "413", "415", "429", "503"),
    "/feedback": ("400", "401", "404", "405", "409", "413", "415", "429", "503"),
    "/events": ("400", "401", "405", "413", "415", "429", "503"),
}


def _json(ref: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def _drop_null_defaults(schema):
    """Optional fields are omitted, never null: a `default: null` on a non-nullable field misleads."""
    if isinstance(schema, dict):
        if schema.get("default", 0) is None:
            del schema["default"]
        for value in schema.values():
            _drop_null_defaults(value)
    elif isinstance(schema, list):
        for value in schema:
            _drop_null_defaults(value)


TIME_WINDOW = ("A time from 2000-01-01 to one day ahead of the server's clock (ISO 8601; without a zone, UTC); "
               "outside it the request is answered 400.")


def _event_variants() -> list[dict]:
    """`/events`: what each event needs besides its name, as alternatives of the body's schema."""
    from nextbest.eventlog import AMOUNT_EVENTS, CONSENT_CHANGES, CUSTOMER_EVENTS, PRODUCT_EVENTS

    needs = [(PRODUCT_EVENTS, ["product_id"]), (AMOUNT_EVENTS, ["amount"]), (CONSENT_CHANGES, ["consent"])]
    rest = [e for e in CUSTOMER_EVENTS if not any(e in events for events, _ in needs)]
    return [{"properties": {"event": {"enum": list(events)}}, "required": ["event", *fields]}
            for events, fields in [*needs, (tuple(rest), [])]]


def _describe_times(schema) -> None:
    if isinstance(schema, dict):
        if schema.get("format") == "date-time":
            schema["description"] = TIME_WINDOW
        for value in schema.values():
            _describe_times(value)
    elif isinstance(schema, list):
        for value in schema:
            _describe_times(value)


def complete(spec: dict, api_key: bool) -> dict:
    """BentoML's schema `spec` with the service's real answers and, when `api_key`, the key scheme."""
    spec = copy.deepcopy(spec)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    schemas["ValidationError"] = VALIDATION_SCHEMA
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(name, None)
    if api_key:
        components["securitySchemes"] = {SECURITY_SCHEME: {"type": "apiKey", "in": "header", "name": "x-api-key"}}
    for path, item in spec.get("paths", {}).items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            if path not in PROTECTED:
                for code in ("400", "404", "500"):
                    responses.pop(code, None)
                continue
            for code in [c for c in responses if c != "200" and c not in PER_PATH[path]]:
                del responses[code]
            for code in PER_PATH[path]:
                if code == "401" and not api_key:
                    continue
                schema = "ValidationError" if code == "400" else "Error"
                responses[code] = {"description": ANSWERS[code], "content": _json(schema)}
            if api_key:
                operation["security"] = [{SECURITY_SCHEME: []}]
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True  # a JSON body, always
                if path == "/events":
                    operation["requestBody"]["content"]["application/json"]["schema"]["oneOf"] = _event_variants()
            _drop_null_defaults(operation.get("requestBody"))
            _describe_times(operation.get("requestBody"))
    for schema in schemas.values():
        _drop_null_defaults(schema)
        _describe_times(schema)
    return spec
