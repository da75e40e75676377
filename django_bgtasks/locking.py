"""Taking SQLite's write lock at the start of a transaction."""

from django.db import connections


def lock_for_writing(model, using: str) -> None:
    """On SQLite, take the database's write lock now, inside the current
    transaction.

    SQLite has no row locks, one writer at a time, and a transaction that
    reads first and writes later fails with "database is locked" if another
    connection wrote in between. Writing first (an update of no rows still
    takes the lock) makes the transaction wait its turn instead, and then
    read current data. Elsewhere this does nothing: row locks
    (``select_for_update``) serve.
    """
    connection = connections[using]
    if connection.vendor != "sqlite":
        return
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET id = id WHERE 0 = 1")
