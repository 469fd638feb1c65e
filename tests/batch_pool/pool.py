#!/usr/bin/env python3
"""A simulated Azure Batch pool on loopback, for the test suite.

It serves the Batch REST routes the job manager calls (GET /jobs/{id}, POST
/jobs/{id}/addtaskcollection) and the managed-identity endpoint, checking the contract on every
request: api-version, bearer token, at most 100 tasks and under 1 MB per call, valid and unique
task ids. It then plays the pool: it creates the job a job schedule (as `batchscore batch plan`
wrote it) would create, runs the job manager task's command line as Batch does (split into words,
no shell of its own) with the environment Batch gives a task, retries it, and runs the tasks it
added on N simulated nodes, retrying failures up to maxTaskRetryCount.

Driven by the real Azure CLI instead (`--az-account NAME`, no `--schedule`): the service also
serves what `az batch job-schedule create`, `az batch job create`, `az batch task create` and
`az batch job set` call (POST /jobschedules, POST /jobs, POST /jobs/{id}/addtaskcollection,
PATCH /jobs/{id}, with Shared Key auth and the CLI's api-version), writes its endpoint to
`--endpoint-file`, waits for a schedule (then plays it as above) or for a one-off job switched
to `onAllTasksComplete: terminatejob` (then runs its tasks), and answers with Batch's bodies
and headers.

Faults, each optional:
  --kill-manager-mid-add   the first Add Task Collection call adds half its tasks, then the job
                           manager is killed (SIGKILL) before it gets an answer; Batch retries it
  --servererror-task ID    that task gets `servererror` once
  --kill-task ID           that task's first attempt is killed (SIGKILL) once it has planned
  --duplicate-task ID      that task's first attempt runs twice at once (a node thought lost)
  --clienterror-task ID    that task is refused (`clienterror`, InvalidPropertyValue) every time
  --forbid                 every Batch call answers 403 (the identity lacks the role)

Prints a JSON report on stdout; exits 1 when a contract check failed or a task did not succeed.
Every child process is killed and the server closed before it exits.
"""

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

BATCH_RESOURCE = "https://batch.core.windows.net/"
TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class State:
    def __init__(self, args, job=None, spec=None):
        self.args = args
        self.lock = threading.Lock()
        self.job = job  # the job Batch made (from a schedule) or was asked to make
        self.spec = spec  # its job specification (what the tasks' environment comes from)
        self.schedule = None
        self.ready = threading.Event()  # az mode: a schedule arrived, or a job is complete
        self.tasks = {}  # lower-case id -> task json
        self.order = []
        self.requests = {"token": 0, "get_job": 0, "addtaskcollection": 0, "other": 0,
                         "create_schedule": 0, "create_job": 0, "patch_job": 0}
        self.violations = []
        self.calls = []  # tasks per addtaskcollection call
        self.servererror_pending = set(args.servererror_task)
        self.servererrors_sent = 0
        self.kill_mid_add = args.kill_manager_mid_add
        self.manager = None  # the running job manager process
        self.manager_killed_mid_add = False
        self.children = set()

    def violation(self, text):
        with self.lock:
            self.violations.append(text)


