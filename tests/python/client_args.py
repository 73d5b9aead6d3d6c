"""What every client script starts with: a command line that takes `--url` (a Chroma server or
the proxy) and the official client for that URL."""

import argparse
from urllib.parse import urlparse

import chromadb


def url_parser(*required):
    """An argument parser with `--url` and each name of `required` as required options."""
    parser = argparse.ArgumentParser()
    for name in ("--url", *required):
        parser.add_argument(name, required=True)
    return parser


def client_for(url):
    """The official HTTP client for `url`."""
    parsed = urlparse(url)
    return chromadb.HttpClient(host=parsed.hostname, port=parsed.port)
