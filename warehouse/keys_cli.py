"""Advertisers' API keys, through the warehouse service (the only process that may write the file).

    python -m warehouse.keys_cli keys create --advertiser-id adv-1   # prints the key: the only time it is shown
    python -m warehouse.keys_cli keys list [--advertiser-id adv-1]
    python -m warehouse.keys_cli keys revoke --key-id 3f2a...        # its requests answer 401 from then on

Needs WAREHOUSE_URL and WAREHOUSE_ADMIN_TOKEN (``source infra/env.sh`` sets both).
"""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import quote

import requests

from warehouse.cli import render


class ServiceError(RuntimeError):
    """The warehouse service refused the request or could not be reached."""


def call(method: str, url: str, token: str, path: str, body: dict | None = None, params: dict | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = requests.request(method, url + path, json=body, params=params, headers=headers, timeout=30)
    except requests.ConnectionError:
        raise ServiceError(f"cannot reach the warehouse service at {url}: is it running? (make up)") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": response.text.strip()}
    if response.status_code >= 400:
        raise ServiceError(f"the warehouse answered {response.status_code}: {answer.get('error')}")
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m warehouse.keys_cli", description=__doc__.split("\n")[0])
    groups = parser.add_subparsers(dest="group", required=True)
    keys = groups.add_parser("keys", help="create, list or revoke advertisers' API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="issue a key for an advertiser (shown once)")
    create.add_argument("--advertiser-id", required=True)
    listing = actions.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--advertiser-id")
    revoke = actions.add_parser("revoke", help="revoke a key now")
    revoke.add_argument("--key-id", required=True)
    args = parser.parse_args(argv)

    url = os.environ.get("WAREHOUSE_URL", "http://127.0.0.1:18100")
    token = os.environ.get("WAREHOUSE_ADMIN_TOKEN", "")
    try:
        if args.action == "create":
            key = call("POST", url, token, "/internal/api-keys", {"advertiser_id": args.advertiser_id})
            print(f"key_id:        {key['key_id']}\nadvertiser_id: {key['advertiser_id']}\n"
                  f"created_at:    {key['created_at']}\napi_key:       {key['api_key']}")
            print("Store the api_key now: only its hash is kept, it cannot be shown again.", file=sys.stderr)
        elif args.action == "list":
            params = {"advertiser_id": args.advertiser_id} if args.advertiser_id else None
            rows = call("GET", url, token, "/internal/api-keys", params=params)["keys"]
            columns = ["key_id", "advertiser_id", "created_at", "revoked_at"]
            print(render(columns, [[row[c] for c in columns] for row in rows], truncated=False))
        else:
            key = call("POST", url, token, f"/internal/api-keys/{quote(args.key_id, safe='')}/revoke")
            print(f"revoked {key['key_id']} of {key['advertiser_id']} at {key['revoked_at']}")
    except ServiceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
