# A real Kubernetes node for the end-to-end suite, sourced by `scripts/e2e --node` (bash, not run on
# its own). Debian's containerd and runc, the CNI bridge plugin, and kubelet, kube-scheduler and
# kube-proxy built by e2e/build from the same k8s.io/kubernetes module as the API server.
#
# The node's network stays on this machine:
#   - a bridge of the suite's own (NODE_BRIDGE) holding NODE_ADDR/24; pods get addresses on it
#     from the CNI bridge plugin (host-local IPAM, no masquerade) and a route to the Service range
#     through NODE_ADDR, and no default route: a pod has no way off the machine;
#   - the API server and the registries listen on NODE_ADDR (reached by the host's own processes
#     and by pods alike), Services are ClusterIPs in SERVICE_CIDR that kube-proxy (iptables mode)
#     rewrites to pod addresses or NODE_ADDR; SERVICE_CIDR is routed onto the bridge, so a
#     ClusterIP kube-proxy has not (yet) rewritten never leaves by the default route;
#   - a FORWARD rule drops anything from the bridge to another interface (the bridge plugin turns
#     on IP forwarding for its gateway; the original setting is restored on exit).
# node_down removes everything node_up made: pods (through the kubelet, so their network
# namespaces and mounts go the normal way), then the processes by PID, left-over shims, mounts
# under the state directory, network namespaces, the kubepods cgroups, kube-proxy's rules, the
# FORWARD rule, the route and the bridge.
#
# Needs from scripts/e2e: STATE, PKI, KUBE_BIN, KUBECONFIG, API_PORT, PY, REGISTRY,
# PRIVATE_REGISTRY and the functions say, die, run, poll, pid_of, free_port, leaf, stop_one.

NODE_BRIDGE=tagpin-e2e0
NODE_ADDR=10.244.77.1
POD_CIDR=10.244.77.0/24
SERVICE_CIDR=10.96.0.0/16
NODE_NAME=localhost
NODE_FORWARD_RULE=(FORWARD -i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" -m comment --comment tagpin-e2e -j DROP)

# node_preflight: root, the Debian packages (installed when missing), and nothing left over from
# another run (two node suites cannot share the bridge, the kubelet's cgroups or port ranges).
node_preflight() {
  [ "$(id -u)" -eq 0 ] || die "the node suite (--node) runs containerd and the kubelet: it needs root"
  local missing=()
  command -v containerd >/dev/null 2>&1 || missing+=(containerd)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  command -v conntrack >/dev/null 2>&1 || missing+=(conntrack)
  # The test images are Debian's static busybox (a dynamic one would need its libraries inside).
  { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || missing+=(busybox-static)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]} (Debian packages) for the node"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    die "the bridge $NODE_BRIDGE exists: another node suite is running, or one was killed before it cleaned up (remove it: ip link del $NODE_BRIDGE)"
  fi
  local left
  left="$(ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null | head -1 || true)"
  [ -z "$left" ] || die "$left exists: a kubelet is running here or was killed before it cleaned up; stop it (and rmdir its kubepods cgroups) first"
}

# node_network_up: the bridge, the Service route and the FORWARD fence.
node_network_up() {
  cat /proc/sys/net/ipv4/ip_forward >"$STATE/ip_forward.before"
  ip link add "$NODE_BRIDGE" type bridge
  echo "$NODE_BRIDGE" >"$STATE/bridge.made"
  ip addr add "$NODE_ADDR/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  ip route add "$SERVICE_CIDR" dev "$NODE_BRIDGE"
  iptables -I "${NODE_FORWARD_RULE[@]}"
  ls /var/run/netns 2>/dev/null | sort >"$STATE/netns.before" || true
  node_kube_rules >"$STATE/kube-rules.before"
  # The kubelet links container logs into /var/log/containers (a fixed path) and containerd makes
  # /var/run/netns: node_down removes what was made here.
  [ -e /var/log/containers ] || touch "$STATE/var-log-containers.made"
  [ -e /var/run/netns ] || touch "$STATE/var-run-netns.made"
  say "node network: bridge $NODE_BRIDGE $NODE_ADDR/24 (pods $POD_CIDR, no uplink), Services $SERVICE_CIDR"
}

# node_kube_rules: every KUBE-* chain and every rule that jumps to one, as "CMD TABLE RULE" lines
# (the kubelet's and kube-proxy's, in both address families).
node_kube_rules() {
  local cmd table
  for cmd in iptables ip6tables; do
    for table in filter nat mangle; do
      "$cmd" -t "$table" -S 2>/dev/null | grep -E '^-N KUBE-|-j KUBE-' | sed "s|^|$cmd $table |" || true
    done
  done | sort
}

