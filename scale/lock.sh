#!/usr/bin/env bash
# Writes scale/ci-lock.txt: scale/requirements.txt resolved by pip to every package, each pinned,
# for this machine's Python and platform, less triton (torch.compile's code generator for GPUs,
# 1 GB installed and unused on a CPU). PyPI's torch for x86-64 Linux links the CUDA libraries even
# to run on a CPU, so those stay. Run after changing requirements.txt; .ci/run installs the lock.
set -euo pipefail
cd "$(dirname "$0")"
report=$(mktemp)
trap 'rm -f "$report"' EXIT
python3 -m pip install -q --dry-run --ignore-installed --report "$report" -r requirements.txt
{
    echo "# Written by scale/lock.sh from requirements.txt ($(python3 -c 'import platform; print(f"CPython {platform.python_version()}, {platform.system()} {platform.machine()}")')); do not edit."
    python3 - "$report" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
pins = sorted((i["metadata"]["name"], i["metadata"]["version"]) for i in report["install"])
for name, version in sorted(pins, key=lambda p: p[0].lower()):
    if name.lower() != "triton":
        print(f"{name}=={version}")
PY
} >ci-lock.txt
echo "scale/ci-lock.txt: $(grep -vc '^#' ci-lock.txt) packages"
