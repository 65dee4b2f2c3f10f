#!/usr/bin/env python3
"""Leader failover of etcd 3.4 on loopback, measured like `bench raft`.

    scripts/etcd-failover.py [--members 5] [--kills 20] [--heartbeat-ms 100]
                             [--election-timeout-ms 1000] [--poll-ms 20] [--keep]

Installs Debian's etcd (`apt-get install -y etcd-server etcd-client`) when
`etcd` is missing, starts N members on loopback (each its own data dir,
client and peer port), waits until every member is healthy and names the
same leader, then K times: SIGKILL the leader; time from the kill until
every live member's `POST /v3/maintenance/status` (the gRPC gateway; one
polling thread per member, `--poll-ms` between answers, a kept-alive
connection) names the same new leader; restart the killed member (same
data dir) and wait until all N are healthy and agree on the leader.

Prints JSON on stdout (median, p99, min, max in ms), one line per kill on
stderr. Every process and directory it made is removed on every exit path
(result, error, Ctrl-C, SIGTERM, SIGHUP). If this script is SIGKILLed the
kernel SIGKILLs the members (parent-death signal), and only its temporary
directory (`etcd-failover-*` in $TMPDIR) stays behind.
"""

import argparse
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PR_SET_PDEATHSIG = 1


def log(message):
    print(f"etcd-failover: {message}", file=sys.stderr, flush=True)


def ensure_etcd():
    if shutil.which("etcd") and shutil.which("etcdctl"):
        return
    log("etcd not found: apt-get install -y etcd-server etcd-client")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get", "install", "-y", "etcd-server", "etcd-client"], env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "etcd-server", "etcd-client"], env=env, check=True)


def etcd_version():
    out = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout
    version = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("etcd Version")), "?")
    package = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "etcd-server"], capture_output=True, text=True
    ).stdout.strip()
    return f"etcd {version} (Debian etcd-server {package or '?'})"


def free_ports(count):
    """Ports free now, distinct from each other."""
    sockets, ports = [], []
    while len(ports) < count:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        if port not in ports:
            ports.append(port)
            sockets.append(s)
    for s in sockets:
        s.close()
    return ports


def die_with_parent():
    """In the child, before exec: SIGKILL when this script dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Member:
    def __init__(self, index, root, client, peer):
        self.name = f"m{index + 1}"
        self.dir = os.path.join(root, self.name)
        self.client = client
        self.peer = peer
        self.proc = None
        self.id = None  # hex member id, from its own status

    def start(self, cluster, token, args):
        os.makedirs(self.dir, exist_ok=True)
        logfile = open(os.path.join(self.dir, "etcd.log"), "ab")
        command = [
            "etcd",
            "--name", self.name,
            "--data-dir", os.path.join(self.dir, "data"),
            "--listen-client-urls", f"http://127.0.0.1:{self.client}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.client}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer}",
            "--initial-cluster", cluster,
            "--initial-cluster-token", token,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", str(args.heartbeat_ms),
            "--election-timeout", str(args.election_timeout_ms),
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=logfile,
            preexec_fn=die_with_parent,
        )
        logfile.close()

    def kill(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None


class Conn:
    """One kept-alive HTTP/1.1 connection to a member's client port."""

    def __init__(self, port):
        self.port = port
        self.http = None

    def status(self):
        """(leader id, own id, raft term) in hex, or None."""
        for _ in range(2):
            try:
                if self.http is None:
                    self.http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                self.http.request(
                    "POST", "/v3/maintenance/status", body=b"{}", headers={"Content-Type": "application/json"}
                )
                answer = self.http.getresponse()
                body = answer.read()
                if answer.status != 200:
                    return None
                s = json.loads(body)
                leader = int(s.get("leader", 0))
                me = int(s["header"]["member_id"])
                term = int(s.get("raftTerm", s["header"].get("raft_term", 0)))
                return (f"{leader:x}" if leader else None, f"{me:x}", term)
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                if self.http is not None:
                    self.http.close()
                self.http = None
        return None

    def healthy(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            c.request("GET", "/health")
            answer = c.getresponse()
            ok = answer.status == 200 and json.loads(answer.read()).get("health") in ("true", True)
            c.close()
            return ok
        except (OSError, http.client.HTTPException, ValueError):
            return False


def agreed_view(members):
    """The leader every member names, once all are healthy and agree (else None)."""
    views = [Conn(m.client).status() for m in members]
    if any(v is None or v[0] is None for v in views):
        return None
    leaders = {v[0] for v in views}
    if len(leaders) != 1:
        return None
    if not all(Conn(m.client).healthy() for m in members):
        return None
    for m, v in zip(members, views):
        m.id = v[1]
    return (views[0][0], max(v[2] for v in views))


def wait_agreed(members, limit):
    started = time.monotonic()
    while time.monotonic() - started < limit:
        for m in members:
            if m.proc is not None and m.proc.poll() is not None:
                raise RuntimeError(f"{m.name} exited ({m.proc.returncode}); see {m.dir}/etcd.log")
        view = agreed_view(members)
        if view:
            return view, time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"the members did not agree on a healthy leader within {limit} s")


