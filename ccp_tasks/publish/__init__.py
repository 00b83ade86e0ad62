"""Publishing: the registry client, push and moving tags, Artifactory, retention."""
