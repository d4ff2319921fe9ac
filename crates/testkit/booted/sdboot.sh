#!/bin/bash
# sdboot.sh BASE RUNDIR NAME [nspawn args…]: boots the rootfs BASE (as the lower layer of an
# overlay; BASE itself is never written) with systemd as PID 1 under systemd-nspawn, from a
# private cgroup, and prints the leader's pid (the container's PID 1 as the host sees it) once
# systemd answers. ../shared/SYSTEMD.md's recipe.
set -euo pipefail
BASE=$1 RUN=$2 NAME=$3
shift 3
mkdir -p "$RUN"
CG=sdtest-$NAME
if [ -d /run/systemd/system ]; then
    CGARGS=(--register=no)
else
    for h in systemd unified; do [ -d /sys/fs/cgroup/$h ] && mkdir -p /sys/fs/cgroup/$h/$CG; done
    [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && mkdir -p /sys/fs/cgroup/$CG
    CGARGS=(--register=no --keep-unit)
fi
(
    if [ ! -d /run/systemd/system ]; then
        for f in /sys/fs/cgroup/systemd/$CG /sys/fs/cgroup/unified/$CG /sys/fs/cgroup/$CG; do
            [ -e $f/cgroup.procs ] && echo $BASHPID >$f/cgroup.procs
        done
    fi
    exec systemd-nspawn -q -D "$BASE" -b --machine="$NAME" "${CGARGS[@]}" --console=passive --volatile=overlay "$@"
) >"$RUN/nspawn.log" 2>&1 </dev/null &
NSPAWN=$!
echo $NSPAWN >"$RUN/nspawn.pid"
LEADER=
for _ in $(seq 1 400); do
    for c in $(ps -o pid= --ppid $NSPAWN || true); do
        [ "$(awk '/^NSpid:/{print $NF}' /proc/$c/status 2>/dev/null)" = 1 ] &&
            [ "$(cat /proc/$c/comm 2>/dev/null)" = systemd ] && LEADER=$c
    done
    [ -n "$LEADER" ] && break
    kill -0 $NSPAWN 2>/dev/null || { cat "$RUN/nspawn.log" >&2; exit 1; }
    sleep 0.05
done
[ -n "$LEADER" ] || { echo "systemd did not start in the container" >&2; cat "$RUN/nspawn.log" >&2; exit 1; }
echo $LEADER >"$RUN/leader.pid"
for _ in $(seq 1 400); do nsenter -t $LEADER -m test -S /run/systemd/private 2>/dev/null && break; sleep 0.05; done
echo "state=$(timeout 60 nsenter -t $LEADER -a systemctl is-system-running --wait || true)" >>"$RUN/nspawn.log"
echo $LEADER
