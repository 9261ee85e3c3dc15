"""availability defined once in SQL: loa_ledger_spans and loa_availability (PostgreSQL)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 21:00:00
"""
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

# A copy of fleet_service/uptime/availability_sql.postgres_functions() as of this revision (a
# migration must keep installing what it installed); tests/fleet_service/uptime/
# test_availability_sql.py fails when the code's definition and the head's functions differ,
# so a change to the definition comes with a migration that replaces them.
LEDGER_SPANS = """
CREATE OR REPLACE FUNCTION loa_ledger_spans(t_from timestamp, t_to timestamp,
    t_now timestamp DEFAULT (now() AT TIME ZONE 'UTC'))
RETURNS TABLE (receiver_id varchar, station_id integer, state varchar, start_cause varchar, lo timestamp, hi timestamp, duration_us bigint, ongoing boolean)
LANGUAGE sql STABLE
AS $loa$
SELECT clipped.receiver_id, clipped.station_id, clipped.state, clipped.start_cause, clipped.lo, clipped.hi,
       CAST(extract(epoch FROM clipped.hi) * 1000000 AS bigint) - CAST(extract(epoch FROM clipped.lo) * 1000000 AS bigint) AS duration_us, clipped.ongoing
FROM (
  SELECT c.receiver_id, c.station_id, c.state, c.start_cause,
         CASE WHEN c.start_at > t_from THEN c.start_at ELSE t_from END AS lo,
         CASE WHEN c.end_at IS NOT NULL AND c.end_at < CASE WHEN t_to < t_now THEN t_to ELSE t_now END THEN c.end_at ELSE CASE WHEN t_to < t_now THEN t_to ELSE t_now END END AS hi,
         (c.end_at IS NULL AND t_to >= t_now) AS ongoing
  FROM connectivity_intervals c
  WHERE c.start_at < t_to AND (c.end_at IS NULL OR c.end_at > t_from)
) AS clipped
WHERE clipped.hi > clipped.lo
$loa$
"""

AVAILABILITY = """
CREATE OR REPLACE FUNCTION loa_availability(t_from timestamp, t_to timestamp,
    t_now timestamp DEFAULT (now() AT TIME ZONE 'UTC'))
RETURNS TABLE (receiver_id varchar, station_id integer, observed_us bigint, online_us bigint, outages integer)
LANGUAGE sql STABLE
AS $loa$
SELECT spans.receiver_id, spans.station_id,
       CAST(sum(spans.duration_us) AS bigint) AS observed_us,
       CAST(sum(CASE WHEN spans.state = 'online' THEN spans.duration_us ELSE 0 END) AS bigint) AS online_us,
       CAST(sum(CASE WHEN spans.state = 'offline' THEN 1 ELSE 0 END) AS integer) AS outages
FROM loa_ledger_spans(t_from, t_to, t_now) AS spans
GROUP BY spans.receiver_id, spans.station_id
$loa$
"""


def upgrade() -> None:
    # SQLite has no functions: the service runs the same SQL text there as a subquery.
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(LEDGER_SPANS)
    op.execute(AVAILABILITY)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION IF EXISTS loa_availability(timestamp, timestamp, timestamp)")
    op.execute("DROP FUNCTION IF EXISTS loa_ledger_spans(timestamp, timestamp, timestamp)")
