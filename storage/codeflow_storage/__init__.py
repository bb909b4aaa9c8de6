"""Storage backends for codeflow beyond the built-in MemoryStorage.

Each backend implements ``codeflow.Storage`` and passes the shared contract suite:

- ``codeflow_storage.sqlite.SQLiteStorage(path)``: one SQLite file, shared safely by
  threads and processes (``pip install 'codeflow[sqlite]'``; chosen by the storage URL
  ``sqlite:///path/codeflow.db``).
- ``codeflow_storage.postgresql.PostgreSQLStorage(conninfo, schema=...)``: one PostgreSQL
  database shared by any number of codeflow nodes (``pip install 'codeflow[postgres]'``;
  chosen by the storage URL ``postgresql://user:password@host/dbname?schema=codeflow``, or
  ``postgres://``, whose module ``codeflow_storage.postgres`` is the same backend).

How codeflow finds a backend (DESIGN "Storage contract": it imports none of them): the
storage URL ``memory`` is codeflow's own MemoryStorage; for any other URL, the scheme
names the module ``codeflow_storage.<scheme>`` (``sqlite`` for ``sqlite:///...``), or a
module registered under that name in the entry-point group ``codeflow.storage``. That
module's ``from_url(url: str)`` parses the whole URL, options included, and returns the
open storage, raising ``ValueError`` for a URL it cannot use. A new backend is a module
with such a ``from_url``.
"""
