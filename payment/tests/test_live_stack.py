"""The one-command start and `test_webhook` against a live server: real processes, embedded default, sandbox.

`python -m payshift.devstack` (what `./scripts/up` runs) is started once for the module on free ports with
its own SQLite file and broker folder; each test drives it with `manage.py test_webhook` as a user would.
The first test runs `./scripts/up --smoke` then the suite's settings, in the README's order, in a copy
of the checkout.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
STARTUP_LIMIT = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """This environment without gateway keys, sandbox settings, services or settings module: a new user's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PAYSTACK", "FLUTTERWAVE", "SANDBOX_", "PAYSHIFT_"))}
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE", "PAYMENT_LOG_FILE"):
        env.pop(name, None)
    return env


# What a process sees of the demo setup once Django is set up: in its settings and in its environment.
DEMO_NAMES = ("PAYSHIFT_SANDBOX_URL", "PAYSTACK_SECRET_KEY", "FLUTTERWAVE_SECRET_KEY", "FLUTTERWAVE_WEBHOOK_HASH",
              "PAYSTACK_BASE_URL", "FLUTTERWAVE_BASE_URL")
SETTINGS_PROBE = ("import json, os, django; django.setup(); from django.conf import settings as s; "
                  "print(json.dumps({n: [str(getattr(s, n, '')), os.environ.get(n, '')] for n in "
                  f"{DEMO_NAMES!r}}}))")


@pytest.mark.timeout(420)
def test_scripts_up_then_the_suite_the_demo_env_reaches_manage_py_not_the_test_settings(tmp_path: Path) -> None:
    """README order: `./scripts/up` (here --smoke) writes .env into the checkout; `./scripts/test` then
    imports the settings in that checkout and must not see the demo keys or the sandbox URL."""
    suite_settings = os.environ["DJANGO_SETTINGS_MODULE"]  # the settings module this suite runs with
    checkout = tmp_path / "checkout"
    for name in ("payment", "payshift"):
        shutil.copytree(ROOT / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    shutil.copy2(ROOT / "manage.py", checkout / "manage.py")
    env = {**_clean_env(), "PYTHONPATH": str(checkout), "PYTHONUNBUFFERED": "1"}
    web, sandbox = _free_port(), _free_port()
    up = subprocess.run([sys.executable, "-m", "payshift.devstack", "--smoke", "--port", str(web), "--sandbox-port",
                         str(sandbox), "--web-workers", "1", "--celery-concurrency", "1"], cwd=checkout, env=env,
                        capture_output=True, text=True, timeout=400, check=False)
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-2000:]
    assert "smoke: both gateways settled" in up.stdout
    sandbox_url = f"http://127.0.0.1:{sandbox}"
    assert f"PAYSHIFT_SANDBOX_URL={sandbox_url}" in (checkout / ".env").read_text()

    seen = subprocess.run([sys.executable, "-c", SETTINGS_PROBE], cwd=checkout, capture_output=True, text=True,
                          env={**env, "DJANGO_SETTINGS_MODULE": suite_settings}, timeout=60, check=False)
    assert seen.returncode == 0, seen.stderr
    leaked = {name: values for name, values in json.loads(seen.stdout).items()
              if any("demo" in v or sandbox_url in v for v in values)}
    assert leaked == {}

    # A second terminal's manage.py (test_webhook) still finds the demo setup.
    managed = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETTINGS_PROBE], cwd=checkout, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert managed.returncode == 0, managed.stderr
    assert sandbox_url in json.loads(managed.stdout.strip().splitlines()[-1])["PAYSHIFT_SANDBOX_URL"]


