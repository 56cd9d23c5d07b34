"""What the real node owns on the host, and how all of it is taken back.

The node's pods live on one Linux bridge, `kindling0`, whose address is the node's own.
Everything the cluster adds to the host is named so that it can be found again and removed,
even after a run that was killed halfway:

- the bridge and the route of the Service CIDR to it (pods and Services are reached only
  through it; the pod /24 is the bridge's own connected route);
- forwarding enabled on the bridge alone (`net.ipv4.conf.kindling0.forwarding`: a pod's
  packet to a ClusterIP is DNATed to another pod and routed back onto the bridge). The
  machine's global `ip_forward` is left as it is, so nothing arriving on another interface
  is ever forwarded;
- the chain `KINDLING-EGRESS` in the mangle table's FORWARD chain, which drops every packet
  from the bridge to any other interface: a pod can reach the host and other pods, never
  anything past the machine (a chain kube-proxy never touches, first in FORWARD);
- kube-proxy's and the kubelet's chains (`KUBE-*`) and any a CNI plugin made (`CNI-*`);
- the pods' network namespaces (containerd's CRI names them `cni-<uuid>` in /run/netns);
- the cgroups under `/kindling` (the kubelet's cgroupRoot) in every v1 hierarchy;
- the kernel settings the kubelet sets at start (container_manager_linux.go,
  setupKernelTunables), saved before it starts and restored after.

The host's own rules, default policies, interfaces, routes and DNS are never changed: rules
are only ever added to or deleted from a built-in chain one by one, by exact match.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from kindling.cluster.nodes import REAL_NODE_IP as NODE_IP
from kindling.cluster.nodes import REAL_NODE_POD_CIDR as NODE_POD_CIDR

BRIDGE = "kindling0"
EGRESS_CHAIN = "KINDLING-EGRESS"
OWNED_CHAIN = re.compile(r"^(KUBE-|CNI-|KINDLING-)")
NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = "kindling"  # the kubelet's cgroupRoot; every pod's cgroup is below it
CGROUP_FS = Path("/sys/fs/cgroup")

# The kubelet's kernel settings (pkg/kubelet/cm/container_manager_linux.go,
# setupKernelTunables) and kube-proxy's, should a default change: saved, then restored.
TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/conf/all/route_localnet",
    "net/netfilter/nf_conntrack_max",
)
SYSCTL = Path("/proc/sys")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def up(service_cidr: str) -> None:
    """The bridge with the node's address, the Service route, forwarding on the bridge
    alone and the egress drop. Idempotent."""
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        run("ip", "link", "add", BRIDGE, "type", "bridge")
    prefix = ipaddress.ip_network(NODE_POD_CIDR).prefixlen
    if NODE_IP not in run("ip", "-4", "-o", "addr", "show", "dev", BRIDGE).stdout:
        run("ip", "addr", "add", f"{NODE_IP}/{prefix}", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    run("ip", "route", "replace", service_cidr, "dev", BRIDGE, "src", NODE_IP)
    (SYSCTL / f"net/ipv4/conf/{BRIDGE}/forwarding").write_text("1")
    if run("iptables", "-t", "mangle", "-S", EGRESS_CHAIN, check=False).returncode != 0:
        run("iptables", "-t", "mangle", "-N", EGRESS_CHAIN)
        drop = ["-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP"]
        run("iptables", "-t", "mangle", "-A", EGRESS_CHAIN, *drop)
    jump = ("FORWARD", "-j", EGRESS_CHAIN)
    if run("iptables", "-t", "mangle", "-C", *jump, check=False).returncode != 0:
        run("iptables", "-t", "mangle", "-I", *jump[:1], "1", *jump[1:])


def save_tunables(path: Path) -> None:
    """The kernel settings as they are before the kubelet starts; kept if already saved
    (a killed run's file holds the machine's own values, not the kubelet's)."""
    if path.exists():
        return
    values = {}
    for name in TUNABLES:
        try:
            values[name] = (SYSCTL / name).read_text().strip()
        except OSError:
            continue
    path.write_text(json.dumps(values, indent=1))


def restore_tunables(path: Path) -> None:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    for name, value in values.items():
        try:
            if (SYSCTL / name).read_text().strip() != value:
                (SYSCTL / name).write_text(value)
        except OSError:
            pass
    path.unlink(missing_ok=True)


def kill_pods() -> None:
    """SIGKILL every process in the kubelet's cgroups (the pods' containers and pause
    processes), and wait until they are gone."""
    for _ in range(100):
        pids = set(_cgroup_pids())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)  # the kernel reaps them; the loop re-reads, never trusts a sleep
    raise RuntimeError(f"pod processes would not die: {sorted(_cgroup_pids())}")


