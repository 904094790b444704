#!/usr/bin/env python3
"""An independent OTLP/gRPC logs receiver (grpcio + the official
opentelemetry-proto package) that checks Outflow alerts against the contract
of DESIGN.md section 4.

Usage: otlp_receiver.py PORT_FILE DONE_FILE TIMEOUT_SECS
Listens on 127.0.0.1:0 and writes the port to PORT_FILE. When DONE_FILE
appears (it holds the number of alerts the sender delivered), or after
TIMEOUT_SECS, checks every record received, prints one JSON line per alert,
and exits 0 when all is well, 1 with the problems otherwise.
"""
import json
import sys
import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc

# attribute -> (AnyValue field, required)
CONTRACT = {
    "outflow.alert.id": ("string_value", True), "outflow.analytic": ("string_value", True),
    "host.name": ("string_value", True), "process.pid": ("int_value", True),
    "process.parent_pid": ("int_value", False), "process.executable.name": ("string_value", True),
    "process.executable.path": ("string_value", False), "process.command_line": ("string_value", False),
    "user.name": ("string_value", False), "outflow.parent.executable.name": ("string_value", False),
    "outflow.window.start": ("string_value", True), "outflow.window.end": ("string_value", True),
    "outflow.bytes_out": ("int_value", True), "outflow.bytes_in": ("int_value", True),
    "outflow.ratio": ("double_value", True), "outflow.service": ("string_value", True),
    "outflow.destinations": ("array_value", True), "outflow.score": ("double_value", True),
    "outflow.reasons": ("array_value", True), "event.name": ("string_value", True),
}
DEST = {"ip": "string_value", "port": "int_value", "service": "string_value",
        "bytes_out": "int_value", "bytes_in": "int_value"}
REASON = {"factor": "string_value", "value": "double_value", "peers": "int_value",
          "percentile": "double_value", "contribution": "double_value"}
SEVERITY = {"low": 9, "medium": 13, "high": 17, "critical": 21}
records, problems, lock = [], [], threading.Lock()


def check_kvlist(where, value, shape):
    kv = {x.key: x.value for x in value.kvlist_value.values}
    for k, field in shape.items():
        if k not in kv or kv[k].WhichOneof("value") != field:
            problems.append(f"{where}: `{k}` missing or not {field}")


def check(rec):
    attrs = {a.key: a.value for a in rec.attributes}
    aid = attrs.get("outflow.alert.id").string_value if "outflow.alert.id" in attrs else "?"
    for key, (field, required) in CONTRACT.items():
        if key not in attrs:
            if required:
                problems.append(f"{aid}: required attribute `{key}` missing")
        elif attrs[key].WhichOneof("value") != field:
            problems.append(f"{aid}: `{key}` is {attrs[key].WhichOneof('value')}, not {field}")
    if SEVERITY.get(rec.severity_text) != rec.severity_number:
        problems.append(f"{aid}: severity {rec.severity_text!r}/{rec.severity_number}")
    if not rec.body.string_value or rec.time_unix_nano == 0:
        problems.append(f"{aid}: empty body or timestamp")
    if attrs.get("event.name") and attrs["event.name"].string_value != "outflow.alert":
        problems.append(f"{aid}: event.name is {attrs['event.name'].string_value!r}")
    for i, d in enumerate(attrs.get("outflow.destinations", None).array_value.values if "outflow.destinations" in attrs else []):
        check_kvlist(f"{aid} destinations[{i}]", d, DEST)
    for i, r in enumerate(attrs.get("outflow.reasons").array_value.values if "outflow.reasons" in attrs else []):
        check_kvlist(f"{aid} reasons[{i}]", r, REASON)
    return {"id": aid, "severity": rec.severity_text, "body": rec.body.string_value,
            "host": attrs["host.name"].string_value if "host.name" in attrs else None}


class Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def Export(self, request, context):
        with lock:
            for rl in request.resource_logs:
                for sl in rl.scope_logs:
                    for rec in sl.log_records:
                        records.append(check(rec))
        return logs_service_pb2.ExportLogsServiceResponse()


def main():
    import os
    port_file, done_file, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(port_file + ".tmp", port_file)
    deadline = time.time() + timeout
    expect = None
    while time.time() < deadline and expect is None:
        if os.path.exists(done_file):
            with open(done_file) as f:
                expect = int(f.read().strip() or "0")
        time.sleep(0.1)
    time.sleep(0.3)  # anything extra (a duplicate) arrives now
    server.stop(0)
    for r in records:
        print(json.dumps(r))
    ids = [r["id"] for r in records]
    if expect is None:
        problems.append(f"no DONE_FILE within {timeout}s")
    elif len(ids) != expect or expect == 0:
        problems.append(f"received {len(ids)} alerts, the collector delivered {expect}")
    if len(set(ids)) != len(ids):
        problems.append("duplicate alert ids received")
    for p in problems:
        print("PROBLEM: " + p, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
