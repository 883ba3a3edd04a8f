#!/usr/bin/env python3
"""chat-local against a plain Node.js `ws` server, side by side in one run.

What it measures
----------------
For each run, and for each server in turn (chat-local first, then the Node.js
reference in bench/node/server.mjs, which speaks the same protocol), this
script starts the server on a free 127.0.0.1 port (chat-local with a fresh,
empty data directory), points `target/release/chat-bench` at it, reads the
JSON summary chat-bench prints, stops the server and prints one table:
figure | chat-local | node | ratio (chat-local / node).

  chat   many rooms, every client posts; each message must reach every member
         of its room exactly once (the sender included) and no one else.
         Server CPU per delivered message (from /proc/PID of the server),
         deliveries per second, delivery latency (p50, p99, max) and the loss
         accounting: delivered/expected, duplicates, cross-room deliveries,
         error frames. Any loss fails the run.
  idle   many idle connections: the server's resident memory per connection.
  storm  many connections join at once, then all drop at once: how long the
         joins take and the server CPU they cost, how long until the server is
         quiet after the drop and the CPU the drop costs.

A ratio under 1 means chat-local needs less of that figure than Node (good
for CPU, latency, memory and time; for deliveries/s higher is better, so
there a ratio over 1 is good).

Caveats: the load generator (chat-bench) runs on the same machine as the
server and competes with it for the CPUs, so absolute throughput and latency
are those of the pair, not of the server alone; the server CPU figures are
the server's own. chat-local also carries its embedded DynamoDB engine
(history is written to SQLite), while the Node reference keeps everything in
memory: that is the comparison a user choosing between them would make.
Close other work before measuring and repeat with --runs to see the spread.

Usage
-----
  python3 bench/compare.py chat|idle|storm [--runs N] [--workers N] [ARGS...]

ARGS are passed on to chat-bench after the mode (`-- ARGS` passes them
verbatim, even ones named like this script's own options). --workers sets
TOKIO_WORKER_THREADS for chat-local (Node is single-threaded either way).
chat-local logs at its usual level; set RUST_LOG to change it.

Needs only python3 (stdlib), node and npm, and the release binaries:
  cargo build --release -p backend -p chat-bench --bin chat-local --bin chat-bench
Exit status: 0 when every run is clean, 1 when a run lost, duplicated or
misrouted a message, reported errors, or chat-bench or a server failed, 2 when
something needed is missing, 130 when interrupted.
"""

import argparse
import collections
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "bench" / "node"
# CHAT_LOCAL_BIN runs another build (an older one, for an A/B comparison).
CHAT_LOCAL = Path(os.environ.get("CHAT_LOCAL_BIN", ROOT / "target" / "release" / "chat-local")).resolve()
CHAT_BENCH = ROOT / "target" / "release" / "chat-bench"
BUILD_COMMAND = "cargo build --release -p backend -p chat-bench --bin chat-local --bin chat-bench"

READY_TIMEOUT_S = 120
STOP_GRACE_S = 5
READY_RE = re.compile(r"ready on http://(\[[^\]]+\]|[^\s:/\[\]]+):(\d+)")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# (label, dotted path in chat-bench's JSON, format, which way is better)
FIGURES = {
    "chat": [
        ("server CPU per delivery, µs", "server.cpu_us_per_delivery", "{:.2f}", "lower"),
        ("deliveries per second", "deliveries_per_s", "{:,.0f}", "higher"),
        ("latency p50, ms", "latency_ms.p50", "{:.2f}", "lower"),
        ("latency p99, ms", "latency_ms.p99", "{:.2f}", "lower"),
        ("latency max, ms", "latency_ms.max", "{:.2f}", "lower"),
    ],
    "idle": [
        ("RSS per connection, bytes", "server.rss_per_connection_b", "{:,.0f}", "lower"),
        ("RSS before, KB", "server.rss_before_kb", "{:,.0f}", "lower"),
        ("RSS after, KB", "server.rss_after_kb", "{:,.0f}", "lower"),
    ],
    "storm": [
        ("join time, s", "join_s", "{:.2f}", "lower"),
        ("join server CPU, s", "join_server_cpu_s", "{:.2f}", "lower"),
        ("quiet after drop, s", "quiet_after_drop_s", "{:.2f}", "lower"),
        ("drop server CPU, s", "drop_server_cpu_s", "{:.2f}", "lower"),
        ("handshake p99, ms", "handshake_ms.p99", "{:.0f}", "lower"),
        ("handshakes of 1 s or more", "handshakes_over_1s", "{:,.0f}", "lower"),
        # SYNs the kernel dropped because the accept queue was full (each
        # costs its client a 1 s retry); machine-wide, so run nothing else.
        ("listen queue overflows", "listen_overflows", "{:,.0f}", "lower"),
    ],
}
# Loss accounting: must be zero (or delivered == expected) in every mode that
# reports it.
COUNTERS = ("duplicates", "cross_room", "errors")
SERVERS = ("chat-local", "node")


