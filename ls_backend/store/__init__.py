"""A project's durable state: its webhook log, annotations, task mirror and named state
(``annotations``), the serving pointer and registry (``pointer``), the embedding cache, on
SQLite files (the default) or PostgreSQL (``databases``)."""
