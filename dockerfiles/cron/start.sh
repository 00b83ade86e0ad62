#!/bin/sh
# Run cron in the foreground; -L 15 logs job start, end, failure and exit
# status to syslog if there is one (there is none by default).
set -e
exec cron -f -L 15 "$@"
