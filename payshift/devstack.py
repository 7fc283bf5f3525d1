"""Run the whole system in one terminal: web, Celery worker and beat, the Django Q cluster and the sandbox.

`python -m payshift.devstack` (called by `./scripts/up`). With no gateway keys in the environment it runs
in demo mode: clearly marked demo keys, base URLs pointing at the local sandbox. With DATABASE_URL and
CELERY_BROKER_URL set it runs on PostgreSQL and Redis/RabbitMQ instead of SQLite and the embedded broker.
Ctrl-C (or SIGTERM) stops every process. The processes and their command lines are payshift/processes.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from payshift.processes import (
    CHECKOUT,
    ProcessError,
    Supervisor,
    Topology,
    demo_gateway_environment,
    manage_command,
    sandbox_environment,
)

ROOT = CHECKOUT or Path.cwd()

# The file `manage.py` reads (PAYSHIFT_ENV_FILE), so `manage.py test_webhook` in another terminal sees the
# demo setup. The processes started here never need it: they get the whole environment from us.
ENV_FILE = Path(os.environ.get("PAYSHIFT_ENV_FILE", str(ROOT / ".env")))
ENV_FILE_MARKER = "# Written by scripts/up for demo mode"
ADMIN_USER = "admin"
ADMIN_PASSWORD_FILE = "demo-admin-password"


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
    """Only a file this script wrote is ever replaced; a developer's own .env is left alone."""
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
    topology = Topology(web_port=web_port, sandbox_port=sandbox_port)
    sandbox = topology.sandbox_url
    if demo:
        demo_values = demo_gateway_environment(sandbox)
        for key, value in demo_values.items():
            if key not in os.environ:
                env[key] = value
        # The sandbox this stack starts is the one to seed, whatever an old .env or shell says.
        env["PAYSHIFT_SANDBOX_URL"] = sandbox
        _write_demo_env_file({k: env[k] for k in demo_values})
    for key, value in sandbox_environment(env, webhook_base_url=topology.web_url, public_url=sandbox).items():
        env.setdefault(key, value)
    # Several gunicorn workers share metrics through this folder (prometheus-client multiprocess mode).
    prom = var_dir(env) / "prometheus"
    shutil.rmtree(prom, ignore_errors=True)
    prom.mkdir(parents=True, exist_ok=True)
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(prom))
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Short reconciliation cycle in the demo so a missed webhook is visibly caught within a minute.
    env.setdefault("PAYSHIFT_RECONCILE_INTERVAL_SECONDS", "30")
    # The demo home page and its anonymous checkout form: off everywhere but here (docs/configuration.md).
    env.setdefault("PAYSHIFT_DEMO_PAGES", "true")
    return env, demo


def var_dir(env: dict[str, str]) -> Path:
    return Path(env.get("PAYSHIFT_VAR_DIR", ROOT / "var"))


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([*manage_command(), *args], cwd=ROOT, env=env, check=True)


_ADMIN_CODE = """
import os
from django.contrib.auth import get_user_model
User, password = get_user_model(), os.environ["PAYSHIFT_DEMO_ADMIN_PASSWORD"]
user = User.objects.filter(username=os.environ["PAYSHIFT_DEMO_ADMIN_USER"]).first()
if user is None:
    User.objects.create_superuser(os.environ["PAYSHIFT_DEMO_ADMIN_USER"], "admin@example.com", password)
elif not user.check_password(password):
    if os.environ["PAYSHIFT_DEMO_ADMIN_NEW_FILE"] != "1":
        raise SystemExit(3)
    user.set_password(password)
    user.save(update_fields=["password"])
"""