class SetupError(Exception):
    """Something needed is missing: exit 2."""


class RunError(Exception):
    """A server or chat-bench failed during a run."""


def log(message):
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ servers


class Server:
    """One server process: started, waited for, drained and stopped."""

    def __init__(self, label, argv, env=None, data_dir=None):
        self.label = label
        self.argv = argv
        self.env = env
        self.data_dir = data_dir
        self.proc = None
        self.host = None
        self.port = None
        self.tail = collections.deque(maxlen=20)
        self._ready = threading.Event()
        self._drain = None

    def start(self, timeout=READY_TIMEOUT_S):
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._drain = threading.Thread(target=self._read_output, daemon=True)
        self._drain.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                self._drain.join(2)
                if self._ready.is_set():
                    break
                raise RunError(
                    f"{self.label} exited with status {self.proc.returncode} before it was ready"
                )
            if time.monotonic() > deadline:
                hint = ""
                if self.label == "chat-local":
                    hint = " (its `ready on` line is an INFO log of target chat_local: check RUST_LOG)"
                raise RunError(f"{self.label} printed no `ready on http://` line in {timeout} s{hint}")
        if self.proc.poll() is not None:
            raise RunError(f"{self.label} exited with status {self.proc.returncode} right after starting")
        return self

    def _read_output(self):
        # Drained to the end so the server never blocks on a full pipe
        # (chat-local logs every connection at INFO).
        for raw in self.proc.stdout:
            line = ANSI_RE.sub("", raw.decode("utf-8", "replace")).rstrip("\n")
            self.tail.append(line)
            if not self._ready.is_set():
                found = READY_RE.search(line)
                if found:
                    self.host = found.group(1).strip("[]")
                    self.port = int(found.group(2))
                    self._ready.set()
                    continue
            if " ERROR " in line or "panicked" in line or line.startswith("internal error"):
                log(f"[{self.label}] {line}")

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/ws"

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM, then SIGKILL after STOP_GRACE_S; removes the data dir."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    log(f"[{self.label}] still running {STOP_GRACE_S} s after SIGTERM; killing it")
                    self.proc.kill()
                    self.proc.wait()
            if self._drain is not None:
                self._drain.join(STOP_GRACE_S)
        finally:
            if self.data_dir is not None:
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self.data_dir = None

    def show_tail(self):
        if self.tail:
            log(f"--- last lines from {self.label} ---")
            for line in self.tail:
                log(f"  {line}")


def chat_local_server(workers):
    data_dir = tempfile.mkdtemp(prefix="chat-compare-")
    env = dict(os.environ)
    if workers is not None:
        env["TOKIO_WORKER_THREADS"] = str(workers)
    # The ready line is an INFO event of target chat_local: keep it visible
    # whatever else RUST_LOG asks for.
    if env.get("RUST_LOG") and "chat_local" not in env["RUST_LOG"]:
        env["RUST_LOG"] = env["RUST_LOG"] + ",chat_local=info"
    argv = [
        str(CHAT_LOCAL),
        "--addr", "127.0.0.1:0",
        "--data-dir", data_dir,
        "--dist", "dist",
        # Load is the point here; a person's rate limits (per connection,
        # per address, handshakes) would refuse it, and every client comes
        # from 127.0.0.1, so the per-address HTTP cap is off too.
        "--rate-limit", "0",
    ]
    # Builds from before the HTTP caps (CHAT_LOCAL_BIN, for A/B runs) lack
    # these options.
    help_text = subprocess.run([str(CHAT_LOCAL), "--help"], capture_output=True, text=True).stdout
    if "--max-http-connections-per-ip" in help_text:
        argv += [
            "--max-http-connections-per-ip", "0",
            "--max-http-connections", "8192",
            "--max-connections-per-ip", "0",
        ]
    return Server("chat-local", argv, env=env, data_dir=data_dir)


