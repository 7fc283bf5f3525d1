"""docs/installing.md, done for real: Payshift in a brand-new `django-admin startproject` host.

Builds the wheel, installs it into a fresh virtualenv, configures the host by the doc's steps alone, migrates,
runs the host's own Celery worker and beat (no -Q) against the sandbox installed with the wheel, settles a
signed webhook and checks that the host's payment_succeeded receiver ran once. Needs PostgreSQL and Redis
(the host's database and broker): fails under CI=true without them, skips on a laptop.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from .conftest import redis_url, service_missing

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
HOST_KEY = "sk_test_hostproject_0123456789"
HOST_FLW_KEY = "FLWSECK_TEST-hostproject-X"
HOST_FLW_HASH = "hostproject-webhook-hash"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _postgres_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        service_missing("PostgreSQL (DATABASE_URL) for the host project's database")
    return url


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    database_url = _postgres_url()
    # A Redis database of its own: no other test's worker can take the host's messages.
    broker = urlparse(redis_url())._replace(path="/11").geturl()
    work = tmp_path_factory.mktemp("host")
    clean_env = {k: v for k, v in os.environ.items()
                 if not k.startswith(("PAYSHIFT_", "PAYSTACK_", "FLUTTERWAVE_", "SANDBOX_", "CELERY_", "DJANGO_"))
                 and k not in ("DATABASE_URL", "VIRTUAL_ENV", "PYTHONPATH")}
    # 1. pip install: a wheel built from this checkout, into a virtualenv of its own.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(ROOT)],
         cwd=work, env=clean_env)
    wheel = next((work / "dist").glob("payshift-*.whl"))
    _run([sys.executable, "-m", "venv", str(work / "venv")], cwd=work, env=clean_env)
    bin_dir = work / "venv" / "bin"
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=work, env=clean_env, timeout=900)
    # The distribution adds exactly two top-level names: the app and everything else under `payshift`.
    site = Path(_run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=work, env=clean_env).strip())
    record = next(site.glob("payshift-*.dist-info")) / "RECORD"
    tops = {line.split("/", 1)[0] for line in record.read_text().splitlines() if "/" in line}
    assert {t for t in tops if not t.endswith(".dist-info") and t != ".."} == {"payment", "payshift"}, tops
    # A brand-new host project, then the doc's steps 2-5 and nothing else (plus the host's own receiver app).
    site_dir = work / "site"
    site_dir.mkdir()
    _run([str(bin_dir / "django-admin"), "startproject", "hostproj", str(site_dir)], cwd=work, env=clean_env)
    _run([str(bin_dir / "python"), "manage.py", "startapp", "shop"], cwd=site_dir, env=clean_env)
    db_name = f"payshift_host_{os.getpid()}"
    parsed = urlparse(database_url)
    sandbox_port, web_port = _free_port(), _free_port()
    settings_py = site_dir / "hostproj" / "settings.py"
    settings_py.write_text(settings_py.read_text() + textwrap.dedent(f"""

        # --- as docs/installing.md says -----------------------------------------------------------------
        INSTALLED_APPS += ["django_q", "payment", "shop"]
        PAYSTACK_SECRET_KEY = "{HOST_KEY}"
        PAYSTACK_PUBLIC_KEY = "pk_test_hostproject"
        FLUTTERWAVE_SECRET_KEY = "{HOST_FLW_KEY}"
        FLUTTERWAVE_PUBLIC_KEY = "FLWPUBK_TEST-hostproject-X"
        FLUTTERWAVE_WEBHOOK_HASH = "{HOST_FLW_HASH}"
        CELERY_BROKER_URL = "{broker}"
        PAYSTACK_BASE_URL = "http://127.0.0.1:{sandbox_port}/paystack"
        FLUTTERWAVE_BASE_URL = "http://127.0.0.1:{sandbox_port}/flutterwave/v3"
        Q_CLUSTER = {{"name": "payshift", "orm": "default", "timeout": 120, "retry": 300, "max_attempts": 1}}
        # --- the host's own choices: its database -------------------------------------------------------
        DATABASES = {{"default": {{"ENGINE": "django.db.backends.postgresql", "NAME": "{db_name}",
                                   "USER": "{parsed.username or 'postgres'}", "HOST": "{parsed.hostname}",
                                   "PORT": "{parsed.port or 5432}"}}}}
        """))
    urls_py = site_dir / "hostproj" / "urls.py"
    urls = urls_py.read_text().replace("from django.urls import path", "from django.urls import include, path")
    urls = urls.replace("urlpatterns = [", 'urlpatterns = [\n    path("payment/", include("payment.urls")),')
    assert 'include("payment.urls")' in urls
    urls_py.write_text(urls)
    (site_dir / "hostproj" / "celery.py").write_text(textwrap.dedent("""\
        import os

        from celery import Celery

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hostproj.settings")
        app = Celery("hostproj")
        app.config_from_object("django.conf:settings", namespace="CELERY")
        app.autodiscover_tasks()
        """))
    (site_dir / "hostproj" / "__init__.py").write_text('from .celery import app as celery_app\n\n'
                                                        '__all__ = ("celery_app",)\n')
    fulfilled = work / "fulfilled.log"
    (site_dir / "shop" / "apps.py").write_text(textwrap.dedent(f"""\
        from django.apps import AppConfig


        class ShopConfig(AppConfig):
            name = "shop"

            def ready(self):
                from payment import api

                def fulfil(sender, payment, transition, **kwargs):
                    with open({str(fulfilled)!r}, "a") as f:
                        f.write(f"{{payment.reference}} {{transition.pk}}\\n")

                api.payment_succeeded.connect(fulfil, dispatch_uid="shop-fulfil")
        """))
    env = {**clean_env, "PYTHONUNBUFFERED": "1", "PAYSHIFT_RECONCILE_INTERVAL_SECONDS": "2"}
    subprocess.run(["dropdb", "-h", parsed.hostname or "127.0.0.1", "-U", parsed.username or "postgres",
                    "--if-exists", db_name], check=False, capture_output=True)
    _run(["createdb", "-h", parsed.hostname or "127.0.0.1", "-U", parsed.username or "postgres", db_name],
         cwd=work, env=env)
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str], **extra: str) -> None:
        log = open(work / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen(argv, cwd=site_dir, env={**env, **extra}, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))

    try:
        yield {"work": work, "site": site_dir, "bin": bin_dir, "env": env, "start": start, "procs": procs,
               "sandbox_port": sandbox_port, "web_port": web_port, "fulfilled": fulfilled}
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["dropdb", "-h", parsed.hostname or "127.0.0.1", "-U", parsed.username or "postgres",
                        "--if-exists", "--force", db_name], check=False, capture_output=True)
        if os.environ.get("PAYSHIFT_KEEP_HOST_DIR") != "1":
            shutil.rmtree(work, ignore_errors=True)


def _wait(predicate: Any, timeout: float, what: str, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tails}")


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_payshift_in_a_fresh_startproject_host(host: dict[str, Any]) -> None:
    site, py, env = host["site"], str(host["bin"] / "python"), host["env"]
    manage = [py, "manage.py"]
    # check and migrate pass with the doc's steps alone (a missing beat schedule would only warn).
    check = _run([*manage, "check"], cwd=site, env=env)
    assert "System check identified no issues" in check or "0 silenced" in check, check
    _run([*manage, "migrate", "--noinput", "-v", "0"], cwd=site, env=env)
    web = f"http://127.0.0.1:{host['web_port']}"
    sandbox = f"http://127.0.0.1:{host['sandbox_port']}"
    # The gateway stand-in, started from the installed package with one command.
    host["start"]("sandbox", [str(host["bin"] / "payshift-sandbox"), "--host", "127.0.0.1", "--port",
                              str(host["sandbox_port"])],
                  SANDBOX_PAYSTACK_SECRET_KEYS=HOST_KEY, SANDBOX_FLUTTERWAVE_SECRET_KEYS=HOST_FLW_KEY,
                  SANDBOX_FLUTTERWAVE_WEBHOOK_HASH=HOST_FLW_HASH, SANDBOX_WEBHOOK_BASE_URL=web,
                  SANDBOX_PUBLIC_URL=sandbox)
    host["start"]("web", [str(host["bin"] / "gunicorn"), "hostproj.wsgi:application", "--bind",
                          f"127.0.0.1:{host['web_port']}", "--workers", "1", "--threads", "4"])
    host["start"]("worker", [str(host["bin"] / "celery"), "-A", "hostproj", "worker", "-l", "info",
                             "--concurrency", "2"])  # no -Q
    host["start"]("beat", [str(host["bin"] / "celery"), "-A", "hostproj", "beat", "-l", "info", "-s",
                           str(host["work"] / "beat-schedule")])
    logs = host["work"]
    _wait(lambda: _get(f"{sandbox}/_sandbox/health") == 200, 60, "the sandbox", logs)
    _wait(lambda: _get(f"{web}/payment/webhooks/paystack/") == 405, 60, "the host's web server", logs)
    # A signed webhook, sent twice, settled by the host's own worker: the host's receiver runs once.
    out = _run([*manage, "test_webhook", "--payment-method=paystack", "--url", web, "--duplicate", "1",
                "--timeout", "90"], cwd=site, env={**env, "PAYSHIFT_SANDBOX_URL": sandbox}, timeout=180)
    assert "final status success" in out, out
    lines = host["fulfilled"].read_text().splitlines()
    assert len(lines) == 1, lines
    reference = lines[0].split()[0]
    # The host's beat scheduled Payshift's periodic check and the host's worker ran it (no setting of the host).
    code = ("from payment.models import Heartbeat; import sys; "
            "sys.exit(0 if Heartbeat.objects.filter(name='check_pending_payments').exists() else 1)")
    _wait(lambda: subprocess.run([*manage, "shell", "-c", code], cwd=site, env=env, capture_output=True,
                                 check=False).returncode == 0, 90, "beat's check_pending_payments", logs)
    # The customer's result page renders in the host from the templates in the wheel.
    link = _run([*manage, "shell", "-c", f"from payment import links; print(links.payment_result_link({reference!r}))"],
                cwd=site, env=env).strip().splitlines()[-1]
    page = httpx.get(f"{web}{link}", timeout=10)
    assert page.status_code == 200 and "success" in page.text, page.text[:500]
    # Payshift's own project refuses to run inside the host (it would use Payshift's settings and database).
    refused = subprocess.run([str(host["bin"] / "celery"), "-A", "payshift", "inspect", "ping"], cwd=site, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "celery -A <yourproject>" in refused.stdout + refused.stderr
