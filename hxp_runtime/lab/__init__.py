"""The lab: real systemd hosts on one machine, one systemd-nspawn machine per host of hxp.yml.

Every host boots a copy-on-write overlay of one cached Debian rootfs (built once with
debootstrap, kept as a tar.zst) with systemd as PID 1, on a bridge with a static address,
reachable over SSH with a key generated for the lab. apt inside the hosts goes through an
apt-cacher-ng bound to the bridge address. ``up`` writes an Ansible inventory for the hosts.

One module per concern:

    spec        the lab of an hxp.yml: hosts, names, addresses, a free network
    state       what ``up`` created (state.json) and this machine's registry of labs
    image       the debootstrap base image and its cache key
    hostos      the controller's plumbing: commands, files, pids, mounts, the bridge
    cgroups     each host's own cgroups, and killing what is left in them
    aptproxy    the lab's apt-cacher-ng and its shared cache
    guest       a host's overlay and the files written into it
    inventory   what Ansible and Molecule get: the inventory, the `up --json` summary
    supervisor  the nspawn boot/reboot loop and the controller's handle on a host
    lifecycle   up, status, down, and removing a run's labs
    cli         the `hxp lab` command

Layout (``STATE`` = ``lab.state_dir``/<name>, ``CACHE`` = /var/cache/hxp-lab):

    CACHE/base-<key>.tar.zst      the base rootfs archive; CACHE/rootfs-<key>/ its extraction
    CACHE/apt/                    apt-cacher-ng cache shared by all labs (see AptProxy)
    STATE/state.json              what ``up`` created
    STATE/id_ed25519[.pub]        the SSH key the hosts accept for root
    STATE/inventory.yml           Ansible inventory of the hosts
    STATE/hosts/<host>/           overlay upper/work/root, console.log, supervisor.pid
    /sys/fs/cgroup/{unified,systemd}/hxp-lab/<name>/<host>   each host's own cgroups
    /run/hxp-lab/<name>.json      which state directory owns the lab name on this machine
    /run/hxp-lab/<name>.acng      apt-cacher-ng's control socket (a short path: sockets have
                                  a 108-byte limit, state directories can be deep)
"""

from hxp_runtime.lab.aptproxy import AptProxy
from hxp_runtime.lab.cgroups import cgroup_dirs, cgroup_hierarchies
from hxp_runtime.lab.errors import LabError, Log
from hxp_runtime.lab.hostos import mounts_under
from hxp_runtime.lab.image import BaseImage
from hxp_runtime.lab.inventory import SSH_OPTIONS, ansible_inventory, lab_summary
from hxp_runtime.lab.lifecycle import HostStatus, Lab, remove_run
from hxp_runtime.lab.spec import LabHost, LabSpec, load_lab
from hxp_runtime.lab.state import RUN_ENV, LabState, RegisteredLab, registered_labs

__all__ = [
    "RUN_ENV",
    "SSH_OPTIONS",
    "AptProxy",
    "BaseImage",
    "HostStatus",
    "Lab",
    "LabError",
    "LabHost",
    "LabSpec",
    "LabState",
    "Log",
    "RegisteredLab",
    "ansible_inventory",
    "cgroup_dirs",
    "cgroup_hierarchies",
    "lab_summary",
    "load_lab",
    "mounts_under",
    "registered_labs",
    "remove_run",
]