def node_server():
    argv = [shutil.which("node") or "node", str(NODE_DIR / "server.mjs"), "--port", "0"]
    return Server("node", argv)


SERVER_FACTORIES = {
    "chat-local": chat_local_server,
    "node": lambda workers: node_server(),
}


# ---------------------------------------------------------------- the bench


def run_bench(server, mode, extra):
    """Runs chat-bench against a ready server; returns its JSON summary."""
    argv = [
        str(CHAT_BENCH),
        "--url", server.url,
        "--server-pid", str(server.proc.pid),
        "--json",
        mode,
        *extra,
    ]
    log(f"[{server.label}] {' '.join(argv[1:])}")
    # Progress goes to stderr (passed through); the summary is stdout's last line.
    done = subprocess.run(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    stdout = done.stdout.decode("utf-8", "replace")
    lines = [line for line in stdout.splitlines() if line.strip()]
    if done.returncode != 0:
        if lines:
            log(f"[chat-bench] last output: {lines[-1][:500]}")
        raise RunError(f"chat-bench exited with status {done.returncode} against {server.label}")
    if not lines:
        raise RunError(f"chat-bench printed no JSON summary against {server.label}")
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as error:
        raise RunError(f"chat-bench's last line is not JSON ({error}): {lines[-1][:200]!r}") from None
    if not isinstance(result, dict):
        raise RunError(f"chat-bench's summary is not a JSON object: {lines[-1][:200]!r}")
    return result


def measure(label, mode, extra, workers):
    """One server, one chat-bench run: (result or None, failure or None)."""
    server = SERVER_FACTORIES[label](workers)
    ready = False
    try:
        server.start()
        ready = True
        log(f"[{label}] ready on {server.host}:{server.port} (pid {server.proc.pid})")
        overflows_before = listen_overflows()
        result = run_bench(server, mode, extra)
        overflows_after = listen_overflows()
        if overflows_before is not None and overflows_after is not None:
            result["listen_overflows"] = overflows_after - overflows_before
        if not server.alive():
            raise RunError(f"{label} exited with status {server.proc.returncode} during the run")
        return result, None
    except RunError as error:
        message = str(error)
        # The server's last words help when it is the server that failed.
        server_failed = not ready or not server.alive()
        if ready and not server.alive() and "during the run" not in message:
            message += f" ({label} had exited with status {server.proc.returncode})"
        server.stop()
        if server_failed:
            server.show_tail()
        return None, message
    finally:
        server.stop()


def listen_overflows():
    """The kernel's TcpExt ListenOverflows counter (Linux), or None."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines, lines[1:]):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:]))
            if "ListenOverflows" in fields:
                return int(fields["ListenOverflows"])
    return None


def losses(result):
    """What is wrong with one summary's accounting, if anything."""
    problems = []
    if "expected" in result and "delivered" in result and result["delivered"] != result["expected"]:
        problems.append(f"delivered {result['delivered']} of {result['expected']}")
    for key in COUNTERS:
        value = result.get(key)
        if isinstance(value, (int, float)) and value > 0:
            problems.append(f"{key} {value}")
    return problems


# ---------------------------------------------------------------- reporting


def lookup(result, path):
    value = result
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def fmt(value, pattern):
    return "n/a" if value is None else pattern.format(value)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(value):
    return "—" if value is None else f"{value:.2f}×"


def table(rows, header):
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    def line(row):
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(cell).rjust(width) for cell, width in zip(row[1:], widths[1:])]
        return "  ".join(cells)
    print(line(header))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print(line(row))


