#!/bin/bash
# Runs once, on the first start of an empty PostgreSQL volume: one database per service.
set -euo pipefail
for db in prefect mlflow catalogue; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -c "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -c "CREATE DATABASE \"$db\""
done
