#!/usr/bin/env python3
"""A live Prometheus against the running system (scripts/check-ops.sh).

  check-prometheus.py targets URL              every scrape target is up
  check-prometheus.py dashboard URL FILE       every query of the Grafana dashboard FILE
                                               returns data, or is expected empty (listed
                                               below with the reason)
  check-prometheus.py alert URL NAME SECONDS   the alert NAME is pending or firing within
                                               SECONDS
"""
import json
import sys
import time
import urllib.parse
import urllib.request

# Queries that have nothing to show after a walk and a fuzzing run, and why. A query listed
# here that does return data is reported, not failed.
EXPECTED_EMPTY = {
    "events_failed_total": "no handler failed: the walk's events are all applicable",
    "events_retried_total": "no handler failed, so nothing was retried",
    "events_parked_total": "nothing was parked",
    "events_unroutable_total": "every event had a queue bound (the roles declare them at start)",
    "live_streams_open": "no browser stream was opened (schemathesis leaves the streams out)",
    "live_events_sent_total": "no browser stream was opened",
    "live_resumes_total": "no browser stream was opened",
    "live_resyncs_total": "no browser stream was opened",
    "live_reauths_total": "no browser stream was opened",
    "live_slow_disconnects_total": "no browser stream was opened",
    "live_streams_refused_total": "no browser stream was opened",
}


def get(base, path, **params):
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise SystemExit(f"{url}: {body}")
    return body["data"]


def targets(base):
    active = get(base, "/api/v1/targets")["activeTargets"]
    down = [t for t in active if t["health"] != "up"]
    for t in active:
        print(f"  target {t['labels'].get('job')} {t['scrapeUrl']}: {t['health']}")
    if not active or down:
        raise SystemExit(f"{len(down)} of {len(active)} targets are not up")


def dashboard(base, path):
    with open(path) as f:
        board = json.load(f)
    unexpected = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            query = expr.replace("$service", ".*").replace("$__rate_interval", "1m")
            result = get(base, "/api/v1/query", query=query)["result"]
            metric = next((m for m in EXPECTED_EMPTY if m in expr), None)
            if result:
                sample = ", ".join(
                    f"{dict(r['metric'])}={r['value'][1]}" for r in result[:2]
                )
                more = f" (+{len(result) - 2} more)" if len(result) > 2 else ""
                print(f"  [{panel['title']}] {expr}\n    {len(result)} series: {sample}{more}")
            elif metric:
                print(f"  [{panel['title']}] {expr}\n    empty, as expected: {EXPECTED_EMPTY[metric]}")
            else:
                print(f"  [{panel['title']}] {expr}\n    EMPTY")
                unexpected.append(expr)
    if unexpected:
        raise SystemExit(f"{len(unexpected)} dashboard queries returned nothing: {unexpected}")


def alert(base, name, seconds):
    deadline = time.time() + float(seconds)
    while time.time() < deadline:
        for a in get(base, "/api/v1/alerts")["alerts"]:
            if a["labels"].get("alertname") == name:
                print(f"  {name} is {a['state']}: {a['labels']}")
                return
        time.sleep(2)
    raise SystemExit(f"{name} did not become pending within {seconds}s")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"targets": targets, "dashboard": dashboard, "alert": alert}[command](*args)
