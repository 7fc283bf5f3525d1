"""The per-key rate limit: on by default, a 429 in the gateway's envelope with Retry-After, settable at run time."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from starlette.testclient import TestClient

from payshift.sandbox.__main__ import build_config, parse_args
from payshift.sandbox.config import SandboxConfig
from payshift.sandbox.ratelimit import KeyBuckets, RateLimit
from payshift.sandbox.tests.conftest import FW, PAYSTACK_KEY, PS, fast_config


def test_the_limit_is_on_by_default() -> None:
    assert SandboxConfig().rate_limit == RateLimit(per_s=50.0, burst=50)


def test_a_burst_over_the_limit_is_answered_429_in_paystacks_envelope_with_retry_after(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(fast_config(rate_limit_per_s=0.2, rate_limit_burst=3))
    codes = [client.get(f"/paystack/transaction/verify/RL-{i}", headers=PS).status_code for i in range(5)]
    assert codes[:3] == [400, 400, 400]  # unknown references, but served: within the burst
    assert codes[3:] == [429, 429]
    refused = client.get("/paystack/transaction/verify/RL-9", headers=PS)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    body = refused.json()
    assert body["status"] is False and body["code"] == "rate_limited" and body["message"]


def test_waiting_retry_after_is_served_again(make_client: Callable[..., TestClient]) -> None:
    client = make_client(fast_config(rate_limit_per_s=1, rate_limit_burst=1))
    assert client.get("/paystack/transaction/verify/W-1", headers=PS).status_code == 400
    refused = client.get("/paystack/transaction/verify/W-2", headers=PS)
    assert refused.status_code == 429
    time.sleep(float(refused.headers["retry-after"]))
    assert client.get("/paystack/transaction/verify/W-2", headers=PS).status_code == 400


def test_flutterwave_429_has_its_own_envelope(make_client: Callable[..., TestClient]) -> None:
    client = make_client(fast_config(rate_limit_per_s=1, rate_limit_burst=1))
    assert client.get("/flutterwave/v3/transactions/1/verify", headers=FW).status_code != 429
    refused = client.get("/flutterwave/v3/transactions/1/verify", headers=FW)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["status"] == "error" and refused.json()["data"] is None


def test_each_secret_key_has_its_own_bucket(make_client: Callable[..., TestClient]) -> None:
    other = "sk_test_other_rate_limit_key"
    client = make_client(fast_config(rate_limit_per_s=1, rate_limit_burst=1,
                                     paystack_secret_keys=(PAYSTACK_KEY, other)))
    assert client.get("/paystack/transaction/verify/K-1", headers=PS).status_code == 400
    assert client.get("/paystack/transaction/verify/K-1", headers=PS).status_code == 429
    # Another key of the same gateway (another integration) is not slowed by the first one's traffic.
    assert client.get("/paystack/transaction/verify/K-1",
                      headers={"Authorization": f"Bearer {other}"}).status_code == 400
    # The other gateway neither.
    assert client.get("/flutterwave/v3/transactions/1/verify", headers=FW).status_code != 429


def test_unauthenticated_requests_take_no_token(make_client: Callable[..., TestClient]) -> None:
    client = make_client(fast_config(rate_limit_per_s=1, rate_limit_burst=1))
    for _ in range(3):
        assert client.get("/paystack/transaction/verify/U-1",
                          headers={"Authorization": "Bearer sk_test_wrong"}).status_code == 401
    assert client.get("/paystack/transaction/verify/U-1", headers=PS).status_code == 400


def test_control_api_changes_the_limit_and_reset_restores_it(make_client: Callable[..., TestClient]) -> None:
    client = make_client(fast_config(rate_limit_per_s=0))
    assert client.get("/_sandbox/rate-limit").json() == {"per_s": 0.0, "burst": 50}
    assert all(client.get("/paystack/transaction/verify/C-1", headers=PS).status_code == 400 for _ in range(60))
    changed = client.post("/_sandbox/rate-limit", json={"per_s": 1, "burst": 2})
    assert changed.status_code == 200 and changed.json() == {"per_s": 1.0, "burst": 2}
    codes = [client.get("/paystack/transaction/verify/C-1", headers=PS).status_code for _ in range(3)]
    assert codes == [400, 400, 429]
    assert client.post("/_sandbox/reset").status_code == 200
    assert client.get("/_sandbox/rate-limit").json() == {"per_s": 0.0, "burst": 50}
    assert client.get("/paystack/transaction/verify/C-1", headers=PS).status_code == 400


@pytest.mark.parametrize("body", [{"per_s": -1}, {"burst": 0}, {"per_s": "fast"}, {"burst": 1.5},
                                  {"per_s": True}, {"rate": 5}])
def test_control_api_refuses_bad_limits(client: TestClient, body: dict[str, object]) -> None:
    response = client.post("/_sandbox/rate-limit", json=body)
    assert response.status_code == 400, response.text
    assert client.get("/_sandbox/rate-limit").json() == {"per_s": 50.0, "burst": 50}


def test_environment_and_flags_set_the_limit() -> None:
    env = {"SANDBOX_RATE_LIMIT_PER_S": "200", "SANDBOX_RATE_LIMIT_BURST": "20"}
    assert SandboxConfig.from_env(env).rate_limit == RateLimit(200.0, 20)
    config = build_config(parse_args(["--rate-limit-per-s", "7.5"]), env)
    assert config.rate_limit == RateLimit(7.5, 20)
    with pytest.raises(ValueError, match="rate_limit_burst"):
        SandboxConfig(rate_limit_burst=0)


def test_buckets_hold_a_steady_stream_to_the_rate_plus_the_burst() -> None:
    now = [0.0]
    buckets = KeyBuckets(RateLimit(per_s=10, burst=5), clock=lambda: now[0])
    served = 0
    for _ in range(300):  # three seconds at 100 requests a second
        served += buckets.retry_after("k") is None
        now[0] += 0.01
    assert 5 + 10 * 3 - 1 <= served <= 5 + 10 * 3
