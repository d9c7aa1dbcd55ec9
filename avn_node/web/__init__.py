"""The dashboard: server-rendered pages, the JSON API under /api/v1, health and Prometheus metrics (DESIGN §1 web/)."""
