"""Live sessions, one owner from the first join to the finalized bill (issue 12).

Above `billing` and `consultations`, which it drives; nothing below imports it:

- `session`: join, presence, start, end, the join timeout (the use cases the edges call);
- `meter`: the minute meter's use case (charge batches, stops, the loop, the rebuild);
- `planner`: pure decisions (which minute is due, when a session must stop);
- `clock`: Redis, the one clock every process reads (due meters, stops, presence);
- `finalize`: the stopped session completed from the ledger, refunds, receipts;
- `bill`: the read-only bill, line by line;
- `keys`: every Redis key and TTL.
"""
