#!/bin/sh
# Check the configuration, then run haproxy in the foreground (-db) as a
# master-worker (-W) so it can be reloaded with SIGUSR2.
set -e
: "${BACKEND_HOST:=api-service}"
: "${BACKEND_PORT:=8080}"
export BACKEND_HOST BACKEND_PORT
haproxy -c -q -f /etc/haproxy/haproxy.cfg
exec haproxy -W -db -f /etc/haproxy/haproxy.cfg "$@"
