#!/bin/sh
# Check the configuration, then run nginx in the foreground ("daemon off" is
# set in nginx.conf).
set -e
nginx -t -q
exec nginx "$@"
