-- The shop example: orders that must not oversell. Run after `sluice migrate`:
--   psql -f sql/examples/shop.sql
-- Handlers: order_placed is a Swift handler (sluice-examples); restock is the
-- SQL function below. No roles are granted here.

CREATE SCHEMA IF NOT EXISTS shop;

-- Derived state: stock never goes negative.
CREATE TABLE shop.products (
  id text PRIMARY KEY,
  name text NOT NULL,
  stock int NOT NULL CHECK (stock >= 0),
  price_cents int NOT NULL
);

-- Sources.
CREATE TABLE shop.orders (
  id uuid PRIMARY KEY,
  customer_id text NOT NULL,
  product_id text NOT NULL,
  quantity int NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shop.restocks (
  id uuid PRIMARY KEY,
  staff_id text NOT NULL,
  product_id text NOT NULL,
  quantity int NOT NULL
);

-- Derived: placed (stock reserved) or declined (out_of_stock, unknown_product).
CREATE TABLE shop.order_status (
  order_id uuid PRIMARY KEY,
  status text NOT NULL,
  reason text,
  updated_at timestamptz NOT NULL
);

-- The restock handler: called with the event as jsonb.
CREATE FUNCTION shop.apply_restock(event jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  quantity bigint;
BEGIN
  BEGIN
    quantity := (event -> 'row' ->> 'quantity')::bigint;
  EXCEPTION WHEN others THEN
    quantity := NULL;
  END;
  IF quantity IS NULL OR quantity < 1 OR quantity > 1000000 THEN
    PERFORM sluice.reject('bad_quantity');
  END IF;
  UPDATE shop.products SET stock = stock + quantity WHERE id = event -> 'row' ->> 'product_id';
  IF NOT FOUND THEN
    PERFORM sluice.reject('unknown_product');
  END IF;
END
$$;

SELECT sluice.add_source('shop.orders', actor_column => 'customer_id', event_type => 'order_placed');
SELECT sluice.add_source('shop.restocks', actor_column => 'staff_id', event_type => 'restock');

INSERT INTO sluice.handlers (event_type, function) VALUES ('restock', 'shop.apply_restock')
ON CONFLICT (event_type) DO UPDATE SET function = EXCLUDED.function;

INSERT INTO sluice.permission_rules (event_type, role)
VALUES ('order_placed', 'customer'), ('restock', 'staff')
ON CONFLICT (event_type, role) DO NOTHING;
