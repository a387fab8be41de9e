#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, for the tests and
# the quick start: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kube-router (NetworkPolicy) and CoreDNS built from their upstream
# Go modules (e2e/kube/go.mod pins the versions), Debian's containerd, runc
# and CNI plugins, a local-volume provisioner, and images built from
# Debian's packages (scripts/images.sh). Run as root.
#
#   scripts/cluster.sh up       build what is missing, start what is not running,
#                               wait for the node to be Ready; prints the KUBECONFIG
#   scripts/cluster.sh down     stop what `up` started (by PID), remove its state
#   scripts/cluster.sh status   what runs, and the node
#   scripts/cluster.sh env      `export KUBECONFIG=…` and the built kubectl on PATH:
#                               eval "$(scripts/cluster.sh env)"
#   scripts/cluster.sh build    only build the binaries
#   scripts/cluster.sh logs [COMPONENT]   the end of the components' logs
#
# Addresses come from the benchmarking range 198.18.0.0/15, never a private
# range: the node and the API server are 198.18.255.1 on a bridge with no
# ports, pods get 198.18.0.0/20, Services 198.19.0.0/20. Forwarded traffic
# to anywhere else is dropped, so nothing a pod sends leaves the machine.
#
# Environment:
#   ORDINAL_CACHE_DIR   built binaries, images, downloaded packages, kept
#                       across runs [~/.cache/ordinal]
#   ORDINAL_CLUSTER_DIR the cluster's state (etcd, kubelet, containerd,
#                       volumes, certificates), removed by `down`
#                       [/var/lib/ordinal-cluster]
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$REPO/scripts/lib/common.sh"

STATE=${ORDINAL_CLUSTER_DIR:-/var/lib/ordinal-cluster}
RUN=/run/ordinal-cluster
LOGS=$STATE/logs
PKI=$STATE/pki
KUBECONFIG_ADMIN=$STATE/admin.kubeconfig

NODE_NAME=ordinal-node
NODE_IP=198.18.255.1
NODE_BRIDGE=ordinal0
POD_CIDR=198.18.0.0/20
POD_GATEWAY=198.18.0.1
POD_BRIDGE=ordinal-cni
SERVICE_CIDR=198.19.0.0/20
API_SERVICE_IP=198.19.0.1
CLUSTER_RANGE=198.18.0.0/15
API_PORT=6443
ETCD_CLIENT=127.0.0.1:12379
ETCD_PEER=127.0.0.1:12380
CONTAINERD_SOCK=$RUN/containerd/containerd.sock
FORWARD_CHAIN=ORDINAL-FORWARD

# The order `up` starts them in; `down` stops them in reverse.
COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kube-router coredns provisioner)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'cluster.sh: %s\n' "$*" >&2; exit 1; }

require_root() {
  [ "$(id -u)" -eq 0 ] || die "run as root: the cluster needs network namespaces, mounts and cgroups"
}

# --- packages and binaries -------------------------------------------------

install_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v ipset >/dev/null || missing+=(ipset)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}

build() {
  "$REPO/scripts/build-kube.sh"
}

# --- processes -------------------------------------------------------------

# A process `up` started: its PID and start time (so a reused PID is never
# taken for it) in $RUN/NAME.pid.
pid_of() {
  local file=$RUN/$1.pid pid start
  [ -f "$file" ] || return 1
  read -r pid start <"$file" || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  [ "$(proc_start_time "$pid")" = "$start" ] || return 1
  echo "$pid"
}

proc_start_time() {
  # Field 22 of /proc/PID/stat, after the command name (which may hold spaces).
  sed -E 's/^.*\) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'
}

running() { pid_of "$1" >/dev/null; }

start() {
  local name=$1
  shift
  if running "$name"; then
    return 0
  fi
  log "starting $name"
  # setsid: a Ctrl-C in the shell that ran `up` does not reach the cluster.
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  local pid=$!
  printf '%s %s\n' "$pid" "$(proc_start_time "$pid")" >"$RUN/$name.pid"
}

stop() {
  local name=$1 pid
  pid=$(pid_of "$name") || { rm -f "$RUN/$name.pid"; return 0; }
  log "stopping $name (pid $pid)"
  stop_pid "$pid"
  rm -f "$RUN/$name.pid"
}

wait_for() {
  local what=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge "$deadline" ]; then
      log "$what: not within ${seconds}s; the end of the logs:"
      show_logs >&2
      die "$what"
    fi
    sleep 0.5
  done
}

