"""Request bodies, bounded: DRF's parsers read the request stream directly, past Django's
``DATA_UPLOAD_MAX_MEMORY_SIZE`` check (only ``request.body`` and Django's own form parsing make
it), so a JSON or form body of any size would be read into memory and parsed. These read at most
that many bytes and answer 413 ``request_too_large`` beyond it (``None`` in the setting: no
limit, as Django); a JSON document nested too deeply for the parser is a 400 ``parse_error``,
never a 500. They are the API's parsers (``REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]``; the token
view, which names its own, gets ``PARSERS`` in ``api/urls.py``)."""

from __future__ import annotations

from typing import IO, Any

from django.conf import settings
from django.http import QueryDict
from rest_framework import parsers
from rest_framework.exceptions import APIException, ParseError
from rest_framework.utils import json


class RequestTooLarge(APIException):
    """413: the request body exceeds ``DATA_UPLOAD_MAX_MEMORY_SIZE``."""

    status_code = 413
    default_detail = "The request body is too large."
    default_code = "request_too_large"


def too_large() -> RequestTooLarge:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return RequestTooLarge(f"The request body is too large: at most {limit:,} bytes.")


def read_limited(stream: IO[bytes] | None, parser_context: dict[str, Any] | None) -> bytes:
    """The body, refused (``RequestTooLarge``) past the limit without reading much more."""
    if stream is None:
        return b""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None:
        return stream.read()
    request = (parser_context or {}).get("request")
    meta = getattr(request, "META", {})
    try:
        declared = int(meta.get("CONTENT_LENGTH") or 0)
    except (TypeError, ValueError):
        declared = 0
    if declared > limit:
        raise too_large()
    body = stream.read(limit + 1)
    if len(body) > limit:
        raise too_large()
    return body


class LimitedJSONParser(parsers.JSONParser):
    def parse(
        self, stream: IO[bytes], media_type: str | None = None,
        parser_context: dict[str, Any] | None = None,
    ) -> Any:  # fmt: skip
        body = read_limited(stream, parser_context)
        encoding = parsers.get_encoding(parser_context or {})
        try:
            text = body.decode(encoding)
            constant = json.strict_constant if self.strict else None  # NaN, Infinity refused
            return json.loads(text, parse_constant=constant)
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
            raise ParseError(f"JSON parse error - {exc}") from exc
        except RecursionError as exc:
            raise ParseError("JSON parse error - the document is nested too deeply") from exc


class LimitedFormParser(parsers.FormParser):
    def parse(
        self, stream: IO[bytes], media_type: str | None = None,
        parser_context: dict[str, Any] | None = None,
    ) -> QueryDict:  # fmt: skip
        body = read_limited(stream, parser_context)
        return QueryDict(body, encoding=parsers.get_encoding(parser_context or {}))


#: JSON, forms and multipart (Django's multipart parser checks the limit itself).
PARSERS = [LimitedJSONParser, LimitedFormParser, parsers.MultiPartParser]
