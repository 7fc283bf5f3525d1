"""Extension points for the host application, sent once per transition, after commit, from the worker.

Delivery is at-least-once: receivers run after the transition commits; if the process dies before they
finish, the periodic sweep sends them again (transition.hooks_done_at is still empty). Receivers get the
transition id and should be idempotent on it. A receiver that raises is logged and never rolls back the
payment (signals are sent with send_robust).
"""

from django.dispatch import Signal

# Every receiver gets: sender=Payment, payment=<Payment>, transition=<PaymentTransition>.
payment_transitioned = Signal()
payment_succeeded = Signal()
payment_failed = Signal()
payment_abandoned = Signal()
payment_reversed = Signal()
payment_refunded = Signal()  # full and partial refunds; check payment.status
payment_review = Signal()

BY_STATUS = {
    "success": payment_succeeded,
    "failed": payment_failed,
    "abandoned": payment_abandoned,
    "reversed": payment_reversed,
    "refunded": payment_refunded,
    "partially_refunded": payment_refunded,
    "review": payment_review,
}