kubectl_admin() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

api_ready() {
  curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://$NODE_IP:$API_PORT/readyz" >/dev/null
}

node_ready() {
  [ "$(kubectl_admin get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

dns_ready() { curl -sf --max-time 2 http://127.0.0.1:18181/ready >/dev/null; }

# --- network ---------------------------------------------------------------

setup_network() {
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    log "node address $NODE_IP on bridge $NODE_BRIDGE"
    # A bridge with no ports holds the address: these kernels have no dummy driver.
    ip link add "$NODE_BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
  # Forwarded traffic stays in the cluster's range: nothing leaves the machine.
  if ! iptables -w -L "$FORWARD_CHAIN" -n >/dev/null 2>&1; then
    iptables -w -N "$FORWARD_CHAIN"
  fi
  iptables -w -F "$FORWARD_CHAIN"
  iptables -w -A "$FORWARD_CHAIN" ! -d "$CLUSTER_RANGE" -j DROP
  iptables -w -A "$FORWARD_CHAIN" ! -s "$CLUSTER_RANGE" -j DROP
  iptables -w -C FORWARD -j "$FORWARD_CHAIN" 2>/dev/null || iptables -w -I FORWARD 1 -j "$FORWARD_CHAIN"
}

# kube-router's NetworkPolicy chains and ipsets. (Its own --cleanup-config
# leaves the KUBE-ROUTER-* chains behind, then crashes on the service proxy
# it does not run here.)
kube_router_cleanup() {
  local hook rule chain set chains
  # Every step tolerates finding nothing (set -e, pipefail): `down` must
  # always get to the end.
  for hook in INPUT FORWARD OUTPUT; do
    { iptables -w -S "$hook" 2>/dev/null || true; } | { grep -- '-j KUBE-ROUTER-' || true; } |
      sed 's/^-A /-D /' |
      while read -r rule; do
        eval "iptables -w $rule" 2>/dev/null || true
      done
  done
  chains=$({ iptables -w -S 2>/dev/null || true; } | awk '$1 == "-N" && $2 ~ /^KUBE-(ROUTER|POD-FW|NWPLCY)-/ {print $2}')
  for chain in $chains; do iptables -w -F "$chain" 2>/dev/null || true; done
  for chain in $chains; do iptables -w -X "$chain" 2>/dev/null || true; done
  if command -v ipset >/dev/null; then
    for set in $({ ipset list -n 2>/dev/null || true; } | { grep -E '^(KUBE-(SRC|DST)-|kube-router-)' || true; }); do
      ipset destroy "$set" 2>/dev/null || true
    done
  fi
}

teardown_network() {
  kube_router_cleanup
  if [ -x "$BIN/ordinal-kube" ] && [ -f "$STATE/kube-proxy.yaml" ]; then
    "$BIN/ordinal-kube" kube-proxy --config "$STATE/kube-proxy.yaml" --cleanup >>"$LOGS/kube-proxy.log" 2>&1 || true
  fi
  # The kubelet's own chains (kube-proxy's are gone with --cleanup).
  local ipt table chain hook
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for hook in INPUT OUTPUT; do
      while "$ipt" -w -D "$hook" -j KUBE-FIREWALL 2>/dev/null; do :; done
    done
    for table in filter nat mangle; do
      for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
        "$ipt" -w -t "$table" -F "$chain" 2>/dev/null || true
        "$ipt" -w -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
  while iptables -w -D FORWARD -j "$FORWARD_CHAIN" 2>/dev/null; do :; done
  iptables -w -F "$FORWARD_CHAIN" 2>/dev/null || true
  iptables -w -X "$FORWARD_CHAIN" 2>/dev/null || true
  for link in "$POD_BRIDGE" "$NODE_BRIDGE"; do
    ip link del "$link" 2>/dev/null || true
  done
}

# --- certificates and configuration -----------------------------------------

# cert NAME SUBJECT [SAN]: a key and a certificate signed by the cluster CA.
cert() {
  local name=$1 subject=$2 san=${3:-}
  [ -f "$PKI/$name.crt" ] && return 0
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr" 2>/dev/null
  local ext=$PKI/$name.ext
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 365 -sha256 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}

kubeconfig() {
  local name=$1 out=$STATE/$1.kubeconfig
  [ -f "$out" ] && return 0
  cat >"$out" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: ordinal
    cluster:
      server: https://$NODE_IP:$API_PORT
      certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
  - name: $name
    user:
      client-certificate-data: $(base64 -w0 "$PKI/$name.crt")
      client-key-data: $(base64 -w0 "$PKI/$name.key")
contexts:
  - name: ordinal
    context:
      cluster: ordinal
      user: $name
current-context: ordinal
EOF
  chmod 600 "$out"
}

write_pki() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  if [ ! -f "$PKI/ca.crt" ]; then
    log "certificates"
    openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=ordinal-cluster-ca" -days 365 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$PKI/ca.crt" 2>/dev/null
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  cert apiserver "/CN=kube-apiserver" \
    "IP:$NODE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  cert kubelet-serving "/CN=$NODE_NAME" "IP:$NODE_IP,DNS:$NODE_NAME"
  cert admin "/O=system:masters/CN=ordinal-admin"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  cert kube-proxy "/CN=system:kube-proxy"
  cert coredns "/CN=ordinal-cluster:coredns"
  cert provisioner "/CN=ordinal-cluster:provisioner"
  cert kube-router "/CN=ordinal-cluster:kube-router"
  for name in admin controller-manager scheduler kubelet kube-proxy coredns provisioner kube-router; do
    kubeconfig "$name"
  done
}

write_config() {
  mkdir -p "$STATE/cni/net.d" "$STATE/cni/ipam" "$STATE/volumes" "$STATE/kubelet" "$STATE/etcd"
  cat >"$STATE/containerd.toml" <<EOF
version = 2
root = "$STATE/containerd"
state = "$RUN/containerd"
# Plugins that need kernel features or devices these machines lack.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$CONTAINERD_SOCK"

[ttrpc]
  address = "$RUN/containerd/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The sandbox has no CAP_SYS_RESOURCE: a negative oom_score_adj (which the
  # kubelet asks for pause containers and Guaranteed pods) is refused, so
  # it is raised to containerd's own.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF
  cat >"$STATE/cni/net.d/10-ordinal.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "ordinal",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$POD_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{ "subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
  # Pods resolve through CoreDNS only: the machine's own resolvers are not
  # the cluster's business, and nothing outside may be reached anyway.
  printf 'nameserver %s\n' "$NODE_IP" >"$STATE/resolv.conf"
  cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: $PKI/ca.crt }
authorization:
  mode: Webhook
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
resolvConf: $STATE/resolv.conf
failSwapOn: false
# No CAP_SYS_RESOURCE here: the kubelet keeps the default score.
oomScoreAdj: 0
# The disk is shared with everything else on the machine: never evict or
# collect images because other work filled it (the images are imported,
# there is no registry to pull them back from).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
serializeImagePulls: false
maxPods: 400
# Node status every 4 s, as kubeadm clusters do with the lease.
nodeStatusUpdateFrequency: 4s
EOF
  # Written only when it changes: kube-proxy exits when its configuration
  # file is rewritten, and `up` on a running cluster must not stop it.
  cat >"$STATE/kube-proxy.yaml.new" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $STATE/kube-proxy.kubeconfig
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
nodePortAddresses: [$NODE_IP/32]
oomScoreAdj: 0
conntrack:
  # Leave the machine's conntrack table size alone.
  maxPerCore: 0
EOF
  if cmp -s "$STATE/kube-proxy.yaml.new" "$STATE/kube-proxy.yaml"; then
    rm -f "$STATE/kube-proxy.yaml.new"
  else
    mv "$STATE/kube-proxy.yaml.new" "$STATE/kube-proxy.yaml"
  fi
  cat >"$STATE/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $STATE/coredns.kubeconfig ordinal
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    cache 30
    loadbalance
}
EOF
}

