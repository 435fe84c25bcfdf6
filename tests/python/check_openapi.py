"""Checks pysandbox's OpenAPI document with third-party validators.

    check_openapi.py spec DOC             validate DOC with openapi-spec-validator
    check_openapi.py instances DOC NAME   validate each JSON line of stdin against the
                                          schema components/schemas/NAME of DOC

Exits 1 and prints every failure when something does not validate.
"""
import json
import sys

import jsonschema
from openapi_spec_validator import validate


def main():
    command, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        doc = json.load(f)
    if command == "spec":
        validate(doc)
        return 0
    # The whole document is the root resource, so "#/components/..." refs resolve.
    schema = dict(doc, **{"$ref": "#/components/schemas/" + sys.argv[3]})
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    failed = 0
    for n, line in enumerate(sys.stdin):
        for error in validator.iter_errors(json.loads(line)):
            failed += 1
            where = "/".join(str(p) for p in error.absolute_path)
            print(f"instance {n} at /{where}: {error.message}")
    return 1 if failed else 0


sys.exit(main())
