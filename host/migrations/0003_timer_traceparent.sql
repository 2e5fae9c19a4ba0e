-- The W3C traceparent of the handler application that scheduled a timer, so the change it fires
-- (and the events that change causes) stay in the order's trace. NULL when tracing was off.
ALTER TABLE timers ADD COLUMN traceparent TEXT;
