#!/usr/bin/env bash
# WAN lab: network namespaces joined through wanlab-link, the userspace link emulator.
#
#   client ns (PREFIX-c)          router ns (PREFIX-r)                 server ns (PREFIX-sK)
#   eth0 10.77.1.2 --veth-- to-c 10.77.1.1                     to-sK 10.77.(1+K).1 --veth-- eth0 10.77.(1+K).2
#                                 |  policy routing               ^
#                                 v                               |
#                            pKc (TUN) ==> wanlab-link K ==> pKs (TUN)     (and back the other way)
#
# Traffic from the client to server K is routed into TUN pKc, crosses emulator K (path K) and is
# written into pKs, from where the router forwards it to server K; replies take the mirror route.
# Server namespaces reach each other directly through the router (a LAN, no emulation).
# See README.md beside this file. Run as root. Only 10.77.0.0/16 inside our own namespaces.
set -euo pipefail

PREFIX=${WANLAB_PREFIX:-wl}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUN_DIR=${WANLAB_RUN_DIR:-/tmp/wanlab-$PREFIX}
NS_C=$PREFIX-c
NS_R=$PREFIX-r
CLIENT_IP=10.77.1.2

usage() {
    cat <<'EOF'
usage: lab.sh COMMAND [ARGS]

  up [--path SPEC]... [--seed N]   build the namespaces, one path (emulator + server host) per
                                   --path (default: one unimpaired path)
  set K SPEC [--seed N]            restart path K's emulator with a new link spec
  down                             stop the emulators, delete the namespaces
  status                           namespaces, emulator counters (SIGUSR1) and their logs
  exec NODE CMD...                 run CMD in NODE: c (client), r (router), s1, s2, ...
  run SCENARIO [OPTIONS]           bring the lab up with scenario A..I (or ceiling), measure
                                   direct TCP (cubic, bbr), kcptun and wanmux side by side with
                                   wanmux-bench, tear down (scenarios.py run; --help for options)
  sweep [OPTIONS]                  goodput against loss rate on one path, for plot.py
                                   (scenarios.py sweep; --help for options)
  matrix [OPTIONS]                 the path matrix (17 paths: rates, RTTs, loss, jitter,
                                   reordering, asymmetric lines), direct bbr, kcptun and wanmux
                                   QUIC on each (scenarios.py matrix; --help for options)
  cluster G|H [OPTIONS]            issue 20's cluster scenarios: one wanmux node per path
                                   (5 or 3), one connection striped over all of them, pinned,
                                   and direct TCP; a node killed mid-run in G, rr beside bulk
                                   in H (cluster.py; --help for options)
  front K IP PORT | front K off    make server K's address a second address of server IP: its
                                   TCP and UDP PORT forward (DNAT, masquerade) to IP:PORT, so a
                                   daemon on IP is reached over path K too (a multihomed host,
                                   scenario E's both-path rows); "off" removes it
  paths SCENARIO                   print the scenario's link specs, one path per line
  iperf SCENARIO [--time S] [--cc "cubic bbr"] [--repeat N] [--reverse]
                                   direct TCP only, with iperf3 (the first runner)
  validate [--quick]               ceiling, RTT, loss and rate-cap checks (see README.md)

SPEC is wanlab-link's link spec, e.g. delay=50ms,loss=1%,rate=200mbit,queue=50ms
(up.KEY / down.KEY set one direction). Addresses: client 10.77.1.2, server K 10.77.(1+K).2.
Environment: WANLAB_PREFIX (namespace prefix, default wl), WANLAB_LINK_BIN (prebuilt
wanlab-link), CARGO_TARGET_DIR (where to build it), WANLAB_TCP_RMEM (the hosts'
net.ipv4.tcp_rmem, default "4096 131072 67108864": Linux's stock initial receive buffer).
EOF
}

die() {
    echo "lab.sh: $*" >&2
    exit 1
}

server_ns() { echo "$PREFIX-s$1"; }
server_ip() { echo "10.77.$((1 + $1)).2"; }

# Number of paths of the running lab (server namespaces present).
paths_up() {
    local k=0
    while ip netns list | grep -qw "$(server_ns $((k + 1)))"; do
        k=$((k + 1))
    done
    echo "$k"
}

link_bin() {
    if [[ -n ${WANLAB_LINK_BIN:-} ]]; then
        echo "$WANLAB_LINK_BIN"
        return
    fi
    local target=${CARGO_TARGET_DIR:-$ROOT/target}
    (cd "$ROOT" && cargo build --quiet --release -p wanmux-wanlab >&2) || die "cargo build failed"
    echo "$target/release/wanlab-link"
}

ns_sysctl() {
    local ns=$1
    shift
    ip netns exec "$ns" sysctl -qw "$@"
}

# A host namespace: loopback, no IPv6 chatter, TCP buffers large enough for the lab's BDPs, and no
# cached per-destination TCP metrics (each run starts from scratch).
make_host() {
    local ns=$1
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ns_sysctl "$ns" net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ns_sysctl "$ns" net.ipv4.tcp_rmem="${WANLAB_TCP_RMEM:-4096 131072 67108864}" \
        net.ipv4.tcp_wmem="4096 16384 67108864" net.ipv4.tcp_no_metrics_save=1
}

start_link() {
    local k=$1 spec=$2 seed=$3 bin pid
    bin=$(link_bin)
    [[ -x $bin ]] || die "no wanlab-link at $bin"
    # The emulator plays network hardware, which does not wait for CPU behind the endpoints:
    # give it a higher priority than the programs under test (WANLAB_NICE, default -10).
    ip netns exec "$NS_R" nice -n "${WANLAB_NICE:--10}" "$bin" --client-tun "p${k}c" --server-tun "p${k}s" \
        --link "$spec" --seed "$seed" >"$RUN_DIR/link$k.log" 2>&1 &
    pid=$!
    echo "$pid" >"$RUN_DIR/link$k.pid"
    echo "$spec" >"$RUN_DIR/link$k.spec"
    for _ in $(seq 50); do
        grep -qs "running" "$RUN_DIR/link$k.log" && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    cat "$RUN_DIR/link$k.log" >&2
    die "wanlab-link for path $k did not start"
}

stop_link() {
    local k=$1 pidfile="$RUN_DIR/link$1.pid" pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$pidfile"
}

cmd_up() {
    local specs=() seed=1
    while (($#)); do
        case $1 in
        --path) specs+=("$2") && shift 2 ;;
        --seed) seed=$2 && shift 2 ;;
        *) die "up: unknown argument $1" ;;
        esac
    done
    ((${#specs[@]})) || specs=("")
    ((${#specs[@]} <= 8)) || die "at most 8 paths"
    ip netns list | grep -qw "$NS_R" && die "lab $PREFIX is already up (lab.sh down first)"
    [[ -c /dev/net/tun ]] || die "no /dev/net/tun"
    mkdir -p "$RUN_DIR"
    rm -f "$RUN_DIR"/link*.log "$RUN_DIR"/link*.spec
    link_bin >/dev/null

    # Router: forwards, no reverse-path filter (packets come back in on the TUNs), no redirects.
    ip netns add "$NS_R"
    ip -n "$NS_R" link set lo up
    ns_sysctl "$NS_R" net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ns_sysctl "$NS_R" net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
        net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.all.send_redirects=0 \
        net.ipv4.conf.default.send_redirects=0

    make_host "$NS_C"
    ip link add eth0 netns "$NS_C" type veth peer name to-c netns "$NS_R"
    ip -n "$NS_C" addr add "$CLIENT_IP/24" dev eth0
    ip -n "$NS_C" link set eth0 up
    ip -n "$NS_C" route add default via 10.77.1.1
    ip -n "$NS_R" addr add 10.77.1.1/24 dev to-c
    ip -n "$NS_R" link set to-c up
    ip -n "$NS_R" rule add iif to-c lookup 100 pref 100

    local k
    for k in $(seq "${#specs[@]}"); do
        local ns net
        ns=$(server_ns "$k")
        net=10.77.$((1 + k))
        make_host "$ns"
        ip link add eth0 netns "$ns" type veth peer name "to-s$k" netns "$NS_R"
        ip -n "$ns" addr add "$net.2/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" route add default via "$net.1"
        ip -n "$NS_R" addr add "$net.1/24" dev "to-s$k"
        ip -n "$NS_R" link set "to-s$k" up

        # Persistent TUNs, so the emulator can be restarted (lab.sh set) under the same routes.
        ip -n "$NS_R" tuntap add dev "p${k}c" mode tun
        ip -n "$NS_R" tuntap add dev "p${k}s" mode tun
        start_link "$k" "${specs[$((k - 1))]}" "$seed"
        # The TUN's transmit queue is the emulator's input ring: make it deep enough that bursts
        # (TSO-sized, or while the emulator thread waits for a core) are not dropped before the
        # emulator sees them. In steady state below the ceiling it stays empty.
        ip -n "$NS_R" link set "p${k}c" txqueuelen "${WANLAB_TXQLEN:-10000}" up
        ip -n "$NS_R" link set "p${k}s" txqueuelen "${WANLAB_TXQLEN:-10000}" up
        # Client -> server K enters path K's client-side TUN; server K -> client enters its
        # server-side TUN. What the emulator writes back into a TUN is routed by the main table.
        ip -n "$NS_R" route add "$net.0/24" dev "p${k}c" table 100
        ip -n "$NS_R" rule add iif "to-s$k" lookup $((100 + k)) pref $((100 + k))
        ip -n "$NS_R" route add 10.77.1.0/24 dev "p${k}s" table $((100 + k))
    done
    echo "lab $PREFIX up: client $CLIENT_IP in $NS_C, ${#specs[@]} path(s):"
    for k in $(seq "${#specs[@]}"); do
        echo "  path $k: server $(server_ip "$k") in $(server_ns "$k"), link '${specs[$((k - 1))]}'"
    done
}

cmd_set() {
    (($# >= 2)) || die "usage: lab.sh set K SPEC [--seed N]"
    local k=$1 spec=$2 seed=1
    shift 2
    [[ ${1:-} == --seed ]] && seed=$2
    ip netns list | grep -qw "$(server_ns "$k")" || die "no path $k"
    stop_link "$k"
    start_link "$k" "$spec" "$seed"
    echo "path $k: link '$spec'"
}

cmd_down() {
    local k
    for f in "$RUN_DIR"/link*.pid; do
        [[ -e $f ]] || continue
        k=${f##*/link}
        stop_link "${k%.pid}"
    done
    for f in "$RUN_DIR"/iperf3-*.pid; do
        [[ -e $f ]] || continue
        kill -TERM "$(cat "$f")" 2>/dev/null || true
        rm -f "$f"
    done
    local ns pids
    for ns in $(ip netns list | awk '{print $1}'); do
        case $ns in
        "$NS_C" | "$NS_R" | "$PREFIX"-s[0-9])
            # Whatever still runs inside the lab (a tunnel or bench server left behind by a
            # runner that was killed) would keep the namespace's devices alive: end it first.
            pids=$(ip netns pids "$ns" 2>/dev/null || true)
            if [[ -n $pids ]]; then
                # shellcheck disable=SC2086 # one pid per word
                kill -TERM $pids 2>/dev/null || true
                sleep 0.5
                # shellcheck disable=SC2086
                kill -KILL $pids 2>/dev/null || true
            fi
            ip netns del "$ns"
            ;;
        esac
    done
    echo "lab $PREFIX down"
}

cmd_status() {
    ip netns list | grep -E "^$PREFIX-(c|r|s[0-9])\b" || {
        echo "lab $PREFIX is down"
        return 0
    }
    local f pid k
    for f in "$RUN_DIR"/link*.pid; do
        [[ -e $f ]] || continue
        pid=$(cat "$f")
        kill -USR1 "$pid" 2>/dev/null || echo "${f##*/}: not running"
    done
    sleep 0.2
    for f in "$RUN_DIR"/link*.pid; do
        [[ -e $f ]] || continue
        f=${f%.pid}
        echo "== ${f##*/}.log (spec: $(cat "$f.spec"))"
        tail -n 2 "$f.log"
        k=${f##*/link}
        echo "dropped in front of the emulator (TUN queue full): up $(ip netns exec "$NS_R" cat "/sys/class/net/p${k}c/statistics/tx_dropped"), down $(ip netns exec "$NS_R" cat "/sys/class/net/p${k}s/statistics/tx_dropped")"
    done
}

node_ns() {
    case $1 in
    c) echo "$NS_C" ;;
    r) echo "$NS_R" ;;
    s[0-9]) server_ns "${1#s}" ;;
    *) die "unknown node $1 (c, r, s1, s2, ...)" ;;
    esac
}

cmd_exec() {
    (($# >= 2)) || die "usage: lab.sh exec NODE CMD..."
    local ns
    ns=$(node_ns "$1")
    shift
    exec ip netns exec "$ns" "$@"
}

# Link specs of the issue's scenarios. Loss applies to each direction; each direction has the
# rate cap and a 50 ms queue (WANLAB_QUEUE overrides).
scenario_paths() {
    local q=${WANLAB_QUEUE:-50ms}
    case $1 in
    A) echo "delay=50ms,rate=200mbit,queue=$q" ;;
    B) echo "delay=50ms,loss=1%,rate=200mbit,queue=$q" ;;
    C) echo "delay=100ms,loss=2%,rate=100mbit,queue=$q" ;;
    D) echo "delay=50ms,loss=1%,rate=200mbit,queue=$q,flow_rate=10mbit" ;;
    E)
        echo "delay=20ms,rate=100mbit,queue=$q"
        echo "delay=80ms,rate=100mbit,queue=$q"
        ;;
    F) echo "delay=30ms,loss=1%,rate=500mbit,queue=$q" ;;
    # Issue 21's paths: 300 Mbit/s, 60 ms RTT, 1% loss (G); the same with ±4 ms of delay
    # variation in each direction, order kept (H); and with a quarter of the packets up to 8 ms
    # late besides, behind later ones (I).
    G) echo "delay=30ms,loss=1%,rate=300mbit,queue=$q" ;;
    H) echo "delay=30ms,loss=1%,rate=300mbit,queue=$q,jitter=4ms" ;;
    I) echo "delay=30ms,loss=1%,rate=300mbit,queue=$q,jitter=4ms,reorder=25%,reorder_delay=8ms" ;;
    # Issue 20's cluster scenarios (`lab.sh cluster G|H`), one path per node: five equal paths
    # (cluster-G), three unequal ones (cluster-H).
    cluster-G) for _ in 1 2 3 4 5; do echo "delay=30ms,loss=0.5%,rate=50mbit,queue=$q"; done ;;
    cluster-H)
        echo "delay=20ms,loss=0.5%,rate=100mbit,queue=$q"
        echo "delay=60ms,loss=1%,rate=60mbit,queue=$q"
        echo "delay=100ms,loss=2%,rate=40mbit,queue=$q"
        ;;
    ceiling) echo "" ;;
    *) die "unknown scenario $1 (A-I, cluster-G, cluster-H, ceiling)" ;;
    esac
}

