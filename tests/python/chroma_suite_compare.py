"""Compares two runs of Chroma's shipped tests: against Chroma directly, and through the proxy.

Reads the two JUnit XML reports pytest wrote (`--junitxml`), prints each run's totals and every
test that passed directly but not through the proxy, with its failure message, and writes the
comparison as JSON. Exits 1 when there is such a test, 2 when a report is missing or empty.

Usage: chroma_suite_compare.py --direct DIRECT.xml --proxy PROXY.xml [--json OUT.json]
"""

import argparse
import json
import sys
import xml.etree.ElementTree as ET

# How much of a failure message is printed per test (the whole of it is in the XML and JSON).
MESSAGE_CHARS = 600


def outcomes(path):
    """{test id: (outcome, message)} with outcome one of passed, failed, error, skipped."""
    root = ET.parse(path).getroot()
    result = {}
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[
                    child.tag
                ]
                message = (child.get("message") or "") + "\n" + (child.text or "")
                break
        # A test that failed in its call and errored in its teardown appears twice: the worst wins.
        previous = result.get(test_id)
        if previous is None or previous[0] in ("passed", "skipped"):
            result[test_id] = (outcome, message.strip())
    return result


def totals(run):
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for outcome, _ in run.values():
        counts[outcome] += 1
    return counts


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--direct", required=True)
    parser.add_argument("--proxy", required=True)
    parser.add_argument("--json")
    args = parser.parse_args()
    try:
        direct = outcomes(args.direct)
        proxy = outcomes(args.proxy)
    except (OSError, ET.ParseError) as error:
        print(f"chroma-suite: cannot read a report: {error}", file=sys.stderr)
        return 2
    if not direct:
        print("chroma-suite: the direct run ran no test", file=sys.stderr)
        return 2

    d, p = totals(direct), totals(proxy)
    print(
        f"direct (Chroma):     {d['passed']} passed, {d['failed']} failed, "
        f"{d['error']} errors, {d['skipped']} skipped"
    )
    print(
        f"through the proxy:   {p['passed']} passed, {p['failed']} failed, "
        f"{p['error']} errors, {p['skipped']} skipped"
    )
    passing_direct = sorted(t for t, (o, _) in direct.items() if o == "passed")
    regressions = []
    for test_id in passing_direct:
        outcome, message = proxy.get(test_id, ("missing", "not run through the proxy"))
        if outcome != "passed":
            regressions.append(
                {"test": test_id, "outcome": outcome, "message": message}
            )
    improvements = sorted(
        t
        for t, (o, _) in proxy.items()
        if o == "passed" and direct.get(t, ("missing",))[0] != "passed"
    )
    kept = len(passing_direct) - len(regressions)
    print(
        f"of the {len(passing_direct)} tests that pass directly, {kept} pass through the proxy"
    )
    if improvements:
        print(
            f"{len(improvements)} tests pass through the proxy but not directly (flaky?):"
        )
        for test_id in improvements:
            print(f"  {test_id}")
    if regressions:
        print(
            f"\n{len(regressions)} tests pass directly but not through the proxy:"
        )
        for r in regressions:
            print(f"\n--- {r['test']} ({r['outcome']})")
            print(r["message"][:MESSAGE_CHARS])
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "direct": d,
                    "proxy": p,
                    "passing_directly": len(passing_direct),
                    "passing_through_proxy_of_those": kept,
                    "regressions": regressions,
                    "improvements": improvements,
                },
                out,
                indent=2,
            )
    # The closing line in the plain form CI reads ('N passed, N failed').
    print(f"\nchroma-suite: {kept} passed, {len(regressions)} failed")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