def ensure_admin(env: dict[str, str]) -> str | None:
    """The demo superuser with the password kept in var/demo-admin-password (mode 0600), so every demo
    start can print it. None when someone changed it in the admin since (the file no longer says it)."""
    path = var_dir(env) / ADMIN_PASSWORD_FILE
    new_file = not path.is_file()
    if new_file:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(12) + "\n")
    path.chmod(0o600)
    password = path.read_text().strip()
    result = subprocess.run([*manage_command(), "shell", "-c", _ADMIN_CODE], cwd=ROOT, capture_output=True,
                            check=False, env={**env, "PAYSHIFT_DEMO_ADMIN_PASSWORD": password,
                                              "PAYSHIFT_DEMO_ADMIN_USER": ADMIN_USER,
                                              "PAYSHIFT_DEMO_ADMIN_NEW_FILE": "1" if new_file else "0"})
    if result.returncode != 0:
        if result.returncode != 3:
            print(result.stderr.decode(errors="replace"), file=sys.stderr)
        return None
    return password


def shown_command(*args: str) -> str:
    """A manage.py command line that works when pasted in another terminal in this directory: the
    interpreter this stack runs with (.venv/bin/python from the checkout), not whatever `python` is."""
    def short(path: str) -> str:
        relative = os.path.relpath(path)
        return relative if not relative.startswith("..") else path

    argv = manage_command()
    shown = [short(argv[0]), *(short(a) if a.endswith("manage.py") else shlex.quote(a) for a in argv[1:])]
    return " ".join([*shown, *args])


def banner(topology: Topology, demo: bool, password: str | None, env: dict[str, str]) -> str:
    web = topology.web_url
    admin = f"user {ADMIN_USER} / password {password}" if password else (
        f"user {ADMIN_USER} (password changed in the admin since {var_dir(env) / ADMIN_PASSWORD_FILE})"
        if demo else "")
    lines = [
        f"Payshift is up{' in DEMO mode (sandbox gateways, demo keys)' if demo else ''}.",
        f"  Pay something:     {web}/   (pick a gateway, 'Start payment', then pay on the checkout page)",
        f"  Admin:             {web}/admin/   {admin}".rstrip(),
        f"  Health:            {web}/readyz",
        f"  Sandbox:           {topology.sandbox_url}/_sandbox/deliveries",
        f"  Simulate a webhook: {shown_command('test_webhook', '--payment-method=paystack', '--url', web)}",
        "  Logs: payment.log  |  Ctrl-C stops everything",
    ]
    return "\n".join(["", "=" * 72, *lines, "=" * 72, ""])


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

    topology = Topology(web_port=args.port, sandbox_port=args.sandbox_port, web_workers=args.web_workers,
                        web_args=("--access-logfile", "-", "--graceful-timeout", "10"),
                        celery_concurrency=args.celery_concurrency)
    env, demo = stack_env(args.port, args.sandbox_port)
    topology = dataclasses.replace(topology, beat_schedule=var_dir(env) / "celerybeat-schedule")
    print("Payshift: migrating the database ...", flush=True)
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "collectstatic", "--noinput", "-v", "0")
    password = ensure_admin(env) if demo else None

    supervisor = Supervisor(env, cwd=ROOT)
    stopping: list[bool] = []

    def stop() -> None:
        if not stopping:
            stopping.append(True)
            print("\nstopping:", ", ".join(supervisor.procs), flush=True)
            supervisor.stop_all()
            print("all stopped.", flush=True)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop()
        raise SystemExit(0)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        for name, command in topology.commands().items():
            supervisor.start(name, command)
        try:
            supervisor.wait_healthy({"web": f"{topology.web_url}/healthz",
                                     "sandbox": f"{topology.sandbox_url}/_sandbox/health"}, args.startup_timeout)
        except ProcessError as exc:
            raise SystemExit(str(exc)) from exc
        print(banner(topology, demo, password, env), flush=True)
        if args.smoke:
            for gateway in ("paystack", "flutterwave"):
                manage(env, "test_webhook", f"--payment-method={gateway}", "--url", topology.web_url,
                       "--timeout", "60")
            print("smoke: both gateways settled", flush=True)
            return 0
        supervisor.watch()
        while not supervisor.given_up:
            time.sleep(1)
        print(f"process(es) keep exiting: {', '.join(supervisor.given_up)}; stopping the rest", flush=True)
        return 1
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
