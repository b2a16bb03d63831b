"""``seed_users --count N``: create N users in bulk (directory on the main DB, rows on shards)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from shop.users.models import User, UserDirectory

BATCH = 5000


class Command(BaseCommand):
    help = "Create users in bulk for demos and benchmarks (idempotent: tops up to --count)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, default=100_000)

    def handle(self, *args: Any, **options: Any) -> None:
        target = options["count"]
        have = UserDirectory.objects.using("default").filter(
            email__startswith="seed").count()
        n = have
        while n < target:
            size = min(BATCH, target - n)
            entries = UserDirectory.objects.using("default").bulk_create(
                [UserDirectory(email=f"seed{n + i}@shop.example") for i in range(size)])
            # Each row goes to the shard of its user_id (sharded bulk_create routes rows).
            User.objects.bulk_create([
                User(user_id=e.pk, email=e.email, name=f"Seed {e.pk}") for e in entries])
            n += size
        self.stdout.write(f"users: {n} seeded users ({n - have} created now)")
