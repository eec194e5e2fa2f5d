"""The exchange log: its records, the log database, queries, and how records read."""
