#!/usr/bin/env bash
# Builds the test cluster's binaries from e2e/kube (upstream Go modules at
# the versions its go.mod pins) into the cache: ordinal-kube (every
# Kubernetes component, etcd, CoreDNS and the volume provisioner in one
# binary, with a `kubectl` link) and pause. Skips the build when the
# sources have not changed since the last one.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$REPO/scripts/lib/common.sh"

command -v go >/dev/null || {
  echo "build-kube.sh: the Go toolchain is needed (go 1.24 or newer on PATH)" >&2
  exit 1
}

SRC=$REPO/e2e/kube

# kube-router, the cluster's NetworkPolicy enforcer (its firewall only: the
# bridge CNI and kube-proxy do the rest). Its own module at a pinned
# version: v2.1.0 is the newest the Go module proxy here serves (it has
# published advisories; it runs only inside this test cluster).
KUBE_ROUTER_VERSION=v2.1.0
if [ "$(cat "$BIN/.kube-router" 2>/dev/null)" != "$KUBE_ROUTER_VERSION $(go version)" ] || [ ! -x "$BIN/kube-router" ]; then
  echo "==> building kube-router $KUBE_ROUTER_VERSION (a few minutes cold)" >&2
  mkdir -p "$BIN"
  GOBIN=$BIN GOFLAGS=-mod=mod CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
  echo "$KUBE_ROUTER_VERSION $(go version)" >"$BIN/.kube-router"
fi

stamp=$(content_hash "$SRC/go.mod" "$SRC/go.sum" "$SRC"/*.go "$SRC"/pause/*.go "$0" "$(go version)")
if [ -x "$BIN/ordinal-kube" ] && [ -x "$BIN/pause" ] && [ "$(cat "$BIN/.stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi

mkdir -p "$BIN"
cd "$SRC"
kube_version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
etcd_version=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
minor=$(echo "$kube_version" | cut -d. -f2)
# What `make` in the Kubernetes repository stamps into its binaries, so that
# the node, the API server and kubectl report their real version.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
ldflags+=" -X go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version"

echo "==> building Kubernetes $kube_version, etcd $etcd_version, CoreDNS $(go list -m -f '{{.Version}}' github.com/coredns/coredns) (a cold build takes about 10 minutes on 2 cores)" >&2
start=$SECONDS
go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$BIN/ordinal-kube.new" .
CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" -o "$BIN/pause.new" ./pause
mv "$BIN/ordinal-kube.new" "$BIN/ordinal-kube"
mv "$BIN/pause.new" "$BIN/pause"
ln -sf ordinal-kube "$BIN/kubectl"
echo "$stamp" >"$BIN/.stamp"
echo "==> built in $((SECONDS - start))s: $BIN/ordinal-kube, $BIN/kubectl, $BIN/pause" >&2
