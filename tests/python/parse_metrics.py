"""Reads a Prometheus text exposition on stdin and prints its samples as JSON.

Parsed with the official Prometheus client's parser, so that what /metrics serves
is checked by a third party, not by our own reading of the format.
"""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = []
for family in text_string_to_metric_families(sys.stdin.read()):
    samples = [[s.name, s.labels, s.value] for s in family.samples]
    families.append({"name": family.name, "type": family.type, "samples": samples})
json.dump(families, sys.stdout)
