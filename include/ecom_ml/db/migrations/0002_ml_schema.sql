-- What the pipeline publishes back to the shop: the champions' batch predictions, in a schema of
-- their own so the shop's grants, backups and migrations can treat them apart from its own tables.
--
-- The prediction tables themselves (ml.recommendations, ml.demand_forecasts, ...) are created by the
-- publisher (ecom_ml.publishing), not here: each publish loads a new table and swaps it in under the
-- stable name within one transaction, so their columns are whatever the model kind declares and a
-- reader always sees one complete set. This file creates the schema and the publication log.

CREATE SCHEMA IF NOT EXISTS ml;

-- One row per completed publish, written in the swap's transaction: which model version's
-- predictions a table holds, for which day, since when, and who published them.
CREATE TABLE ml.publications (
    publication_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name     text        NOT NULL,           -- in schema ml
    model          text        NOT NULL,           -- registered model name
    model_version  integer     NOT NULL,
    day            date        NOT NULL,           -- the data day the predictions were made for
    row_count      bigint      NOT NULL,
    published_at   timestamptz NOT NULL DEFAULT now(),
    published_by   text        NOT NULL,
    reason         text
);

CREATE INDEX publications_table_idx ON ml.publications (table_name, published_at DESC);
