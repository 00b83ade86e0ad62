#!/bin/sh
# Generic entrypoint of every ccp image (runs under tini, see base-tools).
# 1. sources each /etc/ccp/entrypoint.d/*.sh in name order, so an image or a
#    mounted volume can prepare the container (directories, config from env)
#    without replacing the entrypoint;
# 2. execs the command: by default the image's CMD, e.g. ["start"], which is
#    /usr/local/bin/start, the service's own start script.
set -e

for hook in /etc/ccp/entrypoint.d/*.sh; do
    [ -e "$hook" ] || continue
    echo "ccp-entrypoint: running $hook" >&2
    . "$hook"
done

if [ "$#" -eq 0 ]; then
    set -- start
fi
exec "$@"
