"""A small stock ledger kept in PostgreSQL: items, and moves in and out."""

import os

import psycopg2


class OutOfStock(Exception):
    """A move would take more of an item than is in stock."""


def connect(url=None):
    return psycopg2.connect(url or os.environ["DATABASE_URL"])


SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    sku   text PRIMARY KEY,
    name  text NOT NULL
);
CREATE TABLE IF NOT EXISTS moves (
    id    serial PRIMARY KEY,
    sku   text NOT NULL REFERENCES items(sku),
    delta integer NOT NULL CHECK (delta <> 0)
);
"""


def migrate(conn):
    with conn, conn.cursor() as cur:
        cur.execute(SCHEMA)


def add_item(conn, sku, name):
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO items (sku, name) VALUES (%s, %s)", (sku, name))


def stock(conn, sku):
    with conn.cursor() as cur:
        cur.execute("SELECT COALESCE(SUM(delta), 0) FROM moves WHERE sku = %s", (sku,))
        return cur.fetchone()[0]


def move(conn, sku, delta):
    """Records a move; refuses one that would leave the stock negative.
    The item's row is locked, so concurrent moves cannot both pass."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT sku FROM items WHERE sku = %s FOR UPDATE", (sku,))
        if cur.fetchone() is None:
            raise KeyError(sku)
        cur.execute("SELECT COALESCE(SUM(delta), 0) FROM moves WHERE sku = %s", (sku,))
        if cur.fetchone()[0] + delta < 0:
            raise OutOfStock(sku)
        cur.execute("INSERT INTO moves (sku, delta) VALUES (%s, %s)", (sku, delta))
