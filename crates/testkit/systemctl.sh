#!/bin/sh
# systemctl stand-in for the deb tests' throwaway root (testkit::deb): the part of systemd that
# upstream's package and headwarden use, for a machine where systemd is not PID 1.
#   start|stop|restart|is-active|is-enabled|enable|disable|daemon-reload|list-units|--version,
#   and show (MainPID, ActiveState and User, whatever -p asks: what headwarden asks)
# A unit is read from /etc/systemd/system or /usr/lib/systemd/system: ExecStart, User, Group,
# WorkingDirectory, StateDirectory(+Mode), RuntimeDirectory(+Mode) and Environment= are honoured
# (the service runs as its User=, as upstream's unit runs it); the sandboxing lines are not.
# Enabled means a link in /etc/systemd/system/*.wants/, as `systemctl enable` and
# deb-systemd-helper make it. State: /run/systemctl-stand-in/<unit>.{pid,log}.
set -u
S=/run/systemctl-stand-in
mkdir -p "$S"

action=
unit=
skip=
for a in "$@"; do
    if [ -n "$skip" ]; then skip=; continue; fi
    case "$a" in
        --version) echo "systemd 252 (252.0-stand-in)"; exit 0 ;;
        -p|--property) skip=1 ;;
        --*|-*) ;;
        *) if [ -z "$action" ]; then action=$a; elif [ -z "$unit" ]; then unit=$a; fi ;;
    esac
done
case "$unit" in
    ""|*.service|*.*) ;;
    *) unit="$unit.service" ;;
esac

unit_file() {
    for d in /etc/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
        [ -f "$d/$unit" ] && { echo "$d/$unit"; return 0; }
    done
    return 1
}
key() { sed -n "s/^$1=//p" "$file" | tail -n 1; }

# A process's start time (clock ticks since boot): with its pid it names the process, even after
# the pid was reused (pids wrap at 32768 on a busy test machine).
started_at() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }

running() {
    [ -f "$S/$unit.pid" ] || return 1
    read -r pid at <"$S/$unit.pid" || return 1
    [ -n "$at" ] && [ "$(started_at "$pid")" = "$at" ] || return 1
    # An exited service lingers as a zombie until init reaps it: that counts as stopped.
    [ "$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $1}')" != Z ]
}

start() {
    running && return 0
    file=$(unit_file) || { echo "Unit $unit not found." >&2; return 5; }
    user=$(key User); group=$(key Group); wd=$(key WorkingDirectory)
    exec_start=$(key ExecStart)
    [ -n "$group" ] || group=$user
    for kind in State Runtime; do
        name=$(key "${kind}Directory")
        [ -n "$name" ] || continue
        mode=$(key "${kind}DirectoryMode"); [ -n "$mode" ] || mode=0755
        if [ "$kind" = State ]; then base=/var/lib; else base=/run; fi
        mkdir -p "$base/$name"
        chmod "$mode" "$base/$name"
        [ -z "$user" ] || chown "$user:$group" "$base/$name"
    done
    env_args=$(sed -n 's/^Environment=//p' "$file" | tr '\n' ' ')
    priv=
    [ -z "$user" ] || priv="setpriv --reuid=$user --regid=$group --init-groups"
    (
        cd "${wd:-/}" || exit 1
        # shellcheck disable=SC2086 # the unit's words, as systemd splits them
        exec setsid env $env_args $priv $exec_start >>"$S/$unit.log" 2>&1 </dev/null
    ) &
    echo "$! $(started_at $!)" >"$S/$unit.pid"
}

stop() {
    # Only the process this unit started: a stale pid may belong to someone else by now.
    if running; then
        kill "$pid" 2>/dev/null || true
        while running; do sleep 0.02; done
    fi
    rm -f "$S/$unit.pid"
}

wants() {
    file=$(unit_file) || { echo "Unit $unit not found." >&2; exit 5; }
    target=$(key WantedBy); [ -n "$target" ] || target=multi-user.target
    echo "/etc/systemd/system/$target.wants"
}

case "$action" in
    daemon-reload|list-units|reset-failed) exit 0 ;;
    start) start ;;
    stop) stop ;;
    restart|try-restart) stop; start ;;
    is-active) if running; then echo active; else echo inactive; exit 3; fi ;;
    show)
        file=$(unit_file) || { echo "Unit $unit not found." >&2; exit 5; }
        if running; then echo "MainPID=$pid"; echo ActiveState=active
        else echo MainPID=0; echo ActiveState=inactive; fi
        echo "User=$(key User)"
        echo "DynamicUser=no" ;;
    is-enabled)
        for l in /etc/systemd/system/*.wants/"$unit"; do
            [ -e "$l" ] && { echo enabled; exit 0; }
        done
        echo disabled; exit 1 ;;
    enable) d=$(wants); mkdir -p "$d"; ln -sf "$(unit_file)" "$d/$unit" ;;
    disable) rm -f /etc/systemd/system/*.wants/"$unit" ;;
    *) echo "systemctl stand-in: $action is not supported" >&2; exit 1 ;;
esac
