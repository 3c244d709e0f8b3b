-- The W3C trace context of the PRODUCER `create` span of each event, sent by the relay as the
-- message's traceparent and tracestate headers (docs/architecture.md §13).
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
ALTER TABLE outbox ADD COLUMN tracestate TEXT;