def kill_matching(marker: str) -> None:
    """SIGKILL every process whose command line names `marker` (containerd's shims name
    our containerd's socket; a killed run leaves them, re-parented to init)."""
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def unmount_under(root: Path) -> None:
    """Every mount below `root`, deepest first (overlay root filesystems, shm, volumes)."""
    prefix = str(root).rstrip("/") + "/"
    points = [p for p in _mount_points() if p.startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        run("umount", "-l", point, check=False)


def remove_netns() -> None:
    """The pods' network namespaces that no process is in any more (a live sandbox of
    another runtime keeps its own); removing one destroys its veth and the bridge port."""
    if not NETNS_DIR.is_dir():
        return
    in_use = _netns_in_use()
    for entry in NETNS_DIR.glob("cni-*"):
        try:
            inode = entry.stat().st_ino
        except OSError:
            continue
        if inode in in_use:
            continue
        run("umount", "-l", str(entry), check=False)
        entry.unlink(missing_ok=True)


def down() -> None:
    """The bridge (and with it the Service route), then every chain the cluster owns."""
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        run("ip", "link", "del", BRIDGE, check=False)
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            remove_chains(tool, table)


def remove_chains(tool: str, table: str) -> None:
    """Delete, by exact match, each rule of a built-in chain that jumps to a chain the
    cluster owns, then flush and delete those chains. Nothing else is touched."""
    listing = run(tool, "-t", table, "-S", check=False)
    if listing.returncode != 0:
        return
    owned: list[str] = []
    jumps: list[list[str]] = []
    for line in listing.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["-N"] and OWNED_CHAIN.match(parts[1]):
            owned.append(parts[1])
        elif parts[:1] == ["-A"] and not OWNED_CHAIN.match(parts[1]):
            target = parts[parts.index("-j") + 1] if "-j" in parts else ""
            if OWNED_CHAIN.match(target):
                jumps.append(parts[1:])
    for rule in jumps:
        run(tool, "-t", table, "-D", *_unquote(rule), check=False)
    for chain in owned:
        run(tool, "-t", table, "-F", chain, check=False)
    for chain in owned:
        run(tool, "-t", table, "-X", chain, check=False)


def remove_cgroups() -> None:
    """The kubelet's cgroup tree in every hierarchy, leaves first (empty once the pods'
    processes are dead)."""
    for hierarchy in _hierarchies():
        top = hierarchy / CGROUP_ROOT
        if not top.is_dir():
            continue
        folders = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for folder in [*folders, top]:
            try:
                folder.rmdir()
            except OSError:
                pass


def make_cgroups() -> None:
    """The kubelet checks that its cgroupRoot exists in every hierarchy before it starts."""
    for hierarchy in _hierarchies():
        (hierarchy / CGROUP_ROOT).mkdir(exist_ok=True)


def leftovers() -> list[str]:
    """What of the cluster is still on the host: empty after `down()`. For the tests."""
    found = []
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        found.append(f"bridge {BRIDGE}")
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            listing = run(tool, "-t", table, "-S", check=False).stdout
            chains = [line.split()[1] for line in listing.splitlines() if line.startswith("-N")]
            found += [f"{tool} {table} {c}" for c in chains if OWNED_CHAIN.match(c)]
    if NETNS_DIR.is_dir():
        found += [f"netns {p.name}" for p in NETNS_DIR.glob("cni-*")]
    found += [f"cgroup {h / CGROUP_ROOT}" for h in _hierarchies() if (h / CGROUP_ROOT).exists()]
    found += [f"pid {pid}" for pid in _cgroup_pids()]
    return found


# -- reading the host -----------------------------------------------------------------------


def _hierarchies() -> Iterable[Path]:
    if not CGROUP_FS.is_dir():
        return []
    return [p for p in CGROUP_FS.iterdir() if p.is_dir() and (p / "cgroup.procs").exists()]


def _cgroup_pids() -> Iterable[int]:
    top = CGROUP_FS / "pids" / CGROUP_ROOT
    if not top.is_dir():
        return []
    pids = []
    for procs in top.rglob("cgroup.procs"):
        try:
            pids += [int(line) for line in procs.read_text().split()]
        except OSError:
            continue
    return pids


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            # Field 5 is the mount point, with spaces and the like octal-escaped.
            points.append(line.split()[4].encode().decode("unicode_escape"))
    return points


def _netns_in_use() -> set[int]:
    inodes = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                inodes.add(os.stat(entry / "ns" / "net").st_ino)
            except OSError:
                continue
    return inodes


def _unquote(rule: list[str]) -> list[str]:
    """`iptables -S` quotes comments with spaces; split() cut them. Rejoin quoted runs."""
    out: list[str] = []
    buffer: list[str] | None = None
    for part in rule:
        if buffer is not None:
            buffer.append(part)
            if part.endswith('"'):
                out.append(" ".join(buffer)[1:-1])
                buffer = None
        elif part.startswith('"') and not (part.endswith('"') and len(part) > 1):
            buffer = [part]
        else:
            out.append(part.strip('"') if part.startswith('"') else part)
    return out