# --- the components ---------------------------------------------------------

start_containerd() {
  mkdir -p "$RUN/containerd"
  start containerd containerd --config "$STATE/containerd.toml"
  wait_for "containerd answers on $CONTAINERD_SOCK" 60 ctr --address "$CONTAINERD_SOCK" version
}

start_etcd() {
  start etcd "$BIN/ordinal-kube" etcd \
    --name ordinal --data-dir "$STATE/etcd" \
    --listen-client-urls "http://$ETCD_CLIENT" --advertise-client-urls "http://$ETCD_CLIENT" \
    --listen-peer-urls "http://$ETCD_PEER" --initial-advertise-peer-urls "http://$ETCD_PEER" \
    --initial-cluster "ordinal=http://$ETCD_PEER" \
    --listen-metrics-urls "" --log-level warn \
    --quota-backend-bytes 2147483648
  wait_for "etcd is healthy" 60 curl -sf --max-time 2 "http://$ETCD_CLIENT/health"
}

start_apiserver() {
  start kube-apiserver "$BIN/ordinal-kube" kube-apiserver \
    --advertise-address "$NODE_IP" --bind-address "$NODE_IP" --secure-port "$API_PORT" \
    --etcd-servers "http://$ETCD_CLIENT" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --client-ca-file "$PKI/ca.crt" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --allow-privileged=true \
    --profiling=false \
    --v=1
  wait_for "the API server is ready" 120 api_ready
}

