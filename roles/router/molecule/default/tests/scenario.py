"""What both test modules share: the virtual address molecule.yml gives the scenario (.100 of
the hosts' /24; testinfra returns inventory variables unrendered, so it is computed here)."""


def virtual_address_of(host_address):
    return ".".join([*host_address.split(".")[:3], "100"])
