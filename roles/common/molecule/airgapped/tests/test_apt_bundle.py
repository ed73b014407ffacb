"""The air-gapped host: apt reads only the bundle's flat repository, copied from the controller."""

testinfra_hosts = ["hx-vectordb-server-01"]


def test_air_gapped_host_reads_only_the_bundle(host):
    repo = "/var/lib/hxp/apt-bundle/baseline"
    assert host.file(f"{repo}/Packages").is_file
    assert host.file("/etc/apt/sources.list.d/hxp-bundle.sources").contains(f"URIs: file:{repo}")
    assert not host.file("/etc/apt/sources.list.d/debian.sources").exists
    assert not host.file("/etc/apt/sources.list").exists
    assert not host.file("/etc/apt/apt.conf.d/80hxp-proxy").exists
    update = host.run("apt-get update -o Debug::NoLocking=1 2>&1")
    assert update.rc == 0, update.stdout
    assert "deb.debian.org" not in update.stdout
    # chrony came from the bundle: its only candidate is the file: repository.
    policy = host.check_output("apt-cache policy chrony")
    assert f"file:{repo}" in policy
    assert "http://" not in policy
