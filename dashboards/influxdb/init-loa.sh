#!/bin/sh
# Run once by the influxdb:2 image, right after its first-start setup created the org, the bucket
# `loa` and the admin token (docker-compose.yml mounts this in /docker-entrypoint-initdb.d).
#  - The DBRP mapping lets the bucket answer InfluxQL as database `loa`, retention policy
#    `autogen`: the dashboards' queries are InfluxQL, the language InfluxDB 1.8, 2.x and 3.x share.
#  - Grafana gets its own v1 login that may only read that bucket.
set -eu
influx v1 dbrp create --org "$DOCKER_INFLUXDB_INIT_ORG" --bucket-id "$DOCKER_INFLUXDB_INIT_BUCKET_ID" \
  --db loa --rp autogen --default
influx v1 auth create --org "$DOCKER_INFLUXDB_INIT_ORG" --read-bucket "$DOCKER_INFLUXDB_INIT_BUCKET_ID" \
  --username "$LOA_GRAFANA_INFLUX_USER" --password "$LOA_GRAFANA_INFLUX_PASSWORD" \
  --description "Grafana (read-only)"
