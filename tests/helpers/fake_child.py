"""A scriptable child process for supervisor tests.

    fake_child.py [--mode run|crash|exit|hang] [--code N] [--after S] [--ignore-term]
                  [--record FILE] [--ready] [--ready-after S] [--grandchild]

--mode run    sleep until signalled (default); exit 0 on SIGTERM
--mode exit   exit with --code (default 0) after --after seconds
--mode crash  same as exit but default code 3
--mode kill   kill itself with SIGKILL after --after seconds
--ignore-term ignore SIGTERM (the supervisor must SIGKILL it)
--record FILE append one JSON line per event: {"event": "start"|"term", "id", "pid", "n"}
              where n is the start count of this id (lines with event start)
--ready       call workbooks.supervisor.notify_ready() after --ready-after seconds
--ready-after-restart S  use S as --ready-after on every start but the first
--ready-via-lib  signal through workbooks.supervisor.notify_ready() (default: write the fd directly)
--no-ready    (with a readiness fd) exit or hang without ever signalling
--times N     apply the exit behaviour only on the first N starts (needs --record), then run
--grandchild  start a sleeping grandchild and record its pid (to test group cleanup)
Behaviours can also come from env FAKE_CHILD_ARGS (shell-split), appended to argv.
"""

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))


def record(path, event, **kw):
    if not path:
        return
    line = json.dumps({"event": event, "id": os.environ.get("WB_CHILD_ID"), "pid": os.getpid(),
                       "t": time.time(), **kw})
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()


def start_count(path):
    if not path or not os.path.exists(path):
        return 1
    me = os.environ.get("WB_CHILD_ID")
    n = 0
    with open(path) as f:
        for line in f:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if d.get("event") == "start" and d.get("id") == me:
                n += 1
    return n + 1


def main():
    argv = sys.argv[1:] + shlex.split(os.environ.get("FAKE_CHILD_ARGS", ""))
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="run", choices=["run", "crash", "exit", "hang", "kill"])
    p.add_argument("--code", type=int, default=None)
    p.add_argument("--after", type=float, default=0.0)
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--record", default=None)
    p.add_argument("--ready", action="store_true")
    p.add_argument("--ready-after", type=float, default=0.0)
    p.add_argument("--grandchild", action="store_true")
    p.add_argument("--times", type=int, default=None,
                   help="apply the exit behaviour only on the first N starts, then run")
    p.add_argument("--no-ready", action="store_true")
    p.add_argument("--ready-via-lib", action="store_true")
    p.add_argument("--ready-after-restart", type=float, default=None,
                   help="--ready-after for every start but the first (slow replacements)")
    a = p.parse_args(argv)

    if a.ignore_term or a.mode == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        def on_term(signum, frame):
            record(a.record, "term")
            os._exit(0)
        signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the supervisor reacts to ^C

    n = start_count(a.record)
    extra = {}
    if a.grandchild:
        # the record path in argv marks it as this test's process for the leak check
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", a.record or "-"])
        extra["grandchild"] = g.pid
    env = {k: os.environ.get(k) for k in ("WB_CHILD_GROUP", "WB_SUPERVISOR_PID", "WB_SUPERVISOR_ENDPOINT",
                                          "FAKE_CHILD_MARK")}
    record(a.record, "start", n=n, env=env, **extra)

    if a.times is not None and n > a.times:
        a.mode = "run"
    if a.ready_after_restart is not None and n > 1:
        a.ready_after = a.ready_after_restart
    if a.ready and not a.no_ready:
        time.sleep(a.ready_after)
        record(a.record, "ready")  # before signalling, so the record order is causal
        if a.ready_via_lib:
            from workbooks.supervisor import notify_ready
            notify_ready()
        else:  # the same protocol, without importing the package (keeps children fast to start)
            fd = int(os.environ["WB_READY_FD"])
            os.write(fd, b"R")
            os.close(fd)

    if a.mode in ("exit", "crash"):
        time.sleep(a.after)
        code = a.code if a.code is not None else (0 if a.mode == "exit" else 3)
        record(a.record, "exit", code=code)
        os._exit(code)
    if a.mode == "kill":
        time.sleep(a.after)
        os.kill(os.getpid(), signal.SIGKILL)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
