"""Prints every YAML document of the files given, as one JSON object: {file: [documents]}.

Used by the tests that check the Kubernetes manifests (tests/cluster.rs) without a cluster.
"""

import json
import os
import sys

import yaml


def main():
    out = {}
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            out[os.path.basename(path)] = [d for d in yaml.safe_load_all(f) if d is not None]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
