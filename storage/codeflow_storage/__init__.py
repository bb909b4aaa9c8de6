"""Storage backends for codeflow beyond the built-in MemoryStorage.

Each backend implements ``codeflow.Storage`` and passes the shared contract suite:

- ``codeflow_storage.sqlite.SQLiteStorage(path)``: one SQLite file, shared safely by
  threads and processes (``pip install 'codeflow[sqlite]'``; chosen by the storage URL
  ``sqlite:///path/codeflow.db``).
"""
