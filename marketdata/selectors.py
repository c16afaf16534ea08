"""Read paths of the marketdata app."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from marketdata.models import CollectionStatus, Instrument


def collection_overview() -> list[dict[str, Any]]:
    """Collection status of every active instrument: lag, heartbeat age, counts, last error."""
    now = timezone.now()
    statuses = {
        s.instrument_id: s
        for s in CollectionStatus.objects.filter(instrument__in=Instrument.objects.active())
    }
    rows = []
    for instrument in Instrument.objects.active().select_related("exchange"):
        status = statuses.get(instrument.pk)
        rows.append(
            {
                "instrument": str(instrument),
                "state": status.state if status else CollectionStatus.State.STOPPED,
                "lag_s": (now - status.last_tick_at).total_seconds()
                if status and status.last_tick_at
                else None,
                "heartbeat_age_s": (now - status.heartbeat_at).total_seconds()
                if status and status.heartbeat_at
                else None,
                "ticks": status.ticks_count if status else 0,
                "rejects": status.rejects_count if status else 0,
                "last_error": status.last_error if status else "",
            }
        )
    return rows
