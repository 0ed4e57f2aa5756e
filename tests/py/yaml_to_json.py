"""Prints every YAML document of the files named on the command line as one JSON object
{path: [document, ...]}; exits non-zero on the first file that does not parse."""
import json
import sys

import yaml

out = {}
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        out[path] = [d for d in yaml.safe_load_all(f) if d is not None]
json.dump(out, sys.stdout)
