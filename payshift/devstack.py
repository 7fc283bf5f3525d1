"""Run the whole system in one terminal: web, Celery worker and beat, the Django Q cluster and the sandbox.

`python -m payshift.devstack` (called by `./scripts/up`). With no gateway keys in the environment it runs
in demo mode: clearly marked demo keys, base URLs pointing at the local sandbox. With DATABASE_URL and
CELERY_BROKER_URL set it runs on PostgreSQL and Redis/RabbitMQ instead of SQLite and the embedded broker.
Ctrl-C (or SIGTERM) stops every process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import httpx

from payment.gateways.registry import demo_environment

ROOT = Path(__file__).resolve().parent.parent

# The same file the settings read (PAYSHIFT_ENV_FILE), so every manage.py command sees the demo setup.
ENV_FILE = Path(os.environ.get("PAYSHIFT_ENV_FILE", str(ROOT / ".env")))
ENV_FILE_MARKER = "# Written by scripts/up for demo mode"


def _read_env_file() -> dict[str, str]:
    if not ENV_FILE.is_file():
        return {}
    values = {}
    for line in ENV_FILE.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _write_demo_env_file(values: dict[str, str]) -> None:
    """Let `manage.py test_webhook` in another terminal see the demo keys and the sandbox (settings read .env).

    Only a file this script wrote is ever replaced; a developer's own .env is left alone.
    """
    if ENV_FILE.is_file() and not ENV_FILE.read_text().startswith(ENV_FILE_MARKER):
        return
    lines = [ENV_FILE_MARKER + "; delete it (and stop scripts/up) to use your own keys.", *(
        f"{k}={v}" for k, v in values.items())]
    ENV_FILE.write_text("\n".join(lines) + "\n")


def stack_env(web_port: int, sandbox_port: int) -> tuple[dict[str, str], bool]:
    file_values = _read_env_file()
    env = {**file_values, **os.environ}
    keys = [env.get("PAYSTACK_SECRET_KEY", ""), env.get("FLUTTERWAVE_SECRET_KEY", "")]
    demo = not any(keys) or any("payshift" in k and "demo" in k for k in keys)
    sandbox = f"http://127.0.0.1:{sandbox_port}"
    if demo:
        # Each gateway class names its demo keys and its place in the sandbox (payment/gateways/<name>/).
        demo_values = {**demo_environment(sandbox), "PAYSHIFT_SANDBOX_URL": sandbox}
        for key, value in demo_values.items():
            if key not in os.environ:
                env[key] = value
        _write_demo_env_file({k: env[k] for k in demo_values})
    # The sandbox accepts exactly the keys Payshift uses, and posts webhooks back to this web server.
    env.setdefault("SANDBOX_PAYSTACK_SECRET_KEYS", env.get("PAYSTACK_SECRET_KEY", ""))
    env.setdefault("SANDBOX_FLUTTERWAVE_SECRET_KEYS", env.get("FLUTTERWAVE_SECRET_KEY", ""))
    env.setdefault("SANDBOX_FLUTTERWAVE_WEBHOOK_HASH", env.get("FLUTTERWAVE_WEBHOOK_HASH", "").split(",")[0])
    env.setdefault("SANDBOX_WEBHOOK_BASE_URL", f"http://127.0.0.1:{web_port}")
    env.setdefault("SANDBOX_PUBLIC_URL", sandbox)
    # Several gunicorn workers share metrics through this folder (prometheus-client multiprocess mode).
    var = Path(env.get("PAYSHIFT_VAR_DIR", ROOT / "var"))
    prom = var / "prometheus"
    shutil.rmtree(prom, ignore_errors=True)
    prom.mkdir(parents=True, exist_ok=True)
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(prom))
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Short reconciliation cycle in the demo so a missed webhook is visibly caught within a minute.
    env.setdefault("PAYSHIFT_RECONCILE_INTERVAL_SECONDS", "30")
    # The demo home page and its anonymous checkout form: off everywhere but here (docs/configuration.md).
    env.setdefault("PAYSHIFT_DEMO_PAGES", "true")
    return env, demo


class Stack:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.argv: dict[str, list[str]] = {}
        self.restarts: dict[str, list[float]] = {}
        self.stopping = False

    def restart_dead(self, limit: int = 5, window: float = 120.0) -> list[str]:
        """Restart processes that died, like a process supervisor would (a Celery worker can exit when
        its broker goes away); give up on one that keeps dying. Returns the names given up on."""
        given_up = []
        for name in self.dead():
            now = time.monotonic()
            recent = [t for t in self.restarts.get(name, []) if now - t < window]
            if len(recent) >= limit:
                given_up.append(name)
                continue
            self.restarts[name] = [*recent, now]
            print(f"{name} exited with {self.procs[name].returncode}; restarting it", flush=True)
            self.start(name, self.argv[name])
        return given_up

    def start(self, name: str, argv: list[str]) -> None:
        self.argv[name] = argv
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        threading.Thread(target=self._pump, args=(name, proc), daemon=True).start()

    def _pump(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            sys.stdout.write(f"{name:>8} | {raw.decode(errors='replace')}")
            sys.stdout.flush()

    def dead(self) -> list[str]:
        return [name for name, p in self.procs.items() if p.poll() is not None]

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        print("\nstopping:", ", ".join(self.procs), flush=True)
        # SIGTERM to each main process only: Celery and the Q cluster then shut their children down warmly.
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        print("all stopped.", flush=True)


def wait_healthy(urls: list[str], timeout: float, stack: Stack) -> None:
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending:
        if stack.dead():
            raise SystemExit(f"process(es) exited during start-up: {', '.join(stack.dead())}")
        if time.monotonic() > deadline:
            raise SystemExit(f"not healthy after {timeout:.0f}s: {', '.join(pending)}")
        for url in list(pending):
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    pending.remove(url)
            except httpx.HTTPError:
                pass
        time.sleep(0.3)


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)


def ensure_admin(env: dict[str, str]) -> str | None:
    """Create a demo superuser once and print its password (demo mode only)."""
    code = (
        "from django.contrib.auth import get_user_model as g;U=g();import sys\n"
        "if U.objects.filter(username='admin').exists(): sys.exit(3)\n"
        "U.objects.create_superuser('admin','admin@example.com',sys.argv[1])"
    )
    password = secrets.token_urlsafe(9)
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", code.replace("sys.argv[1]", repr(password))],
                            cwd=ROOT, env=env, capture_output=True, check=False)
    return password if result.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PAYSHIFT_PORT", "8000")))
    parser.add_argument("--sandbox-port", type=int, default=int(os.environ.get("SANDBOX_PORT", "8100")))
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--celery-concurrency", type=int, default=2)
    parser.add_argument("--startup-timeout", type=float, default=90.0)
    parser.add_argument("--smoke", action="store_true",
                        help="start, send one test webhook per gateway, check they settle, stop (CI)")
    args = parser.parse_args(argv)

    env, demo = stack_env(args.port, args.sandbox_port)
    print("Payshift: migrating the database ...", flush=True)
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "collectstatic", "--noinput", "-v", "0")
    password = ensure_admin(env) if demo else None

    stack = Stack(env)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stack.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    py = sys.executable
    venv_bin = Path(py).parent
    stack.start("sandbox", [py, "-m", "payshift.sandbox", "--host", "127.0.0.1", "--port", str(args.sandbox_port)])
    stack.start("web", [str(venv_bin / "gunicorn"), "payshift.wsgi:application", "--bind",
                        f"127.0.0.1:{args.port}", "--workers", str(args.web_workers), "--threads", "4",
                        "--worker-class", "gthread", "--access-logfile", "-", "--graceful-timeout", "10"])
    stack.start("worker", [str(venv_bin / "celery"), "-A", "payshift", "worker", "-l", "info",
                           "--concurrency", str(args.celery_concurrency), "-n", "payshift@%h"])
    beat_file = Path(env.get("PAYSHIFT_VAR_DIR", ROOT / "var")) / "celerybeat-schedule"
    stack.start("beat", [str(venv_bin / "celery"), "-A", "payshift", "beat", "-l", "info", "-s", str(beat_file)])
    stack.start("qcluster", [py, "manage.py", "qcluster"])
    try:
        wait_healthy([f"http://127.0.0.1:{args.port}/healthz",
                      f"http://127.0.0.1:{args.sandbox_port}/_sandbox/health"], args.startup_timeout, stack)
        web = f"http://127.0.0.1:{args.port}"
        print("\n" + "=" * 72)
        print(f"Payshift is up{' in DEMO mode (sandbox gateways, demo keys)' if demo else ''}.")
        print(f"  Pay something:     {web}/   (pick a gateway, 'Start payment', then pay on the checkout page)")
        print(f"  Admin:             {web}/admin/" + (f"   user admin / password {password}" if password else ""))
        print(f"  Health:            {web}/readyz")
        print(f"  Sandbox:           http://127.0.0.1:{args.sandbox_port}/_sandbox/deliveries")
        print(f"  Simulate a webhook: python manage.py test_webhook --payment-method=paystack --url {web}")
        print("  Logs: payment.log  |  Ctrl-C stops everything")
        print("=" * 72 + "\n", flush=True)
        if args.smoke:
            for gateway in ("paystack", "flutterwave"):
                subprocess.run([py, "manage.py", "test_webhook", f"--payment-method={gateway}", "--url", web,
                                "--timeout", "60"], cwd=ROOT, env=env, check=True)
            print("smoke: both gateways settled", flush=True)
            return 0
        while True:
            given_up = stack.restart_dead()
            if given_up:
                print(f"process(es) keep exiting: {', '.join(given_up)}; stopping the rest", flush=True)
                return 1
            time.sleep(1)
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
