#!/usr/bin/env bash
# Optional: tests/deploy.rs installs what it needs itself (paysaga_testkit::tools: this pinned
# kubernetes-validate in a venv under $TMPDIR/paysaga-tools, systemd-analyze by apt-get as root).
# This script installs the same tools system-wide, e.g. to run them by hand. The pin below is
# the one the tests read. Installs only those missing (idempotent; run as root):
#   systemd-analyze      (Debian package systemd)         checks deploy/systemd/*.service
#   kubernetes-validate  (PyPI, pinned; schemas included) checks deploy/kubernetes/*.yaml offline
set -euo pipefail

KUBERNETES_VALIDATE_VERSION=1.37.0

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "== installing systemd (systemd-analyze)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi

installed=$(python3 -m pip show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p' || true)
if [ "$installed" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    echo "== installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION (found: ${installed:-none})"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    fi
    # PIP_BREAK_SYSTEM_PACKAGES: a Debian system python3 refuses pip installs without it.
    PIP_ROOT_USER_ACTION=ignore PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet \
        --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

systemd-analyze --version | head -n 1
python3 -m kubernetes_validate --version
