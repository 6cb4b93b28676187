#!/usr/bin/env bash
# mpirun's remote launch agent for the two-host test (plm_rsh_agent): what `ssh HOST CMD` does on
# a cluster, done with `ip netns exec` into the namespace that plays HOST. The remote command runs
# with its own host name. Like a remote daemon behind ssh during a partition, it does not learn
# that mpirun is gone: what ends it then is Grove's own doing (launch/grove-rank).
#   netns_agent.sh HOST-ADDRESS COMMAND...   (GROVE_NETNS_MAP: "addr=ns=hostname ...")
set -eu
addr=$1
shift
for entry in ${GROVE_NETNS_MAP:?}; do
  IFS== read -r a ns name <<< "$entry"
  if [ "$a" = "$addr" ]; then
    exec ip netns exec "$ns" unshare --uts sh -c \
      'hostname "$1"; shift; exec bash -c "$*"' sh "$name" "$@"
  fi
done
echo "netns_agent.sh: no namespace for host $addr" >&2
exit 255
