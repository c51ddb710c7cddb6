#!/usr/bin/env bash
# A real Redis Cluster on loopback for cluster-mode tests and by-hand runs.
#
#   scripts/redis_cluster.sh start DIR BASE_PORT    six nodes, 3 masters + 3 replicas
#   scripts/redis_cluster.sh stop DIR               stop every node this script started in DIR
#   scripts/redis_cluster.sh status DIR             one line per node; exit 0 when all are healthy
#   scripts/redis_cluster.sh start-node DIR PORT    start one stopped (or killed) node again
#
# The nodes listen on BASE_PORT..BASE_PORT+5 (and their cluster bus on port+10000), bound to
# 127.0.0.1 only. Each node has its data (append-only file, nodes.conf) in DIR/PORT/ and its
# pidfile and logfile in DIR (redis-PORT.pid, redis-PORT.log); DIR/ports lists the ports.
#
# The settings favour tests over production: a 1 s node timeout so a killed master is
# failed over in a couple of seconds, an fsync of every write (appendfsync always) so a node
# restarted after a SIGKILL still has every write it acknowledged, no RDB snapshots, and a
# replica that always takes over however long it was cut off (cluster-replica-validity-factor
# 0), so a failover never depends on how long a test waited. Replication stays asynchronous:
# a failover can lose the last writes a master acknowledged before its replica had them,
# unless the client waited for the replica (WAIT 1 ms).
#
# `start` on a DIR whose cluster was created before (DIR/created exists) starts the same
# nodes from their saved state instead of creating a new cluster; any other leftovers of an
# earlier, unfinished start in DIR/PORT/ are wiped first. Every wait is bounded:
# REDIS_CLUSTER_TIMEOUT seconds (default 30) for the cluster to be created and again for it
# to become healthy, 5 s for each node to answer its first PING, 3 s for any one redis-cli
# call, 10 s for a node to stop on SIGTERM before it is SIGKILLed. When start fails, it
# prints the reason and the end of the nodes' logs, and stops the nodes it started.
set -euo pipefail

usage="usage: $0 start DIR BASE_PORT | stop DIR | status DIR | start-node DIR PORT"
timeout_s="${REDIS_CLUSTER_TIMEOUT:-30}"
case "$timeout_s" in
  '' | *[!0-9]*)
    echo "REDIS_CLUSTER_TIMEOUT must be a number of seconds, got '$timeout_s'" >&2
    exit 2
    ;;
esac
nodes=6

die() {
  echo "redis_cluster: $*" >&2
  exit 1
}

need_redis() {
  local tool
  for tool in redis-server redis-cli; do
    command -v "$tool" > /dev/null 2>&1 \
      || die "$tool not found on PATH (install Redis 7, e.g. the Debian package redis-server)"
  done
}

is_number() {
  case "$1" in
    '' | *[!0-9]*) return 1 ;;
  esac
}

# A process's command line and state, from /proc where there is one (slim images often lack
# ps), else from ps.
proc_args() {
  if [ -d /proc/self ]; then
    [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' < "/proc/$1/cmdline" 2> /dev/null
  else
    ps -p "$1" -o args= 2> /dev/null
  fi
}

proc_state() {
  if [ -d /proc/self ]; then
    # The state is the field after the parenthesised command name.
    [ -r "/proc/$1/stat" ] && sed -n 's/^.*) \(.\).*$/\1/p' "/proc/$1/stat" 2> /dev/null
  else
    ps -p "$1" -o stat= 2> /dev/null
  fi
}

# The pid in a node's pidfile, when that process is still the redis-server of that port (a
# stale pidfile of a killed node may name a pid reused by an unrelated process, which must
# not be signalled). Redis sets its process title to "redis-server 127.0.0.1:PORT [cluster]".
live_pid() {
  local dir="$1" port="$2" pid args
  [ -f "$dir/redis-$port.pid" ] || return 1
  pid="$(cat "$dir/redis-$port.pid" 2> /dev/null)" || return 1
  is_number "$pid" || return 1
  args="$(proc_args "$pid")" || return 1
  case "$(proc_state "$pid")" in Z* | X* | '') return 1 ;; esac
  case "$args" in
    *redis-server*":$port"*) echo "$pid" ;;
    *) return 1 ;;
  esac
}

# redis-cli has no reply timeout of its own: a port held by something that accepts and never
# answers would hang it, so every call is bounded (coreutils timeout, where there is one).
cli_bound=""
command -v timeout > /dev/null 2>&1 && cli_bound="timeout 3"

cli() {
  local port="$1"
  shift
  # A node that is down answers nothing; callers compare the output, not the exit status.
  { $cli_bound redis-cli -h 127.0.0.1 -p "$port" "$@" 2> /dev/null || true; } | tr -d '\r'
}

# A value of an INFO-style reply (CLUSTER INFO, INFO replication), empty when missing.
info_field() {
  local port="$1" section="$2" field="$3"
  cli "$port" $section | sed -n "s/^$field://p" | head -n 1
}

