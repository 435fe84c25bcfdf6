"""The service the tests call: PYSANDBOX_URL and PYSANDBOX_TOKEN (tests/tests/client.rs
in the repository starts one and sets them)."""
import os

import pytest

import pysandbox


@pytest.fixture
def url():
    return os.environ["PYSANDBOX_URL"]


@pytest.fixture
def client(url):
    return pysandbox.Client(url, os.environ["PYSANDBOX_TOKEN"], timeout=120)
