"""Run the power-cut file system: `python -m fusefs BACKING MOUNTPOINT --control SOCKET`.

The control socket takes one command per connection and answers one JSON line:
`cut` (rewrite the backing tree to its durable state; the mount answers EIO afterwards),
`sync` (make everything durable now), `budget N [hidden]` (N more bytes, then ENOSPC; hidden: statfs does not show it), `budget none`,
`losses` (what a cut would lose, path by path), `stats` (fsync/fsyncdir/write/ENOSPC counts);
`cut` answers its losses too. The process ends when the mount is unmounted.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import socketserver
import sys
import threading

import mfusepy

from fusefs.powercut import PowerCutFS


class _Fuse(mfusepy.FUSE):
    """mfusepy drops rename(2)'s flags; refuse them instead (callers fall back to a plain rename)."""

    def rename_fuse_3(self, old, new, flags):
        if flags:
            return -errno.EINVAL
        return self.rename_fuse_2(old, new)


def _serve_control(fs: PowerCutFS, path: str) -> socketserver.UnixStreamServer:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            words = self.rfile.readline().decode().split()
            try:
                extra = {}
                if words == ["cut"]:
                    extra["lost"] = fs.losses()
                    fs.cut()
                elif words == ["losses"]:
                    extra["lost"] = fs.losses()
                elif words == ["stats"]:
                    extra["synced"] = dict(fs.synced)
                elif words == ["sync"]:
                    fs.sync_all()
                elif len(words) in (2, 3) and words[0] == "budget" and words[2:] in ([], ["hidden"]):
                    fs.set_budget(None if words[1] == "none" else int(words[1]), visible=words[2:] != ["hidden"])
                elif words not in (["stats"], ["losses"]):
                    raise ValueError(f"unknown command {words!r}")
                reply = {"ok": True, "counts": dict(fs.counts), "budget": fs.budget, **extra}
            except Exception as e:  # the caller gets the reason; the file system goes on
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            self.wfile.write(json.dumps(reply).encode() + b"\n")

    if os.path.exists(path):
        os.unlink(path)
    server = socketserver.ThreadingUnixStreamServer(path, Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fusefs")
    ap.add_argument("backing")
    ap.add_argument("mountpoint")
    ap.add_argument("--control", required=True, help="unix socket for cut/sync/budget/stats")
    ns = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    fs = PowerCutFS(ns.backing)
    server = _serve_control(fs, ns.control)
    try:
        _Fuse(fs, ns.mountpoint, foreground=True, hard_remove=True, use_ino=True, fsname="powercutfs",
              default_permissions=True)
    finally:
        server.shutdown()
        server.server_close()
        try:
            os.unlink(ns.control)
        except FileNotFoundError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
