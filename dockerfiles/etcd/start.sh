#!/bin/sh
# Run etcd in the foreground. etcd reads ETCD_* variables itself; this only
# fills in single-member defaults for the ones the caller did not set.
set -e
: "${ETCD_NAME:=$(hostname)}"
: "${ETCD_DATA_DIR:=/var/lib/etcd/default}"
: "${ETCD_LISTEN_CLIENT_URLS:=http://0.0.0.0:2379}"
: "${ETCD_ADVERTISE_CLIENT_URLS:=http://$(hostname -i | cut -d' ' -f1):2379}"
: "${ETCD_LISTEN_PEER_URLS:=http://0.0.0.0:2380}"
: "${ETCD_INITIAL_ADVERTISE_PEER_URLS:=http://$(hostname -i | cut -d' ' -f1):2380}"
: "${ETCD_INITIAL_CLUSTER:=${ETCD_NAME}=${ETCD_INITIAL_ADVERTISE_PEER_URLS}}"
export ETCD_NAME ETCD_DATA_DIR ETCD_LISTEN_CLIENT_URLS ETCD_ADVERTISE_CLIENT_URLS \
    ETCD_LISTEN_PEER_URLS ETCD_INITIAL_ADVERTISE_PEER_URLS ETCD_INITIAL_CLUSTER
exec etcd "$@"
