"""Issue 13's faults, tried as a user would; prints what the daemon answers.

    .venv/bin/python scripts/fault_scenarios.py [halfclose cache corrupt wasm disk kills]

Runs the daemon of the checkout this script is in, or of SD_CHECKOUT (then also set
PYTHONPATH to it), which is how docs/reliability.md's "before" column was taken from an
older commit. `disk` mounts a tmpfs and needs root. The sleeps here let a person's
scenario unfold; the assertions live in tests/test_faults.py.
"""
import errno, json, os, random, shutil, socket, sqlite3, subprocess, sys, threading, time  # noqa: E401
from pathlib import Path

ROOT = Path(os.environ.get("SD_CHECKOUT", Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(ROOT / "tests"))
from conftest import BUILT_EXTENSIONS, Daemon, short_tmpdir  # noqa: E402


def p(*a):
    print(*a, flush=True)


def halfclose():
    t = short_tmpdir(); d = Daemon(t / "data", t / "run" / "sd.sock").start()
    try:
        for name, body in [("sleep 0.5", {"jsonrpc": "2.0", "id": 1, "method": "query:test.sleep.v1", "params": {"payload": {"seconds": 0.5}}}),
                           ("batch", [{"jsonrpc": "2.0", "id": 2, "method": "query:test.ping.v1"},
                                      {"jsonrpc": "2.0", "id": 3, "method": "query:test.sleep.v1", "params": {"payload": {"seconds": 0.5}}}])]:
            s = socket.socket(socket.AF_UNIX); s.connect(str(d.socket)); s.settimeout(5)
            s.sendall(json.dumps(body).encode() + b"\n"); s.shutdown(socket.SHUT_WR)
            buf = b""
            while True:
                c = s.recv(65536)
                if not c: break
                buf += c
            p(f"half-close {name}: got {buf!r}")
    finally:
        d.stop(); shutil.rmtree(t, ignore_errors=True)

def cache():
    t = short_tmpdir(); d = Daemon(t / "data", t / "run" / "sd.sock", extra_args=["--bundled-extensions", str(BUILT_EXTENSIONS)]).start()
    d.stop()
    for f in (d.data_dir / "extensions" / ".cache").iterdir():
        if f.is_file():
            with open(f, "r+b") as fh:
                fh.seek(f.stat().st_size // 2); fh.write(os.urandom(4096))
            p("damaged", f.name, f.stat().st_size)
    d.start(wait=False)
    try:
        d.wait_ready()
        p("cache: daemon up; ext list:", [(e["id"], e["state"]) for e in d.sd_json("ext", "list")])
        lib = d.sd_json("library", "create", "L")["id"]
        r = d.sd("job", "run", "test-extension", "counter", "--state", '{"current":0,"target":3}', "--wait")
        p("cache: job run ->", r.returncode, r.stdout.strip()[-200:], r.stderr.strip())
        p("cache: log:", [l for l in d.log().splitlines() if "cache" in l.lower()][-3:])
        d.stop()
    except AssertionError as e:
        p("cache: daemon died:", d.proc.returncode, str(e)[-600:])
    shutil.rmtree(t, ignore_errors=True)

def corrupt():
    for mode in ("pages", "header"):
        t = short_tmpdir(); d = Daemon(t / "data", t / "run" / "sd.sock").start()
        a = d.sd_json("library", "create", "Good")["id"]
        b = d.sd_json("library", "create", "Bad")["id"]
        for _ in range(40):
            d.rpc("action:jobs.dispatch.input.v1", {"name": "test.steps", "input": {"count": 5}}, b)
        j = d.sd_json("job", "dispatch", "test.steps", "--library", b, "--input", '{"count": 2000, "delay": 0.02}')
        time.sleep(1)
        d.stop()
        p(f"corrupt {mode}: db size", (d.data_dir / "libraries" / b / "library.db").stat().st_size)
        db = d.data_dir / "libraries" / b / "library.db"
        with open(db, "r+b") as fh:
            if mode == "pages":
                fh.seek(8192); fh.write(os.urandom(12288))
            else:
                fh.seek(0); fh.write(os.urandom(100))
        d.start(wait=False)
        try:
            d.wait_ready()
            p(f"corrupt {mode}: daemon up")
            r = d.sd("library", "list"); p(" list:", r.returncode, r.stdout, r.stderr)
            r = d.sd("--json", "library", "list"); p(" list json:", r.stdout.strip())
            r = d.sd("job", "list", "--library", b); p(" job list bad:", r.returncode, r.stdout.strip()[:300], r.stderr.strip())
            r = d.sd("library", "check", b); p(" check:", r.returncode, r.stdout.strip(), r.stderr.strip())
            r = d.sd("library", "delete", b); p(" delete:", r.returncode, r.stdout.strip(), r.stderr.strip())
            r = d.sd("job", "dispatch", "test.steps", "--library", a, "--input", '{"count": 3}', "--wait"); p(" good lib job:", r.returncode, r.stdout.strip()[-100:])
            d.stop()
        except AssertionError as e:
            p(f"corrupt {mode}: daemon died", d.proc.returncode, str(e)[-1500:])
        shutil.rmtree(t, ignore_errors=True)

def wasm():
    t = short_tmpdir(); d = Daemon(t / "data", t / "run" / "sd.sock", extra_args=["--bundled-extensions", str(BUILT_EXTENSIONS)]).start()
    d.stop()
    w = d.data_dir / "extensions" / "test-extension" / "test_extension.wasm"
    w.write_bytes(os.urandom(3000))
    d.extra_args = []
    d.start()
    r = d.sd("ext", "list"); p("wasm: ext list:", r.stdout.strip())
    r = d.sd("ext", "load", "test-extension"); p("wasm: ext load:", r.returncode, r.stderr.strip())
    p("wasm: log:", [l for l in d.log().splitlines() if "test-extension" in l and ("ERROR" in l or "WARN" in l)][-2:])
    d.stop(); shutil.rmtree(t, ignore_errors=True)


def fill(path):
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            try:
                while True: f.write(b"\0" * size)
            except OSError: pass

def disk():
    t = short_tmpdir(); mnt = t / "disk"; mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], check=True)
    d = Daemon(mnt, t / "run" / "sd.sock", extra_args=["--max-running-jobs", "2"]).start()
    try:
        lib = d.sd_json("library", "create", "L")["id"]
        info = lambda j: d.rpc("query:jobs.info.v1", {"id": j}, lib).get("result") or {}
        running = [d.sd_json("job", "dispatch", "test.steps", "--input", '{"count": 1000000, "delay": 0.01}')["job_id"] for _ in range(2)]
        queued = [d.sd_json("job", "dispatch", "test.steps", "--input", '{"count": 3}')["job_id"] for _ in range(18)]
        while not all((info(j).get("checkpoints") or 0) >= 1 for j in running): time.sleep(0.02)
        fill(mnt / "filler")
        time.sleep(3)
        p("after filling: running jobs:", [(info(j).get("status"), info(j).get("pause_reason")) for j in running])
        p("  queued jobs:", sorted({info(j).get("status") for j in queued}))
        p("  core.status running_jobs:", d.rpc("query:core.status.v1")["result"]["running_jobs"])
        r = d.sd("library", "create", "More"); p("  sd library create More ->", r.returncode, r.stderr.strip()[:300])
        r = d.rpc("action:libraries.create.input.v1", {"name": "More2"}); p("  rpc create ->", json.dumps(r)[:300])
        r = d.rpc("action:jobs.dispatch.input.v1", {"name": "test.noop", "input": {}}, lib); p("  rpc dispatch ->", json.dumps(r)[:300])
        r = d.sd("job", "cancel", running[0], "--library", lib); p("  sd job cancel <running0> ->", r.returncode, r.stdout.strip(), r.stderr.strip()[:200])
        r = d.sd("job", "cancel", queued[-1], "--library", lib); p("  sd job cancel <queued> ->", r.returncode, r.stdout.strip(), r.stderr.strip()[:200])
        r = d.sd("job", "cancel", running[1], "--library", lib); p("  sd job cancel <running1> ->", r.returncode, r.stdout.strip(), r.stderr.strip()[:200])
        time.sleep(1)
        p("  after cancel: running0", info(running[0]).get("status"), "running1", info(running[1]).get("status"), "queued[-1]", info(queued[-1]).get("status"))
        p("  jobs table in the database:", sorted(set(sqlite3.connect(f"file:{mnt}/libraries/{lib}/library.db?mode=ro", uri=True).execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())))
        (mnt / "filler").unlink()
        time.sleep(5)
        p("after freeing space (5 s, no restart): queued jobs:", sorted((s, [info(j).get("status") for j in queued].count(s)) for s in {info(j).get("status") for j in queued}))
        p("  running jobs:", [info(j).get("status") for j in running])
        r = d.sd("library", "create", "More3"); p("  sd library create More3 ->", r.returncode, r.stdout.strip()[:200], r.stderr.strip()[:200])
        p("  dirs in libraries/:", len(os.listdir(mnt / "libraries")), "libraries listed:", len(d.sd_json("library", "list")))
        log = d.log()
        p("  log: 'Task exception was never retrieved' x", log.count("Task exception was never retrieved"), "; Traceback x", log.count("Traceback"))
        p("  jobs table in the database:", sorted(set(sqlite3.connect(f"file:{mnt}/libraries/{lib}/library.db?mode=ro", uri=True).execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())))
        d.stop()
        d.start(); p("after a restart: libraries listed:", [(l["name"] == l["id"], l.get("state")) for l in d.sd_json("library", "list")]); d.stop()
    finally:
        if d.proc.poll() is None: d.kill9()
        subprocess.run(["umount", "-l", str(mnt)]); shutil.rmtree(t, ignore_errors=True)

def kills(n=20):
    t = short_tmpdir(); d = Daemon(t / "data", t / "run" / "sd.sock")
    ghosts = 0
    for i in range(n):
        d.start()
        stop = threading.Event()
        def loop():
            while not stop.is_set():
                try: d.rpc("action:libraries.create.input.v1", {"name": f"lib-{i}"})
                except Exception: return
        th = threading.Thread(target=loop); th.start()
        time.sleep(random.uniform(0.1, 0.4)); d.kill9(); stop.set(); th.join()
    d.start()
    libs = d.sd_json("library", "list")
    ghosts = [l for l in libs if l["name"] == l["id"]]
    p(f"kill -9 during creates: {n} kills, {len(libs)} libraries listed, {len(ghosts)} named by their id, leftovers: {[x for x in os.listdir(d.data_dir / 'libraries') if not any(x == l['id'] for l in libs)]}")
    d.stop(); shutil.rmtree(t, ignore_errors=True)



if __name__ == "__main__":
    for name in sys.argv[1:] or ["halfclose", "cache", "corrupt", "wasm", "disk", "kills"]:
        globals()[name]()
