#!/usr/bin/env python3
"""Which SMART columns of a Backblaze "last day" snapshot tell the sampling date rather than the drive's health.

A snapshot takes each failed drive on its failure day (any day of the year) and each healthy drive on Dec 31, so a
column that grows with time (or follows the season) separates the two classes for a reason that is not failure.
For each smart_N_raw column this prints:
  rho_poh  Spearman correlation with power-on hours (smart_9) among healthy drives: the column grows with age, so a
           failed drive sampled months earlier has less of it for that reason alone;
  rho_gap  Spearman correlation with the gap (Dec 31 - failure day) among failed drives: the column follows the
           sampling date directly (season, fleet-wide events);
  and the same two for the column's rate per power-on hour (what an age-normalised feature would see), with the
  rate's AUC between baseline-clean failed and baseline-clean healthy drives (the only drives where a new feature
  can beat the rule "any of 5/187/188/197/198 raw > 0").
A column is treated as leaking when |rho| >= 0.2 on either snapshot. Standard library only:
  python3 deploy/analytics/snapshot_date_leak.py ../shared/fixtures/backblaze-drive-stats/ST8*-last-day-2019.csv.gz
"""
import csv
import datetime
import gzip
import sys

BASELINE = ["smart_5_raw", "smart_187_raw", "smart_188_raw", "smart_197_raw", "smart_198_raw"]


def rank(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = rank(a), rank(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    c = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return c / (va * vb) ** 0.5 if va > 0 and vb > 0 else 0.0


def auc(pos, neg):
    if not pos or not neg:
        return float("nan")
    r = rank(pos + neg)
    n1 = len(pos)
    return (sum(r[:n1]) + n1 - n1 * (n1 + 1) / 2) / (n1 * len(neg))


for path in sys.argv[1:]:
    rows = list(csv.DictReader(gzip.open(path, "rt")))
    cols = [c for c in rows[0] if c.startswith("smart_") and c.endswith("_raw")]
    rows = [r for r in rows if all(r[c] for c in cols)]
    end = max(datetime.date.fromisoformat(r["date"]) for r in rows)
    healthy = [r for r in rows if r["failure"] == "0"]
    failed = [r for r in rows if r["failure"] == "1"]
    gap = [(end - datetime.date.fromisoformat(r["date"])).days for r in failed]
    poh = [float(r["smart_9_raw"]) for r in healthy]

    def clean(r):
        return not any(float(r[a]) > 0 for a in BASELINE)

    def rate(r, c):
        return float(r[c]) / max(1.0, float(r["smart_9_raw"]))

    print(f"{path}: {len(failed)} failed, {len(healthy)} healthy; median gap {sorted(gap)[len(gap) // 2]} days")
    print(f"{'column':14} {'rho_poh':>8} {'rho_gap':>8} {'rate rho_poh':>13} {'rate rho_gap':>13} {'rate AUC clean':>15}")
    for c in cols:
        raw_h = [float(r[c]) for r in healthy]
        raw_f = [float(r[c]) for r in failed]
        rate_h = [rate(r, c) for r in healthy]
        rate_f = [rate(r, c) for r in failed]
        a = auc([rate(r, c) for r in failed if clean(r)], [rate(r, c) for r in healthy if clean(r)])
        print(
            f"{c:14} {spearman(raw_h, poh):+8.2f} {spearman(raw_f, gap):+8.2f} "
            f"{spearman(rate_h, poh):+13.2f} {spearman(rate_f, gap):+13.2f} {a:15.2f}"
        )
