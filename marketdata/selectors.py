"""Read paths of the marketdata app."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from django.utils import timezone

from marketdata.models import Candle, CollectionStatus, Instrument


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


def candles_frame(
    *,
    instrument_id: int,
    timeframe: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """Stored candles as an OHLCV DataFrame: lowercase float columns ``open high low close
    volume`` and a UTC DatetimeIndex of close times, with close time in [start, end]. One query."""
    qs = Candle.objects.filter(instrument_id=instrument_id, timeframe=timeframe)
    if start is not None:
        qs = qs.filter(close_time__gte=start)
    if end is not None:
        qs = qs.filter(close_time__lte=end)
    rows = list(
        qs.order_by("close_time").values_list(
            "close_time", "open", "high", "low", "close", "volume"
        )
    )
    index = pd.DatetimeIndex([r[0] for r in rows], tz="UTC", name="close_time")
    values = np.array([[float(v) for v in r[1:]] for r in rows], dtype=np.float64).reshape(-1, 5)
    return pd.DataFrame(values, index=index, columns=["open", "high", "low", "close", "volume"])
