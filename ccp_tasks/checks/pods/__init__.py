r"""Running a pod spec on the Docker engine the way a kubelet would, as far as
one Docker engine can.

No Kubernetes cluster runs on these machines, so `kube:<image>` plays the
kubelet's part itself through the engine package:

- **one network namespace per pod**: a holder container (a few lines of this
  host's static busybox, imported once as `ccp-pod-pause:<digest>`) owns the
  pod's network, IPC and UTS namespaces; every container of the pod joins it
  with `network_mode=container:<holder>` (and `ipc_mode`, and `pid_mode` with
  `shareProcessNamespace`), so the containers reach each other on localhost,
  share the pod's host name and `/etc/hosts`, and the pod has one IP address on
  the run's private network;
- **init containers** run first, in order, each to exit code 0 (a failure
  stops the pod: a kubelet would retry it with back-off under
  `restartPolicy: Always`/`OnFailure`); an init container with
  `restartPolicy: Always` is a native sidecar: started, waited for until its
  startup probe passes, and kept running beside the others;
- **`command`/`args`** map to the image's ENTRYPOINT/CMD exactly as Kubernetes
  maps them: `command` replaces ENTRYPOINT and drops CMD, `args` replace CMD,
  `args` alone keep ENTRYPOINT; `$(VAR)` references are expanded from the
  container's own `env`/`envFrom` (`$$` escapes), unknown ones left as written;
- **`env`** (`value`, `valueFrom` `configMapKeyRef`, `secretKeyRef`,
  `fieldRef`, `resourceFieldRef`) and **`envFrom`** (`configMapRef`,
  `secretRef`, `prefix`, `optional`) from the ConfigMaps and Secrets given in
  the same YAML stream; `env` wins over `envFrom`, later over earlier;
- **volumes**: `configMap`, `secret` (`items`, `defaultMode`, `optional`),
  `downwardAPI`, `projected` (of those three) rendered into a directory per
  volume under the run's work directory with the atomic-writer layout
  (`..data` and one symlink per key), mounted read-only; `emptyDir` a
  world-writable directory shared by every container that mounts it (a
  tmpfs volume with `medium: Memory`); `persistentVolumeClaim` a fresh empty
  directory; `subPath`, `readOnly`; `fsGroup` and `supplementalGroups`;
- `workingDir`, `securityContext` (`runAsUser`, `runAsGroup`,
  `runAsNonRoot` verified as the kubelet verifies it, `readOnlyRootFilesystem`,
  `allowPrivilegeEscalation: false`, `capabilities`, `privileged`, pod-level
  `sysctls`), `hostAliases`, `hostname`;
- **resources**: `limits.memory` becomes the memory limit (swap off, as on a
  node), `limits.cpu` the CPU quota (`nano_cpus`), `requests.cpu` (or the
  limit when there is no request) the CPU shares;
- **probes** (`readinessProbe`, `livenessProbe`, `startupProbe`; `exec`,
  `httpGet`, `tcpSocket`) with `initialDelaySeconds`, `periodSeconds`,
  `timeoutSeconds`, `successThreshold`, `failureThreshold`: HTTP and TCP probes
  connect from this host to the pod's address, as the kubelet does from the
  node; an HTTP probe passes on 200-399; an exec probe runs in the container
  and passes on exit code 0 within `timeoutSeconds`. Liveness and readiness
  wait for the startup probe. A container is ready when its readiness probe
  has passed `successThreshold` times in a row (without one: when it runs and
  its startup probe passed); the pod is ready when every container is;
- **restarts**: a container whose liveness or startup probe fails
  `failureThreshold` times in a row is stopped (with the grace period) and,
  like one that exits, started again as a new container per `restartPolicy`
  (`Always`; `OnFailure` on a non-zero exit or a probe kill; `Never` not), with
  the kubelet's back-off (at once, then 10 s, 20 s, … up to 5 min);
  `lifecycle.postStart` runs after each start (a failure kills the container),
  `preStop` before a probe kill;
- everything the run made carries the caller's labels plus
  `io.ccp.pod.image`, `io.ccp.pod.run` and `io.ccp.pod.role`, and is removed by
  one sweep by those labels (containers first, the holder last, then tmpfs
  volumes), which the caller runs in a `finally`.

Refused (the static checks say so before anything starts): `hostNetwork`,
`hostPID`, `hostIPC`, gRPC probes and hooks, volumes of any other type.
Applied nowhere and listed in the run's detail: scheduling (node selectors,
affinity, tolerations, topology), requests other than CPU, image pull
policies and secrets (images are never pulled: tree images run by the ID their
build made), service accounts and their tokens, DNS policy, readiness gates.

The parts, one job each: `source` (the pod as given), `rules` (small
Kubernetes rules: quantities, `$(VAR)`, command/args), `values` (env and the
downward API), `volumes`, `plans` (a container spec -> what the engine
creates), `probes` (probes and hooks), `restarts` (the kubelet's loop over
each container: probes, kills, restarts, back-off), `holder` (the pause
container), `listening` (who listens where) and `runner` (PodRun, the pod's
lifecycle).
"""