# node_busybox_image REPO:TAG COMMAND: a one-layer image of Debian's static busybox running
# COMMAND, pushed to the plain registry (the sandbox image; nothing outside the machine is pulled).
node_busybox_image() {
  "$PY" "$ROOT/e2e/tests/harness.py" push-busybox "$REGISTRY" "$1" "$2" >/dev/null
}

# node_up: containerd, kubelet, kube-scheduler, kube-proxy; returns once the node is Ready.
node_up() {
  local dir="$STATE/node"
  mkdir -p "$dir/certs.d" "$dir/cni/net.d" "$dir/cni/ipam" "$dir/kubelet" "$dir/pod-logs" "$dir/manifests"
  # The sandbox ("pause") image: PID 1 of every pod, sleeping until it is told to stop.
  local pause="$REGISTRY/e2e/pause:1"
  node_busybox_image e2e/pause:1 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'

  # Registries: the plain one over http, the private one over https with the suite's CA.
  mkdir -p "$dir/certs.d/$REGISTRY" "$dir/certs.d/$PRIVATE_REGISTRY"
  cat >"$dir/certs.d/$REGISTRY/hosts.toml" <<EOF
server = "http://$REGISTRY"
[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF
  cat >"$dir/certs.d/$PRIVATE_REGISTRY/hosts.toml" <<EOF
server = "https://$PRIVATE_REGISTRY"
[host."https://$PRIVATE_REGISTRY"]
  capabilities = ["pull", "resolve"]
  ca = "$PKI/registry-ca.crt"
EOF
  # No uplink: routes only to the Service range (through the node); no default route.
  cat >"$dir/cni/net.d/10-tagpin-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "tagpin-e2e",
  "plugins": [
    {"type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "isDefaultGateway": false,
     "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_ADDR"}]],
              "routes": [{"dst": "$SERVICE_CIDR"}], "dataDir": "$dir/cni/ipam"}}
  ]
}
EOF
  # restrict_oom_score_adj: the VM grants no CAP_SYS_RESOURCE, and without it runc cannot start
  # the sandbox ("can't get final child's PID from pipe: EOF").
  cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[debug]
  address = "$dir/containerd-debug.sock"
  level = "info"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$dir/certs.d"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
EOF
  run containerd containerd --config "$dir/containerd.toml"
  poll containerd 60 ctr --address "$dir/containerd.sock" version
  say "containerd $(containerd --version | awk '{print $3}') ready ($dir/containerd.sock)"

  # The kubelet's identity (the Node authorizer knows it by O=system:nodes, CN=system:node:NAME).
  leaf node kube-ca "/O=system:nodes/CN=system:node:$NODE_NAME" "$CLIENT_EXT"
  cat >"$dir/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: e2e
    cluster: {server: "https://$LISTEN:$API_PORT", certificate-authority: "$PKI/kube-ca.crt"}
users:
  - name: node
    user: {client-certificate: "$PKI/node.crt", client-key: "$PKI/node.key"}
contexts:
  - name: e2e
    context: {cluster: e2e, user: node}
current-context: e2e
EOF
  local kubelet_port healthz_port
  kubelet_port="$(free_port)"
  healthz_port="$(free_port)"
  # resolvConf "": pods get no name server (every address they need is an IP on this machine).
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
address: 127.0.0.1
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
podLogsDir: $dir/pod-logs
staticPodPath: $dir/manifests
volumePluginDir: $dir/volume-plugins
containerRuntimeEndpoint: unix://$dir/containerd.sock
imageServiceEndpoint: unix://$dir/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/kube-ca.crt}
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: ""
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
registerNode: true
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 5s
EOF
  # --hostname-override: the API server reaches the kubelet (logs, exec) as "localhost"
  # (--kubelet-preferred-address-types Hostname,...). --node-ip: the bridge address, never the
  # VM's own (the kubelet refuses a loopback one).
  run kubelet "$KUBE_BIN/kubelet" --config "$dir/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_ADDR" --root-dir "$dir/kubelet" \
    --cert-dir "$dir/kubelet/pki" --v 1
  run kube-scheduler "$KUBE_BIN/kube-scheduler" --kubeconfig "$KUBECONFIG" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port "$(free_port)" \
    --authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG"
  local proxy_healthz
  proxy_healthz="$(free_port)"
  run kube-proxy "$KUBE_BIN/kube-proxy" --kubeconfig "$KUBECONFIG" --hostname-override "$NODE_NAME" \
    --proxy-mode iptables --cluster-cidr "$POD_CIDR" --conntrack-max-per-core 0 \
    --healthz-bind-address "127.0.0.1:$proxy_healthz" --metrics-bind-address "127.0.0.1:$(free_port)"
  poll kubelet 180 node_ready
  poll kube-proxy 60 curl -fsS "http://127.0.0.1:$proxy_healthz/healthz"
  say "node $NODE_NAME Ready ($(kubectl get node "$NODE_NAME" -o jsonpath='{.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion}')); kube-scheduler and kube-proxy (iptables) running"
  NODE_CONTAINERD_SOCK="$dir/containerd.sock"
}

