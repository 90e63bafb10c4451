"""A python-can socketcand client driven by the integration tests over stdin/stdout.

usage: python3 python-can-peer.py HOST PORT CHANNEL [FILTERS_JSON]
Connects with can.Bus(interface='socketcand', ...), prints {"ready": true, "version": ...}, then
reads one JSON request per line and answers one JSON line:
  {"op": "send", "frames": [FRAME...]}              -> {"sent": N}
  {"op": "recv", "count": N, "timeout": S}          -> {"frames": [FRAME...]} (stops at N or S)
  {"op": "periodic", "frame": FRAME, "period": S, "duration": S}
                                                    -> {"started": true}  (bus.send_periodic)
  {"op": "quit"}                                     -> {"bye": true}
FRAME = {"id": int, "ext": bool, "data": hex, "fd": bool, "dlc": int|null, "ts": float}
"""
import json
import sys
import time

import can


def to_json(m):
    return {
        "id": m.arbitration_id,
        "ext": bool(m.is_extended_id),
        "data": bytes(m.data).hex(),
        "fd": bool(m.is_fd),
        "dlc": m.dlc,
        "ts": m.timestamp,
    }


def from_json(f):
    data = bytes.fromhex(f.get("data", ""))
    kw = {}
    if f.get("dlc") is not None:
        kw["dlc"] = f["dlc"]
    return can.Message(
        arbitration_id=f["id"],
        is_extended_id=f.get("ext", False),
        data=data,
        is_fd=f.get("fd", False),
        **kw,
    )


def main():
    host, port, channel = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    filters = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
    bus = can.Bus(interface="socketcand", host=host, port=port, channel=channel, can_filters=filters)
    print(json.dumps({"ready": True, "version": can.__version__}), flush=True)
    tasks = []
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        if op == "send":
            for f in req["frames"]:
                bus.send(from_json(f))
            print(json.dumps({"sent": len(req["frames"])}), flush=True)
        elif op == "recv":
            out = []
            end = time.monotonic() + req["timeout"]
            while len(out) < req["count"]:
                left = end - time.monotonic()
                if left <= 0:
                    break
                m = bus.recv(timeout=left)
                if m is not None:
                    out.append(to_json(m))
            print(json.dumps({"frames": out}), flush=True)
        elif op == "periodic":
            task = bus.send_periodic(from_json(req["frame"]), req["period"], duration=req["duration"])
            tasks.append(task)
            print(json.dumps({"started": True}), flush=True)
        elif op == "quit":
            break
    for t in tasks:
        t.stop()
    bus.shutdown()
    print(json.dumps({"bye": True}), flush=True)


if __name__ == "__main__":
    main()
