"""Validates custom resources against the openAPIV3Schema of their CRD.

usage: validate_crs.py CRD_DIR FILE...   (exit 1 on any invalid or unknown resource)
"""
import glob
import os
import sys

import jsonschema
import yaml


def schemas(crd_dir):
    out = {}
    for path in sorted(glob.glob(os.path.join(crd_dir, "*.yaml"))):
        with open(path) as f:
            crd = yaml.safe_load(f)
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return out


def main():
    known = schemas(sys.argv[1])
    failed = 0
    for path in sys.argv[2:]:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for i, doc in enumerate(docs, 1):
            key = (doc.get("apiVersion"), doc.get("kind"))
            schema = known.get(key)
            where = f"{path}: document {i} ({key[1]} {doc.get('metadata', {}).get('name')})"
            if schema is None:
                print(f"error: {where}: no CRD for {key[0]} {key[1]}")
                failed += 1
                continue
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
            for e in errors:
                field = ".".join(str(p) for p in e.absolute_path) or "(document)"
                print(f"error: {where}: {field}: {e.message}")
            failed += bool(errors)
            if not errors:
                print(f"ok: {where}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
