#!/bin/sh
# Register Sluice's custom search attributes (workflows/search_attributes.py; all Keyword) on the
# cluster at $TEMPORAL_ADDRESS, namespace $TEMPORAL_NAMESPACE. Run again, it changes nothing: an
# attribute that already exists is left as it is (the server refuses to create it twice).
set -eu
for name in SluiceConnection SluiceBackend SluiceRunKind SluiceRunStatus; do
    if temporal operator search-attribute list | grep -qw "$name"; then
        echo "search attribute $name: already registered"
    else
        temporal operator search-attribute create --name "$name" --type Keyword
        echo "search attribute $name: registered (Keyword)"
    fi
done
