# Shared by ab_together.sh and ab_toggle.sh (sourced): CPU per request of a gateway's threads.

# Per thread of process $1: name and CPU nanoseconds so far.
threads() { for t in /proc/"$1"/task/*; do echo "$(tr ' ' _ < "$t/comm") $(cut -d' ' -f1 "$t/schedstat")"; done; }

# One side's line for a round: `ROUND SIDE TOTAL [THREAD=US...] krps=K`, CPU microseconds per
# request of the whole process and of its busier threads, from `threads` output taken before
# ($1) and after ($2) a load of $3 requests in $6 seconds; $4 the round, $5 the side. Threads
# are matched by name (a thread started during the round counts from zero).
cpu_report() {
  awk -v n="$3" -v r="$4" -v side="$5" -v secs="$6" '
    NR == FNR { before[$1] += $2; next }
    { after[$1] += $2 }
    END {
      for (t in after) { us = (after[t] - before[t]) / 1000 / n; total += us; if (us >= 0.05) parts = parts sprintf(" %s=%.2f", t, us) }
      printf "%s %s %.3f%s krps=%.2f\n", r, side, total, parts, n / secs / 1000
    }' "$1" "$2"
}
