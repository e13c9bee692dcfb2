#!/usr/bin/python3
"""bench/peers/mp_peer.py — Python's multiprocessing (or billiard) doing the
work of carom's queue, pipe, lock, Value and pool benchmarks.

    /usr/bin/python3 mp_peer.py LIB WORKLOAD[,WORKLOAD...] SCALE

LIB is "mp" (multiprocessing) or "billiard". SCALE multiplies each workload's
base size (1.0 = full run; carom-bench passes 0.1 under --quick). WORKLOAD
"all" runs every workload. Prints one JSON object per workload on its own
line: {"lib", "workload", "value", "unit", "n"}; a workload whose result is
wrong (lost items, lost increments) or that raises prints {"lib", "workload",
"error"}, the others still run, and the script exits 1. Exit 3 means LIB cannot be imported ("peer not installed").
Start method: fork for both (the Linux default of Python 3.11 and billiard).
"""
import json
import sys
import time


def trivial(x):
    return x + 1


def noop(_=None):
    return 1


def _queue_producer(q, n, payload):
    for i in range(n):
        q.put(payload)
    q.put(None)


def _pipe_echo(conn):
    while True:
        b = conn.recv_bytes()
        if not b:
            break
        conn.send_bytes(b)


def _pipe_sender(conn, n, payload):
    for _ in range(n):
        conn.send_bytes(payload)
    conn.close()


def _value_incr(v, n, go):
    go.wait()
    for _ in range(n):
        with v.get_lock():
            v.value += 1


class Wrong(Exception):
    pass


def w_queue(m, n):
    payload = b"x" * 64
    q = m.Queue()
    p = m.Process(target=_queue_producer, args=(q, n, payload))
    t0 = time.perf_counter()
    p.start()
    got = 0
    while True:
        item = q.get()
        if item is None:
            break
        if len(item) != 64:
            raise Wrong("bad payload")
        got += 1
    t1 = time.perf_counter()
    p.join()
    if got != n:
        raise Wrong("queue delivered %d of %d" % (got, n))
    return n / (t1 - t0), "items/s"


def w_pipe_rtt(m, n):
    a, b = m.Pipe()
    p = m.Process(target=_pipe_echo, args=(b,))
    p.start()
    payload = b"y" * 64
    a.send_bytes(payload)  # warm up: child running
    a.recv_bytes()
    t0 = time.perf_counter()
    for _ in range(n):
        a.send_bytes(payload)
        if a.recv_bytes() != payload:
            raise Wrong("pipe echo mismatch")
    t1 = time.perf_counter()
    a.send_bytes(b"")
    p.join()
    return (t1 - t0) / n * 1e6, "us/rtt"


def w_pipe_stream(m, n):
    r, w = m.Pipe(duplex=False)
    payload = b"z" * 64
    p = m.Process(target=_pipe_sender, args=(w, n, payload))
    t0 = time.perf_counter()
    p.start()
    w.close()
    got = 0
    try:
        while True:
            if len(r.recv_bytes()) != 64:
                raise Wrong("bad payload")
            got += 1
    except EOFError:
        pass
    t1 = time.perf_counter()
    p.join()
    if got != n:
        raise Wrong("pipe delivered %d of %d" % (got, n))
    return n / (t1 - t0), "msgs/s"


def w_lock(m, n):
    lk = m.Lock()
    acq, rel = lk.acquire, lk.release
    t0 = time.perf_counter()
    for _ in range(n):
        acq()
        rel()
    t1 = time.perf_counter()
    return (t1 - t0) / n * 1e9, "ns/pair"


def w_value(m, n):
    v = m.Value("l", 0)  # C long: 8 B here; billiard has no "q"
    go = m.Event()
    ps = [m.Process(target=_value_incr, args=(v, n, go)) for _ in range(2)]
    for p in ps:
        p.start()
    t0 = time.perf_counter()
    go.set()
    for p in ps:
        p.join()
    t1 = time.perf_counter()
    if v.value != 2 * n:
        raise Wrong("Value lost increments: %d of %d" % (v.value, 2 * n))
    return 2 * n / (t1 - t0), "incr/s"


def _pool(m, **kw):
    # Left through the context manager, i.e. terminate(): with billiard 4.1
    # here, close() + join() after a 100k-item map took ~30 s.
    pool = m.Pool(2, **kw)
    pool.apply(noop)  # workers up
    return pool


def _timed_sum(m, n, what, run):
    """items/s of run(pool) over range(n), whose results must sum to n(n+1)/2."""
    with _pool(m) as pool:
        t0 = time.perf_counter()
        s = sum(run(pool))
        t1 = time.perf_counter()
    if s != n * (n + 1) // 2:
        raise Wrong(what + " result wrong")
    return n / (t1 - t0), "items/s"


def w_pool_map(m, n):
    return _timed_sum(m, n, "map", lambda pool: pool.map(trivial, range(n)))


def w_pool_map_chunk1(m, n):
    return _timed_sum(m, n, "map chunksize=1",
                      lambda pool: pool.map(trivial, range(n), chunksize=1))


def w_apply_async(m, n):
    with _pool(m) as pool:
        t0 = time.perf_counter()
        for i in range(n):
            if pool.apply_async(trivial, (i,)).get() != i + 1:
                raise Wrong("apply_async result wrong")
        t1 = time.perf_counter()
    return n / (t1 - t0), "tasks/s"


def w_imap_unordered(m, n):
    return _timed_sum(m, n, "imap_unordered",
                      lambda pool: pool.imap_unordered(trivial, range(n), chunksize=100))


