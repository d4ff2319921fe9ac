#!/bin/bash
# sdstop.sh RUNDIR NAME: powers the container off (SIGTERM to nspawn: a clean halt), kills it
# if it does not go, and removes its private cgroups.
RUN=$1 NAME=$2
CG=sdtest-$NAME
P=$(cat "$RUN/nspawn.pid" 2>/dev/null) || exit 0
kill -TERM "$P" 2>/dev/null
for _ in $(seq 1 150); do kill -0 "$P" 2>/dev/null || break; sleep 0.1; done
kill -0 "$P" 2>/dev/null && kill -KILL "$P"
for _ in $(seq 1 50); do
    left=
    for d in /sys/fs/cgroup/systemd/$CG /sys/fs/cgroup/unified/$CG /sys/fs/cgroup/$CG; do
        [ -d "$d" ] || continue
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
        [ -d "$d" ] && left=1
    done
    [ -z "$left" ] && break
    sleep 0.1
done
rmdir /run/systemd/nspawn/propagate/"$NAME" 2>/dev/null
true
