#!/bin/sh
# Run memcached in the foreground, logging to stderr. Tunables come from env.
set -e
exec memcached \
    --listen="${MEMCACHED_LISTEN:-0.0.0.0}" \
    --port="${MEMCACHED_PORT:-11211}" \
    --memory-limit="${MEMCACHED_MEMORY_MB:-64}" \
    --conn-limit="${MEMCACHED_MAX_CONNECTIONS:-1024}" \
    "$@"