# The ports of the cluster in DIR. Callers that loop over $(ports_of DIR) check
# has_cluster first: a die inside the substitution would only end that subshell.
ports_of() {
  cat "$1/ports"
}

has_cluster() {
  [ -f "$1/ports" ] || die "$1/ports not found: no cluster was started in $1"
}

write_config() {
  local dir="$1" port="$2"
  cat > "$dir/$port/redis.conf" << EOF
bind 127.0.0.1
port $port
protected-mode no
daemonize yes
pidfile "$dir/redis-$port.pid"
logfile "$dir/redis-$port.log"
dir "$dir/$port"
cluster-enabled yes
cluster-config-file nodes.conf
# Short, so that a killed master is detected and failed over within a few seconds.
cluster-node-timeout 1000
# A replica takes over however long it lost its master, so failovers are deterministic.
cluster-replica-validity-factor 0
appendonly yes
appendfsync always
save ""
# Replicas sync at once instead of waiting 5 s for more replicas to batch with.
repl-diskless-sync-delay 0
EOF
}

# Whether PID is a running redis-server (a zombie is not: it has exited, and only waits for
# a parent that may never reap it).
pid_running() {
  case "$(proc_state "$1")" in Z* | X* | '') return 1 ;; esac
  case "$(proc_args "$1")" in *redis-server*) return 0 ;; *) return 1 ;; esac
}

# Starts one node from its config and waits (bounded) until it answers PING.
start_node() {
  local dir="$1" port="$2" i
  if live_pid "$dir" "$port" > /dev/null; then
    die "node $port is already running (pid $(live_pid "$dir" "$port"))"
  fi
  rm -f "$dir/redis-$port.pid"
  redis-server "$dir/$port/redis.conf" > /dev/null \
    || die "redis-server for port $port did not start (config $dir/$port/redis.conf)"
  for i in $(seq 1 100); do
    # A server that gave up (a port taken, a bad data file) says so in its log at once.
    grep -qE 'aborting|Fatal|FATAL' "$dir/redis-$port.log" 2> /dev/null && break
    if [ "$(cli "$port" ping)" = PONG ] && live_pid "$dir" "$port" > /dev/null; then
      return 0
    fi
    sleep 0.05
  done
  echo "redis_cluster: node $port did not come up (no PING answer); end of its log:" >&2
  tail -n 20 "$dir/redis-$port.log" >&2 2> /dev/null || true
  return 1
}

# Why the cluster is not healthy yet, or nothing when it is: every node sees all 6 nodes and
# all slots served (cluster_state:ok), there are 3 masters and 3 replicas, every replica's
# link to its master is up and every master has an online replica.
unhealthy() {
  local port state known role masters=0 replicas=0
  for port in "$@"; do
    state="$(info_field "$port" 'cluster info' cluster_state)"
    [ "$state" = ok ] || { echo "node $port: cluster_state '${state:-no answer}'"; return; }
    known="$(info_field "$port" 'cluster info' cluster_known_nodes)"
    [ "$known" = "$nodes" ] || { echo "node $port knows $known nodes, not $nodes"; return; }
    role="$(info_field "$port" 'info replication' role)"
    case "$role" in
      master)
        masters=$((masters + 1))
        cli "$port" info replication | grep -q '^slave0:.*state=online' \
          || { echo "master $port has no online replica"; return; }
        ;;
      slave)
        replicas=$((replicas + 1))
        [ "$(info_field "$port" 'info replication' master_link_status)" = up ] \
          || { echo "replica $port: link to its master is not up"; return; }
        ;;
      *) echo "node $port: role '${role:-no answer}'"; return ;;
    esac
  done
  [ "$masters" = 3 ] && [ "$replicas" = 3 ] \
    || echo "$masters masters and $replicas replicas, not 3 and 3"
}

