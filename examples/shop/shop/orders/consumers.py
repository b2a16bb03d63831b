"""Events the orders service consumes (imported by djscale.events when Django starts)."""

from __future__ import annotations

from djscale.events.consumers import Event, consumer
from shop.orders.models import Order


@consumer("user_deleted", name="orders.archive_orders_of_deleted_user",
          using=lambda e: Order.alias_for_key(int(e.payload["user_id"])))
def archive_orders(event: Event) -> None:
    """Archive the orders of a deleted user (once per event, thanks to the inbox)."""
    Order.objects.for_key(int(event.payload["user_id"])).filter(
        user_id=int(event.payload["user_id"]), status="placed").update(status="archived")
