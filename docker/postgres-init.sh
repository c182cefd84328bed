#!/bin/sh
# Run once by the postgres image, when its data volume is first created
# (/docker-entrypoint-initdb.d): one role per user of the server, each with its own password.
#   temporal_server  Temporal's databases (auto-setup creates temporal and temporal_visibility)
#   sluice           the metadata store (database sluice): runs, receipts, locks, metadata
#   loader           the destination (database warehouse): one schema per connection
# Passwords go in as psql variables (:'name' quotes them), never spliced into the SQL.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v temporal_pw="$TEMPORAL_DB_PASSWORD" \
    -v sluice_pw="$SLUICE_METADATA_PASSWORD" \
    -v loader_pw="$WAREHOUSE_PASSWORD" <<'SQL'
CREATE ROLE temporal_server LOGIN CREATEDB PASSWORD :'temporal_pw';
CREATE ROLE sluice LOGIN PASSWORD :'sluice_pw';
CREATE ROLE loader LOGIN PASSWORD :'loader_pw';
CREATE DATABASE sluice OWNER sluice ENCODING 'UTF8';
CREATE DATABASE warehouse OWNER loader ENCODING 'UTF8';
REVOKE ALL ON DATABASE sluice FROM PUBLIC;
REVOKE ALL ON DATABASE warehouse FROM PUBLIC;
SQL