wait_healthy() {
  local deadline=$((SECONDS + timeout_s)) why
  while true; do
    why="$(unhealthy "$@")"
    [ -z "$why" ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "redis_cluster: the cluster is not healthy after ${timeout_s} s: $why" >&2
      return 1
    fi
    sleep 0.1
  done
}

print_seeds() {
  local seeds="" port
  for port in "$@"; do seeds="${seeds:+$seeds,}127.0.0.1:$port"; done
  echo "seeds: $seeds"
}

stop_all() {
  local dir="$1" port pid pids="" i
  for port in $(ports_of "$dir"); do
    if pid="$(live_pid "$dir" "$port")"; then
      kill -TERM "$pid" 2> /dev/null || true
      pids="$pids $port:$pid"
    fi
  done
  # A clean shutdown (append-only file synced, nodes.conf saved) takes well under a second;
  # whatever is still running after 10 s is killed.
  for i in $(seq 1 100); do
    local left=""
    for entry in $pids; do
      if pid_running "${entry#*:}"; then left="$left $entry"; fi
    done
    pids="$left"
    [ -z "$pids" ] && break
    sleep 0.1
  done
  for entry in $pids; do
    echo "redis_cluster: node ${entry%%:*} (pid ${entry#*:}) ignored SIGTERM for 10 s;" \
      "killing it" >&2
    kill -KILL "${entry#*:}" 2> /dev/null || true
  done
  for port in $(ports_of "$dir"); do rm -f "$dir/redis-$port.pid"; done
}

cmd_start() {
  [ $# -eq 2 ] || die "$usage"
  local dir="$1" base="$2" port ports="" i
  is_number "$base" || die "BASE_PORT must be a number, got '$base'"
  [ "$base" -ge 1024 ] && [ $((base + nodes - 1 + 10000)) -le 65535 ] \
    || die "BASE_PORT must be within 1024..$((65535 - 10000 - nodes + 1))" \
      "(cluster bus ports are port+10000)"
  need_redis
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  case "$dir" in *'"'* | *\\*) die "DIR must not contain quotes or backslashes" ;; esac
  for i in $(seq 0 $((nodes - 1))); do ports="$ports $((base + i))"; done
  ports="${ports# }"

  local resume=0
  if [ -f "$dir/created" ]; then
    [ "$(cat "$dir/ports" 2> /dev/null | tr '\n' ' ' | sed 's/ $//')" = "$ports" ] \
      || die "$dir holds a cluster on ports $(echo $(cat "$dir/ports")), not $ports"
    resume=1
  fi
  for port in $ports; do
    if pid="$(live_pid "$dir" "$port")"; then
      die "node $port of $dir is already running (pid $pid)"
    fi
  done
  printf '%s\n' $ports > "$dir/ports"

  # From here on, a failure (or an interrupt) stops what was started, so no server outlives a
  # failed start.
  start_dir="$dir"
  started=0
  trap 'if [ "$started" = 0 ]; then
          echo "redis_cluster: start failed; stopping the nodes started in $start_dir" >&2
          stop_all "$start_dir" > /dev/null
        fi' EXIT
  trap 'exit 1' INT TERM
  for port in $ports; do
    if [ "$resume" = 0 ]; then
      rm -rf "${dir:?}/$port"
      rm -f "$dir/redis-$port.log"
      mkdir -p "$dir/$port"
    fi
    write_config "$dir" "$port"
    start_node "$dir" "$port" || exit 1
  done

  if [ "$resume" = 0 ]; then
    local addrs=""
    for port in $ports; do addrs="$addrs 127.0.0.1:$port"; done
    # All nodes share one host, so redis-cli warns that replicas sit with their masters: on
    # loopback that is the point. Its output goes to DIR/create.log.
    # redis-cli waits for the nodes to agree without a bound of its own, hence the timeout.
    local bound=""
    command -v timeout > /dev/null 2>&1 && bound="timeout $timeout_s"
    # shellcheck disable=SC2086
    if ! $bound redis-cli --cluster create $addrs --cluster-replicas 1 --cluster-yes \
      > "$dir/create.log" 2>&1; then
      echo "redis_cluster: redis-cli --cluster create failed:" >&2
      tail -n 20 "$dir/create.log" >&2
      exit 1
    fi
    touch "$dir/created"
  fi
  # shellcheck disable=SC2086
  if ! wait_healthy $ports; then
    for port in $ports; do
      echo "--- end of $dir/redis-$port.log" >&2
      tail -n 10 "$dir/redis-$port.log" >&2 || true
    done
    exit 1
  fi
  started=1
  echo "redis cluster up in $dir (3 masters, 3 replicas) after ${SECONDS} s"
  # shellcheck disable=SC2086
  print_seeds $ports
}

cmd_stop() {
  [ $# -eq 1 ] || die "$usage"
  local dir="$1"
  has_cluster "$dir"
  stop_all "$dir"
  echo "redis cluster in $dir stopped"
}

cmd_status() {
  [ $# -eq 1 ] || die "$usage"
  local dir="$1" port pid ok=1 running=""
  has_cluster "$dir"
  need_redis
  for port in $(ports_of "$dir"); do
    if pid="$(live_pid "$dir" "$port")"; then
      running="$running $port"
      echo "$port pid $pid role $(info_field "$port" 'info replication' role)" \
        "cluster_state $(info_field "$port" 'cluster info' cluster_state)"
    else
      ok=0
      echo "$port not running"
    fi
  done
  # shellcheck disable=SC2086
  print_seeds $running
  if [ "$ok" = 1 ]; then
    # shellcheck disable=SC2086
    local why="$(unhealthy $running)"
    [ -z "$why" ] || { echo "not healthy: $why"; ok=0; }
  fi
  [ "$ok" = 1 ]
}

cmd_start_node() {
  [ $# -eq 2 ] || die "$usage"
  local dir="$1" port="$2"
  has_cluster "$dir"
  need_redis
  ports_of "$dir" | grep -qx "$port" || die "port $port is not a node of the cluster in $dir"
  [ -f "$dir/$port/redis.conf" ] || die "$dir/$port/redis.conf not found"
  start_node "$dir" "$port" || exit 1
  echo "node $port started (pid $(live_pid "$dir" "$port"))"
}

[ $# -ge 1 ] || die "$usage"
command="$1"
shift
case "$command" in
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status "$@" ;;
  start-node) cmd_start_node "$@" ;;
  *) die "$usage" ;;
esac
