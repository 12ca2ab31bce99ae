"""`gunctl watch`: stream readers, tracker glue, alert rules and event sinks.

- ``reader``: a thread per source that keeps only its newest frame, reconnecting with backoff;
- ``tracking``: detections linked across frames (norfair), a track id in every record;
- ``rules``: when a track becomes an alert (hits, median score, cooldown, zones, stationary);
- ``events``: events.jsonl (append, fsync per event) and the best-frame snapshots;
- ``sinks``: webhook (httpx, HMAC signature, retries, bounded outbox) and ``--exec``;
- ``runner``: the loop that ties them to the inference core (``watch(config)``).
"""
