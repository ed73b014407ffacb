"""What both hosts' probe modules share: the probe ports and a connect from a lab host."""

ADMITTED, NOT_ADMITTED = 7001, 7002

CONNECT = (
    "python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)' "
    "{} {}"
)


def connects(host, address, port):
    return host.run(CONNECT.format(address, port)).rc == 0


def address_of(host, name):
    return host.backend.ansible_runner.get_variables(name)["ansible_host"]
