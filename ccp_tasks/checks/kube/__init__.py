r"""Pod definitions: `pod.yaml.j2` beside an image's template, checked
statically and then run with pod semantics on the Docker engine (`kube:<image>`).

## Pod definitions: `pod.yaml.j2`

A service image may ship `pod.yaml.j2` beside its `Dockerfile.j2`: the pod it
is meant to run in, as a YAML stream holding one Pod (or a Deployment,
StatefulSet, ReplicaSet or DaemonSet, whose pod template is used) and the
ConfigMaps and Secrets it uses. It renders like the Dockerfile (same
variables, `StrictUndefined`, macros) and names images with `{{ image('name') }}`,
so the reference is always the one the pipeline just built.

```yaml
# dockerfiles/api-service/pod.yaml.j2 (abridged): the API with its memcached over localhost
apiVersion: v1
kind: Pod
metadata: {name: api-service}
spec:
  containers:
    - name: api
      image: {{ image('api-service') }}
      env: [{name: MEMCACHED_HOST, value: "127.0.0.1"}]
      envFrom: [{configMapRef: {name: api-service-env}}]
      ports: [{name: http, containerPort: 8080}]
      readinessProbe: {httpGet: {path: /health, port: http}, periodSeconds: 1}
    - name: memcached
      image: {{ image('memcached') }}
      env: [{name: MEMCACHED_LISTEN, value: "127.0.0.1"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: api-service-env}
data: {API_VERSION: 0.1.0-it}
```

## What `kube:<image>` checks before anything runs

- **schema**: every document against the Kubernetes OpenAPI schema of the
  configured Kubernetes version, offline, with `kubernetes-validate`'s strict
  schemas (an unknown field is an error); each error names the document and
  the field's path: `Pod/web: spec.containers[0].imagePullPolicyy: unknown
  field (did you mean 'imagePullPolicy'?)`;
- **API rules** the schema does not carry and the API server enforces:
  enumerations (`restartPolicy`, `imagePullPolicy`, `protocol`, `scheme`),
  names (DNS labels, IANA port names), unique container, port, volume and
  mount names, ports in range, one handler per probe, `successThreshold: 1`
  on liveness and startup probes, volume mounts naming volumes, one source
  per volume and per `valueFrom`, resource quantities, a workload's selector
  matching its template's labels;
- **runnable here**: nothing the Docker engine cannot do as a pod
  (`hostNetwork`, `hostPID`, `hostIPC`, gRPC probes, other volume types);
- **image references**: every container's image is an image of the tree (its
  reference as `image()` spells it) or listed in `external_images`, and one
  container runs the image under test;
- **ConfigMap and Secret references** (volumes, `envFrom`, `valueFrom`,
  their keys) are in the stream, unless `optional` (the Secret mounted at the
  integration test's `tls.dir` is the run's throwaway certificate);
- **container ports**: every TCP `containerPort` of the container under test
  is one its `integration.yaml` expects listening (`ports`; a `local_ports`
  one listens on loopback only and cannot be a container port), and a
  sidecar's are among those its own image's `integration.yaml` expects;
- **probe ports**: every `httpGet`/`tcpSocket` port of a probe or hook names
  a port the container declares (by name or number), and none of the
  `local_ports` (the kubelet connects to the pod's address);
- **commands exist in the images**: the program the container starts (after
  the kubelet's command/args mapping onto the image's ENTRYPOINT/CMD, only
  where the pod sets `command` or `args`), the programs of exec probes and
  hooks, and every absolute path given as a word of `command`/`args` (outside
  `/proc`, `/sys`, `/dev`, `/tmp`, `/run`, `/var/run`, `/var/log`, `/var/tmp`
  and the container's volume mounts) exist in the image, programs
  executable (read from a created, never started container);
- **users**: a `runAsUser` is a uid in the image's `/etc/passwd`, a named
  image `USER` is there too, and `runAsNonRoot` holds as the kubelet verifies
  it (a named image user cannot be verified);
- **config files**: the files the pod mounts into the container under test
  from ConfigMaps and Secrets are exactly those its `integration.yaml`
  mounts (`files`), with the same content (the integration template rendered
  as the test renders it) and mode; with `tls`, a Secret volume is mounted at
  its `dir`.

A failed check is reported with every problem it found, and the pod is not
run.

## Running it

Then the pod runs on a private network made for the run (see
`ccp_tasks/checks/pods/` for exactly what is and is not done like a kubelet), with
the `services` of the image's `integration.yaml` that no container of the pod
runs started beside it (they stand for the cluster's other Services, by their
alias). When the pod is ready, the integration test's port checks (the
container under test listens on exactly its `ports`; each sidecar on its
declared container ports; sockets are told apart by owning process) and
checks run against the pod's address (regression checks compare with the
answers `test:<image>` recorded, and record nothing), while the probes keep
running; a last result fails if a container restarted or became unready
meanwhile. Everything is removed afterwards, also on failure and Ctrl-C;
the next run removes what a killed one left. The log of every container
(every instance of a restarted one) and the kubelet's events go to
`cache/logs/kube-<image>.log`.
"""

from ccp_tasks.checks.kube.check import check_pod, load_context
from ccp_tasks.checks.kube.crosschecks import DEFAULT_PATH, ImageFiles, PodContext, static_checks
from ccp_tasks.checks.kube.definition import load_documents, pod_source, render_pod
from ccp_tasks.checks.kube.run import run_pod
from ccp_tasks.checks.kube.schema import schema_dir
from ccp_tasks.checks.pod_inputs import kubernetes_version

__all__ = [
    "DEFAULT_PATH",
    "ImageFiles",
    "PodContext",
    "check_pod",
    "kubernetes_version",
    "load_context",
    "load_documents",
    "pod_source",
    "render_pod",
    "run_pod",
    "schema_dir",
    "static_checks",
]
