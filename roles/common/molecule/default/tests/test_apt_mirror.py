"""Hosts on the Debian mirror: apt goes through the lab's apt-cacher-ng on the bridge."""

testinfra_hosts = ["hx-llm-server-01", "hx-postgres-server-01"]


def test_apt_goes_through_the_proxy(host, lab_gateway):
    proxy = f"http://{lab_gateway}:3142"
    assert host.file("/etc/apt/apt.conf.d/80hxp-proxy").contains(proxy)
    dump = host.check_output("apt-config dump Acquire::http::Proxy")
    assert f'Acquire::http::Proxy "{proxy}";' in dump
    # No pipelining through apt-cacher-ng: the two can deadlock on an idle connection.
    pipelining = host.check_output("apt-config dump Acquire::http::Pipeline-Depth")
    assert 'Acquire::http::Pipeline-Depth "0";' in pipelining
    sources = host.file("/etc/apt/sources.list.d/debian.sources")
    assert "URIs: http://deb.debian.org/debian" in sources.content_string
    assert not host.file("/etc/apt/sources.list").exists
    assert not host.file("/etc/apt/sources.list.d/hxp-bundle.sources").exists
    # A real download through the proxy: the index of the security suite.
    update = host.run("apt-get update -o Debug::NoLocking=1 2>&1")
    assert update.rc == 0, update.stdout
    assert "bookworm-security" in update.stdout
