"""Command line for the click store: schema migrations, the ad registry, click URLs, spool replay.

    python -m click_api.cli migrate
    python -m click_api.cli ads create --ad-id ad-1 --advertiser-id adv-1 --url https://example.com/
    python -m click_api.cli ads list
    python -m click_api.cli ads pause --ad-id ad-1
    python -m click_api.cli mint --ad-id ad-1 [--user-id u-1]
    python -m click_api.cli replay-spool
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from click_api import config
from click_api.ads import AD_STATUS_ACTIVE, AD_STATUS_PAUSED, validate_target_url
from click_api.tokens import Impression, mint, new_impression_id


def _store(cfg):
    from click_api.storage import CassandraStore, connect

    cluster = connect(cfg["CASSANDRA_HOSTS"], cfg["CASSANDRA_PORT"], cfg["CASSANDRA_LOCAL_DC"])
    session = cluster.connect()
    return CassandraStore(session, cfg["CASSANDRA_KEYSPACE"], cfg["WINDOWS"].raw_click_ttl, cfg["RAW_CLICK_SHARDS"])


def cmd_migrate(cfg, args) -> int:
    from click_api.storage import DEFAULT_REPLICATION, connect, migrate

    cluster = connect(cfg["CASSANDRA_HOSTS"], cfg["CASSANDRA_PORT"], cfg["CASSANDRA_LOCAL_DC"])
    applied = migrate(
        cluster.connect(), cfg["CASSANDRA_KEYSPACE"], os.environ.get("CASSANDRA_REPLICATION", DEFAULT_REPLICATION)
    )
    print(f"keyspace {cfg['CASSANDRA_KEYSPACE']}: " + (f"applied {applied}" if applied else "schema up to date"))
    cluster.shutdown()
    return 0


def cmd_ads(cfg, args) -> int:
    from click_api.storage import Ad

    store = _store(cfg)
    if args.action == "list":
        for ad in sorted(store.list_ads(), key=lambda a: a.ad_id):
            print(f"{ad.ad_id}\t{ad.advertiser_id}\t{ad.status}\t{ad.target_url}")
        return 0
    if args.action == "create":
        try:
            url = validate_target_url(args.url or "")
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        existing = store.get_ad(args.ad_id)
        if existing is not None and existing.advertiser_id != args.advertiser_id:
            # The rollups count an ad's minute under one advertiser; a click of either would not add up.
            print(f"error: ad {args.ad_id} belongs to advertiser {existing.advertiser_id}; an ad cannot move to "
                  "another advertiser, create a new ad instead", file=sys.stderr)
            return 2
        store.put_ad(Ad(args.ad_id, args.advertiser_id, url, AD_STATUS_ACTIVE))
        print(f"ad {args.ad_id} of advertiser {args.advertiser_id} -> {url}")
        return 0
    ad = store.get_ad(args.ad_id)
    if ad is None:
        print(f"error: ad {args.ad_id!r} does not exist", file=sys.stderr)
        return 1
    status = AD_STATUS_PAUSED if args.action == "pause" else AD_STATUS_ACTIVE
    store.put_ad(Ad(ad.ad_id, ad.advertiser_id, ad.target_url, status))
    print(f"ad {ad.ad_id} is now {status}")
    return 0


def cmd_mint(cfg, args) -> int:
    from click_api.views import click_url

    impression = Impression(new_impression_id(), args.ad_id, int(time.time()), cfg["SIGNING_KEY_ID"], args.user_id)
    print(click_url(cfg["PUBLIC_BASE_URL"], mint(impression, cfg["SIGNING_KEYS"])))
    return 0


def cmd_replay_spool(cfg, args) -> int:
    from click_api.spool import Spool
    from click_api.wiring import Services, replay_once

    spool = Spool(cfg["SPOOL_DIR"])
    count = replay_once(Services(store=_store(cfg), deduper=None, spool=spool, clicks=None), cfg["WINDOWS"])
    print(f"replayed {count} clicks from {cfg['SPOOL_DIR']}; {spool.depth()} still waiting")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m click_api.cli", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="create or upgrade the Cassandra schema")
    ads = sub.add_parser("ads", help="manage the ad registry")
    ads.add_argument("action", choices=["create", "list", "pause", "resume"])
    ads.add_argument("--ad-id")
    ads.add_argument("--advertiser-id")
    ads.add_argument("--url", help="the ad's destination (http or https)")
    mint_cmd = sub.add_parser("mint", help="print a signed click URL for an ad")
    mint_cmd.add_argument("--ad-id", required=True)
    mint_cmd.add_argument("--user-id")
    sub.add_parser("replay-spool", help="store spooled clicks in Cassandra now")
    args = parser.parse_args(argv)
    if args.command == "ads" and args.action != "list" and not args.ad_id:
        parser.error("ads create|pause|resume need --ad-id")
    if args.command == "ads" and args.action == "create" and not args.advertiser_id:
        parser.error("ads create needs --advertiser-id and --url")
    try:
        cfg = config.from_env(os.environ)
    except (RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    handlers = {"migrate": cmd_migrate, "ads": cmd_ads, "mint": cmd_mint, "replay-spool": cmd_replay_spool}
    return handlers[args.command](cfg, args)


if __name__ == "__main__":
    sys.exit(main())
