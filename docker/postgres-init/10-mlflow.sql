-- Runs once, on the first start of the `postgres` service (empty data volume), as the superuser
-- (POSTGRES_USER) connected to POSTGRES_DB: creates MLflow's own role and database beside Airflow's
-- metadata database. The credentials come from the container's environment (MLFLOW_DB_USER,
-- MLFLOW_DB_PASSWORD, set in docker-compose.yaml), never from this file. To change them later,
-- ALTER ROLE by hand: this script does not run again on an existing volume.

\set ON_ERROR_STOP on
\getenv mlflow_user MLFLOW_DB_USER
\getenv mlflow_password MLFLOW_DB_PASSWORD

-- A missing variable stops the init (ON_ERROR_STOP) with a message naming it.
\if :{?mlflow_user}
\else
  DO $$ BEGIN RAISE EXCEPTION 'MLFLOW_DB_USER is not set in the postgres container environment'; END $$;
\endif
\if :{?mlflow_password}
\else
  DO $$ BEGIN RAISE EXCEPTION 'MLFLOW_DB_PASSWORD is not set in the postgres container environment'; END $$;
\endif

CREATE ROLE :"mlflow_user" WITH LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER :"mlflow_user";
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