def w_maxtasks1(m, n):
    # apply_async, not map(chunksize=1): billiard 4.1's map with
    # maxtasksperchild=1 fails with WorkerLostError (exitcode 155) here.
    pool = m.Pool(2, maxtasksperchild=1)
    try:
        t0 = time.perf_counter()
        rs = [pool.apply_async(trivial, (i,)) for i in range(n)]
        s = sum(r.get(timeout=60) for r in rs)
        t1 = time.perf_counter()
    finally:
        pool.close()
        pool.join()
    if s != n * (n + 1) // 2:
        raise Wrong("maxtasksperchild=1 result wrong")
    return n / (t1 - t0), "tasks/s"


def w_lifecycle(m, n):
    t0 = time.perf_counter()
    for _ in range(n):
        pool = m.Pool(2)
        if pool.apply(trivial, (1,)) != 2:
            raise Wrong("lifecycle result wrong")
        pool.close()
        pool.join()
    t1 = time.perf_counter()
    return (t1 - t0) / n * 1e3, "ms"


def _sleep(x):
    time.sleep(x)
    return x


class NotSupported(Exception):
    pass


def _terminate_bounded(pool, seconds=10):
    """pool.terminate() from a daemon thread, given up on after `seconds`:
    billiard's terminate() can block for good after hard time limits; the
    figures are taken by then, and carom-bench kills what is left."""
    import threading
    t = threading.Thread(target=pool.terminate, daemon=True)
    t.start()
    t.join(seconds)


def w_timeout_latency(m, n):
    """Median delay (ms) between a task's hard time limit (0.05 s) and its
    failure reaching the caller. multiprocessing has no time limits. A pool
    that wedges (no answer 5 s past the limit) is counted and replaced."""
    if not hasattr(m.Pool, "_timeout_handler") and m.__name__ == "multiprocessing":
        raise NotSupported("multiprocessing has no task time limits")
    limit = 0.05
    lat, wedged = [], 0
    pool = m.Pool(1, timeout=limit)
    try:
        pool.apply(noop)
        for _ in range(n):
            t0 = time.perf_counter()
            r = pool.apply_async(_sleep, (3600,))
            try:
                r.get(timeout=limit + 5)
                raise Wrong("a task past its time limit returned")
            except Wrong:
                raise
            except Exception as e:
                if type(e).__name__ == "TimeoutError" and not r.ready():
                    wedged += 1
                    pool.terminate()
                    pool = m.Pool(1, timeout=limit)
                    pool.apply(noop)
                    continue
                lat.append((time.perf_counter() - t0 - limit) * 1e3)
    finally:
        _terminate_bounded(pool)
    if not lat:
        raise Wrong("every run wedged (%d)" % wedged)
    lat.sort()
    _timeout_latency_extra["wedged"] = wedged
    _timeout_latency_extra["max"] = lat[-1]
    return lat[len(lat) // 2], "ms"


_timeout_latency_extra = {}

# name: (function, base size at SCALE 1.0)
WORKLOADS = {
    "queue": (w_queue, 200000),
    "pipe_rtt": (w_pipe_rtt, 20000),
    "pipe_stream": (w_pipe_stream, 400000),
    "lock": (w_lock, 2000000),
    "value": (w_value, 100000),
    "pool_map": (w_pool_map, 1000000),
    "pool_map_chunk1": (w_pool_map_chunk1, 100000),
    "apply_async": (w_apply_async, 20000),
    "imap_unordered": (w_imap_unordered, 1000000),
    "maxtasks1": (w_maxtasks1, 400),
    "lifecycle": (w_lifecycle, 20),
    "timeout_latency": (w_timeout_latency, 10),
}
# billiard replaces a recycled worker and joins a pool on a ~1 s maintenance
# loop (about 3 tasks/s with maxtasksperchild=1, ~1 s per pool shutdown on the
# reference machine): smaller sizes keep the suite inside its time budget.
BILLIARD_BASE = {"maxtasks1": 40, "lifecycle": 5, "timeout_latency": 20, "pool_map_chunk1": 20000}


def main(argv):
    if len(argv) != 4:
        sys.stderr.write(__doc__)
        return 2
    lib, names, scale = argv[1], argv[2], float(argv[3])
    try:
        if lib == "mp":
            import multiprocessing as m
            m.set_start_method("fork", force=True)
        elif lib == "billiard":
            import billiard as m
        else:
            sys.stderr.write("unknown LIB %r\n" % lib)
            return 2
    except ImportError as e:
        sys.stderr.write("mp_peer: %s\n" % e)
        return 3
    failed = False
    todo = list(WORKLOADS) if names == "all" else names.split(",")
    for name in todo:
        if name not in WORKLOADS:
            sys.stderr.write("unknown workload %r\n" % name)
            return 2
        fn, base = WORKLOADS[name]
        if lib == "billiard":
            base = BILLIARD_BASE.get(name, base)
        n = max(1, int(base * scale))
        try:
            value, unit = fn(m, n)
        except NotSupported as e:
            print(json.dumps({"lib": lib, "workload": name,
                              "error": "not supported: %s" % e}), flush=True)
            continue
        except Exception as e:  # a wrong result or a peer bug: report, go on
            print(json.dumps({"lib": lib, "workload": name,
                              "error": "%s: %s" % (type(e).__name__, e)}), flush=True)
            failed = True
            continue
        out = {"lib": lib, "workload": name, "value": value, "unit": unit, "n": n}
        if name == "timeout_latency":
            out.update(_timeout_latency_extra)
        print(json.dumps(out), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    rc = main(sys.argv)
    # Skip interpreter shutdown: billiard's exit handlers can wait for good on
    # workers left by a hard time limit. Everything was printed and flushed.
    sys.stdout.flush()
    import os
    os._exit(rc)
