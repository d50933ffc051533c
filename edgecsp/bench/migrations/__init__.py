"""Alembic migrations of the history database (edgecsp.bench.history runs them on open).

Revisions are additive: a new column or table, never a drop, so an older edgecsp on another
device keeps writing into a database a newer one upgraded. ``alembic -c edgecsp/bench/migrations/alembic.ini``
works too (set ``sqlalchemy.url``), for an administrator who upgrades a shared database by hand.
"""
