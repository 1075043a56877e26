#!/usr/bin/env bash
# Multi-host harness on one machine: network namespaces as hosts, joined by
# veth links to a bridge that lives in its own namespace (nothing is added to
# the machine's own network).  Needs root and iproute2.
#
#   deploy/netns.sh up PREFIX N     hosts PREFIX-h0 .. PREFIX-h(N-1), addresses
#                                   10.213.0.1 .. 10.213.0.N (/24) on a private
#                                   test link; lo up in each
#   deploy/netns.sh down PREFIX     removes every namespace and link of PREFIX
#   deploy/netns.sh ip PREFIX I     prints host I's address
#   deploy/netns.sh exec PREFIX I CMD...   runs CMD on host I
#
# The addresses exist only inside these namespaces; traffic never leaves them.
set -euo pipefail

net_ip() { echo "10.213.0.$(($2 + 1))"; }

cmd=${1:-}
prefix=${2:-}
case "$cmd" in
up)
    n=${3:?usage: netns.sh up PREFIX N}
    [ "$n" -ge 1 ] && [ "$n" -le 200 ] || { echo "netns.sh: N must be 1..200" >&2; exit 2; }
    ip netns add "$prefix-net"
    ip -n "$prefix-net" link add br0 type bridge
    ip -n "$prefix-net" link set br0 up
    for i in $(seq 0 $((n - 1))); do
        host="$prefix-h$i"
        ip netns add "$host"
        ip -n "$host" link set lo up
        # veth pair created inside the host namespace, peer moved to the bridge's
        ip -n "$host" link add eth0 type veth peer name "p$i" netns "$prefix-net"
        ip -n "$prefix-net" link set "p$i" master br0
        ip -n "$prefix-net" link set "p$i" up
        ip -n "$host" addr add "$(net_ip "$prefix" "$i")/24" dev eth0
        ip -n "$host" link set eth0 up
    done
    ;;
down)
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^$prefix-(net|h[0-9]+)$" || true); do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns"
    done
    ;;
ip)
    net_ip "$prefix" "${3:?usage: netns.sh ip PREFIX I}"
    ;;
exec)
    i=${3:?usage: netns.sh exec PREFIX I CMD...}
    shift 3
    exec ip netns exec "$prefix-h$i" "$@"
    ;;
*)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