def handler_for(state):
    args = state.args

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def created(self, status, url):
            """Batch's answer to a create or update: no body, the entity's headers."""
            self.send_response(status)
            self.send_header("ETag", '"0x8DE0000000000001"')
            self.send_header("Last-Modified", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()))
            self.send_header("DataServiceId", url)
            self.send_header("Location", url)
            self.send_header("request-id", "00000000-0000-0000-0000-000000000001")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def error(self, status, code, message):
            state.violation(f"{self.command} {self.path}: {code}: {message}")
            self.reply(status, {"code": code, "message": {"lang": "en-US", "value": message}})

        def batch_checks(self, query):
            if args.forbid:
                self.reply(403, {"code": "AuthorizationFailure", "message": {"lang": "en-US",
                                 "value": "This request is not authorized to perform this operation."}})
                return False
            if query.get("api-version", [None])[0] not in args.api_version:
                self.error(400, "InvalidQueryParameterValue", f"api-version {query.get('api-version')}")
                return False
            auth = self.headers.get("Authorization", "")
            shared_key = args.az_account and auth.startswith(f"SharedKey {args.az_account}:")
            if auth != f"Bearer {args.token}" and not shared_key:
                self.error(401, "AuthenticationFailed", f"missing or wrong credentials: {auth[:20]!r}")
                return False
            if not self.headers.get("client-request-id"):
                self.error(400, "MissingRequiredHeader", "client-request-id")
                return False
            return True

        def do_GET(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path == "/metadata/identity/oauth2/token":
                with state.lock:
                    state.requests["token"] += 1
                if self.headers.get("Metadata") != "true":
                    return self.error(400, "bad_request", "Metadata: true header missing")
                if query.get("resource") != [BATCH_RESOURCE]:
                    return self.error(400, "invalid_resource", f"resource {query.get('resource')}")
                if query.get("client_id") != [args.client_id]:
                    return self.error(400, "invalid_request", f"client_id {query.get('client_id')}")
                expires = int(time.time()) + 3600
                return self.reply(200, {"access_token": args.token, "expires_on": str(expires),
                                        "resource": BATCH_RESOURCE, "token_type": "Bearer"})
            job = state.job
            if job is not None and url.path == f"/jobs/{job['id']}":
                with state.lock:
                    state.requests["get_job"] += 1
                if self.batch_checks(query):
                    self.reply(200, job)
                return
            with state.lock:
                state.requests["other"] += 1
            self.error(404, "ResourceNotFound", url.path)

        def read_json(self):
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            if not self.headers.get("Content-Type", "").startswith("application/json"):
                self.error(400, "InvalidHeaderValue", "content-type")
                return None
            try:
                return json.loads(raw)
            except ValueError as e:
                self.error(400, "InvalidRequestBody", str(e))
                return None

        def create_schedule(self, query):
            """`az batch job-schedule create`: the schedule's first job is made at once."""
            with state.lock:
                state.requests["create_schedule"] += 1
            if not self.batch_checks(query):
                return
            schedule = self.read_json()
            if schedule is None:
                return
            for field in ("id", "schedule", "jobSpecification"):
                if field not in schedule:
                    return self.error(400, "MissingRequiredProperty", field)
            if state.schedule is not None:
                return self.error(409, "JobScheduleExists", schedule["id"])
            spec = schedule["jobSpecification"]
            with state.lock:
                state.schedule = schedule
                state.spec = spec
                state.job = job_of_schedule(schedule, args.created)
            self.created(201, f"{self.endpoint()}/jobschedules/{schedule['id']}")
            state.ready.set()

        def create_job(self, query):
            """`az batch job create`: a one-off job; its tasks come next."""
            with state.lock:
                state.requests["create_job"] += 1
            if not self.batch_checks(query):
                return
            job = self.read_json()
            if job is None:
                return
            for field in ("id", "poolInfo"):
                if field not in job:
                    return self.error(400, "MissingRequiredProperty", field)
            if state.job is not None:
                return self.error(409, "JobExists", job["id"])
            with state.lock:
                state.spec = job
                state.job = dict(job, creationTime=args.created, state="active")
            self.created(201, f"{self.endpoint()}/jobs/{job['id']}")

        def endpoint(self):
            return f"http://{self.headers.get('Host', '127.0.0.1')}"

        def do_PATCH(self):
            """`az batch job set`: a one-off job whose tasks are all in completes with them."""
            url = urlparse(self.path)
            query = parse_qs(url.query)
            job = state.job
            if job is None or url.path != f"/jobs/{job['id']}":
                with state.lock:
                    state.requests["other"] += 1
                return self.error(404, "JobNotFound", url.path)
            with state.lock:
                state.requests["patch_job"] += 1
            if not self.batch_checks(query):
                return
            patch = self.read_json()
            if patch is None:
                return
            unknown = set(patch) - {"priority", "maxParallelTasks", "allowTaskPreemption",
                                    "onAllTasksComplete", "constraints", "poolInfo", "metadata"}
            if unknown:
                return self.error(400, "InvalidPropertyName", ", ".join(sorted(unknown)))
            with state.lock:
                job.update(patch)
            self.created(200, f"{self.endpoint()}/jobs/{job['id']}")
            if patch.get("onAllTasksComplete") == "terminatejob":
                state.ready.set()

        def do_POST(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if args.az_account and url.path == "/jobschedules":
                return self.create_schedule(query)
            if args.az_account and url.path == "/jobs":
                return self.create_job(query)
            job = state.job
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            if job is None or url.path != f"/jobs/{job['id']}/addtaskcollection":
                with state.lock:
                    state.requests["other"] += 1
                return self.error(404, "ResourceNotFound", url.path)
            with state.lock:
                state.requests["addtaskcollection"] += 1
            if not self.batch_checks(query):
                return
            if not self.headers.get("Content-Type", "").startswith("application/json"):
                return self.error(400, "InvalidHeaderValue", "content-type")
            if len(raw) >= 1024 * 1024:
                return self.error(413, "RequestBodyTooLarge", f"{len(raw)} bytes")
            tasks = json.loads(raw)["value"]
            if not 1 <= len(tasks) <= 100:
                return self.error(400, "InvalidPropertyValue", f"{len(tasks)} tasks in one call")
            ids = [t.get("id", "") for t in tasks]
            if len({i.lower() for i in ids}) != len(ids):
                return self.error(400, "InvalidPropertyValue", "duplicate task ids in one call")
            for i in ids:
                if not TASK_ID.match(i):
                    return self.error(400, "InvalidPropertyValue", f"task id {i!r}")
            with state.lock:
                state.calls.append(len(tasks))
                cut = state.kill_mid_add
                state.kill_mid_add = False
            todo = tasks[: len(tasks) // 2] if cut else tasks
            results = []
            with state.lock:
                for t in todo:
                    key = t["id"].lower()
                    if t["id"] in args.clienterror_task:
                        results.append({"status": "clienterror", "taskId": t["id"],
                                        "error": {"code": "InvalidPropertyValue",
                                                  "message": {"value": "The value provided for one of the properties in the request body is invalid."}}})
                    elif t["id"] in state.servererror_pending:
                        state.servererror_pending.discard(t["id"])
                        state.servererrors_sent += 1
                        results.append({"status": "servererror", "taskId": t["id"],
                                         "error": {"code": "ServerError", "message": {"value": "injected"}}})
                    elif key in state.tasks:
                        results.append({"status": "clienterror", "taskId": t["id"],
                                        "error": {"code": "TaskExists",
                                                  "message": {"value": "The specified task already exists."}}})
                    else:
                        state.tasks[key] = t
                        state.order.append(key)
                        results.append({"status": "success", "taskId": t["id"], "eTag": "0x1"})
            if cut:
                # Processed in part; the caller dies before any answer (a node lost mid-call).
                proc = state.manager
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    state.manager_killed_mid_add = True
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return
            self.reply(200, {"value": results})

    return Handler


def app_package_env(refs, binary_dir):
    env = {}
    for ref in refs or []:
        clean = lambda s: re.sub(r"[^a-z0-9]", "_", s.lower())
        name = "AZ_BATCH_APP_PACKAGE_" + clean(ref["applicationId"])
        if ref.get("version"):
            name += "_" + clean(ref["version"])
        env[name] = binary_dir
    return env


def settings(items):
    return {e["name"]: e["value"] for e in items or []}


def job_of_schedule(schedule, created):
    """The job a schedule's first recurrence makes."""
    spec = schedule["jobSpecification"]
    return {"id": f"{schedule['id']}:job-1", "creationTime": created, "state": "active",
            "poolInfo": spec["poolInfo"], "onAllTasksComplete": spec.get("onAllTasksComplete")}


class Pool:
    def __init__(self, state, endpoint, base_env):
        self.state = state
        self.endpoint = endpoint
        self.base_env = base_env
        self.work = state.args.work
        self.report = {}

    @property
    def job(self):
        return self.state.job

    @property
    def spec(self):
        return self.state.spec

    def task_env(self, task, node, attempt_dir):
        env = dict(self.base_env)
        env.update(settings(self.spec.get("commonEnvironmentSettings")))
        shared = os.path.join(self.work, "nodes", str(node), "shared")
        os.makedirs(shared, exist_ok=True)
        env.update({
            "AZ_BATCH_ACCOUNT_URL": self.endpoint,
            "AZ_BATCH_ACCOUNT_NAME": "simulated",
            "AZ_BATCH_POOL_ID": self.spec["poolInfo"]["poolId"],
            "AZ_BATCH_JOB_ID": self.job["id"],
            "AZ_BATCH_TASK_ID": task["id"],
            "AZ_BATCH_NODE_ID": f"tvmps_node{node}",
            "AZ_BATCH_NODE_SHARED_DIR": shared,
            "AZ_BATCH_TASK_WORKING_DIR": attempt_dir,
            "AZ_BATCH_NODE_IS_DEDICATED": "true",
        })
        env.update(app_package_env(task.get("applicationPackageReferences"), self.state.args.binary_dir))
        env.update(settings(task.get("environmentSettings")))
        return env

    def start(self, task, node, attempt, tag=""):
        wd = os.path.join(self.work, "tasks", task["id"], f"{attempt}{tag}", "wd")
        os.makedirs(wd, exist_ok=True)
        # Batch runs the command line without a shell: split into words and exec.
        argv = shlex.split(task["commandLine"])
        out = open(os.path.join(wd, "..", "stdout.txt"), "wb")
        proc = subprocess.Popen(argv, cwd=wd, env=self.task_env(task, node, wd),
                                stdout=out, stderr=subprocess.PIPE)
        with self.state.lock:
            self.state.children.add(proc)
        return proc, wd

    def wait(self, proc, wd, kill_after_planned=False):
        """Waits for `proc`, keeping its stderr; kills it once it has planned, if asked."""
        killed_running = False
        err = open(os.path.join(wd, "..", "stderr.txt"), "wb")
        for line in proc.stderr:
            err.write(line)
            if kill_after_planned and not killed_running and b"planned" in line:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    killed_running = True
        code = proc.wait()
        err.close()
        return code, killed_running

    def run_manager(self):
        manager = dict(self.spec["jobManagerTask"])
        retries = manager.get("constraints", {}).get("maxTaskRetryCount", 0)
        codes = []
        for attempt in range(retries + 1):
            proc, wd = self.start(manager, 0, attempt)
            self.state.manager = proc
            code, _ = self.wait(proc, wd)
            with open(os.path.join(wd, "..", "stdout.txt"), "rb") as f:
                stdout = f.read().decode(errors="replace")
            with open(os.path.join(wd, "..", "stderr.txt"), "rb") as f:
                stderr = f.read().decode(errors="replace")
            codes.append(code)
            self.report["manager"] = {"exit_codes": codes, "stdout": stdout, "stderr": stderr[-4000:],
                                      "killed_mid_add": self.state.manager_killed_mid_add}
            if code == 0:
                return True
        return False

    def run_task(self, task, node):
        args = self.state.args
        retries = task.get("constraints", {}).get("maxTaskRetryCount", 0)
        entry = {"exit_codes": [], "node": node, "killed_mid_run": False}
        for attempt in range(retries + 1):
            if attempt == 0 and task["id"] in args.duplicate_task:
                # A node Batch thought lost still runs the task while the re-run starts.
                pair = [self.start(task, node, attempt, tag) for tag in ("a", "b")]
                codes = [None, None]

                def waiter(i, proc, wd):
                    codes[i] = self.wait(proc, wd)[0]

                threads = [threading.Thread(target=waiter, args=(i, proc, wd))
                           for i, (proc, wd) in enumerate(pair)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                entry["duplicate_exit_codes"] = codes
                code = next((c for c in codes if c != 0), 0)
            else:
                proc, wd = self.start(task, node, attempt)
                kill = attempt == 0 and task["id"] in args.kill_task
                code, killed = self.wait(proc, wd, kill_after_planned=kill)
                entry["killed_mid_run"] |= killed
            entry["exit_codes"].append(code)
            if code == 0:
                break
        self.report.setdefault("tasks", {})[task["id"]] = entry

    def run_tasks(self):
        queue = [self.state.tasks[k] for k in self.state.order]
        lock = threading.Lock()

        def node_loop(node):
            while True:
                with lock:
                    if not queue:
                        return
                    task = queue.pop(0)
                self.run_task(task, node)

        threads = [threading.Thread(target=node_loop, args=(n,)) for n in range(self.state.args.nodes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--schedule", help="the job schedule JSON (else --az-account)")
    p.add_argument("--az-account", help="serve the Azure CLI's calls for this account name")
    p.add_argument("--endpoint-file", help="where to write the service's URL (--az-account)")
    p.add_argument("--binary-dir", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--created", required=True, help="the job's creationTime (RFC 3339)")
    p.add_argument("--token", default="simulated-entra-token")
    p.add_argument("--client-id", required=True)
    p.add_argument("--api-version", action="append", default=["2025-06-01"],
                   help="accepted api-versions (batchscore's; add the CLI's)")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--kill-manager-mid-add", action="store_true")
    p.add_argument("--servererror-task", action="append", default=[])
    p.add_argument("--kill-task", action="append", default=[])
    p.add_argument("--duplicate-task", action="append", default=[])
    p.add_argument("--clienterror-task", action="append", default=[])
    p.add_argument("--forbid", action="store_true")
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args()
    if bool(args.schedule) == bool(args.az_account):
        p.error("give --schedule FILE or --az-account NAME")

    state = State(args)
    if args.schedule:
        schedule = json.load(open(args.schedule))
        state.schedule = schedule
        state.spec = schedule["jobSpecification"]
        state.job = job_of_schedule(schedule, args.created)
        state.ready.set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    server.daemon_threads = True
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AZ_BATCH_", "BATCHSCORE_"))}
    base_env.update(dict(e.split("=", 1) for e in args.env))
    # The node's managed identity endpoint, here on loopback.
    base_env["IDENTITY_ENDPOINT"] = endpoint + "/metadata/identity/oauth2/token"
    pool = Pool(state, endpoint, base_env)
    if args.endpoint_file:
        with open(args.endpoint_file + ".tmp", "w") as f:
            f.write(endpoint)
        os.rename(args.endpoint_file + ".tmp", args.endpoint_file)

    def on_timeout():
        with state.lock:
            children = list(state.children)
        for c in children:
            if c.poll() is None:
                c.kill()
        state.violation(f"timed out after {args.timeout} s")

    timer = threading.Timer(args.timeout, on_timeout)
    timer.start()
    started = time.monotonic()
    ok = False
    try:
        if not state.ready.wait(args.timeout):
            state.violation("no job schedule, and no job switched to terminatejob, arrived")
        elif state.schedule is None or pool.run_manager():
            # A schedule's job runs its job manager first; a one-off job has its tasks already.
            pool.run_tasks()
            tasks = pool.report.get("tasks", {})
            ok = bool(tasks) and all(t["exit_codes"][-1] == 0 for t in tasks.values())
    finally:
        timer.cancel()
        with state.lock:
            children = list(state.children)
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
        server.shutdown()
        server.server_close()
    pool.report.update({
        "job": state.job,
        "schedule": state.schedule,
        "wall_seconds": round(time.monotonic() - started, 2),
        "requests": state.requests,
        "tasks_added": len(state.tasks),
        "task_ids": [state.tasks[k]["id"] for k in state.order],
        "calls": state.calls,
        "servererrors_sent": state.servererrors_sent,
        "violations": state.violations,
    })
    json.dump(pool.report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.exit(0 if ok and not state.violations else 1)


if __name__ == "__main__":
    main()
