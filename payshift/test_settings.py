"""Settings of the test suite: the project's settings, isolated from whatever a demo run left behind.

The settings read no `.env`; this module also keeps the suite's files (SQLite database, embedded broker,
static files) out of the checkout's `var/`, which `./scripts/up` uses.
"""

import os
import tempfile

os.environ.setdefault("PAYSHIFT_VAR_DIR", os.path.join(tempfile.gettempdir(), f"payshift-tests-{os.getuid()}"))

from payshift.settings import *  # noqa: F403

# Fast password hashing: the suite creates users, it does not test hashing.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Views publish their own event after commit, so a test sees `queued` when the response returns; the relay
# thread's own behaviour is tested by payment/tests/test_outbox.py, and by the suites that run real servers.
PAYSHIFT_OUTBOX_RELAY = "inline"
