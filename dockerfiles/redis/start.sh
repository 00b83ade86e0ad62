#!/bin/sh
# Run redis-server in the foreground with the image's config; extra arguments
# are passed on as config overrides (e.g. --maxmemory 64mb).
set -e
exec redis-server /etc/redis/redis.conf "$@"
