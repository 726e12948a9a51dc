"""The restricted Pod Security Standard, checked offline on rendered pod templates.

Follows https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline and
restricted controls, "latest" version). `violations(pod_spec, annotations)` returns one message
per broken control; an empty list means the pod would be admitted in a namespace labelled
`pod-security.kubernetes.io/enforce=restricted`.
"""

# Volume types the restricted profile allows.
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}
# Sysctls the baseline profile allows.
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
SECCOMP_OK = {"RuntimeDefault", "Localhost"}


def pod_spec_of(obj):
    """The pod spec inside a workload object, or None for other kinds."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec, (obj.get("metadata") or {}).get("annotations") or {}
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"}:
        tpl = spec.get("template") or {}
    elif kind == "CronJob":
        tpl = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    else:
        return None
    return tpl.get("spec") or {}, (tpl.get("metadata") or {}).get("annotations") or {}


def violations(pod, annotations=None):
    out = []
    psc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"{field} must not be true")
    for vol in pod.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"volume {vol.get('name')}: type {sorted(kinds - ALLOWED_VOLUMES)} not allowed")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl.get('name')} not allowed")
    for key, value in (annotations or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            out.append(f"AppArmor annotation {key}={value} not allowed")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser must not be 0")

    containers = [("container", c) for c in pod.get("containers") or []]
    containers += [("initContainer", c) for c in pod.get("initContainers") or []]
    containers += [("ephemeralContainer", c) for c in pod.get("ephemeralContainers") or []]
    if not containers:
        out.append("pod has no containers")
    for what, c in containers:
        name = f"{what} {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{name}: privileged must not be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities.drop must include ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities.add may only hold NET_BIND_SERVICE")
        run_as_non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if run_as_non_root is not True:
            out.append(f"{name}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in SECCOMP_OK:
            out.append(f"{name}: seccompProfile.type must be RuntimeDefault or Localhost, got {seccomp}")
        for ctx in (sc, psc):
            apparmor = (ctx.get("appArmorProfile") or {}).get("type")
            if apparmor not in (None, "RuntimeDefault", "Localhost"):
                out.append(f"{name}: appArmorProfile.type {apparmor} not allowed")
            se = ctx.get("seLinuxOptions") or {}
            if se.get("type") not in SELINUX_TYPES or se.get("user") or se.get("role"):
                out.append(f"{name}: seLinuxOptions not allowed: {se}")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{name}: procMount must be Default")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{name}: hostPort must not be set")
    return out
