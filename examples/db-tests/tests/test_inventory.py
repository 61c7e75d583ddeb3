import threading
import unittest
import uuid

import psycopg2

import inventory


class InventoryTest(unittest.TestCase):
    def setUp(self):
        self.conn = inventory.connect()
        inventory.migrate(self.conn)
        # Each test its own item: tests share one database.
        self.sku = "sku-" + uuid.uuid4().hex[:8]
        inventory.add_item(self.conn, self.sku, "widget")

    def tearDown(self):
        self.conn.close()

    def test_new_item_has_no_stock(self):
        self.assertEqual(inventory.stock(self.conn, self.sku), 0)

    def test_moves_add_up(self):
        inventory.move(self.conn, self.sku, 10)
        inventory.move(self.conn, self.sku, -3)
        self.assertEqual(inventory.stock(self.conn, self.sku), 7)

    def test_cannot_go_below_zero(self):
        inventory.move(self.conn, self.sku, 2)
        with self.assertRaises(inventory.OutOfStock):
            inventory.move(self.conn, self.sku, -5)
        self.assertEqual(inventory.stock(self.conn, self.sku), 2)

    def test_unknown_item(self):
        with self.assertRaises(KeyError):
            inventory.move(self.conn, "no-such-sku", 1)

    def test_duplicate_item_is_refused_by_the_database(self):
        with self.assertRaises(psycopg2.errors.UniqueViolation):
            inventory.add_item(self.conn, self.sku, "again")

    def test_concurrent_moves_never_oversell(self):
        inventory.move(self.conn, self.sku, 5)
        results = []

        def take():
            conn = inventory.connect()
            try:
                inventory.move(conn, self.sku, -1)
                results.append("ok")
            except inventory.OutOfStock:
                results.append("out")
            finally:
                conn.close()

        threads = [threading.Thread(target=take) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results.count("ok"), 5)
        self.assertEqual(results.count("out"), 7)
        self.assertEqual(inventory.stock(self.conn, self.sku), 0)


if __name__ == "__main__":
    unittest.main()