def test_demo_stack_seeds_its_own_sandbox_whatever_the_shell_says(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A PAYSHIFT_SANDBOX_URL left in the environment (an old .env read into it) pointed test_webhook at a
    sandbox that was not running: the live-stack tests failed after a plain `./scripts/up`."""
    from payshift import devstack

    monkeypatch.setattr(devstack, "ENV_FILE", tmp_path / ".env")
    monkeypatch.setenv("PAYSHIFT_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("PAYSHIFT_SANDBOX_URL", "http://127.0.0.1:8100")
    for name in ("PAYSTACK_SECRET_KEY", "FLUTTERWAVE_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    env, demo = devstack.stack_env(18000, 18123)
    assert demo and env["PAYSHIFT_SANDBOX_URL"] == "http://127.0.0.1:18123"
    assert "PAYSHIFT_SANDBOX_URL=http://127.0.0.1:18123" in (tmp_path / ".env").read_text()
    assert env["SANDBOX_PUBLIC_URL"] == "http://127.0.0.1:18123"
    assert env["SANDBOX_WEBHOOK_BASE_URL"] == "http://127.0.0.1:18000"
    assert env["SANDBOX_PAYSTACK_SECRET_KEYS"] == env["PAYSTACK_SECRET_KEY"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("stack")
    web, sandbox = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAYSTACK", "FLUTTERWAVE", "SANDBOX_"))}
    env.pop("DATABASE_URL", None)
    env.pop("CELERY_BROKER_URL", None)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update({"PAYSHIFT_VAR_DIR": str(tmp / "var"), "PAYMENT_LOG_FILE": str(tmp / "payment.log"),
                "PAYSHIFT_ENV_FILE": str(tmp / ".env"), "PYTHONUNBUFFERED": "1"})
    log = open(tmp / "stack.log", "wb")  # noqa: SIM115
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "payshift.devstack", "--port", str(web), "--sandbox-port",
                             str(sandbox), "--web-workers", "1"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{web}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail("the stack exited during start-up:\n" + (tmp / "stack.log").read_text()[-3000:])
            if "Payshift is up" in (tmp / "stack.log").read_text(errors="replace"):
                break
            if time.monotonic() - started > STARTUP_LIMIT:
                pytest.fail(f"the stack was not up within {STARTUP_LIMIT}s")
            time.sleep(0.5)
        yield {"url": url, "env": env, "tmp": tmp, "startup_seconds": time.monotonic() - started,
               "sandbox": f"http://127.0.0.1:{sandbox}", "pid": proc.pid}
    finally:
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C does
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the stack did not stop on Ctrl-C within 40 s")
        log.close()


def run(live: dict[str, Any], *args: str, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**live["env"], **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)


def show(live: dict[str, Any], reference: str) -> dict[str, Any]:
    result = run(live, "payment_show", reference, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def references(output: str) -> list[str]:
    return sorted({line.split(":")[0].strip() for line in output.splitlines() if "final status" in line})


def test_stack_starts_healthy_within_bounds(live: dict[str, Any]) -> None:
    assert live["startup_seconds"] < STARTUP_LIMIT
    assert httpx.get(f"{live['url']}/healthz", timeout=5).json() == {"status": "ok"}
    ready = httpx.get(f"{live['url']}/readyz", timeout=5)
    assert ready.json()["parts"]["database"]["ok"] is True
    assert httpx.get(f"{live['sandbox']}/_sandbox/health", timeout=5).status_code == 200


@pytest.mark.parametrize("gateway", ["paystack", "flutterwave"])
def test_test_webhook_settles_payment(live: dict[str, Any], gateway: str) -> None:
    result = run(live, "test_webhook", f"--payment-method={gateway}", "--url", live["url"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HTTP 200 stored" in result.stdout
    assert "final status success; notifications: payment_succeeded (customer)" in result.stdout
    (reference,) = references(result.stdout)
    data = show(live, reference)
    assert data["status"] == "success" and [n["kind"] for n in data["notifications"]] == ["payment_succeeded"]


def test_test_webhook_bad_signature_is_refused_and_not_stored(live: dict[str, Any]) -> None:
    result = run(live, "test_webhook", "--payment-method=paystack", "--url", live["url"], "--bad-signature")
    assert result.returncode == 0, result.stderr
    assert "HTTP 401 bad_signature" in result.stdout
    assert "forged deliveries stored: 0" in result.stdout


def test_test_webhook_amount_mismatch_goes_to_review(live: dict[str, Any]) -> None:
    result = run(live, "test_webhook", "--payment-method=paystack", "--url", live["url"], "--amount-mismatch")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final status review (amount_mismatch); notifications: payment_review (staff)" in result.stdout


def test_test_webhook_duplicates_and_concurrency_apply_once(live: dict[str, Any]) -> None:
    result = run(live, "test_webhook", "--payment-method=flutterwave", "--url", live["url"], "--count", "3",
                 "--duplicate", "2", "--concurrency", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("HTTP 200 stored") == 3
    assert result.stdout.count("HTTP 200 duplicate") == 6
    refs = references(result.stdout)
    assert len(refs) == 3
    for reference in refs:
        data = show(live, reference)
        assert data["status"] == "success"
        assert len(data["events"]) == 1 and len(data["notifications"]) == 1


def test_test_webhook_failed_payment(live: dict[str, Any]) -> None:
    result = run(live, "test_webhook", "--payment-method=flutterwave", "--url", live["url"], "--status", "failed")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final status failed; notifications: payment_failed (customer)" in result.stdout


def test_test_webhook_clear_errors(live: dict[str, Any]) -> None:
    unknown = run(live, "test_webhook", "--payment-method=stripe", "--url", live["url"])
    assert unknown.returncode != 0 and "unknown gateway 'stripe'" in unknown.stderr
    down = run(live, "test_webhook", "--payment-method=paystack", "--url", "http://127.0.0.1:1")
    assert down.returncode != 0 and "cannot reach the server" in down.stderr
    no_secret = run(live, "test_webhook", "--payment-method=paystack", "--url", live["url"],
                    env={"PAYSTACK_SECRET_KEY": ",", "PAYSHIFT_ENV_FILE": "/nonexistent"})
    assert no_secret.returncode != 0 and "PAYSTACK_SECRET_KEY is not set" in no_secret.stderr


def test_checkout_page_flow_over_http(live: dict[str, Any]) -> None:
    """The browser-less version of the demo: start a payment, pay on the sandbox page, follow redirects."""
    with httpx.Client(follow_redirects=False, timeout=10) as client:
        home = client.get(f"{live['url']}/")
        token = client.cookies.get("csrftoken") or ""
        assert home.status_code == 200 and token
        start = client.post(f"{live['url']}/payment/checkout/", data={
            "csrfmiddlewaretoken": token, "gateway": "paystack", "amount": "250000", "currency": "NGN",
            "email": "ada@example.com"}, headers={"Referer": f"{live['url']}/"})
        assert start.status_code == 302
        checkout = start.headers["location"]
        assert checkout.startswith(live["sandbox"])
        page = client.get(checkout)
        assert "2500.00" in page.text or "2,500.00" in page.text
        assert 'id="pay"' in page.text
        match = re.search(r'id="reference">([^<]+)<', page.text)
        assert match is not None
        reference = match.group(1)
        paid = client.post(checkout, data={"action": "pay"})
        assert paid.status_code in (302, 303)
        assert paid.headers["location"].startswith(f"{live['url']}/payment/callback/paystack/")
        result = client.get(paid.headers["location"], follow_redirects=True)
        assert result.status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = show(live, reference)
        if data["status"] == "success" and data["notifications"]:
            break
        time.sleep(0.5)
    assert data["status"] == "success"
    assert [n["kind"] for n in data["notifications"]] == ["payment_succeeded"]


CHROMIUM = os.environ.get("PAYSHIFT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.parametrize("gateway,button,expected", [
    ("paystack", "#pay", "success"),
    ("flutterwave", "#fail-then-pay", "success"),
    ("flutterwave", "#fail", "failed"),
])
def test_checkout_in_a_real_browser(live: dict[str, Any], gateway: str, button: str, expected: str) -> None:
    """A customer in headless Chromium: start a payment, pay on the sandbox checkout, see the result page."""
    if not Path(CHROMIUM).exists():
        from .conftest import service_missing

        service_missing(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{live['url']}/")
            page.select_option("#gateway", gateway)
            page.fill("#amount", "150050")
            page.click("#start-payment")
            page.wait_for_url(f"{live['sandbox']}/checkout/**")
            assert page.inner_text("#amount").replace(",", "") == "1500.50"
            assert page.inner_text("#currency") == "NGN"
            reference = page.inner_text("#reference")
            page.click(button)
            page.wait_for_url(f"{live['url']}/payment/result/**")
            page.wait_for_function(
                f"document.querySelector('#payment-status')?.textContent === '{expected}'", timeout=30000)
            page.wait_for_selector("#notifications li:has-text('payment_')", timeout=30000)
            page.screenshot(path=str(live["tmp"] / f"result-{gateway}-{expected}.png"))
        finally:
            browser.close()
    data = show(live, reference)
    if button == "#fail-then-pay":
        # The result page can show success from the callback's own verify before the sandbox's webhooks (sent
        # in the background, one per attempt) are stored: wait for both to arrive, never for fewer.
        deadline = time.monotonic() + 30
        while len(data["events"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            data = show(live, reference)
    assert data["status"] == expected
    kinds = [n["kind"] for n in data["notifications"]]
    if button == "#fail-then-pay":
        # Flutterwave sends a webhook per attempt: failed first (not final), then success.
        assert kinds in (["payment_failed", "payment_succeeded"], ["payment_succeeded"])
        assert len(data["events"]) == 2
    else:
        assert kinds == [f"payment_{'succeeded' if expected == 'success' else 'failed'}"]


def test_stack_restarts_a_crashed_worker(live: dict[str, Any]) -> None:
    """A Celery worker that dies (e.g. kombu exiting when Redis goes away) is restarted, and work goes on."""
    children = subprocess.run(["pgrep", "-P", str(live["pid"])], capture_output=True, text=True, check=False)
    worker_pid = None
    for pid in children.stdout.split():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"celery" in cmdline and b" worker" in cmdline:
            worker_pid = int(pid)
    assert worker_pid is not None, "no Celery worker among the stack's processes"
    os.killpg(worker_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while "worker exited with" not in (live["tmp"] / "stack.log").read_text(errors="replace"):
        assert time.monotonic() < deadline, "the stack did not notice the dead worker"
        time.sleep(0.5)
    result = run(live, "test_webhook", "--payment-method=paystack", "--url", live["url"])
    assert result.returncode == 0 and "final status success" in result.stdout, result.stdout + result.stderr


def _banner_line(live: dict[str, Any], label: str) -> str:
    for line in (live["tmp"] / "stack.log").read_text(errors="replace").splitlines():
        if line.strip().startswith(label):
            return line.split(label, 1)[1].strip()
    raise AssertionError(f"no {label!r} line in the banner")


def test_banner_webhook_command_works_as_written_without_the_venv_on_path(live: dict[str, Any]) -> None:
    command = _banner_line(live, "Simulate a webhook:")
    assert shlex.split(command)[0] == os.path.relpath(sys.executable, ROOT)  # .venv/bin/python from a checkout
    result = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False, env={**live["env"], "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final status success" in result.stdout


def test_demo_admin_password_is_kept_and_printed_at_every_start(live: dict[str, Any]) -> None:
    from payshift import devstack

    password_file = live["tmp"] / "var" / "demo-admin-password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    password = password_file.read_text().strip()
    assert _banner_line(live, "Admin:").endswith(f"user admin / password {password}")
    # The next start (same var folder, admin already there) prints the same password, and it logs in.
    env = {**live["env"], "DJANGO_SETTINGS_MODULE": "payshift.settings"}
    assert devstack.ensure_admin(env) == password
    with httpx.Client(base_url=live["url"], timeout=10) as client:
        login = client.get("/admin/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
        assert token is not None
        answer = client.post("/admin/login/", data={"username": "admin", "password": password, "next": "/admin/",
                                                    "csrfmiddlewaretoken": token.group(1)},
                             headers={"Referer": f"{live['url']}/admin/login/"})
        assert answer.status_code == 302 and answer.headers["location"] == "/admin/"
