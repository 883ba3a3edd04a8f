#!/usr/bin/env python3
"""The Lambda binary's figures: its zipped size and its init time.

  python3 bench/lambda.py size PATH/TO/bootstrap
      bytes of the bootstrap zipped as Lambda takes it (deflate, level 9)
  python3 bench/lambda.py init PATH/TO/chat-lambda [--runs 30]
      milliseconds from process start to its first poll of the Lambda
      Runtime API (GET /2018-06-01/runtime/invocation/next), served here by
      a local stand-in that never answers; median, min and max over the runs

Init runs the binary on this machine (build it natively for this: the
arm64 build Lambda runs cannot start on x86_64). Standard library only.
"""

import argparse
import http.server
import io
import os
import statistics
import subprocess
import sys
import threading
import time
import zipfile


def size(path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.write(path, "bootstrap")
    raw = os.path.getsize(path)
    zipped = len(buffer.getvalue())
    print(f"bootstrap {raw} B ({raw / 1e6:.2f} MB), zipped {zipped} B ({zipped / 1e6:.2f} MB)")


def init(binary, runs):
    polled = threading.Event()

    class RuntimeApi(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.endswith("/runtime/invocation/next"):
                polled.set()
                # Never answer: the function stays waiting for work.
                time.sleep(5)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RuntimeApi)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(
        os.environ,
        AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}",
        AWS_LAMBDA_FUNCTION_NAME="chat",
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256",
        AWS_LAMBDA_LOG_STREAM_NAME="local",
        AWS_LAMBDA_LOG_GROUP_NAME="local",
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="local",
        AWS_SECRET_ACCESS_KEY="local",
        AWS_EC2_METADATA_DISABLED="true",
        CONNECTIONS_TABLE="chat-connections",
        MESSAGES_TABLE="chat-messages",
    )
    times = []
    for _ in range(runs):
        polled.clear()
        started = time.perf_counter()
        process = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not polled.wait(10):
            process.kill()
            sys.exit("the function never polled the Runtime API")
        times.append((time.perf_counter() - started) * 1000)
        process.kill()
        process.wait()
    print(
        f"init to first poll over {runs} runs: median {statistics.median(times):.2f} ms, "
        f"min {min(times):.2f} ms, max {max(times):.2f} ms"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("size").add_argument("bootstrap")
    init_parser = sub.add_parser("init")
    init_parser.add_argument("binary")
    init_parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    if args.command == "size":
        size(args.bootstrap)
    else:
        init(args.binary, args.runs)


if __name__ == "__main__":
    main()