def time_failover(members, victim, old_leader, poll):
    """Kills `victim` once every poller answered; returns (kill time,
    {member: (leader, term, since)}, agreed-at or None)."""
    watched = [m for m in members if m is not victim]
    lock = threading.Lock()
    slots = {m.name: {"current": None, "since": None, "term": None, "polls": 0} for m in watched}
    stop = threading.Event()

    def poller(m):
        conn = Conn(m.client)
        while not stop.is_set():
            v = conn.status()
            now = time.monotonic()
            key = v[0] if v and v[0] and v[0] != old_leader else None
            with lock:
                slot = slots[m.name]
                if slot["current"] != key:
                    slot["current"] = key
                    slot["since"] = now
                    slot["term"] = v[2] if v else None
                slot["polls"] += 1
            time.sleep(poll)

    threads = [threading.Thread(target=poller, args=(m,), daemon=True) for m in watched]
    for t in threads:
        t.start()
    warm = time.monotonic() + 5
    while time.monotonic() < warm:
        with lock:
            if all(s["polls"] > 0 for s in slots.values()):
                break
        time.sleep(0.005)
    killed_at = time.monotonic()
    victim.kill()
    agreed_at = None
    deadline = killed_at + 120
    while time.monotonic() < deadline:
        time.sleep(0.002)
        with lock:
            keys = {s["current"] for s in slots.values()}
            if len(keys) == 1 and None not in keys:
                agreed_at = max(max(s["since"], killed_at) for s in slots.values())
                break
    stop.set()
    for t in threads:
        t.join()
    return killed_at, {k: dict(v) for k, v in slots.items()}, agreed_at


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[round((len(s) - 1) * p)]


def spread(values):
    return {
        "n": len(values),
        "median": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "min": percentile(values, 0.0),
        "max": percentile(values, 1.0),
    }


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return None


