-- Grafana's login on the Loa database: read-only, and only the tables the dashboards query
-- (no users, API tokens or receiver credentials). Run after every `loa db upgrade`:
--   psql -v ON_ERROR_STOP=1 -v reader=grafana_reader -v reader_password=... -d loa -f grafana-reader.sql
-- Idempotent: creates the role if missing, sets its password, grants again.
SELECT format('CREATE ROLE %I LOGIN', :'reader')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'reader') \gexec
ALTER ROLE :"reader" WITH LOGIN PASSWORD :'reader_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'reader') \gexec
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON regions, stations, receivers, station_assignments, connectivity_intervals, receiver_live_state,
                rollouts, rollout_targets TO :"reader";
-- Alert incidents, and of their notifications who was told and how it went: not the channel
-- (an apprise URL with its credentials), the error text that may quote it, or the acknowledge
-- token. Nothing of crew_members, whose channels hold the same credentials.
GRANT SELECT ON incidents TO :"reader";
GRANT SELECT (id, incident_id, reason, member_id, recipient, state, attempts, available_at, created_at, sent_at)
  ON notifications TO :"reader";
-- Of a release, what it is; not its files.
GRANT SELECT (id, version, hardware, min_version, uploaded_at, withdrawn_at) ON firmware_releases TO :"reader";
-- Availability as the API defines it (migration 0008); the functions read the ledger as the reader.
GRANT EXECUTE ON FUNCTION loa_ledger_spans(timestamp, timestamp, timestamp),
                          loa_availability(timestamp, timestamp, timestamp) TO :"reader";
-- Dashboards must not hold a query open for minutes on the production database.
ALTER ROLE :"reader" SET statement_timeout = '30s';