start_iperf_server() {
    local k=$1
    ip netns exec "$(server_ns "$k")" iperf3 -s -D -B "$(server_ip "$k")" \
        --pidfile "$RUN_DIR/iperf3-$k.pid" >/dev/null
    for _ in $(seq 30); do
        [[ -s $RUN_DIR/iperf3-$k.pid ]] && return 0
        sleep 0.1
    done
    die "iperf3 server on path $k did not start"
}

# Server K as a front door of another server's address: traffic to server K's PORT crosses path K,
# then the router's unimpaired hop to IP. The reply goes back the same way (masquerade), so what
# crosses path K is exactly what a host owning both addresses would send and receive on it.
cmd_front() {
    (($# >= 2)) || die "usage: lab.sh front K IP PORT | lab.sh front K off"
    local k=$1 ns
    ns=$(server_ns "$k")
    ip netns list | grep -qw "$ns" || die "no path $k"
    ip netns exec "$ns" nft delete table ip wanlab_front 2>/dev/null || true
    if [[ $2 == off ]]; then
        ns_sysctl "$ns" net.ipv4.ip_forward=0
        echo "path $k: front off"
        return
    fi
    (($# == 3)) || die "usage: lab.sh front K IP PORT"
    local to=$2 port=$3 me
    me=$(server_ip "$k")
    command -v nft >/dev/null || die "nft not found: apt-get install nftables"
    ns_sysctl "$ns" net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 \
        net.ipv4.conf.eth0.send_redirects=0
    ip netns exec "$ns" nft -f - <<EOF_NFT || die "nft rules for path $k failed"
table ip wanlab_front {
    chain pre {
        type nat hook prerouting priority dstnat;
        ip daddr $me tcp dport $port dnat to $to:$port
        ip daddr $me udp dport $port dnat to $to:$port
    }
    chain post {
        type nat hook postrouting priority srcnat;
        ip daddr $to masquerade
    }
}
EOF_NFT
    echo "path $k: $me:$port (tcp, udp) forwards to $to:$port"
}

cmd_paths() {
    (($# == 1)) || die "usage: lab.sh paths SCENARIO"
    scenario_paths "$1"
}

# One iperf3 run from the client to server K: prints "MBIT RETRANSMITS".
iperf_once() {
    local k=$1 cc=$2 secs=$3 extra=$4 json
    # shellcheck disable=SC2086 # extra holds optional flags
    json=$(ip netns exec "$NS_C" iperf3 -c "$(server_ip "$k")" -t "$secs" -C "$cc" -J $extra) ||
        die "iperf3 failed: $(jq -r '.error // empty' <<<"$json")"
    jq -r '"\(.end.sum_received.bits_per_second / 1e6 | . * 10 | round / 10) \(.end.sum_sent.retransmits // 0)"' <<<"$json"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

cmd_iperf() {
    (($#)) || die "usage: lab.sh iperf SCENARIO [--time S] [--cc LIST] [--repeat N] [--reverse]"
    local scenario=$1 secs=20 ccs="cubic bbr" repeat=1 extra=""
    shift
    while (($#)); do
        case $1 in
        --time) secs=$2 && shift 2 ;;
        --cc) ccs=$2 && shift 2 ;;
        --repeat) repeat=$2 && shift 2 ;;
        --reverse) extra="-R" && shift ;;
        *) die "iperf: unknown argument $1" ;;
        esac
    done
    local avail
    avail=$(sysctl -n net.ipv4.tcp_available_congestion_control)
    local paths=()
    mapfile -t paths < <(scenario_paths "$scenario")
    local up_args=() k cc
    for k in "${!paths[@]}"; do up_args+=(--path "${paths[$k]}"); done
    cmd_up "${up_args[@]}"
    trap cmd_down EXIT
    for k in $(seq "${#paths[@]}"); do start_iperf_server "$k"; done
    echo "scenario $scenario: ${secs}s per run, $repeat run(s), one TCP connection, client -> server${extra:+ (reverse)}"
    printf '%-6s %-6s %-34s %s\n' path cc "goodput Mbit/s (runs)" "median, retransmits"
    for k in $(seq "${#paths[@]}"); do
        for cc in $ccs; do
            if ! grep -qw "$cc" <<<"$avail"; then
                printf '%-6s %-6s %s\n' "$k" "$cc" "not available (have: $avail)"
                continue
            fi
            local runs=() retrans=() r out
            for r in $(seq "$repeat"); do
                out=$(iperf_once "$k" "$cc" "$secs" "$extra")
                runs+=("${out% *}")
                retrans+=("${out#* }")
                [[ $r == "$repeat" ]] || sleep 1
            done
            printf '%-6s %-6s %-34s %s, %s\n' "$k" "$cc" "${runs[*]}" \
                "$(printf '%s\n' "${runs[@]}" | median)" "${retrans[*]}"
        done
    done
    echo "emulator counters over all runs:"
    cmd_status | grep -E '^(==|up|down|dropped)' || true
}

# RTT statistics of COUNT pings at INTERVAL from the client to server K: "LOSS% MIN AVG MAX MDEV".
ping_stats() {
    local k=$1 count=$2 interval=$3 out
    out=$(ip netns exec "$NS_C" ping -q -n -c "$count" -i "$interval" -W 2 -s 56 "$(server_ip "$k")" || true)
    local loss rtt
    loss=$(grep -oE '[0-9.]+% packet loss' <<<"$out" | cut -d% -f1)
    rtt=$(grep -oE '= [0-9./]+ ms' <<<"$out" | tr -d '=ms ' | tr '/' ' ')
    echo "$loss ${rtt:-- - - -}"
}

# Loss seen by path K's emulator since it started: "up X/Y = P%, down X/Y = P%".
loss_counters() {
    local k=$1 log="$RUN_DIR/link$1.log"
    kill -USR1 "$(cat "$RUN_DIR/link$k.pid")"
    sleep 0.2
    awk '/^(up|down): rx/ {rx[$1] = $3; loss[$1] = $14}
        END {for (d in rx) printf "%s %d/%d = %.3f%%  ", d, loss[d], rx[d], rx[d] ? 100 * loss[d] / rx[d] : 0; print ""}' "$log"
}

cmd_validate() {
    local quick=0
    [[ ${1:-} == --quick ]] && quick=1
    local secs=10 loss_count=20000
    ((quick)) && secs=5 loss_count=5000
    cmd_up --path ""
    trap cmd_down EXIT
    start_iperf_server 1
    local spec cc out
    echo "== ceiling (no impairment), $secs s, client -> server"
    for cc in cubic bbr; do
        echo "1 stream $cc: $(iperf_once 1 "$cc" "$secs" "" | awk '{print $1 " Mbit/s, " $2 " retransmits"}')"
    done
    echo "4 streams cubic: $(iperf_once 1 cubic "$secs" "-P 4" | awk '{print $1 " Mbit/s"}')"
    echo "1 stream cubic, server -> client: $(iperf_once 1 cubic "$secs" "-R" | awk '{print $1 " Mbit/s"}')"
    echo "ping (no delay), 1000 at 1 ms: loss% min avg max mdev = $(ping_stats 1 1000 0.001)"

    echo "== RTT: configured delay each way -> expected RTT; 200 pings at 10 ms"
    for d in 5 20 50 100; do
        cmd_set 1 "delay=${d}ms" >/dev/null
        echo "delay=${d}ms (RTT $((2 * d)) ms): loss% min avg max mdev = $(ping_stats 1 200 0.01)"
    done
    cmd_set 1 "delay=50ms,jitter=10ms" >/dev/null
    echo "delay=50ms,jitter=10ms: loss% min avg max mdev = $(ping_stats 1 500 0.01)"

    echo "== loss: $loss_count pings at 1 ms"
    for spec in "up.loss=1%" "up.loss=5%" "loss=1%"; do
        cmd_set 1 "$spec" >/dev/null
        out=$(ping_stats 1 "$loss_count" 0.001)
        echo "$spec: measured loss ${out%% *}% (expected: up only = setting; both ways = 1-(1-p)^2)"
    done
    cmd_set 1 "loss=1%" >/dev/null
    iperf_once 1 cubic "$secs" "" >/dev/null
    echo "loss=1% under a TCP bulk transfer, emulator counters: $(loss_counters 1)"
    cmd_set 1 "" >/dev/null

    echo "== rate cap, $secs s, TCP cubic, 4 streams (goodput is at most 1448/1500 = 96.5% of the IP rate)"
    for spec in "rate=50mbit,queue=50ms" "rate=200mbit,queue=50ms" "rate=500mbit,queue=50ms" \
        "delay=25ms,rate=100mbit,queue=50ms"; do
        cmd_set 1 "$spec" >/dev/null
        echo "$spec: $(iperf_once 1 cubic "$secs" "-P 4" | awk '{print $1 " Mbit/s, " $2 " retransmits"}')"
    done
    echo "== rate cap with UDP at 120 Mbit/s into rate=100mbit, $secs s (1400-byte datagrams)"
    cmd_set 1 "rate=100mbit,queue=20ms" >/dev/null
    out=$(ip netns exec "$NS_C" iperf3 -c "$(server_ip 1)" -u -l 1400 -b 120M -t "$secs" -J)
    jq -r '"received \(.end.sum.bits_per_second * (.end.sum.packets - .end.sum.lost_packets) / .end.sum.packets / 1e6 * 1428 / 1400 | . * 10 | round / 10) Mbit/s at the IP layer (1428 bytes per datagram), lost \(.end.sum.lost_percent | . * 10 | round / 10)% (expected 1 - 100/120 = 16.7%)"' <<<"$out"
    cmd_status | grep -E '^(==|up|down)' || true
}

main() {
    (($#)) || {
        usage
        exit 2
    }
    local cmd=$1
    shift
    case $cmd in
    up) cmd_up "$@" ;;
    set) cmd_set "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    exec) cmd_exec "$@" ;;
    run | sweep | matrix) exec python3 "$HERE/scenarios.py" "$cmd" "$@" ;;
    cluster) exec python3 "$HERE/cluster.py" "$@" ;;
    paths) cmd_paths "$@" ;;
    front) cmd_front "$@" ;;
    iperf) cmd_iperf "$@" ;;
    validate) cmd_validate "$@" ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
