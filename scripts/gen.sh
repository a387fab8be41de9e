#!/usr/bin/env bash
# Regenerates the generated files: the CRD YAML and the README's reference.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q -p ordinal-operator -- crd > deploy/crds/postgresclusters.ordinal.dev.yaml
cargo run -q -p ordinal-operator -- crd --backup > deploy/crds/postgresbackups.ordinal.dev.yaml
reference=$(cargo run -q -p ordinal-operator -- crd --reference)
python3 - "$reference" <<'PY'
import sys
path = "README.md"
text = open(path).read()
start, end = "<!-- crd-reference:start -->\n", "<!-- crd-reference:end -->"
i, j = text.index(start) + len(start), text.index(end)
open(path, "w").write(text[:i] + sys.argv[1] + "\n" + text[j:])
PY
