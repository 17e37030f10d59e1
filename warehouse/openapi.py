"""The OpenAPI 3 document of the metrics API, served at ``GET /v1/openapi.json``."""

from __future__ import annotations


def _parameters(granularities, max_range_days: dict, unique_users_modes) -> list[dict]:
    limits = ", ".join(f"{g}: {d} days" for g, d in max_range_days.items())
    return [
        {"name": "from", "in": "query", "required": True, "schema": {"type": "string"},
         "description": "Start of the range (inclusive): an ISO-8601 date or time. Without an offset it is "
                        "local to `tz`; a local time that occurs twice (DST ends) means its first occurrence. "
                        "Must be the start of a bucket.", "example": "2026-03-08"},
        {"name": "to", "in": "query", "required": True, "schema": {"type": "string"},
         "description": f"End of the range (exclusive), like `from`. Longest range per granularity: {limits}.",
         "example": "2026-03-09"},
        {"name": "granularity", "in": "query", "schema": {"type": "string", "enum": list(granularities),
                                                          "default": "hour"},
         "description": "Bucket size, in local time: a day with a DST change has 23 or 25 hours."},
        {"name": "tz", "in": "query", "schema": {"type": "string", "default": "UTC"},
         "description": "IANA time zone of the buckets and labels.", "example": "Asia/Kathmandu"},
        {"name": "unique_users", "in": "query",
         "schema": {"type": "string", "enum": list(unique_users_modes), "default": "exact"},
         "description": "`exact` counts distinct users over buckets that are not one stored UTC row (slower for "
                        "busy ads); `upper_bound` sums the stored distinct counts instead."},
        {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "csv"]},
         "description": "Response format; without it, `Accept: text/csv` selects CSV."},
    ]


def document(granularities, max_range_days: dict, value_columns, unique_users_modes) -> dict:
    """The OpenAPI 3.0 document, built from the API's own limits and columns."""
    error = {"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

    def errors(**described) -> dict:
        return {code: {**error, "description": text} for code, text in described.items()}

    def series(summary: str, description: str, path_param: dict, per_ad: bool) -> dict:
        columns = (["ad_id"] if per_ad else []) + ["start", *value_columns]
        return {
            "get": {
                "summary": summary,
                "description": description + " Buckets with no clicks are left out. CSV has the columns "
                               f"`{','.join(columns)}`; its completeness is in the X-* headers.",
                "parameters": [path_param, *_parameters(granularities, max_range_days, unique_users_modes)],
                "responses": {
                    "200": {
                        "description": "The series, and how complete the data behind it is.",
                        "headers": {
                            "X-Complete-Through": {"schema": {"type": "string"}, "description": "CSV only: the watermark"},
                            "X-Range-Complete": {"schema": {"type": "string"}, "description": "CSV only: true/false"},
                            "X-Reconciled": {"schema": {"type": "string"}, "description": "CSV only: true/false"},
                            "X-Unique-Users-Exact": {"schema": {"type": "string"}, "description": "CSV only"},
                        },
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Series"}},
                            "text/csv": {"schema": {"type": "string"},
                                         "example": ",".join(columns) + "\n"
                                         + ("ad-1," if per_ad else "") + "2026-03-08T00:00:00-05:00,12,1,0,0,11\n"},
                        },
                    },
                    **errors(**{"400": "Bad input: the message says what to fix.",
                                "401": "Missing, malformed, unknown or revoked API key.",
                                "404": "No such ad or advertiser for this key (another advertiser's included)."}),
                },
            }
        }

    return {
        "openapi": "3.0.3",
        "info": {
            "title": "clickagg metrics API",
            "version": "1",
            "description": "Clicks per ad and per advertiser, computed from the UTC minute rollups for any IANA "
                           "time zone. Every answer says up to when the data is complete and whether its hours "
                           "have been reconciled against the raw dumps.",
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/v1/ads/{ad_id}/series": series(
                "One ad's series", "The ad must belong to the key's advertiser.",
                {"name": "ad_id", "in": "path", "required": True, "schema": {"type": "string"}}, per_ad=False),
            "/v1/advertisers/{advertiser_id}/series": series(
                "An advertiser's series, per ad", "The key's advertiser's ads, one row per bucket and ad with clicks, "
                "ordered by bucket, then ad.",
                {"name": "advertiser_id", "in": "path", "required": True, "schema": {"type": "string"}}, per_ad=True),
            "/v1/openapi.json": {
                "get": {"summary": "This document", "security": [],
                        "responses": {"200": {"description": "OpenAPI 3 JSON",
                                              "content": {"application/json": {"schema": {"type": "object"}}}}}}
            },
        },
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer",
                           "description": "Authorization: Bearer ck_<key id>_<secret> (or the header X-API-Key). "
                                          "Keys are issued per advertiser and shown once."},
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error", "status"],
                          "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
                "Completeness": {
                    "type": "object",
                    "properties": {
                        "complete_through": {"type": "string", "nullable": True,
                                             "description": "Every minute before this UTC time is rolled up."},
                        "range_complete": {"type": "boolean", "description": "`to` <= complete_through"},
                        "reconciled": {"type": "boolean",
                                       "description": "Every UTC hour the range touches was reconciled (ok or repaired)."},
                        "hours": {"type": "integer"},
                        "hours_reconciled": {"type": "integer"},
                    },
                },
                "Series": {
                    "type": "object",
                    "properties": {
                        "ad_id": {"type": "string", "description": "ad endpoint only"},
                        "advertiser_id": {"type": "string"},
                        "granularity": {"type": "string", "enum": list(granularities)},
                        "time_zone": {"type": "string"},
                        "from": {"type": "string", "description": "local ISO-8601 with offset"},
                        "to": {"type": "string"},
                        "buckets": {"type": "integer", "description": "buckets in [from, to), with or without clicks"},
                        "sources": {"type": "array", "items": {"type": "string"},
                                    "description": "the rollup tables that answered"},
                        "unique_users_exact": {"type": "boolean"},
                        "unique_users_note": {"type": "string", "nullable": True},
                        "completeness": {"$ref": "#/components/schemas/Completeness"},
                        "columns": {"type": "array", "items": {"type": "string"},
                                    "example": ["start", *value_columns]},
                        "row_count": {"type": "integer"},
                        "rows": {"type": "array", "items": {"type": "array", "items": {}},
                                 "description": "one array per bucket with clicks, in `columns` order; `start` is "
                                                "the bucket's local start with its UTC offset"},
                    },
                },
            },
        },
    }
