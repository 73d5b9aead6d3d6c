#!/usr/bin/env python3
"""Prints every PromQL expression of a Grafana dashboard (panel targets and annotations) as a
Prometheus recording-rules file, so `promtool check rules` parses them all. The dashboard's
variables are replaced by plain values ($__rate_interval by 5m, $instance by .*).

    python3 deploy/grafana/dashboard_rules.py deploy/grafana/chroma-shift.json > rules.yml
    promtool check rules rules.yml
"""
import json
import sys

VARIABLES = {"$__rate_interval": "5m", "$instance": ".*"}


def main(path):
    with open(path) as f:
        dashboard = json.load(f)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    print("groups:\n  - name: dashboard\n    rules:")
    for i, expr in enumerate(exprs):
        for name, value in VARIABLES.items():
            expr = expr.replace(name, value)
        print(f"      - record: dashboard:expr{i}\n        expr: {json.dumps(expr)}")


if __name__ == "__main__":
    main(sys.argv[1])
