"""Bench-only settings: the product's settings unchanged, plus a URLconf that adds the reference views."""

from payshift.settings import *  # noqa: F403
from payshift.settings import env

# The references (bench/refviews.py) are served by the same gunicorn, middleware and database as Payshift;
# only the URLconf differs, so the product's own urls.py never sees a bench route.
ROOT_URLCONF = "bench.urls"

# The minimal ingest reference pushes to this Redis (the bench's private server, never the shared one).
BENCH_REDIS_URL = env.str("BENCH_REDIS_URL", default="redis://127.0.0.1:18379/1")
# Signs and checks the reference's HMAC exactly as Paystack does (the same key Payshift uses).
BENCH_PAYSTACK_KEY = env.list("PAYSTACK_SECRET_KEY", default=["sk_test_bench"])[0]
