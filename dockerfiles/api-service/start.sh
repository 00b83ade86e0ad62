#!/bin/sh
# Serve the API with gunicorn in the foreground, access log on stdout.
set -e
exec gunicorn \
    --chdir /opt/api-service \
    --bind "0.0.0.0:${API_PORT:-8080}" \
    --workers "${API_WORKERS:-2}" \
    --access-logfile - \
    --error-logfile - \
    "$@" \
    api_service:app
