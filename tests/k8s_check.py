"""Validate a Kubernetes manifest offline against the Kubernetes API's own models.

Usage: python k8s_check.py MANIFEST.yaml

The official Python client's generated models (kubernetes.client.V1Pod, V1Job, ...) carry every
field of the API schema with its type. Every key of the manifest must be a field of the model at
its place, every value of the field's type; then the client deserializes it, which enforces the
required fields. Prints "ok KIND" or the first problem, and exits 1 on a problem.
"""
import re
import sys

import yaml
import kubernetes.client as k

MODELS = {("v1", "Pod"): "V1Pod", ("batch/v1", "Job"): "V1Job"}


def check(value, typ, where):
    if typ.lower().startswith("list["):
        inner = typ[5:-1]
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list")
        for i, v in enumerate(value):
            check(v, inner, f"{where}[{i}]")
        return
    m = re.fullmatch(r"dict[\[(]str, (.*)[\])]", typ, re.IGNORECASE)
    if m:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a map")
        for key, v in value.items():
            check(v, m.group(1), f"{where}.{key}")
        return
    scalars = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if typ in scalars:
        if typ == "int" and isinstance(value, bool) or not isinstance(value, scalars[typ]):
            raise ValueError(f"{where}: expected {typ}, got {value!r}")
        return
    model = getattr(k, typ)
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a {typ} object")
    fields = {json: py for py, json in model.attribute_map.items()}
    for key, v in value.items():
        if key not in fields:
            raise ValueError(f"{where}: `{key}` is not a field of {typ}")
        check(v, model.openapi_types[fields[key]], f"{where}.{key}")


def main():
    doc = yaml.safe_load(open(sys.argv[1]))
    name = MODELS.get((doc.get("apiVersion"), doc.get("kind")))
    if name is None:
        print(f"unknown kind {doc.get('apiVersion')}/{doc.get('kind')}")
        return 1
    try:
        check(doc, name, doc["kind"])
        k.ApiClient()._ApiClient__deserialize(doc, name)
    except (ValueError, TypeError) as e:
        print(f"invalid: {e}")
        return 1
    print(f"ok {doc['kind']}")
    return 0


sys.exit(main())