def accounting_cell(result, key):
    """One loss-accounting cell, marked when it is not clean; None if absent."""
    if result is None:
        return None
    if key == "delivered":
        if "delivered" not in result or "expected" not in result:
            return None
        cell = f"{result['delivered']:,}/{result['expected']:,}"
        return cell + ("" if result["delivered"] == result["expected"] else " LOSS")
    value = result.get(key)
    if not isinstance(value, (int, float)):
        return None
    return f"{value:,}" + (" FAIL" if value > 0 else "")


def scenario(mode, results):
    sample = next((r for r in results.values() if r), None)
    if not sample:
        return ""
    if mode == "chat":
        keys = ("rooms", "clients", "messages", "expected")
    else:
        keys = ("connections",)
    parts = [f"{key} {sample[key]:,}" for key in keys if isinstance(sample.get(key), (int, float))]
    return ", ".join(parts)


def print_run(number, runs, mode, results, failures):
    about = scenario(mode, results)
    print()
    print(f"Run {number}/{runs}: {mode}" + (f" ({about})" if about else ""))
    rows = []
    for label, path, pattern, better in FIGURES[mode]:
        a = lookup(results["chat-local"], path) if results["chat-local"] else None
        b = lookup(results["node"], path) if results["node"] else None
        rows.append((f"{label} ({better} is better)", fmt(a, pattern), fmt(b, pattern), fmt_ratio(ratio(a, b))))
    for key, label in (("delivered", "delivered/expected"), *((k, k) for k in COUNTERS)):
        cells = [accounting_cell(results[s], key) for s in SERVERS]
        if all(cell is None for cell in cells):
            continue
        rows.append((label, *(cell or ("n/a" if results[s] is None else "—") for cell, s in zip(cells, SERVERS)), "—"))
    table(rows, ("figure", "chat-local", "node", "ratio"))
    for label in SERVERS:
        if failures.get(label):
            print(f"  {label}: FAILED: {failures[label]}")


def print_summary(mode, all_results):
    runs = len(all_results)
    print()
    print(f"Across {runs} runs: min–max (median)")
    rows = []

    def spread(values, pattern):
        values = [v for v in values if v is not None]
        if not values:
            return "n/a"
        low, high, mid = min(values), max(values), statistics.median(values)
        return f"{pattern.format(low)}–{pattern.format(high)} ({pattern.format(mid)})"

    for label, path, pattern, better in FIGURES[mode]:
        per_server = {
            s: [lookup(r[s], path) if r[s] else None for r in all_results] for s in SERVERS
        }
        ratios = [ratio(a, b) for a, b in zip(per_server["chat-local"], per_server["node"])]
        rows.append((
            f"{label} ({better} is better)",
            spread(per_server["chat-local"], pattern),
            spread(per_server["node"], pattern),
            spread(ratios, "{:.2f}×"),
        ))
    clean = {
        s: sum(1 for r in all_results if r[s] is not None and not losses(r[s])) for s in SERVERS
    }
    rows.append(("clean runs", *(f"{clean[s]}/{runs}" for s in SERVERS), "—"))
    table(rows, ("figure", "chat-local", "node", "ratio"))


# --------------------------------------------------------------------- setup


def parse_args(argv):
    passthrough = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(
        prog="python3 bench/compare.py",
        description="Runs chat-bench against chat-local and the Node.js ws reference, side by side.",
        epilog="Other arguments (or everything after --) are passed to chat-bench after the mode.",
        allow_abbrev=False,
    )
    parser.add_argument("mode", choices=sorted(FIGURES), help="the chat-bench scenario")
    parser.add_argument("--runs", type=positive, default=1, help="runs of each server (default 1)")
    parser.add_argument("--workers", type=positive, help="TOKIO_WORKER_THREADS for chat-local")
    args, extra = parser.parse_known_args(argv)
    args.extra = extra + passthrough
    return args


def positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def check_prerequisites():
    missing = [str(path.relative_to(ROOT)) for path in (CHAT_LOCAL, CHAT_BENCH) if not os.access(path, os.X_OK)]
    if missing:
        raise SetupError(
            f"missing: {', '.join(missing)}\n"
            f"build them first (from {ROOT}):\n"
            f"  {BUILD_COMMAND}"
        )
    if shutil.which("node") is None:
        raise SetupError("node is not on PATH (the reference server needs Node.js 20 or newer)")
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            raise SetupError(f"{NODE_DIR / 'node_modules'} is missing and npm is not on PATH")
        log(f"installing the reference server's dependencies: npm ci in {NODE_DIR.relative_to(ROOT)}")
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, stdout=sys.stderr)
        if done.returncode != 0:
            raise SetupError(f"npm ci failed with status {done.returncode}")


def warn_if_stale():
    """A release binary older than its sources measures old code."""
    sources = {
        CHAT_LOCAL: [ROOT / "backend" / "src", ROOT / "shared" / "src"],
        CHAT_BENCH: [ROOT / "bench" / "src"],
    }
    if os.environ.get("CHAT_LOCAL_BIN"):
        # Another build on purpose: its sources are not these.
        del sources[CHAT_LOCAL]
    for binary, dirs in sources.items():
        built = binary.stat().st_mtime
        newer = [
            path
            for folder in dirs
            if folder.is_dir()
            for path in folder.rglob("*.rs")
            if path.stat().st_mtime > built
        ]
        if newer:
            log(
                f"warning: {binary.relative_to(ROOT)} is older than {len(newer)} source file(s) "
                f"(e.g. {newer[0].relative_to(ROOT)}); rebuild with: {BUILD_COMMAND}"
            )


def raise_open_file_limit():
    """Thousands of sockets: lift the soft limit to the hard one for the children."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    except (ValueError, OSError) as error:
        log(f"warning: could not raise the open-file limit from {soft} to {target}: {error}")
    return soft


def describe(command):
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def print_header(args, nofile):
    revision = describe(["git", "rev-parse", "--short", "HEAD"])
    if revision and describe(["git", "status", "--porcelain", "--untracked-files=no"]):
        revision += " + uncommitted changes"
    built = time.strftime("%Y-%m-%d %H:%M", time.localtime(CHAT_LOCAL.stat().st_mtime))
    print(f"chat-local vs Node.js ws reference: {args.mode}, {args.runs} run(s) each")
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"python {platform.python_version()}, node {describe(['node', '--version']) or '?'}"
    )
    print(
        f"chat-local: {CHAT_LOCAL.relative_to(ROOT)} (built {built}), "
        f"TOKIO_WORKER_THREADS={args.workers or 'default (one per CPU)'}, "
        f"RUST_LOG={os.environ.get('RUST_LOG') or 'default'}"
        + (f"; git {revision}" if revision else "")
    )
    print(f"chat-bench {args.mode} {' '.join(args.extra)}".rstrip() + (f"; open files {nofile}" if nofile else ""))
    print("note: chat-bench runs on this machine too and competes with the server for CPU")
    sys.stdout.flush()


def main(argv):
    args = parse_args(argv)
    try:
        sys.stdout.reconfigure(errors="backslashreplace")
    except AttributeError:
        pass
    try:
        check_prerequisites()
    except SetupError as error:
        log(str(error))
        return 2
    warn_if_stale()
    nofile = raise_open_file_limit() if args.mode in ("idle", "storm") else None
    print_header(args, nofile)

    all_results = []
    failed = []
    for number in range(1, args.runs + 1):
        results, failures = {}, {}
        for label in SERVERS:
            result, failure = measure(label, args.mode, args.extra, args.workers)
            if result is not None:
                problems = losses(result)
                if problems:
                    failure = "; ".join(problems)
            results[label] = result
            if failure:
                failures[label] = failure
                failed.append(f"run {number}, {label}: {failure}")
        all_results.append(results)
        print_run(number, args.runs, args.mode, results, failures)
        sys.stdout.flush()
    if args.runs > 1:
        print_summary(args.mode, all_results)

    summaries = [
        f"  run {number} {label}: {json.dumps(results[label], separators=(',', ':'))}"
        for number, results in enumerate(all_results, 1)
        for label in SERVERS
        if results[label] is not None
    ]
    if summaries:
        print()
        print("chat-bench summaries (JSON):")
        print("\n".join(summaries))
    if failed:
        print()
        print("FAILED:")
        for line in failed:
            print(f"  {line}")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