node_ready() {
  [ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# node_down: everything node_up and node_network_up made, in an order that lets each part clean up
# after itself first. Safe to call when only some of it was made.
node_down() {
  local dir="$STATE/node" sock="$STATE/node/containerd.sock"
  # 1. No new pods: stop the controllers and the scheduler, then delete every pod through the API
  #    while the kubelet still runs, and give it up to 60 s to stop their sandboxes (CNI DEL,
  #    unmounting volumes).
  stop_one kube-controller-manager
  stop_one kube-scheduler
  if [ -e "$STATE/pids/kubelet.pid" ] && kill -0 "$(pid_of kubelet)" 2>/dev/null &&
    kubectl get --raw /readyz >/dev/null 2>&1; then
    kubectl delete pods --all-namespaces --all --force --grace-period=0 --wait=false >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 60))
    while [ "$SECONDS" -lt "$deadline" ]; do
      [ -z "$(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  stop_one kubelet
  stop_one kube-proxy
  # 2. Whatever is still running in containerd is killed and removed through containerd.
  if [ -S "$sock" ]; then
    local t
    for t in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks kill -s KILL "$t" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for t in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks rm -f "$t" >/dev/null 2>&1 || true
    done
  fi
  stop_one containerd
  # 3. Shims of this containerd (they outlive it by design), then mounts under the state folder.
  local pids
  pids="$(pgrep -f "containerd-shim-runc-v2 .*-address $dir/" || true)"
  [ -z "$pids" ] || { kill -KILL $pids 2>/dev/null || true; sleep 0.5; }
  local m
  awk -v d="$STATE/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  # What follows is shared with the machine: only a run that made the bridge (so passed the
  # preflight: no other node suite was running) removes anything there.
  [ -e "$STATE/bridge.made" ] || return 0
  # 4. Network namespaces made while the node ran (the CRI names them cni-UUID).
  if [ -e "$STATE/netns.before" ]; then
    local ns
    for ns in $(ls /var/run/netns 2>/dev/null | sort | comm -13 "$STATE/netns.before" -); do
      case "$ns" in cni-*) umount -l "/var/run/netns/$ns" 2>/dev/null; rm -f "/var/run/netns/$ns" ;; esac
    done
  fi
  # 5. The kubelet's cgroups, deepest first (empty once their processes are gone).
  local c
  for c in /sys/fs/cgroup/*/kubepods; do
    [ -d "$c" ] || continue
    find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  # 6. kube-proxy's rules, the fence, the route, the bridge, IP forwarding as it was.
  if [ -x "$KUBE_BIN/kube-proxy" ]; then
    "$KUBE_BIN/kube-proxy" --cleanup --proxy-mode iptables >/dev/null 2>&1 || true
  fi
  # What kube-proxy's cleanup leaves (the kubelet's KUBE-FIREWALL and canary chains): the jumps,
  # then the chains, that were not there before the node started.
  if [ -e "$STATE/kube-rules.before" ]; then
    local cmd table rest made
    made="$(node_kube_rules | comm -13 "$STATE/kube-rules.before" -)"
    while read -r cmd table rest; do
      case "$rest" in -A\ *) eval "$cmd -t $table -D ${rest#-A }" 2>/dev/null || true ;; esac
    done <<<"$made"
    while read -r cmd table rest; do
      case "$rest" in -N\ *) "$cmd" -t "$table" -F "${rest#-N }" 2>/dev/null || true ;; esac
    done <<<"$made"
    while read -r cmd table rest; do
      case "$rest" in -N\ *) "$cmd" -t "$table" -X "${rest#-N }" 2>/dev/null || true ;; esac
    done <<<"$made"
  fi
  local link
  for link in /var/log/containers/*.log; do
    [ -L "$link" ] || continue
    case "$(readlink "$link")" in "$STATE"/*) rm -f "$link" ;; esac
  done
  [ ! -e "$STATE/var-log-containers.made" ] || rmdir /var/log/containers 2>/dev/null || true
  [ ! -e "$STATE/var-run-netns.made" ] || rmdir /var/run/netns 2>/dev/null || true
  while iptables -D "${NODE_FORWARD_RULE[@]}" 2>/dev/null; do :; done
  ip route del "$SERVICE_CIDR" dev "$NODE_BRIDGE" 2>/dev/null || true
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  if [ -s "$STATE/ip_forward.before" ]; then
    cat "$STATE/ip_forward.before" >/proc/sys/net/ipv4/ip_forward || true
  fi
}