def run(args, root):
    ports = free_ports(2 * args.members)
    members = [Member(i, root, ports[2 * i], ports[2 * i + 1]) for i in range(args.members)]
    cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer}" for m in members)
    token = f"bench-{os.getpid()}"
    loadavg_at_start = loadavg()
    for m in members:
        m.start(cluster, token, args)
    (leader, term), boot_s = wait_agreed(members, 120)
    by_id = lambda i: next((m for m in members if m.id == i), None)
    log(f"{args.members} members healthy after {boot_s:.2f} s: leader {by_id(leader).name} (term {term})")

    all_ms, elected_ms, term_jumps, each, failures = [], [], [], [], []
    for k in range(args.kills):
        victim = by_id(leader)
        killed_at, slots, agreed_at = time_failover(members, victim, leader, args.poll_ms / 1000)
        if agreed_at is None:
            log(f"kill {k + 1}: {victim.name} killed, no agreement within 120 s: {slots}")
            failures.append({"kill": k + 1, "victim": victim.name, "slots": slots})
        else:
            new_leader = next(iter(slots.values()))["current"]
            new_term = max(s["term"] or 0 for s in slots.values())
            ms = (agreed_at - killed_at) * 1000
            named_by = by_id(new_leader)
            itself = slots.get(named_by.name) if named_by else None
            self_ms = (max(itself["since"], killed_at) - killed_at) * 1000 if itself else None
            all_ms.append(ms)
            if self_ms is not None:
                elected_ms.append(self_ms)
            term_jumps.append(new_term - term)
            each.append(
                {
                    "kill": k + 1,
                    "victim": victim.name,
                    "old_term": term,
                    "new_leader": named_by.name if named_by else new_leader,
                    "new_term": new_term,
                    "all_ms": round(ms, 1),
                    "new_leader_names_itself_ms": round(self_ms, 1) if self_ms is not None else None,
                    "polls": sum(s["polls"] for s in slots.values()),
                }
            )
        restarted = time.monotonic()
        victim.start(cluster, token, args)
        (leader, term), _ = wait_agreed(members, 180)
        whole_s = time.monotonic() - restarted
        if agreed_at is not None:
            each[-1]["whole_again_s"] = round(whole_s, 1)
            log(
                f"kill {k + 1}: {victim.name} (term {each[-1]['old_term']}) killed; "
                f"{each[-1]['new_leader']} named by every live member after {each[-1]['all_ms']:.0f} ms "
                f"(term {each[-1]['new_term']}; it named itself after {each[-1]['new_leader_names_itself_ms']} ms); "
                f"restarted, healthy and agreed after {whole_s:.1f} s"
            )

    report = {
        "scenario": "etcd-leader-failover",
        "implementation": etcd_version(),
        "members": args.members,
        "kills": args.kills,
        "heartbeat_interval_ms": args.heartbeat_ms,
        "election_timeout_ms": args.election_timeout_ms,
        "poll_ms": args.poll_ms,
        "how_measured": "SIGKILL of the leader -> every live member's POST /v3/maintenance/status (each polled on a thread of its own over a kept-alive HTTP/1.1 connection, poll_ms between answers) names the same new leader; a member's time is the answer that first showed the leader it still showed when all agreed. Then the member is restarted (same data dir) and the next kill waits until all members answer GET /health true and name one leader.",
        "loadavg_at_start": loadavg_at_start,
        "loadavg_at_end": loadavg(),
        "boot_s": boot_s,
        "leader_failover_ms": spread(all_ms),
        "new_leader_names_itself_ms": spread(elected_ms),
        "term_jumps": term_jumps,
        "each": each,
        "failures": failures,
    }
    log(
        f"{args.members} members: leader failover median {percentile(all_ms, 0.5) or 0:.0f} ms, "
        f"p99 {percentile(all_ms, 0.99) or 0:.0f} ms (min {percentile(all_ms, 0.0) or 0:.0f}, "
        f"max {percentile(all_ms, 1.0) or 0:.0f}); {len(failures)} failure(s)"
    )
    return members, report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--heartbeat-ms", type=int, default=100)
    parser.add_argument("--election-timeout-ms", type=int, default=1000)
    parser.add_argument("--poll-ms", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the data dirs and logs, and say where")
    args = parser.parse_args()

    ensure_etcd()
    root = tempfile.mkdtemp(prefix="etcd-failover-")
    members = []

    class Stopped(Exception):
        pass

    def stop(signum, _frame):
        raise Stopped(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    code = 0
    report = None
    try:
        members, report = run(args, root)
    except KeyboardInterrupt:
        log("stopped (Ctrl-C)")
        code = 130
    except Stopped as e:
        log(f"stopped (signal {e.args[0]})")
        code = 128 + e.args[0]
    except Exception as e:  # report, clean up, fail
        log(f"failed: {e}")
        code = 1
    finally:
        # `run` may have failed before returning its members: find every
        # etcd this script started among its children too.
        for m in members:
            m.kill()
        kill_children()
        if args.keep:
            log(f"data dirs and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if report is not None:
        print(json.dumps(report, indent=2))
    sys.exit(code)


def kill_children():
    """SIGKILL and reap every child process of this script still running."""
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == me:
                os.kill(int(pid), signal.SIGKILL)
                os.waitpid(int(pid), 0)
        except (OSError, ValueError, IndexError, ChildProcessError):
            pass


if __name__ == "__main__":
    main()
