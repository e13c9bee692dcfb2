#!/usr/bin/env bash
# bench/plot.sh — draw carom-bench --json output with gnuplot.
#
#   build/bench/carom-bench --json shootout > results.json
#   bench/plot.sh results.json [OUTDIR] [png|svg]
#
# Writes into OUTDIR (default: bench-plots/):
#   shootout-<mode>-<payload>B.<ext>  throughput (items/s, log scale) against the
#                                     topology P→C, one line per queue
#   shootout-latency-<payload>B.<ext> round-trip p50 / p99 per queue and mode
#   <name>.dat, <name>.gp             the data and gnuplot script behind each
# Needs /usr/bin/python3 (to read the JSON) and gnuplot (gnuplot-nox).
set -euo pipefail
in=${1:?usage: bench/plot.sh RESULTS.json [OUTDIR] [png|svg]}
out=${2:-bench-plots}
fmt=${3:-png}
mkdir -p "$out"
/usr/bin/python3 - "$in" "$out" "$fmt" <<'PY'
import json, re, sys, collections
src, out, fmt = sys.argv[1:4]
term = ('pngcairo size 1000,600 font "DejaVu Sans,10"' if fmt == "png"
        else 'svg size 1000,600 dynamic font "DejaVu Sans,10"')
machine, figs = {}, []
with open(src) as f:
    for line in f:
        line = line.strip()
        if not line.startswith("{"):
            continue
        o = json.loads(line)
        if "machine" in o:
            machine = o["machine"]
        elif "name" in o and o.get("value") is not None:
            figs.append(o)
title_m = "%s, nproc %s, Linux %s" % (machine.get("cpu", "?"), machine.get("nproc", "?"),
                                      machine.get("kernel", "?"))
stream = re.compile(r"^shootout\.(.+)\.(threads|procs)\.(\d+)to(\d+)\.(\d+)B$")
lat = re.compile(r"^shootout\.(.+)\.(threads|procs)\.(\d+)B\.rtt\.(p50|p99)$")
tput = collections.defaultdict(dict)   # (mode, payload) -> {(P, C): {queue: value}}
lats = collections.defaultdict(dict)   # payload -> {queue/mode: {p50, p99}}
for o in figs:
    m = stream.match(o["name"])
    if m:
        q, mode, p, c, pl = m.group(1), m.group(2), int(m.group(3)), int(m.group(4)), m.group(5)
        tput[(mode, pl)].setdefault((p, c), {})[q] = o["value"]
        continue
    m = lat.match(o["name"])
    if m:
        q, mode, pl, pct = m.groups()
        lats[pl].setdefault("%s/%s" % (q, mode), {})[pct] = o["value"]
written = []
def emit(name, dat, gp):
    with open("%s/%s.dat" % (out, name), "w") as f:
        f.write(dat)
    with open("%s/%s.gp" % (out, name), "w") as f:
        f.write(gp)
    written.append(name)
for (mode, pl), rows in sorted(tput.items()):
    # Topologies ordered 1→1, then by N: 1→N, N→1, N→N.
    topo = sorted(rows, key=lambda t: (max(t), t[0] != 1, t[1] != 1, t))
    queues = sorted({q for r in rows.values() for q in r})
    dat = "topology " + " ".join(queues) + "\n"
    for t in topo:
        dat += "%d→%d " % t + " ".join("%g" % rows[t][q] if q in rows[t] else "NaN"
                                      for q in queues) + "\n"
    name = "shootout-%s-%sB" % (mode, pl)
    plots = ", ".join("'%s.dat' using %d:xtic(1) with linespoints lw 2 pt 7 title '%s'"
                      % (name, i + 2, q.replace("_", "\\_")) for i, q in enumerate(queues))
    gp = """set terminal %s
set output '%s.%s'
set title "Queue shoot-out: %s, %s B items (median items/s)\\n%s"
set ylabel 'items/s'
set xlabel 'producers → consumers'
set logscale y
set grid ytics
set key outside right
set datafile missing 'NaN'
plot %s
""" % (term, name, fmt, mode, pl, title_m.replace('"', "'"), plots)
    emit(name, dat, gp)
for pl, rows in sorted(lats.items()):
    keys = sorted(rows)
    dat = "queue p50 p99\n" + "".join(
        "%s %g %g\n" % (k, rows[k].get("p50", float("nan")), rows[k].get("p99", float("nan")))
        for k in keys)
    name = "shootout-latency-%sB" % pl
    gp = """set terminal %s
set output '%s.%s'
set title "Queue shoot-out: round trip, one %s B item in flight (ns)\\n%s"
set ylabel 'ns per round trip'
set logscale y
set grid ytics
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set xtics rotate by -40 noenhanced
set key top left
set datafile missing 'NaN'
plot '%s.dat' using 2:xtic(1) title 'p50', '' using 3 title 'p99'
""" % (term, name, fmt, pl, title_m.replace('"', "'"), name)
    emit(name, dat, gp)
with open("%s/.written" % out, "w") as f:
    f.write("\n".join(written) + "\n")
if not written:
    sys.stderr.write("plot.sh: no shoot-out figures in %s\n" % src)
PY
cd "$out"
while read -r name; do
  [ -n "$name" ] || continue
  gnuplot "$name.gp"
  echo "$out/$name.$fmt"
done < .written
rm -f .written
