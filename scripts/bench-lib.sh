# Helpers the benchmark scripts share (sourced, not run). They expect $bin
# (the daemon's binary) and, for the daemon's slot, SLUICE_SLOT and
# SLUICE_DATABASE_URL (or DATABASE_URL).
now() { date +%s.%N; }
rate() { echo "$1 / $2" | bc -l | awk '{ printf "%.0f", $1 }'; }
ratio() { echo "$1 / $2" | bc -l | awk '{ printf "%.2f", $1 }'; }
peak_rss_mib() { awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
rss_mib() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# Starts `run` in the background (pid in $daemon, log in $1) and returns
# once it streams; exits the script if the daemon dies first.
start_daemon() {
  local log=$1
  "$bin" run 2>"$log" &
  daemon=$!
  while ! grep -q 'info streaming' "$log"; do
    kill -0 "$daemon" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.005
  done
}
stop_daemon() { kill -TERM "$daemon"; wait "$daemon" || true; daemon=""; }

# Waits until the daemon's slot has confirmed $1. Cheaper than counting the
# ledger, and it includes the acknowledgement. One psql session, polled
# every 10 ms with no process started per poll (a psql per poll takes CPU
# from the run; one long transaction would hold back vacuum of the
# handler's rows).
wait_confirmed() {
  local answer nap
  coproc POLL { psql -qtAX "${SLUICE_DATABASE_URL:-$DATABASE_URL}"; }
  exec {nap}<> <(:)
  while :; do
    echo "SELECT confirmed_flush_lsn >= '$1' FROM pg_replication_slots WHERE slot_name = '${SLUICE_SLOT:-bench}';" >&"${POLL[1]}"
    read -r answer <&"${POLL[0]}"
    [ "$answer" = t ] && break
    read -r -t 0.01 -u "$nap" || true
  done
  exec {POLL[1]}>&- {nap}>&-
  wait "$POLL_PID" 2>/dev/null || true
}
