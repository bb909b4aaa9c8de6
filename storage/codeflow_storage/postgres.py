"""``postgres://`` storage URLs, libpq's other spelling of ``postgresql://``: the same
backend (codeflow's ``open_storage`` imports the module named by the URL's scheme)."""

from codeflow_storage.postgresql import PostgreSQLStorage, from_url

__all__ = ["PostgreSQLStorage", "from_url"]
