"""Test-only helpers (never imported by the product): the golden of the user surface, photos, servers."""
