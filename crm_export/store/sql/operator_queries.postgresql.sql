-- crm-export: the queries an operator runs first (PostgreSQL: psql -f this file).
-- Timestamps are timestamptz, stored in UTC.

-- Open errors by code, the most frequent first.
SELECT stream, error_code, COUNT(*) AS open_errors, MIN(first_failed_at) AS oldest
FROM ExportErrors
WHERE resolved_at IS NULL
GROUP BY stream, error_code
ORDER BY open_errors DESC;

-- The oldest open error.
SELECT id, stream, record_key, error_code, error_message, attempts, first_failed_at
FROM ExportErrors
WHERE resolved_at IS NULL
ORDER BY first_failed_at
LIMIT 1;

-- Records failing for more than 3 days (change the interval to taste).
SELECT stream, record_key, error_code, error_message, attempts, first_failed_at, last_failed_at
FROM ExportErrors
WHERE resolved_at IS NULL
  AND first_failed_at < now() - interval '3 days'
ORDER BY first_failed_at;

-- Runs that failed today (UTC).
SELECT id, job_id, stream, started_at, finished_at, error
FROM export_runs
WHERE outcome = 'failed'
  AND started_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
ORDER BY started_at;

-- Streams paused at a record, and since when.
SELECT stream, paused_record_key, paused_since, paused_error_code, paused_error_message
FROM stream_state
WHERE paused_record_key IS NOT NULL;