start_control_plane() {
  start kube-controller-manager "$BIN/ordinal-kube" kube-controller-manager \
    --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 \
    --leader-elect=false \
    --use-service-account-credentials \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --cluster-cidr "$POD_CIDR" \
    --profiling=false \
    --v=1
  start kube-scheduler "$BIN/ordinal-kube" kube-scheduler \
    --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 \
    --leader-elect=false \
    --profiling=false \
    --v=1
}

start_node() {
  start kubelet "$BIN/ordinal-kube" kubelet \
    --config "$STATE/kubelet.yaml" \
    --kubeconfig "$STATE/kubelet.kubeconfig" \
    --root-dir "$STATE/kubelet" \
    --cert-dir "$STATE/kubelet/pki" \
    --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP" \
    --containerd "$CONTAINERD_SOCK" \
    --v=1
  start kube-proxy "$BIN/ordinal-kube" kube-proxy --config "$STATE/kube-proxy.yaml" --v=1
  start coredns "$BIN/ordinal-kube" coredns -conf "$STATE/Corefile"
  start provisioner "$BIN/ordinal-kube" provisioner \
    --kubeconfig "$STATE/provisioner.kubeconfig" --root "$STATE/volumes" --name "$PROVISIONER"
}

# NetworkPolicy: kube-router's firewall alone. Started once the Node
# exists: kube-router exits when it cannot find its node.
start_network_policy() {
  start kube-router "$BIN/kube-router" \
    --kubeconfig "$STATE/kube-router.kubeconfig" \
    --hostname-override "$NODE_NAME" \
    --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --health-port 20244 --metrics-port 0 --v=1
}

network_policy_ready() { running kube-router && curl -sf --max-time 2 http://127.0.0.1:20244/healthz >/dev/null; }

apply_addons() {
  # RBAC for the add-ons, the default StorageClass, and the API server's
  # own access to the kubelet (logs, exec, port-forward).
  kubectl_admin apply --server-side --field-manager ordinal-cluster -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: ordinal-cluster:coredns
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: ordinal-cluster:coredns
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ordinal-cluster:coredns }
subjects:
  - { apiGroup: rbac.authorization.k8s.io, kind: User, name: "ordinal-cluster:coredns" }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: ordinal-cluster:provisioner
rules:
  - apiGroups: [""]
    resources: [persistentvolumes]
    verbs: [get, list, watch, create, delete, patch]
  - apiGroups: [""]
    resources: [persistentvolumeclaims]
    verbs: [get, list, watch, update]
  - apiGroups: [""]
    resources: [persistentvolumeclaims/status]
    verbs: [patch]
  - apiGroups: [storage.k8s.io]
    resources: [storageclasses]
    verbs: [get, list, watch]
  - apiGroups: [""]
    resources: [nodes]
    verbs: [get, list, watch]
  - apiGroups: ["", events.k8s.io]
    resources: [events]
    verbs: [create, update, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: ordinal-cluster:provisioner
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ordinal-cluster:provisioner }
subjects:
  - { apiGroup: rbac.authorization.k8s.io, kind: User, name: "ordinal-cluster:provisioner" }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: ordinal-cluster:kube-router
rules:
  - apiGroups: [""]
    resources: [namespaces, pods, services, nodes, endpoints]
    verbs: [get, list, watch]
  - apiGroups: [networking.k8s.io]
    resources: [networkpolicies]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [get, list, watch]
  - apiGroups: ["", events.k8s.io]
    resources: [events]
    verbs: [create, update, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: ordinal-cluster:kube-router
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ordinal-cluster:kube-router }
subjects:
  - { apiGroup: rbac.authorization.k8s.io, kind: User, name: "ordinal-cluster:kube-router" }
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: $PROVISIONER
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
# The provisioner is also the volumes' resizer (e2e/kube/resizer.go).
allowVolumeExpansion: true
EOF
}

