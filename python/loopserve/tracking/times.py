"""Timestamps in the store: UTC ISO-8601 text with microseconds, one fixed width.

A fixed-width UTC form sorts as text in the same order as in time, so SQLite can compare
them with `<=` and order by them without parsing.
"""

from __future__ import annotations

import datetime as _dt

from loopserve.errors import LoopserveError

UTC = _dt.timezone.utc


class InvalidTimestamp(LoopserveError, ValueError):
    """A timestamp given to a query could not be read."""


def now() -> str:
    """The current time as stored: `2026-11-03T12:34:56.123456+00:00`."""
    return format_time(_dt.datetime.now(UTC))


def format_time(moment: _dt.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(value: "str | float | int | _dt.datetime | _dt.date") -> str:
    """Read a moment given by a user and return it in the stored form.

    Accepts a datetime (naive means UTC), a date (its midnight, UTC), a unix time in seconds,
    or an ISO-8601 string such as `2026-11-03`, `2026-11-03T12:00`, `2026-11-03 12:00:00Z` or
    `2026-11-03T12:00:00+01:00` (without an offset, UTC).
    """
    if isinstance(value, _dt.datetime):
        return format_time(value)
    if isinstance(value, _dt.date):
        return format_time(_dt.datetime(value.year, value.month, value.day, tzinfo=UTC))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return format_time(_dt.datetime.fromtimestamp(float(value), UTC))
        except (ValueError, OverflowError, OSError):
            raise InvalidTimestamp(f"invalid timestamp {value!r}: expected unix seconds within years 1..9999, "
                                   f"a datetime, or an ISO-8601 string") from None
    if isinstance(value, str):
        text = value.strip()
        try:
            return format_time(_dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")))
        except ValueError:
            pass
        try:
            return format_time(_dt.datetime.fromtimestamp(float(text), UTC))
        except (ValueError, OverflowError):
            pass
    raise InvalidTimestamp(f"invalid timestamp {value!r}: expected an ISO-8601 date or time such as "
                           f"'2026-11-03', '2026-11-03T12:00:00' or '2026-11-03T12:00:00+01:00' "
                           f"(UTC when no offset is given), or a unix time in seconds")
