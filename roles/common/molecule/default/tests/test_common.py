"""Role common on lab hosts: what the role promises, checked on the running host."""

import pytest

testinfra_hosts = ["all"]


def reserved(ports):
    """The kernel's list of ip_local_reserved_ports for ports: sorted, runs as ranges."""
    runs = []
    for port in sorted(set(ports)):
        if runs and port == runs[-1][1] + 1:
            runs[-1][1] = port
        else:
            runs.append([port, port])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def test_python_for_ansible(host):
    assert host.file("/usr/bin/python3").is_file
    assert host.package("python3-apt").is_installed


def test_service_user(assert_system_user):
    assert_system_user("hxp", "/var/lib/hxp")


@pytest.mark.parametrize(
    ("path", "mode"),
    [("/etc/hxp", 0o750), ("/var/lib/hxp", 0o750), ("/var/log/hxp", 0o750), ("/opt/hxp", 0o755)],
)
def test_directories(assert_directory, path, mode):
    assert_directory(path, "hxp", "hxp", mode)


def test_baseline_packages(host):
    for name in ("python3", "chrony", "ca-certificates"):
        assert host.package(name).is_installed


def test_chrony_config_and_unit(host, in_container, lab_gateway):
    gateway = lab_gateway
    conf = host.file("/etc/chrony/chrony.conf").content_string
    assert f"server {gateway} iburst" in conf
    assert "pool 2.debian.pool.ntp.org" not in conf, "lab hosts reach nothing but the bridge"
    assert host.run("chronyd -p -f /etc/chrony/chrony.conf").rc == 0
    chrony = host.service("chrony")
    assert chrony.is_enabled
    if in_container:
        # The clock is the controller's: systemd refuses to start chrony without CAP_SYS_TIME.
        host.run("systemctl start chrony")
        assert not chrony.is_running
        assert host.check_output("systemctl show -P ConditionResult chrony") == "no"
    else:
        assert chrony.is_running


def test_journald_limits_in_effect(host):
    dropin = host.file("/etc/systemd/journald.conf.d/hxp.conf")
    assert "SystemMaxUse=2G" in dropin.content_string
    assert "RuntimeMaxUse=256M" in dropin.content_string
    merged = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert "MaxRetentionSec=2week" in merged
    # journald was restarted after its drop-in was written, so it runs with these limits.
    started = host.check_output(
        'date -d "$(systemctl show -P ExecMainStartTimestamp systemd-journald)" +%s'
    )
    assert int(started) >= int(host.check_output(f"stat -c %Y {dropin.path}"))


def test_sysctl_every_host(host):
    assert host.sysctl("net.ipv4.tcp_keepalive_time") == 300


def test_sysctl_llm_settings_on_llm_hosts_only(host, in_container, deployed):
    conf = host.file("/etc/sysctl.d/60-hxp.conf").content_string
    if "llm" not in host.ansible.get_variables()["group_names"]:
        assert "vm.max_map_count" not in conf
        assert host.sysctl("net.ipv4.tcp_max_syn_backlog") != 8192
        return
    assert "vm.max_map_count = 1048576" in conf
    # net.* belongs to the host's own network namespace: applied even in a container.
    assert host.sysctl("net.core.somaxconn") == 65535
    assert host.sysctl("net.ipv4.tcp_max_syn_backlog") == 8192
    assert host.sysctl("net.ipv4.ip_local_port_range") == "10240\t65000"
    # The services' ports lie inside that range: reserved, so no ephemeral port can take one.
    # molecule.yml gives 8000, 11401 and 11400; the stack, what `hxp render` planned.
    ports = [8000, 11401, 11400] if deployed is None else deployed["hxp_host_listen_ports"]
    assert host.sysctl("net.ipv4.ip_local_reserved_ports") == reserved(ports)
    if not in_container:  # vm.* is the kernel's, read-only in a container
        assert host.sysctl("vm.max_map_count") == 1048576
