"""The gateway registry: a sandbox gateway is one folder, and a new folder is served with no edit elsewhere."""

from __future__ import annotations

from typing import Any

import pytest

from payshift.sandbox import SandboxConfig
from payshift.sandbox.__main__ import build_config, parse_args
from payshift.sandbox.registry import BUILTIN_PACKAGE, discover
from payshift.sandbox.tests.conftest import Receiver, fast_config, wait_until

TEST_GATEWAYS = "payshift.sandbox.tests.gateways"
ACME = {"Authorization": "Bearer test_acme_key"}


def test_the_builtin_registry_lists_the_gateway_folders() -> None:
    registry = discover()
    assert list(registry) == ["flutterwave", "paystack"]
    assert registry.for_path("/paystack/refund") is registry["paystack"]
    assert registry.for_path("/elsewhere") is None


def test_a_gateway_folder_under_the_tests_is_served_end_to_end(make_client: Any, receiver: Receiver) -> None:
    client = make_client(fast_config(gateway_packages=(BUILTIN_PACKAGE, TEST_GATEWAYS), acme_webhook_token="t0k"))
    created = client.post("/acme/charges", headers=ACME, json={"amount": 500, "reference": "AC-1",
                                                                "return_url": "https://shop.test/back"})
    assert created.status_code == 201
    code = created.json()["pay_at"].rsplit("/", 1)[1]
    page = client.get(f"/checkout/{code}")
    assert "Acme Pay checkout" in page.text and 'value="decline"' in page.text and 'value="wallet"' in page.text
    done = client.post(f"/checkout/{code}", data={"action": "pay", "channel": "wallet"})
    assert done.headers["location"] == "https://shop.test/back?ref=AC-1&state=success"
    hook = receiver.wait_for(1)[0]
    assert hook.url == "http://payshift.test/payment/webhooks/acme/" and hook.headers["acme-token"] == "t0k"
    assert client.get("/acme/charges/AC-1", headers=ACME).json()["charge"]["state"] == "success"
    # Its own error envelope for refusals and for unknown paths; the control API knows it too.
    assert client.get("/acme/charges/AC-1").json() == {"ok": False, "error": "bad key", "http": 401}
    assert client.get("/acme/nowhere", headers=ACME).json()["ok"] is False
    seeded = client.post("/_sandbox/transactions", json={"gateway": "acme", "reference": "AC-2", "amount": 900})
    assert seeded.status_code == 201 and seeded.json()["id"] == 7_000_001
    wait_until(lambda: client.get("/_sandbox/deliveries", params={"gateway": "acme"}).json()["count"] == 1)
    # The built-in gateways are still there beside it.
    builtin = client.post("/_sandbox/transactions", json={"gateway": "paystack", "reference": "P", "amount": 1})
    assert builtin.status_code == 201


def test_a_gateway_folders_settings_come_from_env_and_cli() -> None:
    env = {"SANDBOX_GATEWAY_PACKAGES": f"{BUILTIN_PACKAGE},{TEST_GATEWAYS}", "SANDBOX_ACME_SECRET_KEYS": "k1, k2"}
    config = SandboxConfig.from_env(env)
    assert config.acme_secret_keys == ("k1", "k2") and config.setting("acme", "webhook_token") == "acme-token"
    args = parse_args(["--paystack-secret-keys", "sk_test_a,sk_test_b", "--flutterwave-webhook-format", "legacy"])
    built = build_config(args, environ={})
    assert built.paystack_secret_keys == ("sk_test_a", "sk_test_b")
    assert built.flutterwave_webhook_format == "legacy"


def test_unknown_or_invalid_gateway_settings_are_refused() -> None:
    with pytest.raises(TypeError, match="acme_secret_keys"):
        SandboxConfig(acme_secret_keys=("x",))  # the acme folder is not in gateway_packages
    with pytest.raises(ValueError, match="paystack_secret_keys"):
        SandboxConfig(paystack_secret_keys=())
    with pytest.raises(ValueError, match="flutterwave_webhook_format"):
        SandboxConfig(flutterwave_webhook_format="v9")
