# Sourced by the two-host tests: three network namespaces joined by a bridge that lives in a
# fourth one (the "switch"), so nothing in the root namespace addresses them.
#   coordinator  PFX-c  10.218.0.1
#   host A       PFX-a  10.218.0.2   (mpirun, rank 0)
#   host B       PFX-b  10.218.0.3   (rank 1, launched through netns_agent.sh)
# netns_up PFX: creates them (returns non-zero where namespaces cannot be created);
# netns_down PFX: removes them; netns_cut PFX / netns_heal PFX: B's link down / up.
NETNS_SUBNET=10.218.0.0/24
netns_up() {
  local p=$1 i=0
  ip netns add "$p-s" 2>/dev/null || return 1
  ip -n "$p-s" link add br0 type bridge || return 1
  ip -n "$p-s" link set br0 up
  ip -n "$p-s" link set lo up
  for h in c a b; do
    i=$((i + 1))
    ip netns add "$p-$h" || return 1
    ip -n "$p-$h" link set lo up
    ip -n "$p-s" link add "p$h" type veth peer name eth0 netns "$p-$h" || return 1
    ip -n "$p-s" link set "p$h" master br0
    ip -n "$p-s" link set "p$h" up
    ip -n "$p-$h" addr add "10.218.0.$i/24" dev eth0
    ip -n "$p-$h" link set eth0 up
  done
}
netns_down() {
  local p=$1
  for h in c a b s; do ip netns del "$p-$h" 2>/dev/null || true; done
}
netns_cut() { ip -n "$1-s" link set pb down; }
netns_heal() { ip -n "$1-s" link set pb up; }