# --- commands --------------------------------------------------------------

cmd_up() {
  require_root
  install_packages
  build
  mkdir -p "$STATE" "$RUN" "$LOGS"
  chmod 700 "$STATE"
  write_pki
  write_config
  setup_network
  start_containerd
  "$REPO/scripts/images.sh" import pause
  start_etcd
  start_apiserver
  apply_addons
  start_control_plane
  start_node
  wait_for "node $NODE_NAME is Ready" 180 node_ready
  start_network_policy
  wait_for "kube-router enforces NetworkPolicy" 60 network_policy_ready
  wait_for "CoreDNS is ready" 60 dns_ready
  wait_for "the default service account exists" 60 kubectl_admin -n default get serviceaccount default
  log "cluster up: node $NODE_NAME Ready; to use it: eval \"\$(scripts/cluster.sh env)\""
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
}

cmd_down() {
  require_root
  if [ ! -d "$STATE" ] && [ ! -d "$RUN" ]; then
    log "no cluster state in $STATE: nothing to stop"
    teardown_network
    return 0
  fi
  mkdir -p "$LOGS"
  # Pods first, while the kubelet runs, so that it tears down their
  # sandboxes (network namespaces, IP addresses, mounts) the normal way.
  if running kube-apiserver && running kubelet; then
    stop kube-controller-manager
    stop kube-scheduler
    log "deleting every pod"
    kubectl_admin delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 60))
    while [ $SECONDS -lt $deadline ]; do
      [ "$(ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null | wc -l)" -eq 0 ] && break
      sleep 1
    done
  fi
  for ((i = ${#COMPONENTS[@]} - 1; i >= 1; i--)); do
    stop "${COMPONENTS[$i]}"
  done
  remove_leftover_containers
  stop containerd
  kill_leftover_shims
  teardown_network
  unmount_under "$STATE"
  unmount_under "$RUN"
  rm -rf "$STATE" "$RUN"
  log "cluster down"
}

# Containers the kubelet did not get to remove: their tasks killed, their
# sandboxes' network namespaces removed.
remove_leftover_containers() {
  running containerd || return 0
  local ctr=(ctr --address "$CONTAINERD_SOCK" -n k8s.io) id netns
  for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
    "${ctr[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  sleep 1
  for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do
    netns=$("${ctr[@]}" containers info "$id" 2>/dev/null |
      grep -o '"path": *"/var/run/netns/cni-[^"]*"' | head -1 | sed 's/.*"\(\/var[^"]*\)"/\1/') || true
    "${ctr[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true
    "${ctr[@]}" containers delete "$id" >/dev/null 2>&1 || true
    if [ -n "$netns" ] && [ -e "$netns" ]; then
      umount "$netns" 2>/dev/null || true
      rm -f "$netns"
    fi
  done
}

# Shims of this cluster's containerd outlive it: found by the socket
# address they were started with, which only this cluster uses.
kill_leftover_shims() {
  local pid
  for pid in $(pgrep -f -- "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
}

unmount_under() {
  local dir=$1
  [ -d "$dir" ] || return 0
  # Deepest first; lazily, in case a process still holds one.
  awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/mounts | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
}

cmd_status() {
  local name pid all=0
  for name in "${COMPONENTS[@]}"; do
    if pid=$(pid_of "$name"); then
      printf '%-24s running (pid %s)\n' "$name" "$pid"
    else
      printf '%-24s not running\n' "$name"
      all=1
    fi
  done
  if [ -f "$KUBECONFIG_ADMIN" ] && api_ready; then
    kubectl_admin get nodes -o wide
  fi
  echo "KUBECONFIG=$KUBECONFIG_ADMIN"
  return $all
}

show_logs() {
  local name
  for name in "${@:-${COMPONENTS[@]}}"; do
    [ -f "$LOGS/$name.log" ] || continue
    echo "--- $name ($LOGS/$name.log)"
    tail -n 40 "$LOGS/$name.log"
  done
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env)
    echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
    case ":$PATH:" in *":$BIN:"*) ;; *) echo "export PATH=$BIN:\$PATH" ;; esac
    ;;
  build) require_root; install_packages; build ;;
  logs) shift; show_logs "$@" ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
