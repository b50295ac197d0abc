"""The scenarios, one module each: (a) delivery, (b) ceiling, (c) isolation, (d) ingest."""
