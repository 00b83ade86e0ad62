"""The build stage: the Debian base, package manifests."""
